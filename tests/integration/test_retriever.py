"""The retriever as a real process over real HTTP, on a real Redis (RediSearch), with a corpus embedded by the
real embedding service (all-MiniLM-L6-v2). The corpus holds made-up facts no model could know."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from redis.exceptions import ResponseError

from comps.runtime.process import free_port
from comps.vectorstore import schema
from tests.support.procs import start_service

pytestmark = pytest.mark.integration

KB = "rtest-kb"  # the retriever's default collection (INDEX_NAME)
OTHER = "rtest-other"  # a second collection, FLAT, other passages
EMPTY = "rtest-empty"  # an index with no chunks
MODEL = "all-MiniLM-L6-v2"
DIM = 384

HANDBOOK = "Staff Handbook (2031).pdf"  # spaces and parentheses: the tag filter must escape them
MANUAL = "manuals/frobnicator-9000.md"
CATALOGUE = "catalogue.csv"


@dataclass(frozen=True)
class Chunk:
    name: str
    text: str
    source: str
    doc_id: str
    n: int
    tags: tuple[str, ...]
    page: int | None = None


CORPUS = [
    Chunk(
        "hours",
        "The Zorblat office in Quentara opens at 07:40 and closes at 16:10 on weekdays.",
        HANDBOOK,
        "handbook",
        0,
        ("hr", "policy"),
        1,
    ),
    Chunk(
        "leave",
        "Zorblat employees receive 31 days of paid leave per year, which the staff call glimmer days.",
        HANDBOOK,
        "handbook",
        1,
        ("hr", "policy"),
        2,
    ),
    Chunk(
        "soup", "The Zorblat cafeteria serves purple lentil soup every Thursday.", HANDBOOK, "handbook", 2, ("hr",), 3
    ),
    Chunk(
        "recal",
        "The Frobnicator 9000 must be recalibrated every 17 days using the brass key.",
        MANUAL,
        "frob-manual",
        0,
        ("product", "maintenance"),
    ),
    Chunk(
        "recal_dup",
        "Every 17 days, recalibrate the Frobnicator 9000 with the brass key.",
        MANUAL,
        "frob-manual",
        1,
        ("product", "maintenance"),
    ),
    Chunk(
        "e77",
        "Error code E-77 on the Frobnicator 9000 means that its coolant tank is empty.",
        MANUAL,
        "frob-manual",
        2,
        ("product", "maintenance"),
    ),
    Chunk(
        "noise",
        "The Frobnicator 9000 hums at 43 decibels when it runs at full speed.",
        MANUAL,
        "frob-manual",
        3,
        ("product",),
    ),
    # A rare product code: one passage names KV-5093 (tokens "kv", "5093"); the others are about widgets with
    # look-alike single-token codes, which the embedding model ranks above it for "Which gadget is KV-5093?".
    Chunk(
        "kv5093",
        "KV-5093: anodised housing, ships in a cedar crate, discontinued in 2031.",
        CATALOGUE,
        "catalogue",
        0,
        ("product", "sales"),
    ),
    Chunk(
        "kv5093b",
        "The widget KV5093B is a small handheld device sold in pairs.",
        CATALOGUE,
        "catalogue",
        1,
        ("product", "sales"),
    ),
    Chunk(
        "kv5039",
        "Our widget KV5039 is a compact device for measuring humidity.",
        CATALOGUE,
        "catalogue",
        2,
        ("product", "sales"),
    ),
    Chunk(
        "kv50930",
        "The KV50930 widget is a portable device with a folding handle.",
        CATALOGUE,
        "catalogue",
        3,
        ("product", "sales"),
    ),
    Chunk(
        "kv9350",
        "A widget called KV9350 is the smallest device in the catalogue.",
        CATALOGUE,
        "catalogue",
        4,
        ("product", "sales"),
    ),
]
OTHER_CORPUS = [
    Chunk("moon", "The moon base Tycho-7 grows 40 kilograms of basil each month.", "moon.txt", "moon", 0, ("space",)),
    Chunk("rover", "Rover Pinwheel drives at most 9 kilometres per lunar day.", "moon.txt", "moon", 1, ("space",)),
]
KEYS = {c.name: schema.chunk_key(KB, c.doc_id, 1, c.n) for c in CORPUS}
OTHER_KEYS = {c.name: schema.chunk_key(OTHER, c.doc_id, 1, c.n) for c in OTHER_CORPUS}

QUESTIONS = [
    ("When does the Quentara office open?", "hours"),
    ("How many vacation days do Zorblat staff get?", "leave"),
    ("What soup is served on Thursdays?", "soup"),
    ("What does error E-77 mean?", "e77"),
    ("How loud is the Frobnicator?", "noise"),
]
GADGET = "Which gadget is KV-5093?"
RECAL = "How often must the Frobnicator be recalibrated?"


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def embedding(models_dir, tmp_path_factory):
    svc = start_service(
        "comps.embedding", "EMBEDDING_", {"EMBEDDING_DEVICE": "cpu"}, log_dir=tmp_path_factory.mktemp("embedding")
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def embed(embedding):
    """Texts -> unit vectors, from the real embedding service."""
    with httpx.Client(base_url=embedding.url, timeout=120) as c:

        def run(texts: list[str]) -> np.ndarray:
            resp = c.post("/v1/embeddings", json={"input": texts})
            assert resp.status_code == 200, resp.text
            return np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)

        yield run


async def _write(url: str, collection: str, chunks: list[Chunk], vectors: np.ndarray, algorithm: str) -> None:
    """The schema's key layout with plain HSETs (the write side's job in production)."""
    r = schema.connect(url)
    try:
        try:
            await r.execute_command("FT.DROPINDEX", collection, "DD")
        except ResponseError:
            pass
        await r.delete(schema.meta_key(collection), schema.docs_key(collection))
        await schema.ensure_index(r, collection, DIM, model=MODEL, algorithm=algorithm)
        async with r.pipeline(transaction=False) as pipe:
            for chunk, vector in zip(chunks, vectors, strict=True):
                mapping = {
                    schema.TEXT: chunk.text,
                    schema.EMBEDDING: schema.vector_bytes(vector),
                    schema.SOURCE: chunk.source,
                    schema.DOC_ID: chunk.doc_id,
                    schema.TAGS: ",".join(chunk.tags),
                    schema.CHUNK: chunk.n,
                }
                if chunk.page is not None:
                    mapping[schema.PAGE] = chunk.page
                pipe.hset(schema.chunk_key(collection, chunk.doc_id, 1, chunk.n), mapping=mapping)
                pipe.sadd(schema.docs_key(collection), chunk.doc_id)
            await pipe.execute()
    finally:
        await r.aclose()


@pytest.fixture(scope="module")
def vectors(redis_url, embed):
    """Writes the three collections; returns each chunk's vector by name."""
    kb = embed([c.text for c in CORPUS])
    other = embed([c.text for c in OTHER_CORPUS])
    asyncio.run(_write(redis_url, KB, CORPUS, kb, "HNSW"))
    asyncio.run(_write(redis_url, OTHER, OTHER_CORPUS, other, "FLAT"))
    asyncio.run(_write(redis_url, EMPTY, [], np.zeros((0, DIM)), "HNSW"))
    return {c.name: v for c, v in zip(CORPUS, kb, strict=True)}


@pytest.fixture(scope="module")
def retriever(redis_url, embedding, vectors, tmp_path_factory):
    svc = start_service(
        "comps.retriever",
        "RETRIEVER_",
        {"REDIS_URL": redis_url, "INDEX_NAME": KB, "RETRIEVER_EMBEDDING_URL": embedding.url},
        log_dir=tmp_path_factory.mktemp("retriever"),
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def client(retriever):
    with httpx.Client(base_url=retriever.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def q(embed):
    """A question's embedding as a JSON list."""
    cache: dict[str, list[float]] = {}

    def get(text: str) -> list[float]:
        if text not in cache:
            cache[text] = embed([text])[0].tolist()
        return cache[text]

    return get


def retrieve(client: httpx.Client, **body: object) -> list[dict]:
    resp = client.post("/v1/retrieval", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()["documents"]


def names(docs: list[dict]) -> list[str]:
    by_key = {v: k for k, v in {**KEYS, **OTHER_KEYS}.items()}
    return [by_key[d["id"]] for d in docs]


def error_of(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    return resp.json()["error"]["message"]


# ------------------------------------------------------------------------------------------------ tests


def test_ready_reports_redis_and_embedding(client: httpx.Client) -> None:
    body = client.get("/v1/ready").json()
    assert body["status"] == "ready"
    assert body["backend"] == "redis" and body["default_collection"] == KB
    assert body["embedding"] == "ready"


@pytest.mark.parametrize(("question", "expected"), QUESTIONS)
def test_question_finds_its_passage_first(client: httpx.Client, q, vectors, question: str, expected: str) -> None:
    body = client.post("/v1/retrieval", json={"text": question, "embedding": q(question)}).json()
    assert (body["query"], body["collection"], body["search_type"]) == (question, KB, "similarity")
    docs = body["documents"]
    assert len(docs) == 4
    assert names(docs)[0] == expected
    # scores are cosine similarities, best first
    assert docs[0]["score"] == pytest.approx(float(np.dot(q(question), vectors[expected])), abs=1e-4)
    assert [d["score"] for d in docs] == sorted((d["score"] for d in docs), reverse=True)


def test_metadata_round_trips(client: httpx.Client, q) -> None:
    question, _ = QUESTIONS[1]
    top = retrieve(client, embedding=q(question), k=1)[0]
    assert top["id"] == KEYS["leave"]
    assert top["text"] == CORPUS[1].text
    assert top["metadata"] == {
        "source": HANDBOOK,
        "doc_id": "handbook",
        "page": 2,
        "chunk": 1,
        "tags": ["hr", "policy"],
    }
    manual = retrieve(client, embedding=q(RECAL), k=1)[0]
    assert manual["metadata"]["page"] is None and manual["metadata"]["source"] == MANUAL


def test_text_only_query_uses_the_embedding_service(client: httpx.Client) -> None:
    for question, expected in QUESTIONS:
        resp = client.post("/v1/retrieval", json={"text": question, "k": 2})
        assert resp.status_code == 200, resp.text
        assert names(resp.json()["documents"])[0] == expected


@pytest.mark.parametrize(
    ("filters", "allowed"),
    [
        ({"source": HANDBOOK}, {"hours", "leave", "soup"}),
        ({"doc_id": "catalogue"}, {"kv5093", "kv5093b", "kv5039", "kv50930", "kv9350"}),
        ({"tags": "maintenance"}, {"recal", "recal_dup", "e77"}),
        ({"tags": ["policy", "MAINTENANCE"]}, {"hours", "leave", "recal", "recal_dup", "e77"}),  # tags: any-of, no case
        ({"page": [2, 3]}, {"leave", "soup"}),
        ({"page": 1}, {"hours"}),
        ({"tags": "product", "doc_id": "frob-manual"}, {"recal", "recal_dup", "e77", "noise"}),  # keys: AND
        ({"source": "nothing.pdf"}, set()),
    ],
)
@pytest.mark.parametrize("search_type", ["similarity", "mmr", "hybrid", "similarity_distance_threshold"])
def test_filters_apply_to_every_search_type(
    client: httpx.Client, q, filters: dict, allowed: set, search_type: str
) -> None:
    question = "What does error E-77 mean?"  # its best passage is outside most filters
    docs = retrieve(
        client,
        text=question,
        embedding=q(question),
        k=10,
        filters=filters,
        search_type=search_type,
        distance_threshold=2.0,
    )
    assert set(names(docs)) == allowed  # k=10 >= every allowed set: all of them, nothing else


def test_collections_are_isolated(client: httpx.Client, q) -> None:
    question = "How much basil does the moon base grow?"
    other = retrieve(client, embedding=q(question), collection=OTHER, k=10)
    assert names(other) == ["moon", "rover"]
    assert all(d["id"].startswith(f"{OTHER}:") for d in other)
    default = retrieve(client, embedding=q(question), k=10)
    assert len(default) == 10 and not set(names(default)) & {"moon", "rover"}
    listed = {c["name"]: c for c in client.get("/v1/collections").json()["collections"]}
    described = {"dim": DIM, "model": MODEL}
    assert listed[KB] == {"name": KB, "algorithm": "HNSW", "chunks": 12, "documents": 3, **described}
    assert listed[OTHER] == {"name": OTHER, "algorithm": "FLAT", "chunks": 2, "documents": 1, **described}
    assert listed[EMPTY]["chunks"] == 0


def test_several_collections_are_searched_together_best_first(client: httpx.Client, q) -> None:
    question = "How much basil does the moon base grow?"
    both = retrieve(client, embedding=q(question), collections=[KB, OTHER, EMPTY, "rtest-never-written"], k=3)
    assert names(both)[0] == "moon"  # the best hit, from the second collection
    assert len(both) == 3 and [d["score"] for d in both] == sorted((d["score"] for d in both), reverse=True)
    alone = {d["id"]: d["score"] for d in retrieve(client, embedding=q(question), collection=KB, k=10)}
    for d in both:  # a hit's score does not depend on what else was searched
        assert d["score"] == pytest.approx(alone.get(d["id"], d["score"]))
    refused = client.post("/v1/retrieval", json={"embedding": q(question), "collection": KB, "collections": [OTHER]})
    assert error_of(refused, 400).endswith("give collection or collections, not both")
    assert "invalid" in error_of(
        client.post("/v1/retrieval", json={"embedding": q(question), "collections": ["../x"]}), 400
    )


@pytest.mark.parametrize("collection", [EMPTY, "rtest-never-written"])
@pytest.mark.parametrize("search_type", ["similarity", "mmr", "hybrid"])
def test_empty_or_missing_collection_gives_no_documents(
    client: httpx.Client, q, collection: str, search_type: str
) -> None:
    resp = client.post(
        "/v1/retrieval",
        json={"text": "anything", "embedding": q("anything"), "collection": collection, "search_type": search_type},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"query": "anything", "collection": collection, "search_type": search_type, "documents": []}


def test_wrong_dimension_names_both(client: httpx.Client) -> None:
    message = error_of(client.post("/v1/retrieval", json={"embedding": [0.1] * 383}), 400)
    assert "384" in message and "383" in message
    assert re.search(r"holds 384-dimensional vectors; the query embedding has 383 dimensions", message)


def test_mmr_skips_the_near_duplicate(client: httpx.Client, q) -> None:
    plain = names(retrieve(client, embedding=q(RECAL), k=2))
    assert set(plain) == {"recal", "recal_dup"}  # the premise: similarity puts both copies on top
    diverse = names(retrieve(client, embedding=q(RECAL), k=2, search_type="mmr", lambda_mult=0.25, fetch_k=10))
    assert diverse[0] == plain[0]
    assert diverse[1] not in {"recal", "recal_dup"}
    # lambda 1 is relevance only: the same order as similarity
    assert names(retrieve(client, embedding=q(RECAL), k=4, search_type="mmr", lambda_mult=1.0)) == names(
        retrieve(client, embedding=q(RECAL), k=4)
    )


def test_hybrid_finds_the_rare_product_code(client: httpx.Client, q) -> None:
    vector_only = names(retrieve(client, embedding=q(GADGET), k=5))
    assert vector_only[0] != "kv5093" and "kv5093" in vector_only  # the premise: vectors rank it lower
    docs = retrieve(client, text=GADGET, embedding=q(GADGET), k=3, search_type="hybrid")
    assert names(docs)[0] == "kv5093"
    rank = vector_only.index("kv5093") + 1
    assert docs[0]["score"] == pytest.approx(1 / 61 + 1 / (60 + rank))  # RRF: BM25 rank 1 + vector rank
    # stop words and punctuation only: no keyword part, the vector part alone
    only_stop = retrieve(client, text="the of, and?!", embedding=q(GADGET), k=3, search_type="hybrid")
    assert names(only_stop) == vector_only[:3]


def test_score_and_distance_thresholds(client: httpx.Client, q) -> None:
    question = "How many vacation days do Zorblat staff get?"
    ranked = retrieve(client, embedding=q(question), k=10)
    scores = [d["score"] for d in ranked]
    cut = (scores[1] + scores[2]) / 2  # between the second and the third
    kept = retrieve(client, embedding=q(question), k=10, search_type="similarity_score_threshold", score_threshold=cut)
    assert names(kept) == names(ranked)[:2]
    near = retrieve(
        client, embedding=q(question), k=10, search_type="similarity_distance_threshold", distance_threshold=1 - cut
    )
    assert names(near) == names(ranked)[:2]
    assert [d["score"] for d in near] == pytest.approx(scores[:2], abs=1e-5)
    # k still bounds the answer
    assert (
        len(
            retrieve(
                client, embedding=q(question), k=1, search_type="similarity_distance_threshold", distance_threshold=2.0
            )
        )
        == 1
    )


def test_opea_request_shape(client: httpx.Client, q) -> None:
    question, expected = QUESTIONS[0]
    body = {
        "id": "9f1c",
        "text": question,
        "embedding": q(question),
        "search_type": "similarity",
        "k": 2,
        "distance_threshold": None,
        "fetch_k": 20,
        "lambda_mult": 0.5,
        "score_threshold": 0.2,
        "constraints": None,
        "downstream_black_list": [],
    }
    assert names(retrieve(client, **body))[0] == expected
    assert names(retrieve(client, input=question, k=1)) == [expected]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"k": 4}, "give the query as text, embedding or both"),
        ({"text": "q", "k": 0}, "k: Input should be greater than or equal to 1"),
        ({"text": "q", "filters": {"author": "me"}}, "Input should be 'source', 'doc_id', 'tags' or 'page'"),
        ({"text": "q", "search_type": "knn"}, "search_type: Input should be 'similarity'"),
        ({"text": "q", "search_type": "similarity_distance_threshold"}, "needs distance_threshold"),
        ({"embedding": [0.1] * 384, "search_type": "hybrid"}, "search_type hybrid needs text"),
        ({"text": "q", "filters": {"page": "two"}}, "filter 'page' must be a whole number, got 'two'"),
        ({"text": "q", "filters": {"tags": []}}, "filter 'tags' is an empty list"),
        ({"text": "q", "collection": "no spaces allowed"}, "collection name 'no spaces allowed' is invalid"),
        ({"embedding": [0.0] * 384}, "must not be all zeros"),
    ],
)
def test_bad_input_is_a_400_with_a_message(client: httpx.Client, body: dict, message: str) -> None:
    assert message in error_of(client.post("/v1/retrieval", json=body), 400)


def test_bad_json_is_a_400(client: httpx.Client) -> None:
    resp = client.post("/v1/retrieval", content=b"{nope", headers={"content-type": "application/json"})
    assert "not valid JSON" in error_of(resp, 400)


def test_metrics_count_queries_and_results(client: httpx.Client, q) -> None:
    retrieve(client, embedding=q(RECAL), k=3, search_type="mmr")
    text = client.get("/metrics").text
    count = re.search(r'chatqna_retriever_query_seconds_count\{search_type="mmr"\} (\d+)', text)
    assert count and int(count.group(1)) >= 1
    results = re.search(r'chatqna_retriever_results_sum\{search_type="mmr"\} ([\d.]+)', text)
    assert results and float(results.group(1)) >= 3


def test_without_embedding_service(redis_url, service_factory, q, vectors) -> None:
    """Ready (it still serves queries that carry their embedding); text-only queries: 503 naming embedding."""
    svc = service_factory(
        "comps.retriever",
        "RETRIEVER_",
        {"REDIS_URL": redis_url, "INDEX_NAME": KB, "RETRIEVER_EMBEDDING_URL": f"http://127.0.0.1:{free_port()}"},
    )
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        ready = c.get("/v1/ready")
        assert ready.status_code == 200
        assert ready.json()["embedding"].startswith("unavailable: embedding is unreachable")
        assert names(retrieve(c, embedding=q(RECAL), k=1))[0] in {"recal", "recal_dup"}
        resp = c.post("/v1/retrieval", json={"text": RECAL})
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "embedding"
        assert resp.json()["error"]["message"].startswith("embedding is unreachable")


def test_not_ready_without_redis(service_factory) -> None:
    port = free_port()
    svc = service_factory("comps.retriever", "RETRIEVER_", {"REDIS_URL": f"redis://127.0.0.1:{port}"}, wait="health")
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        resp = c.get("/v1/ready")
        assert resp.status_code == 503
        assert f"redis at redis://127.0.0.1:{port} is unreachable" in resp.json()["error"]["message"]
        assert c.get("/v1/health_check").status_code == 200  # alive, just not ready
        query = c.post("/v1/retrieval", json={"embedding": [0.1] * DIM})
        assert query.status_code == 503 and query.json()["error"]["code"] == "redis"
