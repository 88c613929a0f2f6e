# ruff: noqa: S608 - the SQL names only this script's own tables
"""pgvector layout: one table per collection (what `comps.vectorstore.pgvector_store` does) vs one shared table
with a ``collection`` column, for a query that searches one collection among many.

Loads the same ``--collections`` x ``--per`` 384-d vectors (clustered, as `bench_retriever.py`) both ways into an
embedded PostgreSQL (COPY, then the HNSW index, cosine, m=16, ef_construction=200), then runs the same queries
for one collection: on its own table, and on the shared table with ``WHERE collection = $1`` (without
``hnsw.iterative_scan`` the index hands back ef_search rows of every collection and the filter keeps few of them;
with ``strict_order`` it keeps walking the graph). Reports p50 latency, rows returned and recall@10.

    .venv/bin/python benchmarks/bench_pgvector_layout.py [--collections 20] [--per 2500] [--queries 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_retriever import DIM, K, make_data
from comps.runtime.postgres_server import EmbeddedPostgres
from comps.runtime.process import free_port
from comps.vectorstore.pgvector_store import _init_connection

HNSW = "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 200)"


async def main_async(url: str, args: argparse.Namespace) -> None:
    n = args.collections * args.per
    data, queries = make_data("clustered", n, args.queries)
    owner = np.repeat(np.arange(args.collections), args.per)
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await _init_connection(conn)
    await conn.execute("SET maintenance_work_mem = '512MB'")
    await conn.execute(f"CREATE TABLE shared (collection int, i int, embedding vector({DIM}))")
    started = time.perf_counter()
    await conn.copy_records_to_table("shared", records=[(int(owner[i]), i, data[i]) for i in range(n)])
    await conn.execute(f"CREATE INDEX ON shared {HNSW}")
    await conn.execute("CREATE INDEX ON shared (collection)")
    shared_s = time.perf_counter() - started
    started = time.perf_counter()
    for c in range(args.collections):
        await conn.execute(f"CREATE TABLE own_{c} (i int, embedding vector({DIM}))")
        rows = [(i, data[i]) for i in range(c * args.per, (c + 1) * args.per)]
        await conn.copy_records_to_table(f"own_{c}", records=rows)
        await conn.execute(f"CREATE INDEX ON own_{c} {HNSW}")
    own_s = time.perf_counter() - started
    await conn.execute("ANALYZE")
    print(
        f"{args.collections} collections x {args.per} vectors: "
        f"build shared {shared_s:.1f}s, per-collection {own_s:.1f}s"
    )

    target = args.collections // 2
    mine = data[owner == target]
    ids = np.flatnonzero(owner == target)
    exact = [set(ids[np.argsort(-(mine @ q))[:K]].tolist()) for q in queries]
    plans = {
        "own table": (f"SELECT i FROM own_{target} ORDER BY embedding <=> $1 LIMIT {K}", "off"),
        "shared, filter": (
            f"SELECT i FROM shared WHERE collection = {target} ORDER BY embedding <=> $1 LIMIT {K}",
            "off",
        ),
        "shared, iterative": (
            f"SELECT i FROM shared WHERE collection = {target} ORDER BY embedding <=> $1 LIMIT {K}",
            "strict_order",
        ),
    }
    print(f"one collection's top {K} (ef_search {args.ef}), {args.queries} queries:")
    print(f"  {'layout':<20} {'p50 ms':>8} {'rows':>6} {'recall@10':>10}")
    for name, (sql, iterative) in plans.items():
        await conn.execute(f"SET hnsw.ef_search = {args.ef}; SET hnsw.iterative_scan = {iterative}")
        latencies, counts, recalls = [], [], []
        for q, truth in zip(queries, exact, strict=True):
            t0 = time.perf_counter()
            rows = await conn.fetch(sql, q)
            latencies.append(time.perf_counter() - t0)
            got = {r["i"] for r in rows}
            counts.append(len(got))
            recalls.append(len(got & truth) / K)
        print(f"  {name:<20} {statistics.median(latencies) * 1000:8.2f} {statistics.fmean(counts):6.1f} "
              f"{statistics.fmean(recalls):10.3f}")  # fmt: skip
    await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--collections", type=int, default=20)
    ap.add_argument("--per", type=int, default=2500)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--ef", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-layout-") as tmp, EmbeddedPostgres(Path(tmp), free_port()) as pg:
        asyncio.run(main_async(pg.url, args))


if __name__ == "__main__":
    main()
