"""The answer cache: a hit through the gateway against the same request answered fresh by the real default model.

    .venv/bin/python benchmarks/bench_cache.py [--fresh 5] [--hits 300] [--max-s 600]

Starts the whole mesh as `chatqna up` does (tests/support/procs.py `local_mesh`: embedded Redis and PostgreSQL,
the five services with their default models, the gateway with accounts on) on free 127.0.0.1 ports, ingests one
small document through the gateway, then asks one question, one request at a time over one keep-alive
connection, with an access token:

- uncached: ``--fresh`` times with ``cache: false`` (embedding, retrieval, reranking, generation), as JSON (whole
  reply) and as a stream (time to the first content chunk, and to [DONE]);
- cached: ``--hits`` times the same request (one warm-up fills the cache), as JSON and as a stream.

Figures: p50 / p95 in ms, end to end at the client, and the ratio fresh / cached. Target of issue 11: a hit p50
<= 3 ms for a JSON reply and for a stream's first chunk. Bounded: counts above, and ``--max-s`` in all.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.procs import MODELS, local_mesh  # noqa: E402

ADMIN = ("bench-admin", "bench-" + secrets.token_hex(8))
DOC = "The keeper of the Velloran lighthouse is Orsolya Dremm. She has kept its lamp since 2019."
QUESTION = "Who is the keeper of the Velloran lighthouse?"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


class Client:
    """One keep-alive HTTP/1.1 connection (http.client: the least client overhead in Python)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def post(self, path: str, body: dict[str, object]) -> tuple[int, bytes, float]:
        """Status, body, and seconds to the whole body."""
        started = time.perf_counter()
        self.conn.request("POST", path, orjson.dumps(body), self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, data, time.perf_counter() - started

    def get(self, path: str) -> float:
        started = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        self.conn.getresponse().read()
        return time.perf_counter() - started

    def stream(self, path: str, body: dict[str, object]) -> tuple[float, float, bytes]:
        """Seconds to the first content chunk and to the end, and the whole body."""
        started = time.perf_counter()
        self.conn.request("POST", path, orjson.dumps({**body, "stream": True}), self.headers)
        resp = self.conn.getresponse()
        assert resp.status == 200, resp.read()
        first, seen = 0.0, b""
        while chunk := resp.read1(65536):
            seen += chunk
            if not first and b'"content":"' in seen.replace(b'"content":""', b""):
                first = time.perf_counter() - started
        seen += resp.read()  # the rest (none): marks the response done, so the connection is reused
        return first, time.perf_counter() - started, seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fresh", type=int, default=5, help="uncached requests of each kind (the real model)")
    ap.add_argument("--hits", type=int, default=300, help="cached requests of each kind")
    ap.add_argument("--max-s", type=float, default=600.0, help="stop measuring after this long")
    args = ap.parse_args()
    deadline = time.monotonic() + args.max_s
    state = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    print(f"load average before: {os.getloadavg()}", flush=True)
    with local_mesh(MODELS, state, ADMIN) as sup:
        assert sup.mesh is not None
        url = sup.mesh.url("gateway")
        anon = Client(url)
        status, data, _ = anon.post("/v1/auth/login", {"username": ADMIN[0], "password": ADMIN[1]})
        assert status == 200, data
        token = orjson.loads(data)["access_token"]
        ingest(url, token)
        c = Client(url, token)
        body: dict[str, object] = {"messages": QUESTION, "collection": "bench", "max_tokens": 48}
        fresh_json, fresh_first, fresh_end = [], [], []
        status, data, s = c.post("/v1/chatqna", body)  # the first ask: a fresh answer, which fills the cache
        assert status == 200 and not orjson.loads(data)["cached"], data
        fresh_json.append(s)
        # Hits first (the fresh answers take seconds each on a loaded CPU; --max-s would cut the hits otherwise).
        floor = [c.get("/health") for _ in range(min(args.hits, 300))]  # the machine's floor: one round trip
        hit_json, hit_first, hit_end = [], [], []
        gateway_pid = sup.procs["gateway"].pid
        cpu_before = cpu_s(gateway_pid)
        for _ in range(args.hits):
            if time.monotonic() > deadline:
                break
            status, data, s = c.post("/v1/chatqna", body)
            assert status == 200 and orjson.loads(data)["cached"] is True, data
            hit_json.append(s)
            first, end, raw = c.stream("/v1/chatqna", body)
            assert b'"cached":true' in raw and raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
            hit_first.append(first)
            hit_end.append(end)
        cpu_per_hit = (cpu_s(gateway_pid) - cpu_before) / max(1, len(hit_json) + len(hit_first))
        for n in range(args.fresh):
            if time.monotonic() > deadline:
                break
            if n:
                status, data, s = c.post("/v1/chatqna", {**body, "cache": False})
                assert status == 200 and not orjson.loads(data)["cached"], data
                fresh_json.append(s)
            first, end, _ = c.stream("/v1/chatqna", {**body, "cache": False})
            fresh_first.append(first)
            fresh_end.append(end)
        import httpx

        stats = httpx.get(f"{url}/v1/admin/cache/stats", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        print(f"cache stats: {stats.json()}")
    print(f"load average after: {os.getloadavg()}")
    print(f"\n{'ms, one request at a time':<34}{'p50':>9}{'p95':>9}{'n':>6}")
    rows = [
        ("floor: GET /health", floor),
        ("fresh JSON reply (cache: false)", fresh_json),
        ("fresh stream, first content", fresh_first),
        ("fresh stream, [DONE]", fresh_end),
        ("cached JSON reply", hit_json),
        ("cached stream, first content", hit_first),
        ("cached stream, [DONE]", hit_end),
    ]
    for name, xs in rows:
        if xs:
            print(f"{name:<34}{pct(xs, 50) * 1000:>9.2f}{pct(xs, 95) * 1000:>9.2f}{len(xs):>6}")
    if fresh_json and fresh_first and hit_json:
        print(
            f"\nfresh / cached p50: JSON {statistics.median(fresh_json) / statistics.median(hit_json):.0f}x, "
            f"stream first chunk {statistics.median(fresh_first) / statistics.median(hit_first):.0f}x; "
            f"target: cached p50 <= 3 ms (JSON {pct(hit_json, 50) * 1000:.2f}, stream {pct(hit_first, 50) * 1000:.2f})"
        )
        print(f"gateway CPU per cached request: {cpu_per_hit * 1000:.2f} ms (utime + stime over the hits)")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest(url: str, token: str) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    files = [("files", ("lighthouse.txt", DOC.encode(), "text/plain"))]
    r = httpx.post(f"{url}/v1/dataprep/ingest", files=files, data={"collection": "bench"}, headers=headers, timeout=60)
    assert r.status_code == 202, r.text
    for ref in r.json()["jobs"]:
        deadline = time.monotonic() + 120
        while (job := httpx.get(f"{url}/v1/dataprep/jobs/{ref['job_id']}", headers=headers, timeout=10).json())[
            "status"
        ] not in ("succeeded", "failed", "skipped"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["status"] == "succeeded", job


if __name__ == "__main__":
    main()
