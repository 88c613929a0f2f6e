"""Embedding throughput: the service under 32 concurrent one-text clients vs in-process batched encode.

Starts ``python -m comps.embedding`` on a free 127.0.0.1 port, then alternates, for ``--rounds`` rounds:
- in-process: ``model.encode(texts, batch_size=64)`` of the same texts with the same torch threads;
- service: ``--clients`` aiohttp clients, each posting one text at a time to ``/v1/embeddings``
  until all texts are embedded (the service's dynamic batcher gathers them).
Prints chunks/s for both (medians over the rounds), their ratio, and the service's mean batch size.

    .venv/bin/python benchmarks/bench_embedding.py [--texts 512] [--clients 32] [--rounds 3]
        [--device cuda] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comps.runtime.process import ManagedProcess, free_port  # noqa: E402

WORDS = (
    "the service embeds every chunk of each document before it is stored in the vector index so that "
    "questions can be matched by meaning rather than by exact words while the reranker orders the "
    "candidates and the language model answers from the retrieved context about invoices contracts "
    "shipping delays warranty claims quarterly revenue customer support onboarding security policies "
    "data retention backups network outages release notes pricing tiers refunds audits compliance"
).split()


def make_texts(count: int, chars: int, seed: int = 7) -> list[str]:
    """Deterministic English-like chunks of about ``chars`` characters."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        words: list[str] = [f"Section {i}:"]
        while sum(len(w) + 1 for w in words) < chars:
            words.append(rng.choice(WORDS))
        texts.append(" ".join(words)[:chars].rsplit(" ", 1)[0] + ".")
    return texts


async def through_service(url: str, texts: list[str], clients: int) -> float:
    """Seconds for ``clients`` concurrent clients to embed every text, one text per request."""
    pending = list(reversed(texts))

    async def client(session: aiohttp.ClientSession) -> None:
        while pending:
            text = pending.pop()
            async with session.post(f"{url}/v1/embeddings", json={"input": text}) as resp:
                body = await resp.json()
                if resp.status != 200 or len(body["data"][0]["embedding"]) == 0:
                    raise RuntimeError(f"service answered {resp.status}: {body}")

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return time.perf_counter() - started


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the service's batch-size histogram."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()  # noqa: S310 - loopback
    total = float(re.search(r"^chatqna_embedding_batch_size_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^chatqna_embedding_batch_size_count (\S+)$", text, re.M).group(1))
    return total, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--chars", type=int, default=300)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--model", default=str(REPO / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="both sides run on this device")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    texts = make_texts(args.texts, args.chars)
    model = SentenceTransformer(args.model, device=args.device, local_files_only=True)
    model.encode(texts[:64], batch_size=64, show_progress_bar=False)  # warm-up
    tokens = [len(ids) for ids in model.tokenizer(texts)["input_ids"]]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "EMBEDDING_HOST": "127.0.0.1",
        "EMBEDDING_PORT": str(port),
        "EMBEDDING_MODEL": args.model,
        "EMBEDDING_DEVICE": args.device,
        "EMBEDDING_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
    }
    service = ManagedProcess(
        "embedding",
        [sys.executable, "-m", "comps.embedding"],
        env=env,
        cwd=REPO,
        sink=open(os.devnull, "w"),  # noqa: SIM115 - its last lines are kept for errors
    )
    print(
        f"{args.texts} texts of ~{args.chars} chars (median {statistics.median(tokens):.0f} tokens), "
        f"{args.clients} clients, torch threads {threads}, {os.cpu_count()} CPUs, device {args.device}"
    )
    local_rates, service_rates = [], []
    with service:
        service.wait_http_ready(f"{url}/v1/ready", 180)
        asyncio.run(through_service(url, texts[:64], args.clients))  # warm-up
        before = batch_stats(url)
        for r in range(args.rounds):
            started = time.perf_counter()
            model.encode(texts, batch_size=64, show_progress_bar=False)
            local_rates.append(len(texts) / (time.perf_counter() - started))
            service_rates.append(len(texts) / asyncio.run(through_service(url, texts, args.clients)))
            print(f"round {r + 1}: in-process {local_rates[-1]:.1f}/s, service {service_rates[-1]:.1f}/s")
        after = batch_stats(url)
    local, served = statistics.median(local_rates), statistics.median(service_rates)
    mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
    print(f"in-process model.encode(batch_size=64): {local:8.1f} chunks/s (median of {args.rounds})")
    print(f"service, {args.clients} clients x 1 text:    {served:8.1f} chunks/s (median of {args.rounds})")
    print(f"ratio service/in-process:              {served / local:8.2f}  (target >= 0.80)")
    print(f"service mean batch size:               {mean_batch:8.1f} inputs per model call")
    if args.json:
        figures = {
            "device": args.device,
            "threads": threads,
            "texts": args.texts,
            "chars": args.chars,
            "clients": args.clients,
            "rounds": args.rounds,
            "median_tokens": statistics.median(tokens),
            "in_process_chunks_per_s": local,
            "service_chunks_per_s": served,
            "service_mean_batch": mean_batch,
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
