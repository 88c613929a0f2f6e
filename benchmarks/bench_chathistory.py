"""Conversation memory: context loads and listings on a loaded store, and what conversation_id adds at the gateway.

    .venv/bin/python benchmarks/bench_chathistory.py [--messages 1000000] [--conversations 100000] [--quick]

Starts (127.0.0.1 only) an embedded PostgreSQL in a temporary folder (or uses DATABASE_URL's server, in a new
database), fills it with SQL (generate_series): ``--conversations`` conversations over 1,000 users, one user
owning a tenth of them, and ``--messages`` messages, 400 of which (200 turns) make one conversation of that user.
Then, one call at a time:

- the context of the 200-turn conversation (the newest turns within 1,024 tokens), in-process (ChatHistory) and
  over HTTP (a chathistory process, with the internal token and identity headers);
- the user's 50 newest conversations, the same two ways;
- the gateway (auth off) on the instant stubs (tests/support/stubs.py) without and with ``conversation_id``:
  the same question, rounds interleaved; "same conversation" continues one conversation request after request
  (each comes while the previous answer is being stored), "50 conversations" takes them in turn. With
  ``--baseline-tree DIR`` (another version's files, e.g. ``git archive main | tar -x -C /tmp/base``) a second
  chathistory and gateway run that version's code on the same PostgreSQL and stubs, interleaved with this one
  (the HTTP figures too). CPU per call (the process's user + system time over the calls) sits beside each.

Figures: p50 and p99 in ms. Targets of issue 10: context p50 <= 3 ms (1M messages), list p50 <= 3 ms (100k
conversations), gateway p50 added <= 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comps.chathistory.service import ChatHistory  # noqa: E402
from comps.core.caller import Caller  # noqa: E402
from comps.runtime.process import free_port  # noqa: E402
from comps.sqlstore import Database, migrate  # noqa: E402
from tests.support.database import fresh_database  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_gateway import Proc  # noqa: E402  (the benchmarks' one process wrapper)

TOKEN = secrets.token_urlsafe(32)
QUESTION = "What does the stub know about the Zorblax project?"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def timed(call: Callable[[], Awaitable[object]], n: int, warm: int = 20) -> list[float]:
    for _ in range(warm):
        await call()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def fill(url: str, n_conv: int, n_msg: int) -> tuple[uuid.UUID, uuid.UUID]:
    """Bulk rows; returns (the heavy user, its 200-turn conversation)."""
    user = uuid.uuid4()
    convo = uuid.uuid4()
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await conn.execute(
            """
            INSERT INTO conversations (id, user_id, title, pinned, archived, created_at, updated_at)
            SELECT gen_random_uuid(),
                   CASE WHEN g % 10 = 0 THEN $1::uuid
                        ELSE ('00000000-0000-4000-8000-' || lpad(to_hex(g % 999), 12, '0'))::uuid END,
                   'conversation ' || g, false, false,
                   now() - make_interval(secs => g), now() - make_interval(secs => g)
            FROM generate_series(1, $2::int) g
            """,
            user,
            n_conv - 1,
        )
        await conn.execute(
            "INSERT INTO conversations (id, user_id, title, pinned, archived, created_at, updated_at) "
            "VALUES ($1, $2, 'the long one', false, false, now() - interval '1 day', now() - interval '1 day')",
            convo,
            user,
        )
        await conn.execute(
            "CREATE TEMP TABLE c AS SELECT row_number() OVER () AS n, id FROM conversations WHERE id <> $1", convo
        )
        await conn.execute("CREATE INDEX ON c (n)")
        rest = n_msg - 400
        await conn.execute(
            """
            INSERT INTO messages (id, conversation_id, role, content, tokens, cached, cut_short, created_at)
            SELECT gen_random_uuid(), c.id, CASE WHEN g % 2 = 0 THEN 'user' ELSE 'assistant' END,
                   repeat('lorem ipsum dolor sit amet ', 6) || g, 45, false, false, now()
            FROM generate_series(1, $1::int) g JOIN c ON c.n = 1 + g % $2::int
            """,
            rest,
            n_conv - 1,
        )
        await conn.execute(
            """
            INSERT INTO messages (id, conversation_id, role, content, tokens, cached, cut_short, created_at)
            SELECT gen_random_uuid(), $1, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END,
                   'turn ' || g || ' ' || repeat('some words of the turn ', 8), 50, false, false, now()
            FROM generate_series(1, 400) g
            """,
            convo,
        )
        await conn.execute("ANALYZE")
        total = await conn.fetchval("SELECT count(*) FROM messages")
        print(f"filled {n_conv} conversations, {total} messages in {time.perf_counter() - started:.1f}s", flush=True)
    finally:
        await conn.close()
    return user, convo


async def bench(db_url: str, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    user, convo = await fill(db_url, args.conversations, args.messages)
    n = args.n
    rows = []
    db = Database(db_url, pool_size=2)
    store = ChatHistory(db)
    try:
        ctx = await timed(lambda: store.context(user, str(convo), 1024), n)
        rows.append(
            (
                "context of a 200-turn conversation, in-process",
                f"{statistics.median(ctx):.2f}",
                f"{pct(ctx, 99):.2f}",
                "<= 3",
            )
        )
        lst = await timed(lambda: store.list_conversations(user, limit=50, cursor=None, q=None, archived=False), n)
        rows.append(
            ("list 50 newest conversations, in-process", f"{statistics.median(lst):.2f}", f"{pct(lst, 99):.2f}", "<= 3")
        )
    finally:
        await store.close()
        await db.close()

    py = sys.executable
    stub_ports = [free_port() for _ in range(4)]
    procs: list[Proc] = []
    try:
        stubs = Proc("stubs", [py, "-m", "tests.support.stubs", *map(str, stub_ports)], {})
        procs.append(stubs)
        # label -> (chathistory URL, its process, the gateway's chat URL, its process): this tree, and with
        # --baseline-tree the other version's chathistory and gateway (same PostgreSQL, same stubs)
        trees = {"": REPO}
        if args.baseline_tree is not None:
            trees = {"baseline ": args.baseline_tree.resolve(), **trees}
        sides: dict[str, tuple[str, Proc, str, Proc]] = {}
        for label, tree in trees.items():
            ch_port, gw_port = free_port(), free_port()
            where = {"PYTHONPATH": str(tree)} if tree != REPO else {}
            tag = label.strip() or "this"
            ch = Proc(
                f"chathistory-{tag}",
                [py, "-m", "comps.chathistory"],
                {
                    "CHATHISTORY_PORT": str(ch_port),
                    "DATABASE_URL": db_url,
                    "CHATHISTORY_API_KEY": TOKEN,
                    "CHATHISTORY_MIGRATE": "false" if tree != REPO else "true",  # the schema is this tree's
                    **where,
                },
                cwd=tree,
            )
            procs.append(ch)
            ch.wait_http(f"http://127.0.0.1:{ch_port}/v1/ready")
            gw_env = {
                "GATEWAY_PORT": str(gw_port),
                "GATEWAY_AUTH_ENABLED": "false",
                "GATEWAY_INTERNAL_API_KEY": TOKEN,
                "GATEWAY_CHATHISTORY_URL": f"http://127.0.0.1:{ch_port}",
                **{
                    f"GATEWAY_{name.upper()}_URL": f"http://127.0.0.1:{port}"
                    for name, port in zip(("embedding", "retriever", "reranker", "llm"), stub_ports, strict=True)
                },
                **where,
            }
            gw = Proc(f"gateway-{tag}", [py, "-m", "megaservice"], gw_env, cwd=tree)
            procs.append(gw)
            gw.wait_http(f"http://127.0.0.1:{gw_port}/v1/ready")
            sides[label] = (f"http://127.0.0.1:{ch_port}", ch, f"http://127.0.0.1:{gw_port}/v1/chatqna", gw)
        who = Caller(str(user), "bench", "user").headers()
        headers = {"Authorization": f"Bearer {TOKEN}", **who}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:

            async def call(method: str, url: str, body: bytes | None = None) -> None:
                sent = {**headers, "Content-Type": "application/json"} if body else headers
                async with s.request(method, url, data=body, headers=sent) as r:
                    await r.read()
                    assert r.status == 200, r.status

            async def begin(base: str) -> None:  # a new turn each time, whose mark ends at once (no write comes)
                await call(
                    "POST", f"{base}/v1/conversations/{convo}/turns/{uuid.uuid4()}?max_tokens=1024&lease_s=0.001"
                )

            figures: dict[str, Callable[[str], Callable[[], Awaitable[None]]]] = {
                "context of a 200-turn conversation, HTTP": lambda base: (
                    lambda: call("GET", f"{base}/v1/conversations/{convo}/context?max_tokens=1024")
                ),
                "list 50 newest conversations, HTTP": lambda base: (
                    lambda: call("GET", f"{base}/v1/conversations?limit=50")
                ),
            }
            calls = {(label, name): make(side[0]) for label, side in sides.items() for name, make in figures.items()}
            # the begin of a gateway's turn (the context read and the turn's mark in flight): this tree's route
            calls["", "begin a turn of it (context + mark), HTTP"] = lambda: begin(sides[""][0])
            times, cpu = await interleaved(calls, {key: sides[key[0]][1] for key in calls}, n)
            for (label, name), xs in times.items():
                rows.append(
                    (
                        f"{label}{name}",
                        f"{statistics.median(xs):.2f}",
                        f"{pct(xs, 99):.2f}",
                        f"<= 3; chathistory CPU {cpu[label, name]:.2f} ms/call",
                    )
                )
            gateways = {label: (side[2], side[3], side[1]) for label, side in sides.items()}
            rows += await bench_gateway(s, gateways, n)
    finally:
        for p in reversed(procs):
            p.stop()
    return rows


async def interleaved(
    calls: dict[tuple[str, str], Callable[[], Awaitable[None]]], procs: dict[tuple[str, str], Proc], n: int
) -> tuple[dict[tuple[str, str], list[float]], dict[tuple[str, str], float]]:
    """Each call n times, in blocks taken in turn; the times (ms) and the CPU its process spent a call (ms)."""
    for call in calls.values():
        for _ in range(20):
            await call()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    cpu = dict.fromkeys(calls, 0.0)
    block = 25
    for start in range(0, n, block):
        for key, call in calls.items():
            c0 = procs[key].cpu_s()
            for _ in range(start, min(n, start + block)):
                t = time.perf_counter()
                await call()
                times[key].append((time.perf_counter() - t) * 1000)
            cpu[key] += procs[key].cpu_s() - c0
    return times, {key: c / n * 1000 for key, c in cpu.items()}


async def bench_gateway(
    s: aiohttp.ClientSession, gateways: dict[str, tuple[str, Proc, Proc]], n: int
) -> list[tuple[str, str, str, str]]:
    """Each gateway (label -> (chat URL, its process, its chathistory's)) without and with conversation_id, in
    interleaved blocks."""

    async def ask(url: str, extra: dict[str, object]) -> dict[str, object]:
        body = orjson.dumps({"messages": QUESTION, **extra})
        async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            data = await r.read()
            assert r.status == 200, data[:300]
            return orjson.loads(data)

    modes: dict[tuple[str, str], Callable[[int], dict[str, object]]] = {}
    for label, (url, _, _) in gateways.items():
        one = (await ask(url, {"store": True}))["conversation_id"]
        many = [(await ask(url, {"store": True}))["conversation_id"] for _ in range(50)]
        modes[label, "without conversation_id"] = lambda i: {}
        modes[label, "same conversation"] = lambda i, one=one: {"conversation_id": one}  # type: ignore[misc]
        modes[label, "50 conversations in turn"] = lambda i, many=many: {"conversation_id": many[i % 50]}  # type: ignore[misc]
    times: dict[tuple[str, str], list[float]] = {m: [] for m in modes}
    cpu: dict[tuple[str, str], list[float]] = {m: [0.0, 0.0] for m in modes}  # gateway, chathistory CPU seconds
    for i in range(20):  # warm-up
        for (label, _), extra in modes.items():
            await ask(gateways[label][0], extra(i))
    block = 25
    for start in range(0, n, block):  # blocks of each mode in turn: drifts of the machine hit every mode alike
        for (label, mode), extra in modes.items():
            url, gateway, chathistory = gateways[label]
            g0, c0 = gateway.cpu_s(), chathistory.cpu_s()
            for i in range(start, min(n, start + block)):
                t = time.perf_counter()
                await ask(url, extra(i))
                times[label, mode].append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.05)  # the last background write of the block is counted in this block
            cpu[label, mode][0] += gateway.cpu_s() - g0
            cpu[label, mode][1] += chathistory.cpu_s() - c0
    rows = []
    for label in gateways:
        plain = times[label, "without conversation_id"]
        base = statistics.median(plain)
        base_cpu = cpu[label, "without conversation_id"][0] / n * 1000
        rows.append(
            (
                f"{label}gateway on stubs, without conversation_id",
                f"{base:.2f}",
                f"{pct(plain, 99):.2f}",
                f"gateway CPU {base_cpu:.2f} ms/request",
            )
        )
        for mode in ("same conversation", "50 conversations in turn"):
            p50 = statistics.median(times[label, mode])
            g_cpu, c_cpu = (x / n * 1000 for x in cpu[label, mode])
            rows.append(
                (
                    f"{label}gateway with conversation_id, {mode}",
                    f"{p50:.2f} (+{p50 - base:.2f})",
                    f"{pct(times[label, mode], 99):.2f}",
                    f"added <= 2; gateway CPU +{g_cpu - base_cpu:.2f}, chathistory CPU {c_cpu:.2f} ms/request",
                )
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--conversations", type=int, default=100_000)
    ap.add_argument("--n", type=int, default=300, help="timed calls per figure")
    ap.add_argument("--quick", action="store_true", help="200k messages, 20k conversations, 100 calls")
    ap.add_argument(
        "--baseline-tree", type=Path, help="also run chathistory and the gateway of this checkout, side by side"
    )
    args = ap.parse_args()
    if args.quick:
        args.messages, args.conversations, args.n = 200_000, 20_000, 100
    folder = None
    server = os.environ.get("DATABASE_URL")
    pg = None
    if not server:
        from comps.runtime.postgres_server import EmbeddedPostgres

        folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        pg = EmbeddedPostgres(folder, free_port()).start()
        server = pg.url
    try:
        db_url = fresh_database(server, "bench_chathistory")

        async def setup() -> None:
            db = Database(db_url, pool_size=1)
            await migrate(db)
            await db.close()

        asyncio.run(setup())
        rows = asyncio.run(bench(db_url, args))
    finally:
        if pg is not None:
            pg.stop()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    header = ("figure (ms, one call at a time)", "p50", "p99", "target")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\nchathistory, {args.messages} messages, {args.conversations} conversations, {os.cpu_count()} CPUs")
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
