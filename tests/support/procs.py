"""Start real service processes on free 127.0.0.1 ports for tests, and stop exactly what was started."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comps.runtime.process import ManagedProcess, free_port

if TYPE_CHECKING:
    from comps.runtime.mesh import Supervisor

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"


def free_runtime_ports() -> dict[str, str]:
    """A free port for every port the local runtime uses (each service, Redis, PostgreSQL), by variable name, so a
    test's mesh never lands on a default port (where a developer's own `chatqna up` may be running)."""
    from comps.runtime.settings import RuntimeSettings

    fields = RuntimeSettings.model_fields
    names = [str(fields[f].validation_alias.choices[0]) for f in fields if f.endswith("_port")]  # type: ignore[union-attr]
    return {name: str(free_port()) for name in names}


@contextmanager
def local_mesh(models_dir: Path, state_dir: Path, admin: tuple[str, str], **settings: Any) -> Iterator[Supervisor]:
    """The whole mesh as `chatqna up` runs it (the runtime's Supervisor), on free ports, state in ``state_dir``,
    the first admin named ``admin``; ``settings`` are more RuntimeSettings by variable name."""
    from comps.runtime.mesh import Supervisor
    from comps.runtime.settings import RuntimeSettings

    config = RuntimeSettings(
        CHATQNA_STATE_DIR=state_dir,
        CHATQNA_MODELS_DIR=models_dir,
        CHATQNA_READY_TIMEOUT_S=300,
        CHATQNA_ADMIN_USER=admin[0],
        CHATQNA_ADMIN_PASSWORD=admin[1],
        **{**free_runtime_ports(), **settings},
    )
    supervisor = Supervisor(config, out=lambda line: None)
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()


@dataclass
class Service:
    name: str
    url: str
    port: int
    process: ManagedProcess

    def stop(self) -> int | None:
        return self.process.stop()


def start_service(
    module: str,
    env_prefix: str,
    env: dict[str, str] | None = None,
    *,
    name: str | None = None,
    wait: str = "ready",
    timeout_s: float = 180.0,
    log_dir: Path | None = None,
    port: int | None = None,
) -> Service:
    """``python -m <module>`` on a free port; waits for ``/v1/ready`` (or ``/v1/health_check``)."""
    port = port or free_port()
    name = name or module.rsplit(".", 1)[-1]
    full_env = {
        f"{env_prefix}HOST": "127.0.0.1",
        f"{env_prefix}PORT": str(port),
        "CHATQNA_MODELS_DIR": str(MODELS),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **(env or {}),
    }
    proc = ManagedProcess(
        name,
        [sys.executable, "-m", module],
        env=full_env,
        cwd=REPO,
        log_file=(log_dir / f"{name}-{port}.log") if log_dir else None,
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        path = "/v1/ready" if wait == "ready" else "/v1/health_check"
        proc.wait_http_ready(url + path, timeout_s)
    except Exception:
        proc.stop()
        raise
    return Service(name, url, port, proc)


def start_chathistory(database_url: str, api_key: str, log_dir: Path | None = None) -> Service:
    """A chathistory process on ``database_url``, reached with the internal ``api_key``."""
    env = {"DATABASE_URL": database_url, "CHATHISTORY_API_KEY": api_key}
    return start_service("comps.chathistory", "CHATHISTORY_", env, log_dir=log_dir, timeout_s=120)
