"""`chatqna up` as users run it: every port moved to a free one, state in a temporary folder; it prints its
"ready" table, answers one ChatQnA request, and a SIGTERM stops every child with exit code 0."""

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

from comps.runtime.process import free_port
from tests.support.procs import REPO

pytestmark = pytest.mark.e2e

PORTS = ("EMBEDDING_PORT", "RETRIEVER_PORT", "RERANKER_PORT", "LLM_PORT", "DATAPREP_PORT", "MEGA_SERVICE_PORT",
         "CHATQNA_REDIS_PORT")


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
    ports = {name: str(free_port()) for name in PORTS}
    env = {**os.environ, **ports, "CHATQNA_STATE_DIR": str(tmp_path / "state"), "CHATQNA_MODELS_DIR": str(models_dir),
           "PYTHONUNBUFFERED": "1"}
    env.pop("REDIS_URL", None)
    cli = Path(sys.executable).with_name("chatqna")  # the installed console script
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "comps.runtime.cli"]
    up = subprocess.Popen(
        [*argv, "up", "--no-fetch-models"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
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
        rows = {row.split()[0]: row for row in table[1:-1] if row.strip()}
        assert set(rows) == {"redis", "embedding", "reranker", "llm", "retriever", "dataprep", "gateway"}
        assert f"127.0.0.1:{ports['MEGA_SERVICE_PORT']}" in rows["gateway"]
        children = children_of(up.pid)
        assert len(children) >= 7

        r = httpx.post(f"http://127.0.0.1:{ports['MEGA_SERVICE_PORT']}/v1/chatqna",
                       json={"messages": "What is ChatQnA?", "max_tokens": 8}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "chat.completion" and r.json()["sources"] == []  # nothing ingested yet

        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        assert not [pid for pid in children if alive(pid)]
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
