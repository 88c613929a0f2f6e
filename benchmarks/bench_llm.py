"""LLM service vs llama-cpp-python in-process, on the same GGUF, prompt, threads and greedy decoding.

Starts ``python -m comps.llm`` (llama-cpp backend) on a free 127.0.0.1 port, then measures:
- single stream, alternating for ``--rounds`` rounds: one streaming request through the service vs
  ``Llama(...).create_chat_completion(stream=True)`` in this process, each round with a new system
  prompt (so neither side can reuse a cached prompt); decode tokens/s is timed from the first to the
  last content token, TTFT from sending the request to the first content token;
- warm TTFT: the same prompt again and again, so both sides reuse its cached KV prefix;
- concurrency: ``--concurrency`` streams at once through the service; aggregate tokens/s
  (all completion tokens / wall time) as a multiple of one stream's tokens/s measured the same way.
Prints medians and the ratios measured in this run.

    .venv/bin/python benchmarks/bench_llm.py [--max-tokens 128] [--rounds 5] [--concurrency 8]
        [--n-gpu-layers -1] [--model PATH] [--json FILE]

``--n-gpu-layers`` goes to both sides (the service's ``LLM_N_GPU_LAYERS`` and ``Llama(n_gpu_layers=...)``):
-1 offloads every layer with a CUDA build of llama-cpp-python. For a CPU figure from a CUDA build, run with
``CUDA_VISIBLE_DEVICES=`` so that llama.cpp offloads nothing (not even large prompt batches).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comps.runtime.models import DEFAULT_LLM  # noqa: E402
from comps.runtime.process import ManagedProcess, free_port  # noqa: E402

# llama.cpp's worker threads spin for a moment after each decode; a pause between the two sides
# keeps one side's spinning threads from slowing the other on a small machine.
SETTLE_S = 0.3

PROMPTS = [
    "Write a long story about a cat who becomes a sailor.",
    "Write a long story about a robot learning to paint.",
    "Write a long story about a lighthouse keeper and a storm.",
    "Write a long story about two friends crossing a desert.",
    "Write a long story about a baker who finds a map.",
    "Write a long story about a dragon afraid of the dark.",
    "Write a long story about a child who talks to trees.",
    "Write a long story about a train that never stops.",
]


def chat(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


async def stream_once(session: aiohttp.ClientSession, url: str, messages: list, max_tokens: int) -> dict[str, float]:
    """One streaming request; times of the first and last content chunk and the true token count."""
    body = {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"service answered {resp.status}: {await resp.text()}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
    return {"sent": sent, "first": first, "last": last, "tokens": tokens}


def in_process_once(llm, messages: list, max_tokens: int) -> dict[str, float]:
    sent = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for chunk in llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            first = first or last
            tokens += 1
    return {"sent": sent, "first": first, "last": last, "tokens": tokens}


def load_in_process(model: Path, threads: int, n_ctx: int, n_gpu_layers: int):
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    # The build's AMX path crashes on some Xeons (ggml-org/llama.cpp#20824) and Llama() has no switch
    # for it; the service runs with use_extra_bufts off (LLM_USE_EXTRA_BUFTS), so the baseline does too.
    defaults = lib.llama_model_default_params

    def no_extra_bufts():
        params = defaults()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = no_extra_bufts
    try:
        return llama_cpp.Llama(
            str(model),
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=n_gpu_layers,
            verbose=False,
        )
    finally:
        lib.llama_model_default_params = defaults


def decode_tps(run: dict[str, float]) -> float:
    return (run["tokens"] - 1) / (run["last"] - run["first"])


async def bench(args: argparse.Namespace) -> None:
    model = Path(args.model)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "LLM_PORT": str(port),
        "LLM_N_THREADS": str(args.threads),
        "LLM_N_CTX": str(args.n_ctx),
        "LLM_PARALLEL": str(args.concurrency),
        "LLM_MODEL": str(model),
        "LOG_LEVEL": "WARNING",
        "LLM_N_GPU_LAYERS": str(args.n_gpu_layers),
    }
    with open(os.devnull, "w") as sink:  # noqa: ASYNC230 - a benchmark: the loop has nothing else to run
        service = ManagedProcess("llm", [sys.executable, "-m", "comps.llm"], env=env, cwd=REPO, sink=sink).start()
        try:
            service.wait_http_ready(f"{url}/v1/ready", 180)
            llm = load_in_process(model, args.threads, args.n_ctx, args.n_gpu_layers)
            async with aiohttp.ClientSession() as session:
                await stream_once(session, url, chat(PROMPTS[1]), 8)  # warm both paths
                in_process_once(llm, chat(PROMPTS[1]), 8)
                svc_runs, local_runs = [], []
                for r in range(args.rounds):
                    messages = chat(PROMPTS[0], f"Round {r}: you are a storyteller who writes long, vivid stories.")
                    local_runs.append(in_process_once(llm, messages, args.max_tokens))
                    await asyncio.sleep(SETTLE_S)
                    svc_runs.append(await stream_once(session, url, messages, args.max_tokens))
                    await asyncio.sleep(SETTLE_S)
                svc_warm, local_warm = [], []
                for _ in range(args.rounds + 1):
                    local_warm.append(in_process_once(llm, chat(PROMPTS[2]), 4))
                    await asyncio.sleep(SETTLE_S)
                    svc_warm.append(await stream_once(session, url, chat(PROMPTS[2]), 4))
                    await asyncio.sleep(SETTLE_S)
                del llm
                single_e2e, multi = [], []
                for _ in range(args.conc_rounds):
                    start = time.perf_counter()
                    one = await stream_once(session, url, chat(PROMPTS[0]), args.max_tokens)
                    single_e2e.append(one["tokens"] / (one["last"] - start))
                    start = time.perf_counter()
                    runs = await asyncio.gather(
                        *(
                            stream_once(session, url, chat(PROMPTS[i % len(PROMPTS)]), args.max_tokens)
                            for i in range(args.concurrency)
                        )
                    )
                    multi.append(sum(r["tokens"] for r in runs) / (max(r["last"] for r in runs) - start))
        finally:
            service.stop()

    med = statistics.median
    svc_tps = med(decode_tps(r) for r in svc_runs)
    local_tps = med(decode_tps(r) for r in local_runs)

    def ttft_ms(runs: list[dict[str, float]]) -> float:
        return med(r["first"] - r["sent"] for r in runs) * 1000

    svc_ttft, local_ttft = ttft_ms(svc_runs), ttft_ms(local_runs)
    svc_warm_ttft, local_warm_ttft = ttft_ms(svc_warm[1:]), ttft_ms(local_warm[1:])
    tokens = med(r["tokens"] for r in svc_runs)
    print(
        f"model {model.name}, {args.threads} threads, n_gpu_layers {args.n_gpu_layers}, greedy, "
        f"max_tokens {args.max_tokens} "
        f"(median {tokens:.0f} tokens generated), medians of {args.rounds} rounds"
    )
    print(
        f"single stream decode   service {svc_tps:7.1f} tok/s   in-process {local_tps:7.1f} tok/s   "
        f"ratio {svc_tps / local_tps:.3f}  (target >= 0.95)"
    )
    print(
        f"TTFT, new prompt       service {svc_ttft:7.1f} ms      in-process {local_ttft:7.1f} ms      "
        f"overhead {svc_ttft - local_ttft:+.1f} ms  (target <= 10 ms)"
    )
    print(
        f"TTFT, cached prompt    service {svc_warm_ttft:7.1f} ms      in-process {local_warm_ttft:7.1f} ms      "
        f"overhead {svc_warm_ttft - local_warm_ttft:+.1f} ms  (target <= 10 ms)"
    )
    print(
        f"concurrency {args.concurrency}          aggregate {med(multi):7.1f} tok/s   "
        f"one stream {med(single_e2e):7.1f} tok/s   multiple {med(multi) / med(single_e2e):.2f}x  "
        f"(target >= 2x; medians of {args.conc_rounds} rounds)"
    )
    if args.json:
        figures = {
            "model": model.name,
            "threads": args.threads,
            "n_gpu_layers": args.n_gpu_layers,
            "max_tokens": args.max_tokens,
            "median_tokens": tokens,
            "rounds": args.rounds,
            "decode_tps_service": svc_tps,
            "decode_tps_in_process": local_tps,
            "ttft_ms_service": svc_ttft,
            "ttft_ms_in_process": local_ttft,
            "ttft_cached_ms_service": svc_warm_ttft,
            "ttft_cached_ms_in_process": local_warm_ttft,
            "concurrency": args.concurrency,
            "aggregate_tps": med(multi),
            "one_stream_tps": med(single_e2e),
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")  # noqa: ASYNC240 - once, after the measurements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--conc-rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--n-gpu-layers", type=int, default=0, help="layers on the GPU, both sides; -1 = all")
    parser.add_argument("--model", default=str(REPO / "models" / DEFAULT_LLM), help="GGUF file")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
