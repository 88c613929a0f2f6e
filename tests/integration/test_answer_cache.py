"""The answer cache through the real gateway: a real Redis, a real PostgreSQL (accounts on) and chathistory; stub
embedding, retriever, reranker and LLM services count what reaches them.

A hit must be the same JSON / the same SSE grammar as a fresh answer, marked ``cached``; a write to a collection
(the vector store's own code, as dataprep runs it) makes its cached answers unreachable at once; a user never
gets an answer built from collections they may not read; a broken entry is a miss and is removed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from comps.vectorstore import documents, schema
from comps.vectorstore.stores import make_store
from comps.vectorstore.versions import content_versions, version_key
from tests.support.otlp import OtlpCollector, Span
from tests.support.procs import Service, start_chathistory, start_service
from tests.support.sse import sse_data
from tests.support.stubs import DIM, TOKENS, VECTOR, StubMesh

pytestmark = pytest.mark.integration

JWT_SECRET = secrets.token_urlsafe(48)
INTERNAL = secrets.token_urlsafe(32)
ADMIN = ("cache-admin", "admin-pass-" + secrets.token_hex(6))
ANSWER = "".join(TOKENS)


class Stack:
    def __init__(self, mesh: StubMesh, redis_url: str, gateway: Service, collector: OtlpCollector) -> None:
        self.mesh = mesh
        self.redis_url = redis_url
        self.gateway = gateway
        self.url = gateway.url
        self.collector = collector

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def login(self, username: str, password: str) -> str:
        r = httpx.post(f"{self.url}/v1/auth/login", json={"username": username, "password": password}, timeout=30)
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def llm_calls(self) -> int:
        return len(self.mesh.seen["llm"])


@contextmanager
def running_stack(redis_url: str, database_url: str, logs: Path, *, backend: str = "redis") -> Iterator[Stack]:
    """Stubs, a gateway whose vector store is ``backend`` (its spans to a collector) and, with the Redis store,
    chathistory."""
    with StubMesh() as mesh, OtlpCollector() as collector, ExitStack() as running:
        history = None
        if backend == "redis":
            history = start_chathistory(database_url, INTERNAL, logs)
            running.callback(history.stop)
        env = {
            **mesh.env(),
            "GATEWAY_AUTH_ENABLED": "true",
            "GATEWAY_CACHE_ENABLED": "true",
            "VECTORSTORE_BACKEND": backend,
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "GATEWAY_JWT_SECRET": JWT_SECRET,
            "GATEWAY_INTERNAL_API_KEY": INTERNAL,
            "GATEWAY_CHATHISTORY_URL": history.url if history else "",
            "GATEWAY_PROMPTS_URL": "",
            "CHATQNA_ADMIN_USER": ADMIN[0],
            "CHATQNA_ADMIN_PASSWORD": ADMIN[1],
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        gateway = start_service("megaservice", "GATEWAY_", env, name="gateway", log_dir=logs, timeout_s=120)
        running.callback(gateway.stop)
        yield Stack(mesh, redis_url, gateway, collector)


@pytest.fixture(scope="module")
def stack(redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_url, database_url, tmp_path_factory.mktemp("cache")) as running:
        yield running


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client(stack.login(*ADMIN)) as c:
        yield c


def new_user(stack: Stack, admin: httpx.Client) -> httpx.Client:
    name, password = f"u{secrets.token_hex(4)}", "pw-" + secrets.token_hex(8)
    assert admin.post("/v1/admin/users", json={"username": name, "password": password}).status_code == 201
    return stack.client(stack.login(name, password))


def shared_collection(admin: httpx.Client) -> str:
    name = f"cache-{secrets.token_hex(4)}"
    r = admin.post("/v1/collections", json={"name": name, "visibility": "shared"})
    assert r.status_code == 201, r.text
    return name


def question() -> str:
    return f"What does the stub know about Zorblax {secrets.token_hex(3)}?"


def ask(c: httpx.Client, **body: Any) -> dict[str, Any]:
    r = c.post("/v1/chatqna", json=body)
    assert r.status_code == 200, r.text
    reply: dict[str, Any] = r.json()
    return reply


def stream(c: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    r = c.post("/v1/chatqna", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    return [orjson.loads(d) for d in data[:-1]]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def cache_redis(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url)


def test_the_same_question_twice_is_a_miss_then_a_hit_as_the_same_json(stack: Stack, admin: httpx.Client) -> None:
    coll, q = shared_collection(admin), question()
    calls = stack.llm_calls()
    fresh = ask(admin, messages=q, collection=coll)
    assert fresh["cached"] is False and stack.llm_calls() == calls + 1
    hit = ask(admin, messages=f"  {q}\n", collection=coll)  # whitespace is normalised away
    assert hit["cached"] is True and stack.llm_calls() == calls + 1  # the LLM was not asked again
    same = {"object", "model", "choices", "usage", "sources"}
    assert {k: hit[k] for k in same} == {k: fresh[k] for k in same}
    assert set(hit) == set(fresh) and hit["id"].startswith("chatcmpl-")
    assert hit["choices"][0]["message"]["content"] == ANSWER and hit["usage"]["completion_tokens"] == len(TOKENS)


def test_a_streamed_hit_is_the_same_sse_grammar_with_usage_when_asked(stack: Stack, admin: httpx.Client) -> None:
    coll, q = shared_collection(admin), question()
    calls = stack.llm_calls()
    fresh = stream(admin, messages=q, collection=coll, stream_options={"include_usage": True})
    assert fresh[0]["cached"] is False
    hit = stream(admin, messages=q, collection=coll, stream_options={"include_usage": True})
    assert stack.llm_calls() == calls + 1
    assert hit[0]["cached"] is True and hit[0]["sources"] == fresh[0]["sources"]
    assert hit[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text_of(hit) == text_of(fresh) == ANSWER
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == fresh[0]["model"] for c in hit)
    assert hit[-2]["choices"][0]["finish_reason"] == fresh[-2]["choices"][0]["finish_reason"] == "stop"
    assert hit[-1]["choices"] == [] and hit[-1]["usage"] == fresh[-1]["usage"]
    # without include_usage, no usage chunk; the JSON form of the same question is a hit too
    plain = stream(admin, messages=q, collection=coll)
    assert plain[0]["cached"] is True and all(c["choices"] for c in plain)
    assert ask(admin, messages=q, collection=coll)["cached"] is True and stack.llm_calls() == calls + 1


def test_a_traces_chain_span_says_whether_the_cache_held_the_answer(stack: Stack, admin: httpx.Client) -> None:
    """A miss's CHAIN span says so and its trace has the hops; a hit's says how it matched and its trace has no
    hop at all; a request the cache was not asked about (cache: false) says nothing of the cache."""
    coll, q = shared_collection(admin), question()
    traces = {}
    for outcome, body in (("miss", {}), ("hit", {}), ("bypass", {"cache": False})):
        traces[outcome] = trace_id = secrets.token_hex(16)
        r = admin.post(
            "/v1/chatqna",
            json={"messages": q, "collection": coll, **body},
            headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        )
        assert r.status_code == 200 and r.json()["cached"] is (outcome == "hit"), r.text

    def chains(spans: list[Span]) -> dict[str, Span] | None:
        found = {o: s for s in spans for o, t in traces.items() if s.trace_id == t and s.kind == "CHAIN"}
        return found if len(found) == 3 else None

    chain = stack.collector.wait_for(chains)
    assert (
        chain["miss"].attributes["chatqna.cache.hit"] is False and "chatqna.cache.match" not in chain["miss"].attributes
    )
    assert chain["hit"].attributes["chatqna.cache.hit"] is True
    assert chain["hit"].attributes["chatqna.cache.match"] == "exact"
    assert not {"chatqna.cache.hit", "chatqna.cache.match"} & chain["bypass"].attributes.keys()
    hops = {"EMBEDDING", "RETRIEVER", "RERANKER", "LLM"}  # a hop's span ends before its request's CHAIN span
    assert hops <= {s.kind for s in stack.collector.trace(traces["miss"])}
    assert not hops & {s.kind for s in stack.collector.trace(traces["hit"])}


def test_cache_false_bypasses_and_a_temperature_is_not_cached(stack: Stack, admin: httpx.Client) -> None:
    coll, q = shared_collection(admin), question()
    calls = stack.llm_calls()
    for _ in range(2):
        assert ask(admin, messages=q, collection=coll, cache=False)["cached"] is False
        assert ask(admin, messages=q, collection=coll, temperature=0.7)["cached"] is False
    assert stack.llm_calls() == calls + 4
    assert ask(admin, messages=q, collection=coll)["cached"] is False  # cache:false did not store it either
    # cache:true caches a sampled answer on purpose
    assert ask(admin, messages=q, collection=coll, temperature=0.7, cache=True)["cached"] is False
    assert ask(admin, messages=q, collection=coll, temperature=0.7, cache=True)["cached"] is True


def test_a_write_to_the_collection_makes_its_answers_unreachable_at_once(stack: Stack, admin: httpx.Client) -> None:
    coll, q = shared_collection(admin), question()

    async def write(step: str) -> int:
        async with aioredis.Redis.from_url(stack.redis_url) as r:
            return await change(r, step)

    async def change(r: aioredis.Redis, step: str) -> int:
        if step == "ingest":
            await schema.ensure_index(r, coll, DIM)
            record = documents.DocumentRecord(doc_id="d1", source="new.txt", sha256=secrets.token_hex(8))
            await documents.replace_document(r, coll, record, [documents.Chunk("new text", VECTOR)])
        elif step == "delete":
            await documents.delete_document(r, coll, "d1")
        else:
            await documents.delete_all(r, coll)
        return (await content_versions(r, [coll]))[coll]

    versions = []
    assert ask(admin, messages=q, collection=coll)["cached"] is False
    for step in ("ingest", "replace", "delete", "delete_all", "ingest"):
        assert ask(admin, messages=q, collection=coll)["cached"] is True
        versions.append(asyncio.run(write("ingest" if step == "replace" else step)))
        # no wait: the write's transaction bumped the version the next request reads
        assert ask(admin, messages=q, collection=coll)["cached"] is False, step
    assert versions == sorted(set(versions))  # deleting and re-creating the collection never reuses a version


def test_a_user_never_gets_an_answer_built_from_a_collection_they_may_not_read(
    stack: Stack, admin: httpx.Client
) -> None:
    a, b = new_user(stack, admin), new_user(stack, admin)
    mine = a.get("/v1/auth/me").json()["personal_collection"]
    q = question()
    assert ask(a, messages=q)["cached"] is False  # searches the shared collections and A's own
    assert ask(a, messages=q)["cached"] is True
    assert ask(b, messages=q)["cached"] is False  # the same question, but B searches B's own, not A's
    assert ask(a, messages=q, collection=mine)["cached"] is False
    assert ask(a, messages=q, collection=mine)["cached"] is True
    r = b.post("/v1/chatqna", json={"messages": q, "collection": mine})
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
    r = b.post("/v1/chatqna", json={"messages": q, "collection": mine, "stream": True})
    assert r.status_code == 404


def test_a_corrupt_entry_is_a_miss_and_is_removed(stack: Stack, admin: httpx.Client) -> None:
    coll, q = shared_collection(admin), question()
    ask(admin, messages=q, collection=coll)
    r = cache_redis(stack)
    before = set(r.keys("_cache:a:*"))
    ask(admin, messages=q + " (other)", collection=coll)
    (key,) = set(r.keys("_cache:a:*")) - before
    for garbage in (b"\xff\x00 not json", b'{"schema": 1, "model": 5}'):
        ttl = r.ttl(key)
        r.set(key, garbage, ex=ttl)
        calls = stack.llm_calls()
        reply = ask(admin, messages=q + " (other)", collection=coll)
        assert reply["cached"] is False and stack.llm_calls() == calls + 1
        assert reply["choices"][0]["message"]["content"] == ANSWER
        assert r.get(key) != garbage  # removed, then stored fresh
        assert ask(admin, messages=q + " (other)", collection=coll)["cached"] is True
    r.set(key, b"{", ex=60)
    stack.mesh.knobs["llm"].status = 500  # no fresh answer to store in its place
    try:
        assert admin.post("/v1/chatqna", json={"messages": q + " (other)", "collection": coll}).status_code == 502
    finally:
        stack.mesh.stubs.reset()
    assert not r.exists(key)  # the broken entry itself was removed
    r.set(key, b"[]", ex=60)
    chunks = stream(admin, messages=q + " (other)", collection=coll)
    assert chunks[0]["cached"] is False and text_of(chunks) == ANSWER
    metrics = httpx.get(f"{stack.url}/metrics", timeout=10).text
    assert "chatqna_gateway_cache_corrupt_total 4.0" in metrics


def test_a_cached_answer_in_a_conversation_is_stored_as_cached(stack: Stack, admin: httpx.Client) -> None:
    user = new_user(stack, admin)
    q = question()
    assert ask(user, messages=q)["cached"] is False
    reply = ask(user, messages=q, store=True)  # a new conversation: no earlier turns, so the same key
    assert reply["cached"] is True and reply["conversation_saved"] is True
    msgs = user.get(f"/v1/conversations/{reply['conversation_id']}/messages").json()["data"]
    assert [(m["role"], m["cached"]) for m in msgs] == [("user", False), ("assistant", True)]
    assert msgs[1]["content"] == ANSWER and msgs[1]["usage"] == reply["usage"]
    # the follow-up carries the conversation's turns: another key
    assert ask(user, messages=q, conversation_id=reply["conversation_id"])["cached"] is False


def test_only_admins_see_and_flush_the_cache(stack: Stack, admin: httpx.Client) -> None:
    user = new_user(stack, admin)
    for method, path in (("GET", "/v1/admin/cache/stats"), ("POST", "/v1/admin/cache/flush")):
        r = user.request(method, path)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only", r.text
        assert httpx.request(method, stack.url + path, timeout=10).status_code == 401
    coll, q = shared_collection(admin), question()
    ask(admin, messages=q, collection=coll)
    ask(admin, messages=q, collection=coll)
    stats = admin.get("/v1/admin/cache/stats").json()
    assert stats["enabled"] is True and stats["semantic"] is False and stats["ttl_s"] == 86_400
    assert stats["entries"] >= 1 and stats["bytes"] > 0 and stats["hits"] >= 1 and stats["misses"] >= 1
    assert 0 < stats["hit_rate"] < 1 and stats["max_entries"] == 10_000
    flushed = admin.post("/v1/admin/cache/flush").json()["flushed"]
    assert flushed == stats["entries"]
    after = admin.get("/v1/admin/cache/stats").json()
    assert after["entries"] == 0 and after["bytes"] == 0 and after["hits"] == stats["hits"]
    assert ask(admin, messages=q, collection=coll)["cached"] is False


def test_the_oldest_entries_are_evicted_beyond_max_entries(redis_url: str) -> None:
    from megaservice.cache import Answer, AnswerCache, Key, Lookup
    from megaservice.protocol import ChatQnARequest

    async def run() -> dict[str, Any]:
        cache = AnswerCache(redis_url, ttl_s=60, max_entries=3, timeout_s=1)
        await cache.flush()
        before = await cache.stats()
        keys = [Key("base", f"q{n}", ()).at([]) for n in range(5)]
        for key in keys:
            await cache.store(Lookup(key), Answer("m", "a" * 100, "stop", None, []))
        after = await cache.stats()
        present = [bool(await cache.r.exists("_cache:a:" + k.digest)) for k in keys]
        # the key Redis computes (versions read in the lookup's one round trip) is the key Python computes
        req = ChatQnARequest.model_validate({"messages": "q", "temperature": 0})
        parts = {"pipeline": "rag", "question_rewrite": "heuristic", "prompt": None, "defaults": {}}
        await cache.r.incrby(version_key("v2"), 2)
        found = await cache.lookup(req, collections=["v1", "v2"], deterministic=True, **parts)
        versions = await content_versions(cache.r, ["v1", "v2"])
        assert found is not None and found.answer is None
        assert found.key == Key.of(req, collections=["v1", "v2"], **parts).at([versions["v1"], versions["v2"]])
        await cache.close()
        return {"before": before, "after": after, "present": present}

    got = asyncio.run(run())
    assert got["present"] == [False, False, True, True, True]
    assert got["after"]["entries"] == 3 and got["after"]["evictions"] - got["before"]["evictions"] == 2
    one = len(Answer("m", "a" * 100, "stop", None, [], "q0").encode())
    assert got["after"]["bytes"] == 3 * one


def test_semantic_matching_serves_a_paraphrase_only_within_the_same_context(redis_url: str) -> None:
    from megaservice.cache import Answer, AnswerCache

    vectors = {"Who keeps the lamp?": [1.0, 0.0, 0.0], "Who is the lamp keeper?": [0.99, 0.1, 0.0]}

    async def embed(text: str) -> list[float]:
        return vectors.get(text, [0.0, 0.0, 1.0])

    async def run() -> list[bool | None]:
        cache = AnswerCache(
            redis_url, ttl_s=60, max_entries=100, timeout_s=1, semantic=True, threshold=0.97, embed=embed
        )
        parts = {
            "pipeline": "rag",
            "question_rewrite": "heuristic",
            "prompt": None,
            "defaults": {},
            "deterministic": True,
        }
        coll = [f"sem-{secrets.token_hex(3)}"]

        async def hit(question: str, collections: list[str]) -> bool | None:
            req = ChatQnARequest.model_validate({"messages": question})
            found = await cache.lookup(req, collections=collections, **parts)
            assert found is not None
            if found.answer is None:
                await cache.store(found, Answer("m", f"answer to {question}", "stop", None, []))
                return False
            assert found.match == ("exact" if found.answer.question == question else "semantic")
            return found.answer.question == "Who keeps the lamp?"

        got = [
            await hit("Who keeps the lamp?", coll),  # miss, stored
            await hit("Who is the lamp keeper?", coll),  # a paraphrase: the stored answer
            await hit("What colour is the lamp?", coll),  # not similar: a miss
            await hit("Who is the lamp keeper?", [f"sem-{secrets.token_hex(3)}"]),  # another collection: a miss
        ]
        await cache.close()
        return got

    from megaservice.protocol import ChatQnARequest

    assert asyncio.run(run()) == [False, True, False, False]


def test_a_failing_service_is_still_its_error_and_nothing_is_cached(stack: Stack, admin: httpx.Client) -> None:
    coll, q = shared_collection(admin), question()
    stack.mesh.knobs["reranker"].status = 503
    try:
        for stream_it in (False, True):
            r = admin.post("/v1/chatqna", json={"messages": q, "collection": coll, "stream": stream_it})
            assert r.status_code == 503 and r.json()["error"]["code"] == "reranker", r.text
    finally:
        stack.mesh.stubs.reset()
    assert ask(admin, messages=q, collection=coll)["cached"] is False


def test_under_pgvector_the_versions_are_read_in_postgres_and_a_write_makes_the_next_ask_a_miss(
    redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """VECTORSTORE_BACKEND=pgvector: the entries stay in the gateway's Redis, the content versions are PostgreSQL's
    (bumped in each write's transaction, through the store's own code as dataprep runs it)."""
    logs = tmp_path_factory.mktemp("cache-pgvector")

    async def write(coll: str, step: str) -> int:
        store = make_store("pgvector", database_url=database_url)
        await store.open()
        try:
            if step == "ingest":
                await store.ensure_collection(coll, DIM)
                record = documents.DocumentRecord(doc_id="d1", source="new.txt", sha256=secrets.token_hex(8))
                await store.replace_document(coll, record, [documents.Chunk("new text", VECTOR)])
            else:
                await store.delete_document(coll, "d1")
            return (await store.content_versions([coll]))[coll]
        finally:
            await store.close()

    with running_stack(redis_url, database_url, logs, backend="pgvector") as pg, pg.client(pg.login(*ADMIN)) as admin:
        cache = admin.get("/v1/admin/system").json()["cache"]
        assert cache == {"status": "up", "enabled": True, "versions": "pgvector", "reachable": True, "semantic": False}
        coll, q = shared_collection(admin), question()
        calls = pg.llm_calls()
        assert ask(admin, messages=q, collection=coll)["cached"] is False
        versions = []
        for step in ("ingest", "replace", "delete"):
            assert ask(admin, messages=q, collection=coll)["cached"] is True
            versions.append(asyncio.run(write(coll, "ingest" if step == "replace" else step)))
            assert ask(admin, messages=q, collection=coll)["cached"] is False, step  # no wait: the next ask misses
        assert versions == [1, 2, 3] and pg.llm_calls() == calls + 4
        assert not cache_redis(pg).exists(version_key(coll))  # the versions were not Redis's
        assert admin.get("/v1/admin/cache/stats").json()["hits"] >= 3
