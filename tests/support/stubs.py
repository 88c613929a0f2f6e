"""Instant stand-ins for the embedding, retriever, reranker and LLM services, for the gateway's tests and
benchmark: real HTTP servers on 127.0.0.1 (aiohttp, one event loop for all four), speaking the
services' contracts, with knobs for fault injection and a record of what they were sent.

In tests: ``with StubMesh() as mesh:`` runs them in a background thread; ``mesh.knobs[...]`` changes
behaviour between requests, ``mesh.seen[...]`` holds the bodies received. For benchmarks:
``python -m tests.support.stubs PORT_EMBEDDING PORT_RETRIEVER PORT_RERANKER PORT_LLM`` serves until killed.
Besides our contracts they answer the shapes OPEA's ChatQnA orchestrator sends (``/embed``,
``/opea/retrieval``), so both gateways can be measured against the same stubs.

A question containing ``[slow-first-byte]`` makes the LLM hold its answer (``slow_held`` is set meanwhile) until
``slow_release`` is set, or `SLOW_FIRST_BYTE_S` at most.
An optional fifth stub, ``dataprep`` (``StubMesh(only=(..., "dataprep"))``), keeps documents in memory: each
ingest job finishes at the second look at it (a file named ``broken*`` fails), ``/get`` and ``/delete`` as
dataprep's.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

DIM = 384
SLOW_MARK = b"[slow-first-byte]"
SLOW_FIRST_BYTE_S = 60.0
VECTOR = [round(0.001 * (i % 97) + 0.01, 4) for i in range(DIM)]

DOCS: list[dict[str, Any]] = [
    {
        "id": f"rag-redis:chunk:doc{i}:1:0",
        "text": f"Passage {i}: the stub knows fact number {i} about the Zorblax project, in some detail.",
        "score": round(0.9 - 0.1 * i, 3),
        "metadata": {"source": f"doc{i}.txt", "doc_id": f"doc{i}", "page": None, "chunk": 0, "tags": []},
    }
    for i in range(4)
]
TOKENS = ["The", " answer", " is", " forty", "-two", " [1]", "."]


@dataclass
class Knobs:
    """Behaviour of one stub; change between requests."""

    status: int = 200  # answer this status with an error envelope (for /v1/ready too when ready is False)
    message: str = "stub failure"
    delay_s: float = 0.0  # before answering (before the headers, for the LLM)
    ready: bool = True
    # retriever
    documents: list[dict[str, Any]] = field(default_factory=lambda: [dict(d) for d in DOCS])
    # LLM
    tokens: list[str] = field(default_factory=lambda: list(TOKENS))
    chunk_delay_s: float = 0.0
    fail_after: int | None = None  # stream: send an error event after this many content chunks
    cut_after: int | None = None  # stream: drop the connection after this many content chunks
    retry_after: str = "1"


class Stubs:
    """The four stub apps and their shared state."""

    def __init__(self) -> None:
        self.knobs: dict[str, Knobs] = {n: Knobs() for n in ("embedding", "retriever", "reranker", "llm", "dataprep")}
        self.documents: dict[str, dict[str, Any]] = {}  # dataprep: doc_id -> DocumentInfo
        self.jobs: dict[str, dict[str, Any]] = {}  # dataprep: job_id -> JobInfo
        self.seen: dict[str, list[Any]] = {n: [] for n in self.knobs}
        self.headers: dict[str, list[dict[str, str]]] = {n: [] for n in self.knobs}  # of each request, lower-case
        self.record = True
        self.llm_aborted = threading.Event()  # the LLM saw its client go away mid-stream
        self.slow_held = threading.Event()  # a [slow-first-byte] request is being held
        self.slow_release = threading.Event()  # lets it go on
        self.llm_streams_open = 0
        self._embed_body = orjson.dumps(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": VECTOR}],
                "model": "stub-embedding",
                "usage": {"prompt_tokens": 8, "total_tokens": 8},
            }
        )
        self._tei_body = orjson.dumps([VECTOR])

    def reset(self) -> None:
        for name in self.knobs:
            self.knobs[name] = Knobs()
            self.seen[name].clear()
            self.headers[name].clear()
        self.llm_aborted.clear()
        self.documents.clear()
        self.jobs.clear()
        self.slow_held.clear()
        self.slow_release.clear()

    # -- helpers --

    async def _common(
        self, name: str, request: web.Request, raw: bytes | None = None
    ) -> tuple[Knobs, Any, web.Response | None]:
        """Record the body, apply the delay, and answer the error status when one is set."""
        knobs = self.knobs[name]
        raw = await request.read() if raw is None else raw
        body = orjson.loads(raw) if raw else None
        if self.record:
            self.seen[name].append(body)
            self.headers[name].append({k.lower(): v for k, v in request.headers.items()})
        if knobs.delay_s:
            await asyncio.sleep(knobs.delay_s)
        if knobs.status != 200:
            headers = {"Retry-After": knobs.retry_after} if knobs.status == 429 else None
            envelope = {"error": {"message": knobs.message, "type": "stub", "param": None, "code": None}}
            return (
                knobs,
                body,
                web.Response(
                    status=knobs.status, body=orjson.dumps(envelope), content_type="application/json", headers=headers
                ),
            )
        return knobs, body, None

    @staticmethod
    def _json(data: Any) -> web.Response:
        return web.Response(
            body=data if isinstance(data, bytes) else orjson.dumps(data), content_type="application/json"
        )

    # -- routes --

    def app(self, name: str) -> web.Application:
        app = web.Application()

        async def ready(_: web.Request) -> web.Response:
            knobs = self.knobs[name]
            if not knobs.ready:
                return web.Response(
                    status=503,
                    body=orjson.dumps({"error": {"message": f"{name} stub is warming up"}}),
                    content_type="application/json",
                )
            return self._json({"status": "ready", "service": name, **({"model": "stub-llm"} if name == "llm" else {})})

        async def set_knobs(request: web.Request) -> web.Response:
            """Benchmarks change a stub in another process: {"chunk_delay_s": 0.01, "tokens": 20, ...}."""
            knobs = self.knobs[name]
            for key, value in (await request.json()).items():
                tokens = [f" t{i}" for i in range(value)] if key == "tokens" and isinstance(value, int) else None
                setattr(knobs, key, value if tokens is None else tokens)
            return self._json({"ok": True})

        app.router.add_post("/_knobs", set_knobs)
        app.router.add_get("/v1/ready", ready)
        app.router.add_get("/v1/health_check", ready)
        routes = {
            "embedding": [("/v1/embeddings", self.embeddings), ("/embed", self.tei_embed)],
            "retriever": [("/v1/retrieval", self.retrieval), ("/opea/retrieval", self.opea_retrieval)],
            "reranker": [("/rerank", self.rerank)],
            "llm": [("/v1/chat/completions", self.chat)],
            "dataprep": [
                ("/v1/dataprep/ingest", self.ingest),
                ("/v1/dataprep/get", self.documents_of),
                ("/v1/dataprep/delete", self.delete),
            ],
        }[name]
        for path, handler in routes:
            app.router.add_post(path, handler)
        if name == "llm":

            async def models(_: web.Request) -> web.Response:
                return self._json(
                    {"object": "list", "data": [{"id": "stub-llm", "object": "model", "owned_by": "stub"}]}
                )

            app.router.add_get("/v1/models", models)
        if name == "dataprep":
            app.router.add_get("/v1/dataprep/jobs", self.job_list)
        return app

    # -- dataprep --

    async def ingest(self, request: web.Request) -> web.Response:
        form = await request.post()
        collection = str(form.get("collection") or "rag-redis")
        sources = [f.filename for f in form.getall("files", []) if isinstance(f, web.FileField)]
        sources += orjson.loads(str(form.get("link_list") or "[]"))
        if self.record:
            self.seen["dataprep"].append({"sources": sources, "collection": collection})
        refs = []
        for source in sources:
            job_id = f"job-{len(self.jobs)}"
            doc_id = hashlib.sha256(f"{collection}\x00{source}".encode()).hexdigest()[:32]
            self.jobs[job_id] = {
                "job_id": job_id, "source": source, "collection": collection, "status": "queued",
                "doc_id": doc_id, "created_at": time.time(), "looks": 0,
            }  # fmt: skip
            refs.append({"job_id": job_id, "source": source, "status": "queued"})
        return web.Response(status=202, body=orjson.dumps({"jobs": refs}), content_type="application/json")

    async def job_list(self, request: web.Request) -> web.Response:
        jobs = [self.jobs[i] for i in request.query.get("ids", "").split(",") if i in self.jobs]
        for job in jobs:  # each job finishes at the second look
            job["looks"] += 1
            if job["looks"] >= 2 and job["status"] == "queued":
                broken = job["source"].startswith("broken")
                job["status"] = "failed" if broken else "succeeded"
                job["error"] = "stub: could not parse" if broken else None
                if not broken:
                    self.documents[job["doc_id"]] = {
                        "doc_id": job["doc_id"], "source": job["source"], "chunks": 1, "sha256": "0" * 64,
                        "updated_at": time.time(), "tags": [], "collection": job["collection"],
                    }  # fmt: skip
        return self._json({"jobs": [{k: v for k, v in j.items() if k != "looks"} for j in jobs]})

    async def documents_of(self, request: web.Request) -> web.Response:
        raw = await request.read()
        collection = (orjson.loads(raw) if raw else {}).get("collection") or "rag-redis"
        docs = [d for d in self.documents.values() if d["collection"] == collection]
        return self._json([{k: v for k, v in d.items() if k != "collection"} for d in docs])

    async def delete(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if self.record:
            self.seen["dataprep"].append(body)
        path = body["file_path"]
        gone = [
            i for i, d in self.documents.items()
            if d["collection"] == body.get("collection", "rag-redis") and path in ("all", i, d["source"])
        ]  # fmt: skip
        for doc_id in gone:
            del self.documents[doc_id]
        return self._json({"deleted": len(gone)})

    async def embeddings(self, request: web.Request) -> web.Response:
        _, body, error = await self._common("embedding", request)
        if error:
            return error
        inputs = body.get("input") if isinstance(body, dict) else None
        if isinstance(inputs, list) and len(inputs) != 1:  # a batch (dataprep): one vector per input
            data = [{"object": "embedding", "index": i, "embedding": VECTOR} for i in range(len(inputs))]
            return self._json(
                {
                    "object": "list",
                    "data": data,
                    "model": "stub-embedding",
                    "usage": {"prompt_tokens": 8, "total_tokens": 8},
                }
            )
        return self._json(self._embed_body)

    async def tei_embed(self, request: web.Request) -> web.Response:
        _, _, error = await self._common("embedding", request)
        return error or self._json(self._tei_body)

    async def retrieval(self, request: web.Request) -> web.Response:
        knobs, body, error = await self._common("retriever", request)
        if error:
            return error
        docs = knobs.documents[: body.get("k", 4)]
        return self._json(
            {
                "query": body.get("text"),
                "collection": body.get("collection") or "rag-redis",
                "search_type": body.get("search_type", "similarity"),
                "documents": docs,
            }
        )

    async def opea_retrieval(self, request: web.Request) -> web.Response:
        knobs, body, error = await self._common("retriever", request)
        if error:
            return error
        docs = knobs.documents[: body.get("k", 4)]
        return self._json(
            {
                "id": "x",
                "retrieved_docs": [{"text": d["text"]} for d in docs],
                "initial_query": body.get("text"),
                "top_n": 1,
            }
        )

    async def rerank(self, request: web.Request) -> web.Response:
        _, body, error = await self._common("reranker", request)
        if error:
            return error
        n = len(body["texts"])
        ranked = [{"index": i, "score": round(0.99 - 0.1 * r, 3)} for r, i in enumerate(reversed(range(n)))]
        top_n = body.get("top_n")
        resp = self._json(ranked[:top_n] if top_n else ranked)
        resp.headers["x-chatqna-model"] = "stub-reranker"  # as the reranker service names its model
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._chat(request)
        except (ConnectionError, asyncio.CancelledError):  # the caller went away: the generation stops
            self.llm_aborted.set()
            raise

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if SLOW_MARK in raw:
            self.slow_held.set()
            await asyncio.to_thread(self.slow_release.wait, SLOW_FIRST_BYTE_S)
        knobs, body, error = await self._common("llm", request, raw)
        if error:
            return error
        model, created, cid = "stub-llm", int(time.time()), "chatcmpl-stub"
        if not body.get("stream"):
            text = "".join(knobs.tokens)
            return self._json(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 11,
                        "completion_tokens": len(knobs.tokens),
                        "total_tokens": 11 + len(knobs.tokens),
                    },
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        self.llm_streams_open += 1

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return (
                b"data: "
                + orjson.dumps(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                        **extra,
                    }
                )
                + b"\n\n"
            )

        try:
            await resp.write(chunk({"role": "assistant", "content": ""}))
            for n, token in enumerate(knobs.tokens):
                if knobs.chunk_delay_s:
                    await asyncio.sleep(knobs.chunk_delay_s)
                if knobs.fail_after is not None and n == knobs.fail_after:
                    error = {"message": "stub generation failed", "type": "internal_error", "param": None, "code": None}
                    await resp.write(b"data: " + orjson.dumps({"error": error}) + b"\n\n")
                    await resp.write(b"data: [DONE]\n\n")
                    return resp
                if knobs.cut_after is not None and n == knobs.cut_after:
                    request.transport.close()
                    return resp
                await resp.write(chunk({"content": token}))
            await resp.write(chunk({}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {
                    "prompt_tokens": 11,
                    "completion_tokens": len(knobs.tokens),
                    "total_tokens": 11 + len(knobs.tokens),
                }
                await resp.write(
                    b"data: "
                    + orjson.dumps(
                        {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                    + b"\n\n"
                )
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        finally:
            self.llm_streams_open -= 1
        return resp


async def serve(stubs: Stubs, ports: dict[str, int]) -> list[web.AppRunner]:
    runners = []
    for name, port in ports.items():
        runner = web.AppRunner(stubs.app(name), access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        runners.append(runner)
    return runners


class StubMesh:
    """The four stubs on free ports, served from a background thread (for tests)."""

    def __init__(self, only: tuple[str, ...] = ("embedding", "retriever", "reranker", "llm")) -> None:
        from comps.runtime.process import free_port

        self.stubs = Stubs()
        self.ports = {name: free_port() for name in only}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stubs", daemon=True)
        self._runners: list[web.AppRunner] = []

    @property
    def knobs(self) -> dict[str, Knobs]:
        return self.stubs.knobs

    @property
    def seen(self) -> dict[str, list[Any]]:
        return self.stubs.seen

    @property
    def headers(self) -> dict[str, list[dict[str, str]]]:
        return self.stubs.headers

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def env(self, prefix: str = "GATEWAY_") -> dict[str, str]:
        env = {f"{prefix}{name.upper()}_URL": self.url(name) for name in self.ports}
        if prefix == "GATEWAY_":
            env["GATEWAY_AUTH_ENABLED"] = "false"  # stubs test the pipeline; identity has tests of its own
            env["GATEWAY_CACHE_ENABLED"] = "false"  # every request reaches the stubs; the cache has tests of its own
        return env

    def start(self) -> StubMesh:
        self._thread.start()
        self._runners = asyncio.run_coroutine_threadsafe(serve(self.stubs, self.ports), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> StubMesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str]) -> None:
    """``python -m tests.support.stubs E R K L``: serve the four stubs on these ports until killed."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    ports = dict(zip(("embedding", "retriever", "reranker", "llm"), (int(p) for p in argv), strict=True))
    stubs = Stubs()
    stubs.record = False

    async def run() -> None:
        await serve(stubs, ports)
        print("stubs ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main(sys.argv[1:])
