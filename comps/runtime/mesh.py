"""The local mesh: which services exist, what each one is told, and the supervisor behind `chatqna up`."""

from __future__ import annotations

import importlib.util
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

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
    uses_redis: bool = False
    settings: str = ""  # "module:Class" of its settings (what it reads from the environment)

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


# Start order; the gateway comes last. Every service reads <PREFIX>HOST and <PREFIX>PORT, and
# <PREFIX><NEED>_URL for each service it calls.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "embedding", "comps.embedding", "embedding_port", "EMBEDDING_",
        settings="comps.embedding.settings:EmbeddingSettings",
    ),
    ServiceSpec(
        "reranker", "comps.reranker", "reranker_port", "RERANKER_",
        settings="comps.reranker.settings:RerankerSettings",
    ),
    ServiceSpec("llm", "comps.llm", "llm_port", "LLM_", settings="comps.llm.settings:LLMSettings"),
    ServiceSpec(
        "retriever", "comps.retriever", "retriever_port", "RETRIEVER_", ("embedding",), uses_redis=True,
        settings="comps.retriever.settings:RetrieverSettings",
    ),
    ServiceSpec(
        "dataprep", "comps.dataprep", "dataprep_port", "DATAPREP_", ("embedding",), uses_redis=True,
        settings="comps.dataprep.settings:DataprepSettings",
    ),
    ServiceSpec(
        "gateway", "megaservice", "gateway_port", "GATEWAY_", ("embedding", "retriever", "reranker", "llm"),
        settings="megaservice.settings:GatewaySettings",
    ),
)


@dataclass
class Mesh:
    """Builds each service's environment from the runtime settings."""

    settings: RuntimeSettings
    redis_url: str
    services: tuple[ServiceSpec, ...] = SERVICES
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)

    def url(self, name: str) -> str:
        spec = next(s for s in self.services if s.name == name)
        return f"http://{self.settings.host}:{getattr(self.settings, spec.port_attr)}"

    def env_for(self, spec: ServiceSpec) -> dict[str, str]:
        env = {
            f"{spec.env_prefix}HOST": self.settings.host,
            f"{spec.env_prefix}PORT": str(getattr(self.settings, spec.port_attr)),
            "CHATQNA_MODELS_DIR": str(self.settings.models_dir.resolve()),
            "LOG_FORMAT": self.settings.log_format,
        }
        if spec.uses_redis:
            env["REDIS_URL"] = self.redis_url
        for need in spec.needs:
            env[f"{spec.env_prefix}{need.upper()}_URL"] = self.url(need)
        if spec.name == "gateway":
            env["GATEWAY_AUTH_ENABLED"] = "false"  # TODO(identity): embedded PostgreSQL + first admin
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


class Supervisor:
    """Starts Redis (unless REDIS_URL is set) and the services, waits for readiness, stops them all."""

    def __init__(self, settings: RuntimeSettings, *, only: set[str] | None = None, out: Callable[[str], None] = print):
        self.settings = settings
        self.only = only
        self.out = out
        self.redis: EmbeddedRedis | None = None
        self.procs: dict[str, ManagedProcess] = {}
        self.mesh: Mesh | None = None
        self.ready_s: dict[str, float] = {}

    def selected(self) -> list[ServiceSpec]:
        specs = [s for s in SERVICES if self.only is None or s.name in self.only]
        missing = [s.name for s in specs if not s.available()]
        for name in missing:
            self.out(f"skipping {name}: its module is not installed")
        return [s for s in specs if s.name not in missing]

    def start(self) -> dict[str, float]:
        started = time.monotonic()
        specs = self.selected()
        redis_url = self.settings.redis_url
        if redis_url:
            wait_for_redis(redis_url)
        elif any(s.uses_redis for s in specs):
            self.redis = EmbeddedRedis(
                self.settings.state_dir / "redis", self.settings.redis_port,
                log_file=self.settings.state_dir / "logs" / "redis.log",
            ).start()
            redis_url = self.redis.url
        mesh = self.mesh = Mesh(self.settings, redis_url or "")
        for spec in specs:
            self.procs[spec.name] = mesh.process(spec).start()
        errors: dict[str, str] = {}

        def wait(name: str, proc: ManagedProcess) -> None:
            try:
                proc.wait_http_ready(f"{mesh.url(name)}/v1/ready", self.settings.ready_timeout_s)
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

    def table(self) -> list[tuple[str, str, str]]:
        rows = []
        if self.redis or self.settings.redis_url:
            rows.append(("redis", self.redis.url if self.redis else str(self.settings.redis_url), "external" if not self.redis else "embedded"))
        for name in self.procs:
            rows.append((name, self.mesh.url(name) if self.mesh else "", f"ready in {self.ready_s.get(name, 0):.1f}s"))
        return rows

    def watch(self, stop: threading.Event) -> str | None:
        """Block until ``stop`` is set or a child dies; returns the name of a child that died."""
        while not stop.wait(0.5):
            for name, proc in self.procs.items():
                if not proc.running():
                    return name
            if self.redis and not self.redis.process.running():
                return "redis"
        return None

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.procs[name].stop()
        if self.redis:
            self.redis.stop()


def run_up(settings: RuntimeSettings, only: set[str] | None, out: Callable[[str], None]) -> int:
    """`chatqna up`: start, report, and run until Ctrl-C/SIGTERM or until a service dies."""
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
    out("Ctrl-C stops everything.\n")
    dead = sup.watch(stop)
    if dead:
        out(f"{dead} exited unexpectedly; stopping the mesh")
    else:
        out("stopping the mesh")
    sup.stop()
    return 1 if dead else 0

