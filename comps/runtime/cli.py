"""The `chatqna` command: run the local mesh, fetch models, ingest documents."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
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
vectors_app = typer.Typer(help="The vector stores (Redis, PostgreSQL with pgvector).", no_args_is_help=True)
app.add_typer(vectors_app, name="vectors")


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
def models_fetch(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Models to fetch, e.g. gemma3-270m (Gemma 3 270M, a larger LLM); default: the defaults."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Download again even if present.")] = False,
) -> None:
    """Put models into models/: the defaults (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2), or those named."""
    from comps.runtime.models import fetch, fetch_defaults, find_spec, present

    models_dir = RuntimeSettings().models_dir
    if not names:
        fetch_defaults(models_dir, force=force, log=typer.echo)
        return
    try:
        specs = [find_spec(name) for name in names]
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(2) from None
    for spec in specs:
        if present(spec, models_dir) and not force:
            typer.echo(f"{spec.name}: already in {models_dir}")
        else:
            fetch(spec, models_dir, log=typer.echo)
        if spec.note:
            typer.echo(f"{spec.name}: {spec.note}")


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
    chunk_tokens: Annotated[
        int | None, typer.Option(help="Chunk length in the embedding model's tokens (default: the service's).")
    ] = None,
    chunk_overlap_tokens: Annotated[int | None, typer.Option(help="Tokens shared by neighbouring chunks.")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Chunk length in characters, instead of tokens.")] = None,
    chunk_overlap: Annotated[int | None, typer.Option(help="Characters shared by neighbouring chunks.")] = None,
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

    sizes = {"chunk_tokens": chunk_tokens, "chunk_overlap_tokens": chunk_overlap_tokens, "chunk_size": chunk_size,
             "chunk_overlap": chunk_overlap}  # fmt: skip
    fields = {name: str(value) for name, value in sizes.items() if value is not None}
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


@app.command("eval")
def eval_(
    questions: Annotated[Path, typer.Argument(help="JSONL question set: question, source, facts[, collection].")],
    url: Annotated[str, typer.Option(help="Gateway base URL.")] = local_url("gateway"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Request field of the base configuration: key=value (repeatable).")
    ] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(help="Another configuration, NAME:key=value,... (request fields, or url=...); repeatable."),
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the base configuration.")] = "base",
    report: Annotated[Path | None, typer.Option(help="Write the JSON report (every answer) here.")] = None,
    chart: Annotated[Path | None, typer.Option(help="Write an SVG chart of the summary here.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N questions.")] = None,
    warmup: Annotated[int, typer.Option(help="Questions asked first and not counted (cold caches).")] = 1,
    timeout_s: Annotated[float, typer.Option(help="Longest wait for one answer.")] = 120.0,
    api_key: Annotated[
        str | None, typer.Option(envvar="CHATQNA_API_KEY", help="Bearer token for the gateway, if it needs one.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print every answer as it comes.")] = False,
) -> None:
    """Ask a question set through a running gateway; print source@1, source@k, MRR, fact rate, TTFT and total time
    (p50/p95) and tokens, per configuration side by side."""
    import asyncio
    import json

    from comps.runtime import eval as ev

    try:
        qs = ev.load_questions(questions)[:limit]
        base = ev.parse_config(",".join(set_ or ()), base=ev.Config(name, url.rstrip("/"), {}))
        configs = [ev.Config(name, base.url, base.fields)]
        configs += [ev.parse_config(spec, base=configs[0]) for spec in compare or ()]
    except ev.EvalError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if len({c.name for c in configs}) != len(configs):
        typer.echo("error: configurations need distinct names (NAME:key=value)", err=True)
        raise typer.Exit(2)

    def show(config: ev.Config, a: ev.Answer) -> None:
        mark = "ok " if a.rank == 1 and a.fact else "-- "
        line = f"{mark}[{config.name}] {a.question} -> {a.error or a.text.strip()[:160]!r} ({a.finish_reason})"
        typer.echo(line.replace("\n", " "), err=True)

    result = asyncio.run(ev.run(qs, configs, api_key=api_key, timeout_s=timeout_s, warmup=warmup,
                                on_answer=show if verbose else None))  # fmt: skip
    typer.echo(ev.table(result))
    if report:
        report.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    if chart:
        chart.write_text(ev.chart_svg(result), encoding="utf-8")
    if any(s["errors"] == s["questions"] for s in result["summary"].values()):
        raise typer.Exit(1)


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


@vectors_app.command("migrate")
def vectors_migrate(
    collection: Annotated[str, typer.Option(help="The collection to copy.")],
    from_: Annotated[str, typer.Option("--from", help="Source store: redis or pgvector.")],
    to: Annotated[str, typer.Option(help="Target store: redis or pgvector.")],
    redis_url: Annotated[str | None, typer.Option(help="Default: REDIS_URL, or the embedded Redis's port.")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Default: VECTORSTORE_DATABASE_URL, DATABASE_URL, or the embedded PostgreSQL.")
    ] = None,
) -> None:
    """Copy a collection's documents and vectors (no re-embedding) to the other store; run it again to resume."""
    import asyncio
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from comps.core.errors import ServiceError
    from comps.vectorstore.documents import CollectionMissing
    from comps.vectorstore.migrate import MigrationReport, copy_collection
    from comps.vectorstore.names import validate_collection
    from comps.vectorstore.protocol import BACKENDS
    from comps.vectorstore.stores import make_store

    if {from_, to} != set(BACKENDS):
        raise typer.BadParameter(f"--from and --to name the two stores: {' and '.join(BACKENDS)}")
    try:
        validate_collection(collection)
    except ServiceError as exc:
        raise typer.BadParameter(exc.message, param_hint="--collection") from None
    settings = RuntimeSettings()
    redis_url = redis_url or settings.redis_url or f"redis://127.0.0.1:{settings.redis_port}"
    database_url = database_url or os.environ.get("VECTORSTORE_DATABASE_URL")

    async def run(pg_url: str, progress: Progress) -> MigrationReport:
        source, target = (make_store(b, redis_url=redis_url, database_url=pg_url) for b in (from_, to))
        task = progress.add_task(collection, total=None)

        def advance(report: MigrationReport, record: object) -> None:
            progress.update(task, total=report.documents, completed=report.copied + report.skipped)

        await source.open()
        await target.open()
        try:
            return await copy_collection(source, target, collection, progress=advance)
        finally:
            await source.close()
            await target.close()

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with _database() if database_url is None else nullcontext(database_url) as url, Progress(*columns) as bar:
        try:
            report = asyncio.run(run(url, bar))
        except (ServiceError, CollectionMissing) as exc:
            typer.echo(f"error: {getattr(exc, 'message', exc)}", err=True)
            raise typer.Exit(1) from None
    typer.echo(
        f"{collection}: {report.copied} documents ({report.chunks} chunks) copied from {from_} to {to}, "
        f"{report.skipped} already there"
    )


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
