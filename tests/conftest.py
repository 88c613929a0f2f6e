"""Shared fixtures: real Redis and real service processes on free 127.0.0.1 ports.

Two collection rules: a test marked with an opt-in marker (`OPT_IN`: it needs something CI does not install)
runs only when ``-m`` names that marker, and is deselected otherwise, never skipped; under
``CHATQNA_REQUIRE_ALL=1`` (set by ``.ci/run``) a skipped test is a failure, so that a dependency missing in CI
cannot pass silently.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from comps.runtime.process import free_port
from tests.support.procs import MODELS, Service, start_service

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


OPT_IN = ("phoenix",)  # markers of tests that run only when ``-m`` names them


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = config.getoption("markexpr") or ""
    left_out = [m for m in OPT_IN if m not in chosen]
    keep, drop = [], []
    for item in items:
        (drop if any(item.get_closest_marker(m) for m in left_out) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def require_all() -> bool:
    return os.environ.get("CHATQNA_REQUIRE_ALL") == "1"


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and require_all() and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and CHATQNA_REQUIRE_ALL=1 allows no skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    from comps.runtime.models import DEFAULT_MODELS, present

    missing = [m.name for m in DEFAULT_MODELS if not present(m, MODELS)]
    if missing:
        pytest.fail(f"models missing from {MODELS}: {missing}; run `chatqna models fetch` (make test does)")
    return MODELS


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis with vector search: REDIS_URL if set, else the embedded server on a free port."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    from comps.runtime.redis_server import EmbeddedRedis

    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), free_port()) as server:
        yield server.url


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: DATABASE_URL if set, else the embedded one on a free port (its ``chatqna`` database)."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    from comps.runtime.postgres_server import EmbeddedPostgres

    # Not under pytest's basetemp: each pytest run makes that folder root-only again, and the server (a non-root
    # user when the tests run as root) must keep reaching its data while other test runs start.
    folder = Path(tempfile.mkdtemp(prefix="chatqna-pg-"))
    try:
        with EmbeddedPostgres(folder, free_port()) as server:
            yield server.url
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def database_url(postgres_url: str, request: pytest.FixtureRequest) -> str:
    """A new, empty database on that server for this test module."""
    from tests.support.database import fresh_database

    return fresh_database(postgres_url, request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator:
    """Start services with `service_factory(module, env_prefix, env)`; all are stopped after the test."""
    started: list[Service] = []

    def start(module: str, env_prefix: str, env: dict[str, str] | None = None, **kw) -> Service:
        svc = start_service(module, env_prefix, env, log_dir=tmp_path, **kw)
        started.append(svc)
        return svc

    yield start
    for svc in reversed(started):
        svc.stop()
