"""`chatqna up` as users run it: every port moved to a free one, state in a temporary folder; it prints its
"ready" table with the first admin's generated password, answers one ChatQnA request of that admin, and a
SIGTERM stops every child with exit code 0."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.procs import REPO, free_runtime_ports

pytestmark = pytest.mark.e2e


def children_of(pid: int) -> set[int]:
    """Direct children of ``pid`` (each service runs in its own session, so not by process group)."""
    kids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(entry.name))
    return kids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_chatqna_up_serves_and_stops_cleanly(models_dir: Path, tmp_path: Path) -> None:
    ports = free_runtime_ports()
    env = {
        **os.environ,
        **ports,
        "CHATQNA_STATE_DIR": str(tmp_path / "state"),
        "CHATQNA_MODELS_DIR": str(models_dir),
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("REDIS_URL", "DATABASE_URL", "CHATQNA_ADMIN_USER", "CHATQNA_ADMIN_PASSWORD", "GATEWAY_AUTH_ENABLED"):
        env.pop(name, None)
    cli = Path(sys.executable).with_name("chatqna")  # the installed console script
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "comps.runtime.cli"]
    up = subprocess.Popen(
        [*argv, "up", "--no-fetch-models"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in up.stdout], daemon=True).start()  # type: ignore[union-attr]
    table: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while True:
            assert up.poll() is None, "chatqna up exited before it was ready"
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("chatqna up did not print its ready table in 300 s")
            if table or line.startswith("ChatQnA mesh is ready"):
                table.append(line.rstrip())
                if line.startswith("Ctrl-C stops everything"):
                    break
        rows = {row.split()[0]: row for row in table[1:-1] if row.startswith("  ")}
        assert set(rows) == {
            "redis",
            "postgres",
            "embedding",
            "reranker",
            "llm",
            "retriever",
            "dataprep",
            "chathistory",
            "prompts",
            "gateway",
            "ui",
        }
        assert f"127.0.0.1:{ports['MEGA_SERVICE_PORT']}" in rows["gateway"]
        ui = f"http://127.0.0.1:{ports['UI_PORT']}"
        assert ui in rows["ui"] and f"Chat in your browser: {ui}" in table
        assert httpx.get(ui, timeout=30).status_code == 200  # the chat UI's page
        admin = next(line for line in table if line.startswith("Created the first admin: "))
        user, password = admin.removeprefix("Created the first admin: ").split(" / password: ")
        password = password.split()[0]
        children = children_of(up.pid)
        assert len(children) >= 8

        gateway = f"http://127.0.0.1:{ports['MEGA_SERVICE_PORT']}"
        assert httpx.post(f"{gateway}/v1/chatqna", json={"messages": "Hi?"}, timeout=30).status_code == 401
        login = httpx.post(f"{gateway}/v1/auth/login", json={"username": user, "password": password}, timeout=30)
        assert login.status_code == 200, login.text
        r = httpx.post(
            f"{gateway}/v1/chatqna",
            json={"messages": "What is ChatQnA?", "max_tokens": 8},
            headers={"Authorization": f"Bearer {login.json()['access_token']}"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "chat.completion" and r.json()["sources"] == []  # nothing ingested yet

        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        assert not [pid for pid in children if alive(pid)]
    finally:
        if up.poll() is None:  # SIGTERM first: the services run in sessions of their own, up stops them
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait(10)
