"""The gateway against OPEA's orchestrator (opea-comps 1.5), on the same instant stub services, in one run.

    .venv/bin/python benchmarks/bench_gateway.py [--quick]
    .venv/bin/python benchmarks/bench_gateway.py --auth [--quick]   # auth off vs JWT vs API key, same stubs
    .venv/bin/python benchmarks/bench_gateway.py --tracing [--quick]  # tracing off vs exporting, same stubs
    .venv/bin/python benchmarks/bench_gateway.py --usage [--quick]    # usage accounting off vs on, same stubs

With ``--usage``: two of our gateways (auth off) on the same stubs and the same PostgreSQL (embedded, a temporary
folder), one recording every request's usage (batched writes off the request path) and one not; requests/s at
concurrency 64 (median of interleaved rounds, every other one in reverse order; a ratio is the median of each
round's own), gateway CPU per request, and the records written.

With ``--tracing``: five of our gateways on the same stubs: no exporter (off), exporting every span over OTLP/HTTP
to a collector process (tests/support/otlp.py, which decodes each export) with text kept out of spans (on), with
it in (on + content), with 1 trace in 10 recorded (OTEL_TRACES_SAMPLER_ARG=0.1), and a second gateway with no
exporter (off, again: what the machine's noise alone makes of two equal gateways); requests/s at concurrency 64 and
gateway CPU per request, measured as with ``--usage``.

With ``--tracing --instructions``: the same gateways (off, on, on + content) one after another, each run under
valgrind's callgrind and counted only while it serves the same requests (warmed up first; its exports included, a
few hundred spans a post, as at full speed): user
instructions per request, which come out the same run after run (±0.5%) where this shared machine's clock varies by
±10% (needs ``valgrind``; a few minutes). Instructions leave out the kernel's work and memory stalls: a guide to what
tracing adds, next to the timed figures, not a replacement for them.

With ``--auth``: two of our gateways on the same stubs, one with accounts off and one with accounts on (an
embedded PostgreSQL in a temporary folder); the same requests with no credentials (off), an access JWT and an
API key (on), interleaved in rounds: overhead p50/p99 over the direct hops, and gateway CPU per request at c=16.

Starts (127.0.0.1 only): the four stubs in one process (tests/support/stubs.py), our gateway
(``python -m megaservice``) and OPEA's ChatQnA megaservice (benchmarks/opea_chatqna.py, run from its own
virtualenv, .state/opea-venv, created here when missing: ``python3 -m venv`` + ``pip install
opea-comps==1.5``). Both run the 4-hop graph embedding -> retriever -> reranker -> llm. Measures:

- overhead: latency through a gateway minus calling the four stubs directly, one request at a time (p50, p99);
- requests/s at concurrency 1, 16, 64, non-streaming and streaming (20 chunks), fixed duration each;
- gateway CPU per request (utime+stime of its process, /proc/<pid>/stat, over the concurrency-16 runs);
- streaming with the LLM stub sending 20 chunks 10 ms apart: time to first token and the gap between
  chunks as the client sees them (direct, ours, OPEA);
- head-of-line blocking: latency of other streaming requests (concurrency 8) while one request's LLM
  takes 2 s to send its first byte, against the same load without it.

Every phase is bounded in time; requests time out after 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comps.runtime.process import free_port, http_status  # noqa: E402

OPEA_VENV = REPO / ".state" / "opea-venv"
LOGS = REPO / ".state" / "bench"
TICK = os.sysconf("SC_CLK_TCK")
QUESTION = "What does the stub know about the Zorblax project?"


def ensure_opea_venv() -> Path:
    python = OPEA_VENV / "bin" / "python"
    probe = [str(python), "-c", "import comps.cores.mega.orchestrator"]
    if python.exists() and subprocess.run(probe, capture_output=True, cwd="/").returncode == 0:
        return python
    print(f"creating {OPEA_VENV} with opea-comps==1.5 (about 35 s)...", flush=True)
    subprocess.run(["python3", "-m", "venv", str(OPEA_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "opea-comps==1.5"], check=True)
    return python


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path = REPO) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log = (LOGS / f"{name}.log").open("w")
        self.name = name
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **env}, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15 of stat)

    def wait_http(self, url: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while http_status(url) != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.log.name}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


class Client:
    def __init__(self, session: aiohttp.ClientSession, stubs: dict[str, str]) -> None:
        self.s = session
        self.stubs = stubs

    async def direct(self, stream: bool = False) -> None:
        """The four hops, called straight (our contracts), as a gateway would."""
        await self.direct_prefix()
        body = {"messages": [{"role": "user", "content": QUESTION}], "stream": stream}
        async with self.s.post(self.stubs["llm"] + "/v1/chat/completions", json=body) as r:
            await r.read()

    async def gateway(self, url: str, stream: bool, question: str = QUESTION) -> None:
        body = orjson.dumps({"messages": [{"role": "user", "content": question}], "stream": stream})
        async with self.s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")

    async def token_times(self, url: str | None, opea: bool = False) -> tuple[float, list[float]]:
        """Stream one answer; returns the time to the first content chunk and the gaps between chunks."""
        start = time.perf_counter()
        if url is None:  # direct: the three hops, then the LLM's own stream
            await self.direct_prefix()
            req = self.s.post(
                self.stubs["llm"] + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": QUESTION}], "stream": True},
            )
        else:
            req = self.s.post(url, json={"messages": [{"role": "user", "content": QUESTION}], "stream": True})
        times = []
        async with req as r:
            async for line in r.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                payload = line[6:].strip()
                if opea:
                    has = payload not in (b"b''", b'b""')
                else:
                    choices = orjson.loads(payload).get("choices") or [{}]
                    has = bool(choices[0].get("delta", {}).get("content"))
                if has:
                    times.append(time.perf_counter())
        return times[0] - start, [b - a for a, b in itertools.pairwise(times)]

    async def direct_prefix(self) -> None:
        """The three hops before the LLM, called straight."""
        post = self.s.post
        async with post(self.stubs["embedding"] + "/v1/embeddings", json={"input": QUESTION}) as r:
            vec = (await r.json())["data"][0]["embedding"]
        async with post(
            self.stubs["retriever"] + "/v1/retrieval", json={"text": QUESTION, "embedding": vec, "k": 4}
        ) as r:
            docs = (await r.json())["documents"]
        async with post(
            self.stubs["reranker"] + "/rerank", json={"query": QUESTION, "texts": [d["text"] for d in docs], "top_n": 3}
        ) as r:
            await r.json()


async def load(
    call: Callable[[], Awaitable[None]],
    concurrency: int,
    *,
    duration_s: float | None = None,
    count: int | None = None,
    proc: Proc | None = None,
) -> Run:
    """``concurrency`` workers calling ``call`` until ``count`` calls or ``duration_s`` seconds."""
    run = Run()
    started = time.perf_counter()
    deadline = started + (duration_s or 3600)
    remaining = [count if count is not None else 10**9]
    cpu0 = proc.cpu_s() if proc else 0.0

    async def worker() -> None:
        while remaining[0] > 0 and time.perf_counter() < deadline:
            remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                await call()
                run.latencies.append(time.perf_counter() - t0)
            except Exception:
                run.errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.elapsed = time.perf_counter() - started
    run.cpu_s = (proc.cpu_s() - cpu0) if proc else 0.0
    return run


async def set_llm(session: aiohttp.ClientSession, llm: str, **knobs: object) -> None:
    async with session.post(llm + "/_knobs", json=knobs) as r:
        r.raise_for_status()


async def bench(quick: bool, ours: Proc, opea: Proc, urls: dict[str, str], stubs: dict[str, str]) -> list[tuple]:
    n_seq = 100 if quick else 300
    dur = 1.5 if quick else 3.0
    rows: list[tuple] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        c = Client(session, stubs)
        await set_llm(session, stubs["llm"], tokens=20, chunk_delay_s=0.0)
        gw = {"ours": urls["ours"] + "/v1/chatqna", "opea": urls["opea"] + "/v1/chatqna"}
        procs = {"ours": ours, "opea": opea}
        for name in ("ours", "opea"):  # warm both up (connections, first-call imports)
            await load(lambda n=name: c.gateway(gw[n], False), 4, count=50)
            await load(lambda n=name: c.gateway(gw[n], True), 4, count=50)

        # 1. overhead at concurrency 1 (non-streaming), interleaved in rounds to share any machine noise
        runs = {k: Run() for k in ("direct", "ours", "opea")}
        for _ in range(5):
            for key in runs:
                call = c.direct if key == "direct" else (lambda k=key: c.gateway(gw[k], False))
                r = await load(call, 1, count=n_seq // 5)
                runs[key].latencies += r.latencies
                runs[key].errors += r.errors
        d50, d99 = runs["direct"].pct(50), runs["direct"].pct(99)
        over = {k: (runs[k].pct(50) - d50, runs[k].pct(99) - d99) for k in ("ours", "opea")}
        rows.append(("direct 4 hops p50 / p99 (ms)", f"{d50 * 1e3:.2f} / {d99 * 1e3:.2f}", "", "", ""))
        rows.append(
            (
                "overhead p50 (ms)",
                f"{over['ours'][0] * 1e3:.2f}",
                f"{over['opea'][0] * 1e3:.2f}",
                _ratio(over["opea"][0], over["ours"][0]),
                "<= 2 ms",
            )
        )
        rows.append(
            (
                "overhead p99 (ms)",
                f"{over['ours'][1] * 1e3:.2f}",
                f"{over['opea'][1] * 1e3:.2f}",
                _ratio(over["opea"][1], over["ours"][1]),
                "",
            )
        )

        # 2. throughput and CPU per request
        for stream in (False, True):
            mode = "stream" if stream else "json"
            for conc in (1, 16, 64):
                res = {}
                for name in ("ours", "opea"):
                    res[name] = await load(
                        lambda n=name, s=stream: c.gateway(gw[n], s), conc, duration_s=dur, proc=procs[name]
                    )
                target = {(False, 64): ">= 3x", (True, 64): ">= 5x"}.get((stream, conc), "")
                rows.append(
                    (
                        f"req/s {mode} c={conc}",
                        f"{res['ours'].rps:.0f}",
                        f"{res['opea'].rps:.0f}",
                        _ratio(res["ours"].rps, res["opea"].rps),
                        target,
                    )
                )
                errs = res["ours"].errors + res["opea"].errors
                if errs:
                    rows.append((f"  errors {mode} c={conc}", str(res["ours"].errors), str(res["opea"].errors), "", ""))
                if conc == 16:
                    cpu = {k: res[k].cpu_s / max(1, len(res[k].latencies)) for k in res}
                    rows.append(
                        (
                            f"CPU ms/request {mode} (c=16)",
                            f"{cpu['ours'] * 1e3:.2f}",
                            f"{cpu['opea'] * 1e3:.2f}",
                            _ratio(cpu["opea"], cpu["ours"]),
                            "<= 1/4 of OPEA",
                        )
                    )

        # 3. streaming: TTFT and the gap between chunks (LLM stub: 20 chunks, 10 ms apart)
        await set_llm(session, stubs["llm"], tokens=20, chunk_delay_s=0.01)
        n_tok = 10 if quick else 20
        measured: dict[str, tuple[list[float], list[float]]] = {}
        for key, url in (("direct", None), ("ours", gw["ours"]), ("opea", gw["opea"])):
            ttfts, gaps = [], []
            for _ in range(n_tok):
                ttft, gap = await c.token_times(url, opea=key == "opea")
                ttfts.append(ttft)
                gaps += gap
            measured[key] = (ttfts, gaps)
        med = {k: (statistics.median(v[0]), statistics.median(v[1]), max(v[1])) for k, v in measured.items()}
        rows.append(
            (
                "stream TTFT p50 (ms), direct " + f"{med['direct'][0] * 1e3:.1f}",
                f"{med['ours'][0] * 1e3:.1f}",
                f"{med['opea'][0] * 1e3:.1f}",
                _ratio(med["opea"][0], med["ours"][0]),
                "",
            )
        )
        rows.append(
            (
                "chunk gap p50 (ms), direct " + f"{med['direct'][1] * 1e3:.2f}",
                f"{med['ours'][1] * 1e3:.2f}",
                f"{med['opea'][1] * 1e3:.2f}",
                "",
                "= direct",
            )
        )
        rows.append(
            (
                "chunk gap max (ms), direct " + f"{med['direct'][2] * 1e3:.2f}",
                f"{med['ours'][2] * 1e3:.2f}",
                f"{med['opea'][2] * 1e3:.2f}",
                "",
                "",
            )
        )

        # 4. a slow LLM first byte (2 s) must not stall other requests
        await set_llm(session, stubs["llm"], tokens=20, chunk_delay_s=0.0)
        window = 1.5
        hol = {}
        for name in ("ours", "opea"):
            base = await load(lambda n=name: c.gateway(gw[n], True), 8, duration_s=window)
            slow = asyncio.create_task(c.gateway(gw[name], True, question=QUESTION + " [slow-first-byte]"))
            await asyncio.sleep(0.1)
            during = await load(lambda n=name: c.gateway(gw[n], True), 8, duration_s=window)
            await slow
            hol[name] = (base, during)
        for label, p in (("p50", 50), ("max", 100)):
            cells = [f"{hol[k][0].pct(p) * 1e3:.1f} -> {hol[k][1].pct(p) * 1e3:.1f}" for k in ("ours", "opea")]
            rows.append((f"others' latency {label} (ms), slow LLM first byte", *cells, "", "unchanged"))
    return rows


def _ratio(num: float, den: float) -> str:
    return f"{num / den:.1f}x" if den > 0 and num > 0 else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (a smoke test of the benchmark)")
    ap.add_argument("--auth", action="store_true", help="auth off vs JWT vs API key instead of OPEA")
    ap.add_argument("--tracing", action="store_true", help="tracing off vs exporting to a collector instead of OPEA")
    ap.add_argument("--rounds", type=int, help="with --tracing: interleaved rounds (default 8, quick 4; even)")
    ap.add_argument("--instructions", action="store_true", help="with --tracing: instructions per request (callgrind)")
    ap.add_argument("--usage", action="store_true", help="usage accounting off vs on instead of OPEA")
    args = ap.parse_args()
    if args.usage:
        main_usage(args.quick)
        return
    if args.auth:
        main_auth(args.quick)
        return
    if args.tracing and args.instructions:
        main_tracing_instructions(args.quick)
        return
    if args.tracing:
        main_tracing(args.quick, args.rounds)
        return
    opea_python = ensure_opea_venv()
    ports = {name: free_port() for name in ("embedding", "retriever", "reranker", "llm")}
    stubs = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    ours_port, opea_port = free_port(), free_port()
    procs: list[Proc] = []
    try:
        procs.append(
            stub := Proc("stubs", [sys.executable, "-m", "tests.support.stubs", *map(str, ports.values())], {})
        )
        stub.wait_http(stubs["llm"] + "/v1/ready")
        ours = Proc(
            "gateway",
            [sys.executable, "-m", "megaservice"],
            {
                "GATEWAY_PORT": str(ours_port),
                "GATEWAY_AUTH_ENABLED": "false",
                **{f"GATEWAY_{k.upper()}_URL": v for k, v in stubs.items()},
            },
        )
        procs.append(ours)
        opea = Proc(
            "opea",
            [str(opea_python), str(REPO / "benchmarks" / "opea_chatqna.py")],
            {
                "OPEA_PORT": str(opea_port),
                "PYTHONWARNINGS": "ignore",
                **{f"STUB_{k.upper()}": f"127.0.0.1:{p}" for k, p in ports.items()},
            },
        )
        procs.append(opea)
        ours.wait_http(f"http://127.0.0.1:{ours_port}/v1/ready")
        opea.wait_http(f"http://127.0.0.1:{opea_port}/v1/health_check")
        urls = {"ours": f"http://127.0.0.1:{ours_port}", "opea": f"http://127.0.0.1:{opea_port}"}
        install_uvloop()
        rows = asyncio.run(bench(args.quick, ours, opea, urls, stubs))
    finally:
        for p in reversed(procs):
            p.stop()
    print_table("gateway vs OPEA ServiceOrchestrator", ("metric", "ours", "OPEA 1.5", "ratio", "target"), rows)


def install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def print_table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}, 4 hops on instant stubs, {os.cpu_count()} CPUs")
    for r in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(r, widths, strict=True)))


async def bench_auth(
    quick: bool, procs: dict[str, Proc], urls: dict[str, str], stubs: dict[str, str], creds: dict[str, str]
) -> list[tuple]:
    n_seq = 200 if quick else 600
    dur = 1.5 if quick else 3.0
    rows: list[tuple] = []
    timeout = aiohttp.ClientTimeout(total=30)
    body = orjson.dumps({"messages": [{"role": "user", "content": QUESTION}]})
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        c = Client(session, stubs)
        await set_llm(session, stubs["llm"], tokens=20, chunk_delay_s=0.0)
        modes = {"off": ("off", None), "jwt": ("on", creds["jwt"]), "api key": ("on", creds["key"])}

        def call(mode: str) -> Callable[[], Awaitable[None]]:
            which, token = modes[mode]
            headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})

            async def one() -> None:
                async with session.post(urls[which] + "/v1/chatqna", data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}")

            return one

        for mode in modes:
            await load(call(mode), 4, count=100)
        runs = {k: Run() for k in ("direct", *modes)}
        for _ in range(10):  # interleaved rounds share the machine's noise
            for key in runs:
                r = await load(c.direct if key == "direct" else call(key), 1, count=n_seq // 10)
                runs[key].latencies += r.latencies
                runs[key].errors += r.errors
        d50, d99 = runs["direct"].pct(50), runs["direct"].pct(99)
        rows.append(("direct 4 hops p50 / p99 (ms)", f"{d50 * 1e3:.3f} / {d99 * 1e3:.3f}", "", "", ""))
        for mode in modes:
            o50, o99 = runs[mode].pct(50) - d50, runs[mode].pct(99) - d99
            added = "" if mode == "off" else f"{(runs[mode].pct(50) - runs['off'].pct(50)) * 1e3:+.3f}"
            rows.append(
                (
                    f"overhead p50 / p99 (ms), {mode}",
                    f"{o50 * 1e3:.3f} / {o99 * 1e3:.3f}",
                    added,
                    f"errors {runs[mode].errors}",
                    "added p50 <= 0.1 ms" if mode != "off" else "",
                )
            )
        cpu: dict[str, float] = {}
        for _ in range(2):
            for mode in modes:
                res = await load(call(mode), 16, duration_s=dur, proc=procs[modes[mode][0]])
                cpu[mode] = cpu.get(mode, 0.0) + res.cpu_s / max(1, len(res.latencies)) / 2
        for mode in modes:
            ratio = "" if mode == "off" else f"{cpu[mode] / cpu['off']:.3f}x"
            rows.append(
                (
                    f"CPU ms/request (c=16), {mode}",
                    f"{cpu[mode] * 1e3:.3f}",
                    ratio,
                    "",
                    "<= 1.05x off" if mode != "off" else "",
                )
            )
    return rows


def main_auth(quick: bool) -> None:
    import tempfile

    import httpx

    from comps.runtime.postgres_server import EmbeddedPostgres

    ports = {name: free_port() for name in ("embedding", "retriever", "reranker", "llm")}
    stubs = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    off_port, on_port = free_port(), free_port()
    urls = {"off": f"http://127.0.0.1:{off_port}", "on": f"http://127.0.0.1:{on_port}"}
    admin = ("bench-admin", "bench-" + os.urandom(8).hex())
    started: list[Proc] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedPostgres(Path(tmp) / "pg", free_port()) as pg:
        try:
            started.append(
                stub := Proc("stubs", [sys.executable, "-m", "tests.support.stubs", *map(str, ports.values())], {})
            )
            stub.wait_http(stubs["llm"] + "/v1/ready")
            hops = {f"GATEWAY_{k.upper()}_URL": v for k, v in stubs.items()}
            procs = {
                "off": Proc(
                    "gateway-auth-off",
                    [sys.executable, "-m", "megaservice"],
                    {"GATEWAY_PORT": str(off_port), "GATEWAY_AUTH_ENABLED": "false", **hops},
                ),
                "on": Proc(
                    "gateway-auth-on",
                    [sys.executable, "-m", "megaservice"],
                    {
                        "GATEWAY_PORT": str(on_port),
                        "DATABASE_URL": pg.url,
                        "GATEWAY_JWT_SECRET": os.urandom(32).hex(),
                        "CHATQNA_ADMIN_USER": admin[0],
                        "CHATQNA_ADMIN_PASSWORD": admin[1],
                        **hops,
                    },
                ),
            }
            started += procs.values()
            for name, proc in procs.items():
                proc.wait_http(urls[name] + "/v1/ready")
            login = httpx.post(urls["on"] + "/v1/auth/login", json={"username": admin[0], "password": admin[1]}).json()
            jwt_token = login["access_token"]
            key = httpx.post(
                urls["on"] + "/v1/auth/keys", json={"name": "bench"}, headers={"Authorization": f"Bearer {jwt_token}"}
            ).json()["key"]
            install_uvloop()
            rows = asyncio.run(bench_auth(quick, procs, urls, stubs, {"jwt": jwt_token, "key": key}))
        finally:
            for p in reversed(started):
                p.stop()
    print_table("gateway auth off vs on (JWT, API key)", ("metric", "value", "vs off", "", "target"), rows)


TRACING_MODES = ("off", "on", "on + content", "on, 10% sampled", "off, again")


async def bench_modes(
    quick: bool,
    procs: dict[str, Proc],
    urls: dict[str, str],
    stubs: dict[str, str],
    modes: tuple[str, ...],
    target: str,
    rounds: int | None = None,
) -> list[tuple]:
    """Gateways in several modes on the same stubs, the first the baseline: requests/s at concurrency 64 and gateway
    CPU per request (medians of interleaved rounds; each ratio the median of the rounds' own), non-streaming and
    streaming."""
    rounds = rounds or (3 if quick else 5)
    dur = 1.5 if quick else 3.0
    rows: list[tuple] = []
    timeout = aiohttp.ClientTimeout(total=30)
    # Each gateway idles while the others are measured: the client drops idle connections (2 s) before the
    # server's keep-alive (5 s) does, so no request goes out on a connection the server is closing.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        c = Client(session, stubs)
        await set_llm(session, stubs["llm"], tokens=20, chunk_delay_s=0.0)
        for stream in (False, True):
            for mode in modes:
                await load(lambda m=mode, s=stream: c.gateway(urls[m] + "/v1/chatqna", s), 8, count=100)
            rps: dict[str, list[float]] = {m: [] for m in modes}
            cpu: dict[str, list[float]] = {m: [] for m in modes}
            errors = dict.fromkeys(modes, 0)
            for i in range(rounds):  # interleaved rounds share the machine's noise; every other one in reverse
                for mode in modes if i % 2 == 0 else reversed(modes):
                    run = await load(lambda m=mode, s=stream: c.gateway(urls[m] + "/v1/chatqna", s), 64, duration_s=dur,
                                     proc=procs[mode])  # fmt: skip
                    rps[mode].append(run.rps)
                    cpu[mode].append(run.cpu_s / max(1, len(run.latencies)))
                    errors[mode] += run.errors
            kind = "streaming (20 chunks)" if stream else "non-streaming"
            for mode in modes:  # a ratio: the median of the rounds' own (the baseline measured in the same round)
                ratio = statistics.median(a / b for a, b in zip(rps[mode], rps[modes[0]], strict=True))
                cpu_ratio = statistics.median(a / b for a, b in zip(cpu[mode], cpu[modes[0]], strict=True))
                rows.append(
                    (f"req/s c=64, {kind}, {mode}", f"{statistics.median(rps[mode]):.0f}", f"{ratio:.2f}x",
                     f"{statistics.median(cpu[mode]) * 1e3:.3f}", f"{cpu_ratio:.2f}x", f"errors {errors[mode]}",
                     target if mode != modes[0] else "")
                )  # fmt: skip
    return rows


def main_tracing(quick: bool, rounds: int | None) -> None:
    ports = {name: free_port() for name in ("embedding", "retriever", "reranker", "llm")}
    stubs = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    collector_port = free_port()
    gw_ports = {mode: free_port() for mode in TRACING_MODES}
    urls = {mode: f"http://127.0.0.1:{port}" for mode, port in gw_ports.items()}
    started: list[Proc] = []
    try:
        started.append(
            stub := Proc("stubs", [sys.executable, "-m", "tests.support.stubs", *map(str, ports.values())], {})
        )
        started.append(Proc("otlp-collector", [sys.executable, "-m", "tests.support.otlp", str(collector_port)], {}))
        stub.wait_http(stubs["llm"] + "/v1/ready")
        hops = {f"GATEWAY_{k.upper()}_URL": v for k, v in stubs.items()}
        exporting = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}"}
        envs = {
            "off": {},
            "on": {**exporting, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "false"},
            "on + content": {**exporting, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"},
            "on, 10% sampled": {**exporting, "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            "off, again": {},
        }
        procs = {
            mode: Proc(
                f"gateway-tracing-{''.join(c if c.isalnum() else '-' for c in mode)}",
                [sys.executable, "-m", "megaservice"],
                {"GATEWAY_PORT": str(gw_ports[mode]), "GATEWAY_AUTH_ENABLED": "false", **hops, **envs[mode]},
            )
            for mode in TRACING_MODES
        }  # fmt: skip
        started += procs.values()
        for mode, proc in procs.items():
            proc.wait_http(urls[mode] + "/v1/ready")
        install_uvloop()
        load_before = os.getloadavg()[0]
        rows = asyncio.run(
            bench_modes(quick, procs, urls, stubs, TRACING_MODES, ">= 0.9x off", rounds or (4 if quick else 8))
        )
    finally:
        for p in reversed(started):
            p.stop()
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print_table(f"gateway tracing off vs exporting over OTLP/HTTP ({load})",
                ("metric", "value", "vs off", "CPU ms/req", "vs off", "", "target"), rows)  # fmt: skip


def main_tracing_instructions(quick: bool) -> None:
    """Instructions per request of the gateway tracing off, on and on with content (see the module's text)."""
    import shutil
    import signal
    import tempfile

    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        sys.exit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    count = 100 if quick else 300
    started: list[Proc] = []
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            stubs = start_stubs(started)
            collector_port = free_port()
            started.append(
                Proc("otlp-collector", [sys.executable, "-m", "tests.support.otlp", str(collector_port)], {})
            )
            hops = {f"GATEWAY_{k.upper()}_URL": v for k, v in stubs.items()}
            # Posts every 5 s (the default): under callgrind's slowdown a post then carries a few hundred spans,
            # as one does at full speed (2048 at most); the sleeps below let each run's spans go out.
            exporting = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
                         "OTEL_BSP_SCHEDULE_DELAY": "5000"}  # fmt: skip
            envs = {
                "off": {},
                "on": {**exporting, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "false"},
                "on + content": {**exporting, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"},
            }
            for stream in (False, True):
                counts: dict[str, float] = {}
                for i, (mode, env) in enumerate(envs.items()):
                    out = Path(tmp) / f"callgrind-{int(stream)}-{i}"
                    port = free_port()
                    url = f"http://127.0.0.1:{port}"
                    proc = Proc(f"gateway-instructions-{i}",
                                ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                                 sys.executable, "-m", "megaservice"],
                                {"GATEWAY_PORT": str(port), "GATEWAY_AUTH_ENABLED": "false", **hops,
                                 **env})  # fmt: skip
                    try:
                        proc.wait_http(url + "/v1/ready", timeout_s=300)
                        asyncio.run(_drive(url, stubs, stream, 100))  # warm: imports, caches, connections
                        settle_s = 6.0 if env else 0.5
                        time.sleep(settle_s)  # the warm-up's spans exported
                        subprocess.run(["callgrind_control", "-i", "on", str(proc.proc.pid)], check=True,
                                       capture_output=True)  # fmt: skip
                        asyncio.run(_drive(url, stubs, stream, count))
                        time.sleep(settle_s)  # and these requests' spans
                        subprocess.run(["callgrind_control", "-i", "off", str(proc.proc.pid)], check=True,
                                       capture_output=True)  # fmt: skip
                    finally:
                        proc.proc.send_signal(signal.SIGINT)  # a clean exit writes the counts
                        proc.proc.wait(120)
                        proc.stop()
                    totals = [line for line in out.read_text().splitlines() if line.startswith("totals:")]
                    counts[mode] = int(totals[0].split()[1]) / count
                kind = "streaming (20 chunks)" if stream else "non-streaming"
                for mode, n in counts.items():
                    rows.append((f"instructions/request, {kind}, {mode}", f"{n / 1e6:.3f} M",
                                 f"{n / counts['off']:.3f}x", f"+{(n - counts['off']) / 1e3:.0f} k"))  # fmt: skip
        finally:
            for p in reversed(started):
                p.stop()
    print_table(f"gateway instructions per request under callgrind ({count} requests each, concurrency 8)",
                ("metric", "value", "vs off", "added"), rows)  # fmt: skip


async def _drive(url: str, stubs: dict[str, str], stream: bool, count: int) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await set_llm(session, stubs["llm"], tokens=20, chunk_delay_s=0.0)
        run = await load(lambda: Client(session, stubs).gateway(url + "/v1/chatqna", stream), 8, count=count)
    if run.errors:
        raise RuntimeError(f"{run.errors} of {count} requests failed")


USAGE_MODES = ("usage off", "usage on")


def start_stubs(started: list[Proc]) -> dict[str, str]:
    """The four stubs in one process (added to ``started``), ready; their URLs by service."""
    ports = {name: free_port() for name in ("embedding", "retriever", "reranker", "llm")}
    started.append(stub := Proc("stubs", [sys.executable, "-m", "tests.support.stubs", *map(str, ports.values())], {}))
    stubs = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    stub.wait_http(stubs["llm"] + "/v1/ready")
    return stubs


def main_usage(quick: bool) -> None:
    """Two gateways (auth off) on the same stubs and the same PostgreSQL, with usage accounting off and on."""
    import tempfile

    import httpx

    from comps.runtime.postgres_server import EmbeddedPostgres

    gw_ports = {mode: free_port() for mode in USAGE_MODES}
    urls = {mode: f"http://127.0.0.1:{port}" for mode, port in gw_ports.items()}
    started: list[Proc] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedPostgres(Path(tmp) / "pg", free_port()) as pg:
        try:
            stubs = start_stubs(started)
            hops = {f"GATEWAY_{k.upper()}_URL": v for k, v in stubs.items()}
            procs = {
                mode: Proc(
                    f"gateway-{mode.replace(' ', '-')}",
                    [sys.executable, "-m", "megaservice"],
                    {"GATEWAY_PORT": str(gw_ports[mode]), "GATEWAY_AUTH_ENABLED": "false", "DATABASE_URL": pg.url,
                     "GATEWAY_USAGE_ENABLED": str(mode == "usage on").lower(), **hops},
                )
                for mode in USAGE_MODES
            }  # fmt: skip
            started += procs.values()
            for mode, proc in procs.items():
                proc.wait_http(urls[mode] + "/v1/ready")
            install_uvloop()
            rows = asyncio.run(bench_modes(quick, procs, urls, stubs, USAGE_MODES, ">= 0.95x off"))
            usage = httpx.get(urls["usage on"] + "/v1/admin/system", timeout=30).json()["usage"]
            rows.append(("usage records written / buffered / dropped", f"{usage['written']} / {usage['buffered']} / "
                         f"{usage['dropped']}", "", "", "", "", ""))  # fmt: skip
        finally:
            for p in reversed(started):
                p.stop()
    print_table("gateway usage accounting off vs on (batched writes to PostgreSQL)",
                ("metric", "value", "vs off", "CPU ms/req", "vs off", "", "target"), rows)  # fmt: skip


if __name__ == "__main__":
    main()
