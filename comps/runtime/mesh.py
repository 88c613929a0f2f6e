"""The local mesh: which services exist, what each one is told, and the supervisor behind `chatqna up`."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from comps.runtime.postgres_server import EmbeddedPostgres, wait_for_postgres
from comps.runtime.process import ManagedProcess, ProcessFailed
from comps.runtime.redis_server import EmbeddedRedis, wait_for_redis
from comps.runtime.settings import RuntimeSettings


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str  # started as `python -m <module>`
    port_attr: str  # RuntimeSettings field holding its port
    env_prefix: str
    needs: tuple[str, ...] = ()  # other services it calls
    uses_vectorstore: bool = False  # Redis, or DATABASE_URL with VECTORSTORE_BACKEND=pgvector
    uses_database: bool = False  # gets DATABASE_URL (the relational store)
    settings: str = ""  # "module:Class" of its settings (what it reads from the environment)
    ready_path: str = "/v1/ready"  # what answers 200 once it is ready
    internal: bool = True  # refuses calls without the mesh's internal token (all but the public doors)
    port: int | None = None  # instead of port_attr (the LLM services of CHATQNA_LLM_MODELS)
    env: tuple[tuple[str, str], ...] = ()  # variables only this service gets

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


# Start order; the gateway and the chat UI (which calls only the gateway) come last. Every service reads
# <PREFIX>HOST and <PREFIX>PORT, and <PREFIX><NEED>_URL for each service it calls.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "embedding",
        "comps.embedding",
        "embedding_port",
        "EMBEDDING_",
        settings="comps.embedding.settings:EmbeddingSettings",
    ),
    ServiceSpec(
        "reranker",
        "comps.reranker",
        "reranker_port",
        "RERANKER_",
        settings="comps.reranker.settings:RerankerSettings",
    ),
    ServiceSpec("llm", "comps.llm", "llm_port", "LLM_", settings="comps.llm.settings:LLMSettings"),
    ServiceSpec(
        "retriever",
        "comps.retriever",
        "retriever_port",
        "RETRIEVER_",
        ("embedding",),
        uses_vectorstore=True,
        settings="comps.retriever.settings:RetrieverSettings",
    ),
    ServiceSpec(
        "dataprep",
        "comps.dataprep",
        "dataprep_port",
        "DATAPREP_",
        ("embedding",),
        uses_vectorstore=True,
        settings="comps.dataprep.settings:DataprepSettings",
    ),
    ServiceSpec(
        "chathistory",
        "comps.chathistory",
        "chathistory_port",
        "CHATHISTORY_",
        uses_database=True,
        settings="comps.chathistory.settings:ChatHistorySettings",
    ),
    ServiceSpec(
        "prompts",
        "comps.prompt_registry",
        "prompts_port",
        "PROMPTS_",
        uses_database=True,
        settings="comps.prompt_registry.settings:PromptRegistrySettings",
    ),
    ServiceSpec(
        "gateway",
        "megaservice",
        "gateway_port",
        "GATEWAY_",
        ("embedding", "retriever", "reranker", "llm", "dataprep", "chathistory", "prompts"),
        uses_vectorstore=True,  # the answer cache, in the vector store's Redis (its content versions too)
        settings="megaservice.settings:GatewaySettings",
        internal=False,
    ),
    ServiceSpec(
        "ui",
        "ui",
        "ui_port",
        "UI_",
        ("gateway",),
        settings="ui.settings:UISettings",
        ready_path="/_stcore/health",
        internal=False,
    ),
)


def services_for(settings: RuntimeSettings) -> tuple[ServiceSpec, ...]:
    """`SERVICES`, with one LLM service per model of CHATQNA_LLM_MODELS (``llm-<name>``) instead of ``llm``."""
    if not settings.llm_models:
        return SERVICES
    llm = next(s for s in SERVICES if s.name == "llm")
    per_model = tuple(
        dataclasses.replace(llm, name=f"llm-{model}", port=settings.llm_port + i, env=(("LLM_MODEL", gguf),))
        for i, (model, gguf) in enumerate(settings.llm_models.items())
    )
    specs: list[ServiceSpec] = []
    for spec in SERVICES:
        if spec.name == "llm":
            specs.extend(per_model)
        else:
            specs.append(dataclasses.replace(spec, needs=tuple(n for n in spec.needs if n != "llm")))
    return tuple(specs)


@dataclass
class Mesh:
    """Builds each service's environment from the runtime settings."""

    settings: RuntimeSettings
    redis_url: str
    services: tuple[ServiceSpec, ...] = SERVICES
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    database_url: str | None = None  # the relational store: the gateway's users (auth on), conversations
    jwt_secret: str | None = None
    internal_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def url(self, name: str) -> str:
        return f"http://{self.settings.host}:{self.port(next(s for s in self.services if s.name == name))}"

    def port(self, spec: ServiceSpec) -> int:
        return spec.port if spec.port is not None else int(getattr(self.settings, spec.port_attr))

    def uses_redis(self, spec: ServiceSpec) -> bool:
        return spec.uses_vectorstore and self.settings.vectorstore_backend == "redis"

    def uses_database(self, spec: ServiceSpec) -> bool:
        return spec.uses_database or (spec.uses_vectorstore and self.settings.vectorstore_backend == "pgvector")

    def env_for(self, spec: ServiceSpec) -> dict[str, str]:
        env = {
            f"{spec.env_prefix}HOST": self.settings.host,
            f"{spec.env_prefix}PORT": str(self.port(spec)),
            "CHATQNA_MODELS_DIR": str(self.settings.models_dir.resolve()),
            "LOG_FORMAT": self.settings.log_format,
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": str(self.settings.trace_content).lower(),
        }
        if self.uses_redis(spec):
            env["REDIS_URL"] = self.redis_url
        if self.uses_database(spec):
            env["DATABASE_URL"] = self.database_url or ""
        if spec.uses_vectorstore:  # a vector store user: one setting picks the store for all of them
            env["VECTORSTORE_BACKEND"] = self.settings.vectorstore_backend
        for need in spec.needs:
            env[f"{spec.env_prefix}{need.upper()}_URL"] = self.url(need)
        if spec.name == "dataprep":  # queued uploads wait here for their jobs, across restarts
            env["DATAPREP_SPOOL_DIR"] = str((self.settings.state_dir / "spool").resolve())
        # Only the gateway has the mesh's internal token for the others; each service requires it.
        if spec.name == "gateway":
            models = self.settings.llm_models
            if models:  # one LLM service per model; the first is the default
                env["GATEWAY_MODELS"] = json.dumps({m: self.url(f"llm-{m}") for m in models})
                env["GATEWAY_LLM_URL"] = self.url(f"llm-{next(iter(models))}")
            env["GATEWAY_INTERNAL_API_KEY"] = self.internal_token
            env["GATEWAY_AUTH_ENABLED"] = str(self.settings.auth_enabled).lower()
            if self.settings.auth_enabled:
                env["DATABASE_URL"] = self.database_url or ""
                env["GATEWAY_JWT_SECRET"] = self.jwt_secret or ""
            if any(s.name == "ui" for s in self.services):  # single sign-on may send the browser back to the UI
                env["GATEWAY_CORS_ORIGINS"] = f'["{self.url("ui")}"]'
        elif spec.internal:
            env[f"{spec.env_prefix}API_KEY"] = self.internal_token
            if "embedding" in spec.needs:
                env[f"{spec.env_prefix}EMBEDDING_API_KEY"] = self.internal_token
        env.update(spec.env)
        env.update(self.overrides.get(spec.name, {}))
        return env

    def process(self, spec: ServiceSpec, sink: IO[str] | None = None) -> ManagedProcess:
        logs = self.settings.state_dir / "logs"
        return ManagedProcess(
            spec.name,
            [sys.executable, "-m", spec.module],
            env=self.env_for(spec),
            sink=sink,
            log_file=logs / f"{spec.name}.log",
        )


RESTART_BASE_S = 0.5  # backoff before the first restart of a crashed child; doubled per crash in a row
RESTART_MAX_S = 30.0
STABLE_S = 60.0  # a child up this long has stopped crashing: its backoff starts over


def restart_delay(crashes_in_a_row: int) -> float:
    return min(RESTART_MAX_S, RESTART_BASE_S * 2.0 ** max(0, crashes_in_a_row - 1))


class Supervisor:
    """Starts Redis (unless REDIS_URL is set) and the services, waits for readiness, restarts any child that
    dies (with backoff) until stopped, stops them all."""

    def __init__(self, settings: RuntimeSettings, *, only: set[str] | None = None, out: Callable[[str], None] = print):
        self.settings = settings
        self.only = only
        self.out = out
        self.redis: EmbeddedRedis | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.first_admin: tuple[str, str | None] | None = None  # (name, generated password) when made now
        self.procs: dict[str, ManagedProcess] = {}
        self.mesh: Mesh | None = None
        self.ready_s: dict[str, float] = {}
        self.restarts: dict[str, int] = {}  # child -> times restarted
        self._crashes: dict[str, int] = {}  # child -> crashes in a row
        self._started_at: dict[str, float] = {}

    def selected(self) -> list[ServiceSpec]:
        only = self.only
        specs = [
            s
            for s in services_for(self.settings)
            if only is None or s.name in only or ("llm" in only and s.name.startswith("llm-"))
        ]
        missing = [s.name for s in specs if not s.available()]
        for name in missing:
            self.out(f"skipping {name}: its module is not installed")
        return [s for s in specs if s.name not in missing]

    def start(self) -> dict[str, float]:
        started = time.monotonic()
        specs = self.selected()
        plan = Mesh(self.settings, "")  # who needs Redis, who PostgreSQL, with these settings
        redis_url = self.settings.redis_url
        if not any(plan.uses_redis(s) for s in specs):
            redis_url = None  # VECTORSTORE_BACKEND=pgvector: nothing of the mesh talks to Redis
        elif redis_url:
            wait_for_redis(redis_url)
        else:
            self.redis = EmbeddedRedis(
                self.settings.state_dir / "redis",
                self.settings.redis_port,
                log_file=self.settings.state_dir / "logs" / "redis.log",
            ).start()
            redis_url = self.redis.url
        database_url = jwt_secret = None
        gateway_auth = self.settings.auth_enabled and any(s.name == "gateway" for s in specs)
        if gateway_auth or any(plan.uses_database(s) for s in specs):
            database_url = self._start_postgres()
        if gateway_auth:
            assert database_url is not None
            jwt_secret = state_secret(self.settings.state_dir, "jwt_secret")
            self.first_admin = asyncio.run(bootstrap(self.settings, database_url, jwt_secret))
        mesh = self.mesh = Mesh(
            self.settings,
            redis_url or "",
            services=services_for(self.settings),
            database_url=database_url,
            jwt_secret=jwt_secret,
        )
        for spec in specs:
            self.procs[spec.name] = mesh.process(spec).start()
        errors: dict[str, str] = {}

        def wait(name: str, proc: ManagedProcess) -> None:
            try:
                path = next(s.ready_path for s in specs if s.name == name)
                proc.wait_http_ready(f"{mesh.url(name)}{path}", self.settings.ready_timeout_s)
                self.ready_s[name] = time.monotonic() - started
            except ProcessFailed as exc:
                errors[name] = str(exc)

        threads = [threading.Thread(target=wait, args=item, daemon=True) for item in self.procs.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.stop()
            raise ProcessFailed("\n".join(f"{name}: {msg}" for name, msg in errors.items()))
        return self.ready_s

    def _start_postgres(self) -> str:
        if self.settings.database_url:
            wait_for_postgres(self.settings.database_url)
            return self.settings.database_url
        self.postgres = EmbeddedPostgres(
            self.settings.state_dir / "postgres",
            self.settings.postgres_port,
            log_file=self.settings.state_dir / "logs" / "postgres.log",
        ).start()
        return self.postgres.url

    def table(self) -> list[tuple[str, str, str]]:
        rows = []
        if self.postgres or (self.settings.database_url and self.mesh and self.mesh.database_url):
            where = f"127.0.0.1:{self.postgres.port}" if self.postgres else "DATABASE_URL"
            rows.append(("postgres", where, "embedded" if self.postgres else "external"))
        if self.redis or (self.settings.redis_url and self.mesh and self.mesh.redis_url):
            rows.append(
                (
                    "redis",
                    self.redis.url if self.redis else str(self.settings.redis_url),
                    "external" if not self.redis else "embedded",
                )
            )
        for name in self.procs:
            rows.append((name, self.mesh.url(name) if self.mesh else "", f"ready in {self.ready_s.get(name, 0):.1f}s"))
        return rows

    def watch(self, stop: threading.Event, poll_s: float = 0.2) -> None:
        """Block until ``stop`` is set, restarting every child that dies (Redis, PostgreSQL included), after a backoff
        that doubles with each crash in a row (`restart_delay`); each restart is counted and logged."""
        due: dict[str, float] = {}  # child -> when it is restarted
        while not stop.wait(poll_s):
            now = time.monotonic()
            for name, proc in self._children().items():
                if proc.running():
                    if now - self._started_at.get(name, now) > STABLE_S:
                        self._crashes[name] = 0  # up long enough: the next crash starts the backoff over
                    continue
                if name not in due:
                    self._crashes[name] = self._crashes.get(name, 0) + 1
                    delay = restart_delay(self._crashes[name])
                    due[name] = now + delay
                    code = proc.proc.returncode if proc.proc else None
                    self.out(f"{name} exited with code {code}; restarting it in {delay:.1f}s "
                             f"(crash {self._crashes[name]} in a row)")  # fmt: skip
                elif now >= due[name]:
                    del due[name]
                    self._restart(name, proc)

    def _children(self) -> dict[str, ManagedProcess]:
        children = dict(self.procs)
        if self.redis:
            children["redis"] = self.redis.process
        if self.postgres:
            children["postgres"] = self.postgres.process
        return children

    def _restart(self, name: str, proc: ManagedProcess) -> None:
        proc.stop()  # reaps it and closes its log
        try:
            proc.start()
        except OSError as exc:  # e.g. the interpreter vanished: try again after the next backoff
            self.out(f"could not restart {name}: {exc}")
            return
        self._started_at[name] = time.monotonic()
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self.out(f"{name} restarted (pid {proc.pid}, restart {self.restarts[name]})")

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.procs[name].stop()
        if self.redis:
            self.redis.stop()
        if self.postgres:
            self.postgres.stop()


def run_up(settings: RuntimeSettings, only: set[str] | None, out: Callable[[str], None]) -> int:
    """`chatqna up`: start, report, and run until Ctrl-C/SIGTERM; a child that dies is restarted."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sup = Supervisor(settings, only=only, out=out)
    try:
        sup.start()
    except ProcessFailed as exc:
        out(f"start-up failed:\n{exc}")
        return 1
    width = max(len(r[0]) for r in sup.table())
    out("\nChatQnA mesh is ready:")
    for name, url, note in sup.table():
        out(f"  {name:<{width}}  {url:<28}  {note}")
    if not settings.auth_enabled:
        out("\nAuth is OFF (GATEWAY_AUTH_ENABLED=false): anyone who reaches 127.0.0.1 is an admin.")
    elif sup.first_admin:
        name, password = sup.first_admin
        out(
            f"\nCreated the first admin: {name}"
            + (f" / password: {password}  (shown once; change it)" if password else "")
        )
    else:
        out("\nSign in as an existing admin (`chatqna users list`; `chatqna users set-password NAME` to reset).")
    if sup.mesh is not None and "ui" in sup.procs:
        out(f"\nChat in your browser: {sup.mesh.url('ui')}")
    out("Ctrl-C stops everything.\n")
    sup.watch(stop)
    restarted = ", ".join(f"{name} x{n}" for name, n in sup.restarts.items())
    out(f"stopping the mesh{f' (restarts: {restarted})' if restarted else ''}")
    sup.stop()
    return 0


def state_secret(state_dir: Path, name: str) -> str:
    """A random secret kept in ``<state>/secrets/<name>`` (mode 600): made once, the same at every start."""
    path = state_dir / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


async def bootstrap(settings: RuntimeSettings, database_url: str, jwt_secret: str) -> tuple[str, str | None] | None:
    """Migrate the user store, and create the first admin when none exists (see `IdentityService`)."""
    from comps.identity.service import IdentityService
    from comps.sqlstore import Database, migrate

    db = Database(database_url, pool_size=1)
    try:
        await migrate(db)
        identity = IdentityService(db, jwt_secret=jwt_secret)
        password = settings.admin_password.get_secret_value() if settings.admin_password else None
        return await identity.ensure_first_admin(settings.admin_user, password)
    finally:
        await db.close()
