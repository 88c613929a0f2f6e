"""The `chatqna` command: run the local mesh, fetch models, ingest documents."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from comps.core.ports import local_url
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


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (walked recursively for supported files).")],
    collection: Annotated[
        str | None, typer.Option(help="Collection to write to (default: the service's INDEX_NAME).")
    ] = None,
    url: Annotated[str, typer.Option(help="Dataprep service base URL.")] = local_url("dataprep"),
    chunk_size: Annotated[int, typer.Option(help="Chunk length in characters.")] = 1500,
    chunk_overlap: Annotated[int, typer.Option(help="Characters shared by neighbouring chunks.")] = 100,
    tags: Annotated[str | None, typer.Option(help="Comma-separated tags stored on every chunk.")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="DATAPREP_API_KEY", help="Bearer token, if the service needs one.")
    ] = None,
) -> None:
    """Upload documents to the dataprep service and follow the ingestion jobs with a progress bar."""
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from comps.runtime import ingest as client

    fields = {"chunk_size": str(chunk_size), "chunk_overlap": str(chunk_overlap)}
    if collection:
        fields["collection"] = collection
    if tags:
        fields["tags"] = tags
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        docs = progress.add_task("documents", total=None)
        chunks = progress.add_task("chunks embedded", total=None)

        def update(jobs: dict[str, dict[str, Any]]) -> None:
            done = sum(1 for j in jobs.values() if j["status"] in ("succeeded", "failed", "skipped"))
            progress.update(docs, total=len(jobs), completed=done)
            total = sum(j.get("chunks_total") or 0 for j in jobs.values())
            embedded = sum(j.get("chunks_embedded") or 0 for j in jobs.values())
            progress.update(chunks, total=total or None, completed=embedded)

        try:
            jobs = asyncio.run(client.run(paths, url=url, fields=fields, api_key=api_key, on_update=update))
        except (client.UsageError, client.ServiceRefused) as exc:
            progress.stop()
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2 if isinstance(exc, client.UsageError) else 1) from None
    counts = {s: sum(1 for j in jobs.values() if j["status"] == s) for s in ("succeeded", "skipped", "failed")}
    typer.echo(
        f"{len(jobs)} document(s): {counts['succeeded']} ingested, {counts['skipped']} unchanged, "
        f"{counts['failed']} failed"
    )
    for job in jobs.values():
        if job["status"] == "failed":
            typer.echo(f"failed: {job['source']}: {job.get('error')}", err=True)
    raise typer.Exit(1 if counts["failed"] else 0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
