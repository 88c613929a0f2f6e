"""Dataprep benchmark: ingestion throughput (chunks/s) of a folder of text files through the real services,
as a ratio of the embedding-bound limit measured in the same run.

Writes ``--files`` text files of about 3 KB (sentences drawn from a fixed vocabulary, seeded) to a temporary
folder, starts an embedded Redis (valkey + RediSearch), the embedding service and the dataprep service as
subprocesses on free ports, and ingests the folder with the `chatqna ingest` client code (upload, then poll
the jobs) into a fresh collection, ``--repeats`` times. Wall time runs from the first upload to the last job
finished. The chunks that were stored are read back from Redis; after the services are stopped, the same
chunks are embedded in-process with sentence-transformers ``encode(batch_size=64)`` (same model, same
threads): that is the limit, since embedding is what ingestion spends its time on. Target: ratio >= 0.8.

    .venv/bin/python benchmarks/bench_dataprep.py [--files 200] [--chunk-size 1500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comps.runtime import ingest
from comps.runtime.models import DEFAULT_EMBEDDING
from comps.runtime.process import ManagedProcess, free_port
from comps.runtime.redis_server import EmbeddedRedis
from comps.vectorstore import schema

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
TARGET_RATIO = 0.8
WORDS = (
    "river mountain engine battery protocol garden harbor ledger signal crystal archive lantern orbit "
    "copper meadow circuit glacier compass timber beacon quartz canyon marble falcon voltage prairie "
    "the a of and to in is was for on with as by at from that this it be are has have which"
).split()


def write_corpus(folder: Path, files: int, size: int = 3000, seed: int = 11) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(files):
        paragraphs, length = [], 0
        while length < size:
            sentences = []
            for _ in range(int(rng.integers(3, 7))):
                words = [WORDS[j] for j in rng.integers(0, len(WORDS), int(rng.integers(8, 18)))]
                sentences.append(" ".join(words).capitalize() + ".")
            paragraphs.append(" ".join(sentences))
            length += len(paragraphs[-1]) + 2
        (folder / f"doc{i:04d}.txt").write_text("\n\n".join(paragraphs)[:size])


def start(
    name: str, module: str, prefix: str, env: dict[str, str], logs: Path, sink: IO[str]
) -> tuple[ManagedProcess, str]:
    port = free_port()
    full = {
        f"{prefix}HOST": "127.0.0.1",
        f"{prefix}PORT": str(port),
        "CHATQNA_MODELS_DIR": str(MODELS),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    argv = [sys.executable, "-m", module]
    proc = ManagedProcess(name, argv, env=full, cwd=REPO, sink=sink, log_file=logs / f"{name}.log")
    proc.start()
    url = f"http://127.0.0.1:{port}"
    proc.wait_http_ready(f"{url}/v1/ready", 180)
    return proc, url


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_stats(embedding_url: str) -> tuple[float, float]:
    """(model calls, inputs) the embedding service has counted so far (its batch-size histogram)."""
    import urllib.request

    with urllib.request.urlopen(f"{embedding_url}/metrics", timeout=10) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        for name in ("chatqna_embedding_batch_size_count", "chatqna_embedding_batch_size_sum"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    return values.get("chatqna_embedding_batch_size_count", 0.0), values.get("chatqna_embedding_batch_size_sum", 0.0)


async def stored_texts(redis_url: str, collection: str) -> list[str]:
    r = schema.connect(redis_url)
    try:
        keys = [k async for k in r.scan_iter(match=f"{schema.chunk_prefix(collection)}*", count=1000)]
        async with r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, schema.TEXT)
            return [t.decode() for t in await pipe.execute()]
    finally:
        await r.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--chunk-size", type=int, default=1500)
    parser.add_argument("--chunk-overlap", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-dataprep-"))
    corpus = tmp / "corpus"
    write_corpus(corpus, args.files)
    total_bytes = sum(p.stat().st_size for p in corpus.iterdir())
    print(f"corpus: {args.files} text files, {total_bytes / args.files:.0f} bytes each on average")
    print(f"chunking: chunk_size={args.chunk_size} chunk_overlap={args.chunk_overlap}; model: {DEFAULT_EMBEDDING}")

    quiet = open(os.devnull, "w")  # noqa: SIM115 - the children's output goes to log files only
    redis = EmbeddedRedis(tmp / "redis", free_port(), sink=quiet)
    redis.start()
    procs: list[ManagedProcess] = []
    ingest_s: list[float] = []
    chunks = 0
    texts: list[str] = []
    try:
        emb, emb_url = start("embedding", "comps.embedding", "EMBEDDING_", {"EMBEDDING_DEVICE": "cpu"}, tmp, quiet)
        procs.append(emb)
        dp_env = {"REDIS_URL": redis.url, "DATAPREP_EMBEDDING_URL": emb_url}
        dp_env.update({k: v for k, v in os.environ.items() if k.startswith("DATAPREP_")})  # e.g. DATAPREP_WORKERS
        dp, dp_url = start("dataprep", "comps.dataprep", "DATAPREP_", dp_env, tmp, quiet)
        procs.append(dp)
        fields = {"chunk_size": str(args.chunk_size), "chunk_overlap": str(args.chunk_overlap)}
        pids = {"embedding": emb.pid, "dataprep": dp.pid, "redis": redis.process.pid}
        for i in range(args.repeats):
            collection = f"bench-{i}"
            cpu_before = {name: cpu_s(pid) for name, pid in pids.items()} | {"client": time.process_time()}
            calls_before, inputs_before = batch_stats(emb_url)
            started = time.perf_counter()
            jobs = asyncio.run(ingest.run([corpus], url=dp_url, fields={**fields, "collection": collection}))
            elapsed = time.perf_counter() - started
            cpu = {name: cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
            cpu["client"] = time.process_time() - cpu_before["client"]
            calls, inputs = (a - b for a, b in zip(batch_stats(emb_url), (calls_before, inputs_before), strict=True))
            failed = [j for j in jobs.values() if j["status"] != "succeeded"]
            if failed:
                raise SystemExit(f"{len(failed)} job(s) did not succeed, e.g. {failed[0]}")
            chunks = sum(j["chunks_total"] for j in jobs.values())
            ingest_s.append(elapsed)
            print(
                f"  ingest run {i + 1}: {chunks} chunks in {elapsed:.2f}s = {chunks / elapsed:.1f} chunks/s; "
                f"{calls:.0f} model calls of {inputs / max(calls, 1):.1f} chunks on average; CPU s: "
                + ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu.items())
            )
        texts = asyncio.run(stored_texts(redis.url, f"bench-{args.repeats - 1}"))
        assert len(texts) == chunks, (len(texts), chunks)
    finally:
        for proc in reversed(procs):
            proc.stop()
        redis.stop()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(MODELS / DEFAULT_EMBEDDING), device="cpu", local_files_only=True)
    model.encode(texts[:64], batch_size=64)  # warm-up
    encode_s = []
    for i in range(args.repeats):
        cpu_before = time.process_time()
        started = time.perf_counter()
        model.encode(texts, batch_size=64)
        encode_s.append(time.perf_counter() - started)
        print(
            f"  raw encode run {i + 1}: {len(texts)} chunks in {encode_s[-1]:.2f}s = {len(texts) / encode_s[-1]:.1f} "
            f"chunks/s; CPU s: {time.process_time() - cpu_before:.1f}"
        )

    ingest_rate = chunks / statistics.median(ingest_s)
    raw_rate = len(texts) / statistics.median(encode_s)
    ratio = ingest_rate / raw_rate
    mean_chars = sum(len(t) for t in texts) / len(texts)
    print()
    print(f"chunks: {chunks} (mean {mean_chars:.0f} characters)")
    print(f"ingestion (upload -> all jobs succeeded), median of {args.repeats}: {ingest_rate:.1f} chunks/s")
    print(f"embedding-bound limit (in-process encode, batch 64), median of {args.repeats}: {raw_rate:.1f} chunks/s")
    print(f"ratio: {ratio:.2f} (target >= {TARGET_RATIO}) -> {'PASS' if ratio >= TARGET_RATIO else 'FAIL'}")


if __name__ == "__main__":
    main()
