"""Retriever benchmark: both vector stores side by side on the same 100k chunks of 384-d vectors.

Loads the same vectors into an embedded Redis (valkey + RediSearch) and an embedded PostgreSQL with pgvector
(each on a free port in a temporary folder) through the store protocol's own write path (`replace_document`,
documents of 20 chunks, 8 writers at once, as dataprep's workers write), both with an HNSW index, cosine,
M=16 and EF_CONSTRUCTION=200 (`comps.vectorstore`'s settings). Then runs the same queries through each
store's `search` (the retriever's own query path) for several ef values (RediSearch EF_RUNTIME, pgvector
hnsw.ef_search) and reports p50/p99 latency and recall@10 against exact (numpy) neighbours, the smallest
ef that reaches recall@10 >= 0.95 for each store, load time, and the memory or disk each store used per
vector (`docs/scaling.md` builds on it); optionally (``--http``) the same through `python -m comps.retriever`.

Data (``--data``): ``clustered`` (default): 1,000 random unit centres, each chunk a centre plus Gaussian noise,
normalized (cosine to its centre about 0.7, like passages of one topic); queries are fresh draws from the same
mixture, not stored vectors. ``random``: uniform random unit vectors (no structure: the worst case for HNSW).

    .venv/bin/python benchmarks/bench_retriever.py [--n 100000] [--queries 200] [--stores redis pgvector]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comps.runtime.postgres_server import EmbeddedPostgres
from comps.runtime.process import free_port
from comps.runtime.redis_server import EmbeddedRedis
from comps.vectorstore import search
from comps.vectorstore.documents import Chunk, DocumentRecord
from comps.vectorstore.protocol import BACKENDS, VectorStore
from comps.vectorstore.stores import make_store

DIM = 384
K = 10
PER_DOC = 20
WRITERS = 8
COLLECTION = "bench"
TARGET_RECALL = 0.95


def make_data(kind: str, n: int, queries: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)

    def unit(m: np.ndarray) -> np.ndarray:
        return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)

    if kind == "random":
        return unit(rng.standard_normal((n, DIM))), unit(rng.standard_normal((queries, DIM)))
    centres = unit(rng.standard_normal((1000, DIM)))
    noise = 1.0 / np.sqrt(DIM)  # per-coordinate sigma: noise norm ~1, so cosine to the centre ~0.7

    def draw(count: int) -> np.ndarray:
        return unit(centres[rng.integers(0, len(centres), count)] + noise * rng.standard_normal((count, DIM)))

    return draw(n), draw(queries)


def make_texts(n: int, seed: int = 11) -> list[str]:
    """Chunk texts of about 600 characters (a 128-token chunk) from a 5,000-word made-up vocabulary: what the
    full-text index and the per-chunk size measure need."""
    rng = np.random.default_rng(seed)
    vocab = np.array(["".join(rng.choice(list("abcdefghiklmnoprstuvy"), rng.integers(3, 10))) for _ in range(5000)])
    return [" ".join(vocab[rng.integers(0, len(vocab), 90)]) for _ in range(n)]


def exact_neighbours(data: np.ndarray, queries: np.ndarray) -> list[list[tuple[str, int]]]:
    sims = queries @ data.T
    top = np.argsort(-sims, axis=1)[:, :K]
    return [[(f"doc{i // PER_DOC}", int(i % PER_DOC)) for i in row] for row in top]


async def store_size(store: VectorStore) -> int:
    """Bytes the store holds for the collection: Redis used_memory, or the chunk table with its indexes."""
    if store.name == "redis":
        info = await store.r.info("memory")  # type: ignore[attr-defined]
        return int(info["used_memory"])
    async with store.connection() as conn:  # type: ignore[attr-defined]
        row = await conn.fetchrow("SELECT id FROM vectorstore_collections WHERE name = $1", COLLECTION)
        return int(await conn.fetchval(f"SELECT pg_total_relation_size('vs_chunks_{row['id']}')"))


async def size_parts(store: VectorStore) -> dict[str, int]:
    """Where the bytes are: RediSearch's vector index and text index; PostgreSQL's table and each index."""
    if store.name == "redis":
        info = await store.r.ft(COLLECTION).info()  # type: ignore[attr-defined]
        mb = {k: float(info.get(k, 0) or 0) for k in ("vector_index_sz_mb", "inverted_sz_mb", "doc_table_size_mb")}
        return {k.removesuffix("_mb"): int(v * 2**20) for k, v in mb.items()}
    async with store.connection() as conn:  # type: ignore[attr-defined]
        cid = await conn.fetchval("SELECT id FROM vectorstore_collections WHERE name = $1", COLLECTION)
        table = f"vs_chunks_{cid}"
        rows = await conn.fetch(
            "SELECT c.relname, pg_relation_size(c.oid) AS size FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = $1::regclass",
            table,
        )
        parts = {"table (heap + TOAST)": int(await conn.fetchval(f"SELECT pg_table_size('{table}')"))}
        parts.update({row["relname"].removeprefix(table + "_"): int(row["size"]) for row in rows})
        return parts


async def load(store: VectorStore, data: np.ndarray, texts: list[str]) -> tuple[float, int]:
    await store.open()
    await store.delete_all(COLLECTION)
    before = await store_size(store) if store.name == "redis" else 0
    started = time.perf_counter()
    await store.ensure_collection(COLLECTION, DIM, model="synthetic")
    docs = list(range(0, len(data), PER_DOC))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for start in docs:
        queue.put_nowait(start)

    async def writer() -> None:
        while not queue.empty():
            start = queue.get_nowait()
            doc = f"doc{start // PER_DOC}"
            chunks = [Chunk(texts[i], data[i]) for i in range(start, min(start + PER_DOC, len(data)))]
            await store.replace_document(COLLECTION, DocumentRecord(doc, f"{doc}.txt", "sha"), chunks)

    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    elapsed = time.perf_counter() - started
    used = await store_size(store) - before
    parts = ", ".join(f"{k} {v / len(data):,.0f}" for k, v in (await size_parts(store)).items())
    print(f"  {store.name} bytes per chunk by part: {parts}")
    await store.close()
    return elapsed, used


async def run_queries(
    store: VectorStore, queries: np.ndarray, ef: int
) -> tuple[list[float], list[list[tuple[str, int]]]]:
    await store.open()
    latencies, results = [], []
    for qv in queries:
        query = search.Query(vector=qv, k=K, ef_runtime=ef)
        started = time.perf_counter()
        hits = await store.search(COLLECTION, query)
        latencies.append(time.perf_counter() - started)
        results.append([(h.doc_id, h.chunk) for h in hits])
    await store.close()
    return latencies, results


def http_queries(url: str, queries: np.ndarray) -> list[float]:
    import httpx

    latencies = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for qv in queries:
            body = {"embedding": qv.tolist(), "k": K, "collection": COLLECTION}
            started = time.perf_counter()
            resp = c.post("/v1/retrieval", json=body)
            latencies.append(time.perf_counter() - started)
            assert resp.status_code == 200 and len(resp.json()["documents"]) == K, resp.text[:300]
    return latencies


def recall(approx: list[list[tuple[str, int]]], exact: list[list[tuple[str, int]]]) -> float:
    return statistics.fmean(len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True))


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.array(values) * 1000, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--data", choices=["clustered", "random"], default="clustered")
    ap.add_argument("--stores", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    ap.add_argument("--ef", type=int, nargs="+", default=[10, 20, 40, 64, 100, 200])
    ap.add_argument("--http", action="store_true", help="also query through the retriever service at the chosen ef")
    args = ap.parse_args()

    data, queries = make_data(args.data, args.n, args.queries)
    exact = exact_neighbours(data, queries)
    texts = make_texts(args.n)
    print(
        f"data: {args.data}, {args.n} x {DIM}-d float32 with ~{statistics.fmean(map(len, texts)):.0f}-character texts, "
        f"{args.queries} queries, k={K}; stores: {args.stores}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-retriever-") as tmp, ExitStack() as servers:
        urls: dict[str, str] = {}
        if "redis" in args.stores:
            urls["redis_url"] = servers.enter_context(EmbeddedRedis(Path(tmp) / "redis", free_port())).url
        if "pgvector" in args.stores:
            urls["database_url"] = servers.enter_context(EmbeddedPostgres(Path(tmp) / "pg", free_port())).url

        def store(name: str) -> VectorStore:
            return make_store(name, **urls)

        loads = {name: asyncio.run(load(store(name), data, texts)) for name in args.stores}
        print(f"\nload ({args.n // PER_DOC} documents of {PER_DOC} chunks by replace_document, {WRITERS} writers):")
        for name, (seconds, used) in loads.items():
            what = "memory" if name == "redis" else "table + indexes"
            print(
                f"  {name:<9} {seconds:7.1f} s  {args.n / seconds:8,.0f} chunks/s  "
                f"{used / args.n:7,.0f} bytes/chunk ({what})"
            )

        rows: dict[str, dict[int, tuple[float, float, float]]] = {name: {} for name in args.stores}
        for name in args.stores:
            asyncio.run(run_queries(store(name), queries[:10], 40))  # warm the connection and caches
        for ef in args.ef:
            for name in args.stores:  # alternating stores per ef: the machine's load hits both alike
                lat, found = asyncio.run(run_queries(store(name), queries, ef))
                rows[name][ef] = (pct(lat, 50), pct(lat, 99), recall(found, exact))
        print(f"\nstore.search (the retriever's path), {args.queries} sequential queries, one client:")
        print(f"  {'ef':>5}  " + "  ".join(f"{n + ' p50':>13} {'p99':>7} {'recall':>7}" for n in args.stores))
        for ef in args.ef:
            cells = [f"{rows[n][ef][0]:10.2f} ms {rows[n][ef][1]:7.2f} {rows[n][ef][2]:7.3f}" for n in args.stores]
            print(f"  {ef:>5}  " + "  ".join(cells))
        chosen: dict[str, int] = {}
        for name in args.stores:
            good = [ef for ef in args.ef if rows[name][ef][2] >= TARGET_RECALL]
            chosen[name] = min(good) if good else max(args.ef, key=lambda e: rows[name][e][2])
            p50, p99, rec = rows[name][chosen[name]]
            note = "" if good else f" (no ef reached recall {TARGET_RECALL}: best shown)"
            print(f"  {name}: ef={chosen[name]}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, recall@10 {rec:.3f}{note}")
        if len(args.stores) == 2:
            a, b = args.stores
            print(f"  p50 ratio {b}/{a} at recall >= {TARGET_RECALL}: "
                  f"{rows[b][chosen[b]][0] / rows[a][chosen[a]][0]:.2f}x; "
                  f"load time ratio {b}/{a}: {loads[b][0] / loads[a][0]:.2f}x")  # fmt: skip

        if args.http:
            from comps.runtime.process import ManagedProcess

            print(f"\nHTTP POST /v1/retrieval (embedding given, k={K}), {args.queries} sequential requests:")
            for name in args.stores:
                port = free_port()
                env = {
                    "RETRIEVER_PORT": str(port),
                    "VECTORSTORE_BACKEND": name,
                    "INDEX_NAME": COLLECTION,
                    "RETRIEVER_HNSW_EF_RUNTIME": str(chosen[name]),
                    "LOG_LEVEL": "WARNING",
                    "REDIS_URL": urls.get("redis_url", ""),
                    "DATABASE_URL": urls.get("database_url", ""),
                }
                with open(Path(tmp) / f"retriever-{name}.log", "w") as sink:
                    proc = ManagedProcess("retriever", [sys.executable, "-m", "comps.retriever"], env=env, sink=sink)
                    proc.start()
                    try:
                        proc.wait_http_ready(f"http://127.0.0.1:{port}/v1/ready", 120)
                        http_queries(f"http://127.0.0.1:{port}", queries[:10])
                        lat = http_queries(f"http://127.0.0.1:{port}", queries)
                    finally:
                        proc.stop()
                overhead = pct(lat, 50) - rows[name][chosen[name]][0]
                print(
                    f"  {name}: ef={chosen[name]}: p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms "
                    f"(HTTP + JSON over store.search: {overhead:+.2f} ms at p50)"
                )


if __name__ == "__main__":
    main()
