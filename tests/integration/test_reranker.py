"""The reranker service as real processes over real HTTP: a tiny cross-encoder this test builds,
the lexical-fusion backend on facts no model could know, and the remote backend against ourselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.procs import REPO, start_service
from tests.support.tiny_models import build_tiny_cross_encoder

pytestmark = pytest.mark.integration

MODULE = "comps.reranker"
QUERY = "How long is the warranty on the pump?"
TEXTS = [
    "The pump carries a two year warranty on parts.",
    "Invoices are due thirty days after delivery.",
    "Our office is closed on public holidays.",
    "Warranty claims need the original receipt.",
    "The blue model of the pump is quieter.",
]
LONG = "pump warranty " * 400  # about 800 tokens with the query, over the model's 512


@pytest.fixture(scope="module")
def tiny_model(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer cross-encoder with MiniLM's tokenizer (see tests/support/tiny_models.py)."""
    return build_tiny_cross_encoder(models_dir, tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture(scope="module")
def reference(tiny_model: Path):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(tiny_model), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def cross(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """RERANKER_BACKEND unset (auto) with an existing RERANKER_MODEL: the cross-encoder runs."""
    svc = start_service(
        MODULE,
        "RERANKER_",
        {"RERANKER_MODEL": str(tiny_model), "RERANKER_DEVICE": "cpu"},
        name="reranker-ce",
        log_dir=tmp_path_factory.mktemp("reranker-ce"),
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def lexical(tmp_path_factory: pytest.TempPathFactory):
    """No RERANKER_MODEL: auto falls back to lexical-fusion."""
    svc = start_service(MODULE, "RERANKER_", {}, name="reranker-lex", log_dir=tmp_path_factory.mktemp("reranker-lex"))
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def remote(cross, tmp_path_factory: pytest.TempPathFactory):
    svc = start_service(
        MODULE,
        "RERANKER_",
        {"RERANKER_BACKEND": "remote", "RERANKER_REMOTE_URL": cross.url},
        name="reranker-remote",
        log_dir=tmp_path_factory.mktemp("reranker-remote"),
    )
    yield svc
    svc.stop()


def post(svc, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{svc.url}{path}", json=body, timeout=60)


# --- cross-encoder -------------------------------------------------------------------------------


def test_auto_picks_the_cross_encoder_and_readiness_names_it(cross, tiny_model: Path) -> None:
    body = httpx.get(f"{cross.url}/v1/ready").json()
    assert (body["backend"], body["model"], body["device"], body["max_seq_length"]) == (
        "cross-encoder",
        tiny_model.name,
        "cpu",
        512,
    )
    scored = post(cross, "/rerank", {"query": QUERY, "texts": TEXTS[:2]})
    assert scored.headers["x-chatqna-model"] == tiny_model.name  # what the gateway's RERANKER span names


def test_scores_equal_in_process_predict_sorted_best_first(cross, reference) -> None:
    want = reference.predict([(QUERY, t) for t in TEXTS])
    r = post(cross, "/rerank", {"query": QUERY, "texts": TEXTS})
    assert r.status_code == 200
    got = r.json()
    assert [item["index"] for item in got] == sorted(range(len(TEXTS)), key=lambda i: -want[i])
    assert [item["score"] for item in got] == pytest.approx([float(want[item["index"]]) for item in got], abs=1e-6)
    assert all(set(item) == {"index", "score"} for item in got)  # no text unless asked
    assert len({round(item["score"], 6) for item in got}) == len(TEXTS)  # the scores really differ


def test_raw_scores_are_the_logits_and_top_n_and_return_text_apply(cross, reference) -> None:
    import torch

    logits = reference.predict([(QUERY, t) for t in TEXTS], activation_fn=torch.nn.Identity())
    got = post(
        cross, "/rerank", {"query": QUERY, "texts": TEXTS, "raw_scores": True, "top_n": 2, "return_text": True}
    ).json()
    best = sorted(range(len(TEXTS)), key=lambda i: -logits[i])[:2]
    assert [(g["index"], g["text"]) for g in got] == [(i, TEXTS[i]) for i in best]
    assert [g["score"] for g in got] == pytest.approx([float(logits[i]) for i in best], abs=1e-6)


def test_opea_reranking_keeps_the_best_document(cross, reference) -> None:
    want = reference.predict([(QUERY, t) for t in TEXTS])
    docs = [{"text": t, "id": f"doc-{i}"} for i, t in enumerate(TEXTS)]
    body = post(cross, "/v1/reranking", {"initial_query": QUERY, "retrieved_docs": docs}).json()
    best = int(max(range(len(TEXTS)), key=lambda i: want[i]))
    assert body["query"] == QUERY
    assert len(body["documents"]) == 1  # OPEA's default top_n
    assert body["documents"][0]["text"] == TEXTS[best] and body["documents"][0]["index"] == best
    assert body["documents"][0]["score"] == pytest.approx(float(want[best]), abs=1e-6)


def test_too_long_pair_is_truncated_by_default_and_refused_without_truncation(cross, reference) -> None:
    r = post(cross, "/rerank", {"query": QUERY, "texts": ["short", LONG]})
    assert r.status_code == 200
    assert {g["index"]: g["score"] for g in r.json()}[1] == pytest.approx(
        float(reference.predict([(QUERY, LONG)])[0]), abs=1e-6
    )
    tokens = len(reference.tokenizer(QUERY, LONG)["input_ids"])
    r = post(cross, "/rerank", {"query": QUERY, "texts": ["short", LONG], "truncate": False})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        f"text 1 with the query has {tokens} tokens, more than the model's limit of 512; shorten it or allow truncation"
    )


# --- remote --------------------------------------------------------------------------------------


def test_remote_backend_gives_the_upstreams_ranking_and_errors(remote, cross) -> None:
    ready = httpx.get(f"{remote.url}/v1/ready").json()
    assert (ready["backend"], ready["remote_url"]) == ("remote", cross.url)
    assert post(remote, "/rerank", {"query": QUERY, "texts": TEXTS[:1]}).headers["x-chatqna-model"] == cross.url
    for raw in (False, True):
        body = {"query": QUERY, "texts": TEXTS, "raw_scores": raw, "return_text": True}
        direct, via = post(cross, "/rerank", body).json(), post(remote, "/rerank", body).json()
        assert [g["index"] for g in via] == [g["index"] for g in direct]
        assert [g["score"] for g in via] == pytest.approx([g["score"] for g in direct], abs=1e-9)
        assert [g["text"] for g in via] == [TEXTS[g["index"]] for g in direct]
    r = post(remote, "/rerank", {"query": QUERY, "texts": [LONG], "truncate": False})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("remote-reranker answered HTTP 400: text 0 with the query has")


# --- lexical-fusion ------------------------------------------------------------------------------

# Facts about a town that does not exist: only the words can point at the answer.
P = [
    "Every spring the town celebrates with lantern parades along the canal.",
    "The Quenmoor lighthouse was built by Ilsa Varnek in 1742 from grey basalt.",
    "Quenmoor's harbour exports dried kelp and smoked eel to the northern isles.",
    "The mayor of Quenmoor, Tobin Arleth, was elected in 2019 after the kelp strike.",
    "Ferries to Skarra leave the harbour twice a day in summer.",
]


@pytest.mark.parametrize(
    ("question", "retrieved", "answer"),
    [
        ("Who built the lighthouse in Quenmoor?", [0, 1, 2, 3, 4], 1),
        ("Which year was Tobin Arleth elected mayor?", [1, 3, 0, 2, 4], 3),
        ("How often do ferries sail to Skarra?", [2, 0, 4, 1, 3], 4),
    ],
)
def test_lexical_fusion_puts_the_answering_passage_first(
    lexical, question: str, retrieved: list[int], answer: int
) -> None:
    texts = [P[i] for i in retrieved]
    r = post(lexical, "/rerank", {"query": question, "texts": texts, "return_text": True})
    assert r.status_code == 200 and r.headers["x-chatqna-model"] == "lexical-fusion"
    got = r.json()
    assert got[0]["text"] == P[answer]
    assert [g["score"] for g in got] == sorted((g["score"] for g in got), reverse=True)
    assert sorted(g["index"] for g in got) == list(range(len(texts)))


def test_lexical_fusion_weighs_both_rankings_equally(lexical) -> None:
    # Retrieved first with a partial match (BM25 2nd) vs retrieved third with the best match (BM25 1st):
    # 1/61 + 1/62 > 1/63 + 1/61, so the answer moves up to second but not past the first; the
    # candidates without a query term keep their retrieval order behind.
    texts = [P[i] for i in (4, 0, 2, 1, 3)]
    got = post(lexical, "/rerank", {"query": "What does the harbour export?", "texts": texts}).json()
    assert [g["index"] for g in got] == [0, 2, 1, 3, 4]
    assert [g["score"] for g in got] == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62, 1 / 64, 1 / 65])


def test_lexical_fusion_keeps_the_retrieval_order_without_lexical_evidence(lexical) -> None:
    got = post(lexical, "/rerank", {"query": "zebra migration", "texts": P}).json()
    assert [g["index"] for g in got] == [0, 1, 2, 3, 4]
    assert got[0]["score"] == pytest.approx(1 / 61)


def test_lexical_readiness_and_opea_reranking(lexical) -> None:
    ready = httpx.get(f"{lexical.url}/v1/ready").json()
    assert (ready["backend"], ready["rrf_k"]) == ("lexical-fusion", 60)
    docs = [{"text": P[i], "metadata": {"source": f"p{i}"}} for i in (0, 3, 1)]
    body = post(
        lexical,
        "/v1/reranking",
        {"initial_query": "Who built the Quenmoor lighthouse?", "retrieved_docs": docs, "top_n": 2},
    ).json()
    assert body["query"] == "Who built the Quenmoor lighthouse?"
    assert [(d["index"], d["text"]) for d in body["documents"]] == [(2, P[1]), (1, P[3])]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/rerank", {"query": "q", "texts": []}, "texts: must not be an empty list"),
        ("/rerank", {"query": "", "texts": ["a"]}, "query: must not be empty"),
        ("/rerank", {"query": "  ", "texts": ["a"]}, "query: must not be empty"),
        (
            "/rerank",
            {"query": "q", "texts": ["a"] * 257},
            "texts has 257 items, more than the limit of 256 per request",
        ),
        ("/rerank", {"query": "q", "texts": ["a", 3]}, "texts.1: Input should be a valid string"),
        ("/rerank", {"query": "q", "texts": ["a"], "top_n": 0}, "top_n: Input should be greater than or equal to 1"),
        ("/rerank", {"texts": ["a"]}, "query: Field required"),
        ("/v1/reranking", {"initial_query": "q", "retrieved_docs": []}, "retrieved_docs: must not be an empty list"),
        ("/v1/reranking", {"initial_query": "", "retrieved_docs": [{"text": "a"}]}, "initial_query: must not be empty"),
        (
            "/v1/reranking",
            {"initial_query": "q", "retrieved_docs": [{"id": 1}]},
            "retrieved_docs.0.text: Field required",
        ),
        (
            "/v1/reranking",
            {"initial_query": "q", "retrieved_docs": [{"text": "a"}] * 257},
            "retrieved_docs has 257 items, more than the limit of 256 per request",
        ),
    ],
)
def test_bad_input_gets_400_with_the_reason(lexical, path: str, body: dict, message: str) -> None:
    r = post(lexical, path, body)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"] == message


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"RERANKER_BACKEND": "nope"},
            "RERANKER_BACKEND='nope' is not a known reranker backend; valid: cross-encoder, lexical-fusion, remote",
        ),
        ({"RERANKER_BACKEND": "cross-encoder"}, "RERANKER_BACKEND=cross-encoder needs RERANKER_MODEL"),
        (
            {"RERANKER_BACKEND": "cross-encoder", "RERANKER_MODEL": "missing"},
            "RERANKER_MODEL='missing': no model folder at",
        ),
        ({"RERANKER_BACKEND": "remote"}, "RERANKER_BACKEND=remote needs RERANKER_REMOTE_URL"),
    ],
)
def test_bad_configuration_stops_at_start_naming_the_variable(env: dict, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", MODULE], env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert message in result.stderr
