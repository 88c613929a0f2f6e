"""The `chatqna` command: run the local mesh, fetch models, ingest documents."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from comps.core.ports import local_url
from comps.runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from comps.identity.service import IdentityService

T = TypeVar("T")

app = typer.Typer(help="ChatQnA: a self-hosted RAG chat backend.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Manage the models in models/.", no_args_is_help=True)
app.add_typer(models_app, name="models")
users_app = typer.Typer(
    help="Manage accounts in the user store (DATABASE_URL, or the embedded PostgreSQL).", no_args_is_help=True
)
app.add_typer(users_app, name="users")
db_app = typer.Typer(help="The relational store.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.command()
def up(
    only: Annotated[list[str] | None, typer.Option("--only", help="Start only these services (repeatable).")] = None,
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
    url: Annotated[str, typer.Option(help="Gateway base URL (dataprep's routes are served there).")] = local_url(
        "gateway"
    ),
    chunk_size: Annotated[int, typer.Option(help="Chunk length in characters.")] = 1500,
    chunk_overlap: Annotated[int, typer.Option(help="Characters shared by neighbouring chunks.")] = 100,
    tags: Annotated[str | None, typer.Option(help="Comma-separated tags stored on every chunk.")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="CHATQNA_API_KEY", help="An API key (sk-...) or access token of your account.")
    ] = None,
) -> None:
    """Upload documents through the gateway and follow the ingestion jobs with a progress bar."""
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


@users_app.command("create")
def users_create(
    username: str,
    admin: Annotated[bool, typer.Option("--admin", help="Give the admin role.")] = False,
    password: Annotated[
        str | None,
        typer.Option(envvar="CHATQNA_NEW_PASSWORD", help="Default: asked for (or generated with --generate)."),
    ] = None,
    generate: Annotated[bool, typer.Option("--generate", help="Generate a password and print it once.")] = False,
) -> None:
    """Create an account."""
    import secrets

    if password is None:
        password = (
            secrets.token_urlsafe(12)
            if generate
            else typer.prompt("password", hide_input=True, confirmation_prompt=True)
        )
    info = _with_identity(
        lambda identity: identity.create_user(
            _checked_username(username), _checked_password(password), role="admin" if admin else "user"
        )
    )
    typer.echo(f"created {info.role} {info.username} (id {info.id})" + (f"; password: {password}" if generate else ""))


@users_app.command("list")
def users_list() -> None:
    """List accounts."""
    for u in _with_identity(lambda identity: identity.list_users(limit=1000)):
        flags = ", ".join(f for f, on in (("disabled", u.disabled), ("sso", u.sso)) if on)
        typer.echo(f"{u.username:<24} {u.role:<6} {u.id}" + (f"  ({flags})" if flags else ""))


@users_app.command("set-password")
def users_set_password(
    username: str,
    password: Annotated[str | None, typer.Option(envvar="CHATQNA_NEW_PASSWORD", help="Default: asked for.")] = None,
) -> None:
    """Set an account's password (and sign it out everywhere)."""
    if password is None:
        password = typer.prompt("new password", hide_input=True, confirmation_prompt=True)
    _with_identity(lambda identity: identity.set_password(username, _checked_password(password)))
    typer.echo(f"password of {username} changed")


@db_app.command("migrate")
def db_migrate() -> None:
    """Bring the schema to the newest revision (the gateway also does this at start)."""
    from comps.sqlstore import Database, migrate

    async def run(url: str) -> None:
        db = Database(url, pool_size=1)
        try:
            await migrate(db)
        finally:
            await db.close()

    import asyncio

    with _database() as url:
        asyncio.run(run(url))
    typer.echo("schema is up to date")


def _checked_username(name: str) -> str:
    from comps.identity.protocol import RegisterRequest

    try:
        return RegisterRequest(username=name, password="x" * 8).username
    except ValueError as exc:
        raise typer.BadParameter(str(exc).splitlines()[-1], param_hint="USERNAME") from None


def _checked_password(password: str) -> str:
    from comps.identity.protocol import MIN_PASSWORD

    if len(password) < MIN_PASSWORD:
        raise typer.BadParameter(f"at least {MIN_PASSWORD} characters", param_hint="password")
    return password


def _database() -> AbstractContextManager[str]:
    """DATABASE_URL, or the embedded PostgreSQL of the state folder (started for this command if not running)."""
    from contextlib import contextmanager

    from comps.runtime.postgres_server import EmbeddedPostgres

    @contextmanager
    def url() -> Iterator[str]:
        settings = RuntimeSettings()
        if settings.database_url:
            yield settings.database_url
            return
        server = EmbeddedPostgres(settings.state_dir / "postgres", settings.postgres_port)
        if server.ready():
            yield server.url
            return
        with server:
            yield server.url

    return url()


def _with_identity(action: Callable[[IdentityService], Awaitable[T]]) -> T:
    import asyncio
    import secrets

    from comps.core.errors import ServiceError
    from comps.identity.service import IdentityService
    from comps.sqlstore import Database, migrate

    async def run(url: str) -> T:
        db = Database(url, pool_size=1)
        try:
            await migrate(db)
            # Managing accounts signs no token: any secret will do here.
            return await action(IdentityService(db, jwt_secret=secrets.token_urlsafe(32)))
        finally:
            await db.close()

    with _database() as url:
        try:
            return asyncio.run(run(url))
        except ServiceError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
