"""Retriever benchmark: query latency and HNSW recall on 100k chunks of 384-d vectors.

Loads the same vectors into two collections of an embedded Redis (valkey + RediSearch, on a free port in a
temporary folder) with pipelined HSETs: one HNSW (M, EF_CONSTRUCTION below), one FLAT (exact). Then runs the
queries through `comps.vectorstore.search` (the retriever's own query path) on both, for several EF_RUNTIME
values, and reports p50/p95 latency and recall@10 of HNSW against FLAT; then the same through the HTTP service
(`python -m comps.retriever`) at the chosen EF_RUNTIME.

Data (``--data``): ``clustered`` (default): 1,000 random unit centres, each chunk a centre plus Gaussian noise,
normalized (cosine to its centre about 0.7, like passages of one topic); queries are fresh draws from the same
mixture, not stored vectors. ``random``: uniform random unit vectors (no structure: the worst case for HNSW).

    .venv/bin/python benchmarks/bench_retriever.py [--n 100000] [--queries 200] [--data clustered]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comps.runtime.process import free_port
from comps.runtime.redis_server import EmbeddedRedis
from comps.vectorstore import schema, search

DIM = 384
K = 10
HNSW, FLAT = "bench-hnsw", "bench-flat"
TARGET_P50_MS, TARGET_RECALL = 5.0, 0.95


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


async def load(url: str, collection: str, vectors: np.ndarray, algorithm: str, m: int, efc: int) -> float:
    r = schema.connect(url)
    started = time.perf_counter()
    await schema.ensure_index(
        r, collection, DIM, model="synthetic", algorithm=algorithm, hnsw_m=m, hnsw_ef_construction=efc
    )
    batch = 2000
    for start in range(0, len(vectors), batch):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + batch, len(vectors))):
                doc = f"doc{i // 20}"
                pipe.hset(
                    schema.chunk_key(collection, doc, 1, i % 20),
                    mapping={
                        schema.TEXT: f"synthetic chunk {i}",
                        schema.EMBEDDING: vectors[i].tobytes(),
                        schema.SOURCE: f"{doc}.txt",
                        schema.DOC_ID: doc,
                        schema.CHUNK: i % 20,
                    },
                )
            await pipe.execute()
    elapsed = time.perf_counter() - started
    info = await r.ft(collection).info()
    assert int(info["num_docs"]) == len(vectors), info["num_docs"]
    await r.aclose()
    return elapsed


async def run_queries(
    url: str, collection: str, queries: np.ndarray, ef: int | None
) -> tuple[list[float], list[list[str]]]:
    r = schema.connect(url)
    latencies, results = [], []
    for qv in queries:
        query = search.Query(vector=qv, k=K, ef_runtime=ef)
        started = time.perf_counter()
        hits = await search.search(r, collection, query)
        latencies.append(time.perf_counter() - started)
        results.append([h.key.split(":chunk:", 1)[1] for h in hits])
    await r.aclose()
    return latencies, results


def http_queries(url: str, queries: np.ndarray, collection: str) -> list[float]:
    import httpx

    latencies = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for qv in queries:
            body = {"embedding": qv.tolist(), "k": K, "collection": collection}
            started = time.perf_counter()
            resp = c.post("/v1/retrieval", json=body)
            latencies.append(time.perf_counter() - started)
            assert resp.status_code == 200 and len(resp.json()["documents"]) == K, resp.text[:300]
    return latencies


def recall(approx: list[list[str]], exact: list[list[str]]) -> float:
    return statistics.fmean(len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True))


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.array(values) * 1000, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--data", choices=["clustered", "random"], default="clustered")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--ef", type=int, nargs="+", default=[10, 20, 40, 64, 100, 200])
    ap.add_argument("--no-http", action="store_true", help="skip the HTTP service part")
    args = ap.parse_args()

    data, queries = make_data(args.data, args.n, args.queries)
    print(f"data: {args.data}, {args.n} x {DIM}-d float32, {args.queries} queries, k={K}")
    with tempfile.TemporaryDirectory(prefix="bench-retriever-") as tmp, EmbeddedRedis(Path(tmp), free_port()) as redis:
        t_hnsw = asyncio.run(load(redis.url, HNSW, data, "HNSW", args.m, args.ef_construction))
        t_flat = asyncio.run(load(redis.url, FLAT, data, "FLAT", args.m, args.ef_construction))
        print(
            f"load (pipelined HSET, indexed on write): HNSW M={args.m} EF_CONSTRUCTION={args.ef_construction} "
            f"{t_hnsw:.1f}s ({args.n / t_hnsw:,.0f}/s); FLAT {t_flat:.1f}s ({args.n / t_flat:,.0f}/s)"
        )

        asyncio.run(run_queries(redis.url, FLAT, queries[:10], None))  # warm the connection and caches
        flat_lat, exact = asyncio.run(run_queries(redis.url, FLAT, queries, None))
        print(f"\nsearch.py path, {args.queries} sequential queries (one client):")
        print(f"  {'index':<22} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>10}")
        print(f"  {'FLAT (exact)':<22} {pct(flat_lat, 50):8.2f} {pct(flat_lat, 95):8.2f} {1.0:10.3f}")
        chosen, rows = None, {}
        for ef in args.ef:
            lat, found = asyncio.run(run_queries(redis.url, HNSW, queries, ef))
            rows[ef] = (pct(lat, 50), pct(lat, 95), recall(found, exact))
            p50, p95, rec = rows[ef]
            print(f"  {'HNSW EF_RUNTIME=' + str(ef):<22} {p50:8.2f} {p95:8.2f} {rec:10.3f}")
            if chosen is None and rec >= TARGET_RECALL and p50 <= TARGET_P50_MS:
                chosen = ef
        if chosen is None:
            chosen = max(rows, key=lambda e: (rows[e][2], -rows[e][0]))
            print(
                f"  no EF_RUNTIME met p50 <= {TARGET_P50_MS} ms at recall@10 >= {TARGET_RECALL}; best recall: {chosen}"
            )
        p50, p95, rec = rows[chosen]
        flat_p50 = pct(flat_lat, 50)
        print(
            f"\nchosen EF_RUNTIME={chosen}: p50 {p50:.2f} ms (target <= {TARGET_P50_MS}), recall@10 {rec:.3f} "
            f"(target >= {TARGET_RECALL}); FLAT/HNSW p50 ratio {flat_p50 / p50:.1f}x"
        )

        if not args.no_http:
            from comps.runtime.process import ManagedProcess

            port = free_port()
            env = {
                "RETRIEVER_PORT": str(port),
                "REDIS_URL": redis.url,
                "INDEX_NAME": HNSW,
                "RETRIEVER_HNSW_EF_RUNTIME": str(chosen),
                "LOG_LEVEL": "WARNING",
            }
            with open(Path(tmp) / "retriever.log", "w") as sink:
                proc = ManagedProcess("retriever", [sys.executable, "-m", "comps.retriever"], env=env, sink=sink)
                proc.start()
                try:
                    proc.wait_http_ready(f"http://127.0.0.1:{port}/v1/ready", 60)
                    url = f"http://127.0.0.1:{port}"
                    http_queries(url, queries[:10], HNSW)
                    h_lat = http_queries(url, queries, HNSW)
                    f_lat = http_queries(url, queries, FLAT)
                finally:
                    proc.stop()
            print(f"\nHTTP POST /v1/retrieval (embedding given, k={K}), {args.queries} sequential requests:")
            print(
                f"  HNSW EF_RUNTIME={chosen}: p50 {pct(h_lat, 50):.2f} ms, p95 {pct(h_lat, 95):.2f} ms "
                f"(HTTP + JSON overhead over search.py: {pct(h_lat, 50) - p50:+.2f} ms at p50)"
            )
            print(f"  FLAT:               p50 {pct(f_lat, 50):.2f} ms, p95 {pct(f_lat, 95):.2f} ms")


if __name__ == "__main__":
    main()
