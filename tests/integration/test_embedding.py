"""The embedding service as a real process with the real model, over real HTTP; and its remote backend
pointed at a second instance of itself."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.support.procs import REPO, start_service

pytestmark = pytest.mark.integration

MODULE = "comps.embedding"
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = [
    "The warranty covers parts and labour for two years.",
    "Invoices are due thirty days after delivery.",
    "Refunds go back to the card that paid.",
]
LONG = "alpha beta gamma delta " * 200  # about 800 tokens, over MiniLM's 256


@pytest.fixture(scope="module")
def local(models_dir, tmp_path_factory):
    """The sentence-transformers service; it wants a bearer token (so the remote tests check the key)."""
    svc = start_service(
        MODULE,
        "EMBEDDING_",
        {"EMBEDDING_API_KEY": KEY, "EMBEDDING_DEVICE": "cpu", "EMBEDDING_MAX_WAIT_MS": "20"},
        log_dir=tmp_path_factory.mktemp("embedding"),
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def client(local):
    with httpx.Client(base_url=local.url, headers=AUTH, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(models_dir):
    """The same model in this process, to check the service's numbers."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(models_dir / "all-MiniLM-L6-v2"), device="cpu", local_files_only=True)


def test_readiness_names_model_dimension_limit_device_and_backend(client: httpx.Client) -> None:
    body = client.get("/v1/ready").json()
    assert body["status"] == "ready"
    assert {k: body[k] for k in ("backend", "model", "dimension", "max_seq_length", "device")} == {
        "backend": "sentence-transformers",
        "model": "all-MiniLM-L6-v2",
        "dimension": 384,
        "max_seq_length": 256,
        "device": "cpu",
    }
    assert client.get("/v1/models").json()["data"][0]["id"] == "all-MiniLM-L6-v2"


def test_openai_embeddings_equal_the_model_and_usage_counts_tokens(client: httpx.Client, reference) -> None:
    r = client.post("/v1/embeddings", json={"input": TEXTS, "model": "anything"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", i) for i in range(3)]
    got = np.array([d["embedding"] for d in body["data"]])
    want = reference.encode(TEXTS, normalize_embeddings=True)
    assert got.shape == (3, 384)
    assert np.abs(got - want).max() < 1e-5
    tokens = sum(len(ids) for ids in reference.tokenizer(TEXTS)["input_ids"])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_official_openai_client_gets_the_same_vectors_via_base64(local, client: httpx.Client) -> None:
    from openai import OpenAI

    oa = OpenAI(base_url=f"{local.url}/v1", api_key=KEY)
    resp = oa.embeddings.create(input=TEXTS[0], model="all-MiniLM-L6-v2")  # the client asks for base64
    floats = client.post("/v1/embeddings", json={"input": TEXTS[0]}).json()["data"][0]["embedding"]
    assert len(resp.data[0].embedding) == 384
    assert np.allclose(resp.data[0].embedding, floats, atol=1e-7)
    assert resp.usage.prompt_tokens > 0


def test_tei_embed_normalizes_by_default_and_reports_tokens(client: httpx.Client, reference) -> None:
    r = client.post("/embed", json={"inputs": TEXTS})
    assert r.status_code == 200
    vectors = np.array(r.json())
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(vectors - reference.encode(TEXTS)).max() < 1e-5
    assert int(r.headers["x-compute-tokens"]) == sum(len(x) for x in reference.tokenizer(TEXTS)["input_ids"])
    single = client.post("/embed", json={"inputs": TEXTS[0], "normalize": False}).json()
    assert len(single) == 1 and np.allclose(single[0], vectors[0], atol=1e-5)


def test_long_input_is_truncated_to_the_models_limit_by_default(client: httpx.Client, reference) -> None:
    r = client.post("/v1/embeddings", json={"input": LONG})
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == 256
    got = np.array(r.json()["data"][0]["embedding"])
    assert np.abs(got - reference.encode(LONG)).max() < 1e-5  # the model truncates to 256 too


def test_long_input_without_truncation_is_refused_naming_index_tokens_and_limit(
    client: httpx.Client, reference
) -> None:
    tokens = len(reference.tokenizer(LONG)["input_ids"])
    r = client.post("/embed", json={"inputs": ["short", LONG], "truncate": False})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "input_too_long"
    assert err["message"] == (
        f"input 1 has {tokens} tokens, more than the model's limit of 256; shorten it or allow truncation"
    )


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/embeddings", {"input": []}, "input: must not be an empty list"),
        ("/v1/embeddings", {"input": ""}, "input: must not be an empty string"),
        ("/v1/embeddings", {"input": ["a", ""]}, "input: item 1 is an empty string"),
        ("/v1/embeddings", {"input": ["a", 5]}, "input: item 1 must be a string, not int"),
        ("/v1/embeddings", {"input": [101, 2023, 102]}, "input: token-id arrays are not supported; send text"),
        ("/v1/embeddings", {"input": [[101, 102]]}, "input: token-id arrays are not supported; send text"),
        ("/v1/embeddings", {"input": ["x"] * 513}, "input has 513 items, more than the limit of 512 per request"),
        (
            "/v1/embeddings",
            {"input": "x", "dimensions": 128},
            "dimensions=128 is not supported: all-MiniLM-L6-v2 gives 384-dimensional embeddings only",
        ),
        (
            "/v1/embeddings",
            {"input": "x", "encoding_format": "int8"},
            "encoding_format: Input should be 'float' or 'base64'",
        ),
        ("/v1/embeddings", {"model": "m"}, "input: Field required"),
        ("/embed", {"inputs": []}, "inputs: must not be an empty list"),
        ("/embed", {"inputs": {"a": 1}}, "inputs: must be a string or a list of strings"),
        ("/embed", {"inputs": ["x"] * 513}, "inputs has 513 items, more than the limit of 512 per request"),
    ],
)
def test_bad_input_gets_400_with_the_reason(client: httpx.Client, path: str, body: dict, message: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["message"] == message


def test_missing_bearer_token_is_refused(local) -> None:
    r = httpx.post(f"{local.url}/v1/embeddings", json={"input": "x"})
    assert r.status_code == 401


def _batch_metrics(client: httpx.Client) -> tuple[float, float]:
    text = client.get("/metrics").text
    total = float(re.search(r"^chatqna_embedding_batch_size_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^chatqna_embedding_batch_size_count (\S+)$", text, re.M).group(1))
    return total, count


def test_concurrent_requests_are_batched_and_each_gets_its_own_vector(local, client: httpx.Client, reference) -> None:
    texts = [f"Ticket {i}: the parcel for order {i * 7} arrived late." for i in range(24)]
    before = _batch_metrics(client)

    async def one(c: httpx.AsyncClient, text: str) -> list[float]:
        r = await c.post("/v1/embeddings", json={"input": text})
        assert r.status_code == 200
        return r.json()["data"][0]["embedding"]

    async def all_at_once() -> list[list[float]]:
        async with httpx.AsyncClient(base_url=local.url, headers=AUTH, timeout=60) as c:
            return await asyncio.gather(*(one(c, t) for t in texts))

    got = np.array(asyncio.run(all_at_once()))
    assert np.abs(got - reference.encode(texts)).max() < 1e-5  # no answer went to the wrong request
    after = _batch_metrics(client)
    assert after[0] - before[0] == len(texts)  # every input went through the batcher
    assert after[1] - before[1] < len(texts) / 2  # in far fewer model calls than requests
    metrics = client.get("/metrics").text
    assert re.search(r"^chatqna_embedding_queue_wait_seconds_count [1-9]", metrics, re.M)
    assert re.search(r"^chatqna_embedding_inputs_total [1-9]", metrics, re.M)


@pytest.fixture(scope="module", params=["tei", "openai"])
def remote(request, local, tmp_path_factory):
    """A second instance whose `remote` backend calls the local one over ``request.param``'s API."""
    svc = start_service(
        MODULE,
        "EMBEDDING_",
        {
            "EMBEDDING_BACKEND": "remote",
            "EMBEDDING_REMOTE_URL": local.url,
            "EMBEDDING_REMOTE_API": request.param,
            "EMBEDDING_REMOTE_MODEL": "all-MiniLM-L6-v2",
            "EMBEDDING_REMOTE_API_KEY": KEY,
        },
        name=f"remote-{request.param}",
        log_dir=tmp_path_factory.mktemp("remote"),
    )
    yield request.param, svc
    svc.stop()


def test_remote_backend_gives_the_upstreams_vectors_and_tokens(remote, client: httpx.Client) -> None:
    api, svc = remote
    ready = httpx.get(f"{svc.url}/v1/ready").json()
    assert (ready["backend"], ready["model"], ready["dimension"], ready["remote_api"]) == (
        "remote",
        "all-MiniLM-L6-v2",
        384,
        api,
    )
    direct = client.post("/v1/embeddings", json={"input": TEXTS}).json()
    via = httpx.post(f"{svc.url}/v1/embeddings", json={"input": TEXTS}, timeout=60).json()
    assert via["usage"] == direct["usage"]
    assert (
        np.abs(np.array([d["embedding"] for d in via["data"]]) - [d["embedding"] for d in direct["data"]]).max() < 1e-6
    )
    tei = httpx.post(f"{svc.url}/embed", json={"inputs": TEXTS[:2]}, timeout=60)
    assert tei.status_code == 200 and np.array(tei.json()).shape == (2, 384)


def test_remote_truncation_tei_passes_the_switch_openai_leaves_it_to_the_remote(remote) -> None:
    api, svc = remote
    r = httpx.post(f"{svc.url}/embed", json={"inputs": ["ok", LONG], "truncate": False}, timeout=60)
    if api == "openai":  # no truncate switch in the OpenAI API: the upstream's default (truncate) applies
        assert r.status_code == 200 and len(r.json()) == 2
        assert int(r.headers["x-compute-tokens"]) == 256 + 3
        return
    assert r.status_code == 400
    assert re.fullmatch(
        r"remote-embedding answered HTTP 400: input 1 has \d+ tokens, more than the model's limit of 256; "
        r"shorten it or allow truncation",
        r.json()["error"]["message"],
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"EMBEDDING_BACKEND": "nope"},
            "EMBEDDING_BACKEND='nope' is not a known embedding backend; valid: remote, sentence-transformers",
        ),
        ({"EMBEDDING_BACKEND": "remote"}, "EMBEDDING_BACKEND=remote needs EMBEDDING_REMOTE_URL"),
        ({"EMBEDDING_MODEL": "no-such-model"}, "EMBEDDING_MODEL='no-such-model': no model folder at"),
        ({"EMBEDDING_MAX_BATCH_SIZE": "0"}, "EMBEDDING_MAX_BATCH_SIZE='0': Input should be greater than or equal to 1"),
    ],
)
def test_bad_configuration_stops_at_start_naming_the_variable(env: dict, message: str, models_dir) -> None:
    result = subprocess.run(
        [sys.executable, "-m", MODULE],
        env={**os.environ, "CHATQNA_MODELS_DIR": str(models_dir), **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
