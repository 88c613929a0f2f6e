"""The `chatqna` command: run the local mesh, fetch models, ingest documents."""

from __future__ import annotations

from typing import Annotated

import typer

from comps.runtime.settings import RuntimeSettings

app = typer.Typer(help="ChatQnA: a self-hosted RAG chat backend.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Manage the models in models/.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.command()
def up(
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Start only these services (repeatable).")
    ] = None,
    fetch_models: Annotated[bool, typer.Option(help="Fetch missing default models first.")] = True,
) -> None:
    """Start Redis (unless REDIS_URL is set) and every service as local processes; Ctrl-C stops all."""
    from comps.runtime.mesh import run_up
    from comps.runtime.models import fetch_defaults

    settings = RuntimeSettings()
    if fetch_models:
        fetch_defaults(settings.models_dir, log=typer.echo)
    raise typer.Exit(run_up(settings, set(only) if only else None, typer.echo))


@models_app.command("fetch")
def models_fetch(force: Annotated[bool, typer.Option(help="Download again even if present.")] = False) -> None:
    """Put the default models (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2) into models/."""
    from comps.runtime.models import fetch_defaults

    fetch_defaults(RuntimeSettings().models_dir, force=force, log=typer.echo)


@models_app.command("list")
def models_list() -> None:
    """Show what is in models/."""
    settings = RuntimeSettings()
    if not settings.models_dir.exists():
        typer.echo(f"{settings.models_dir} does not exist; run `chatqna models fetch`")
        return
    for path in sorted(settings.models_dir.iterdir()):
        if path.name.startswith(".") or path.name == "README.md":
            continue
        typer.echo(f"{path.name}{'/' if path.is_dir() else ''}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
