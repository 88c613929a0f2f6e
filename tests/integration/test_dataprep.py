"""Dataprep against real processes: embedded Redis, the real embedding service, the dataprep service."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
import redis
from redis.commands.search.query import Query

from comps.dataprep.protocol import document_id
from comps.vectorstore import documents, schema
from tests.support.documents import encrypted_pdf, make_docx, make_pdf
from tests.support.procs import REPO, Service, start_service
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

MAX_FILE_BYTES = 200_000
FINISHED = ("succeeded", "failed", "skipped")

TXT = ("Solar panels turn sunlight into electricity. " * 12 + "\n\n") * 3
MD = "# Garden guide\n\nTomatoes need full sun.\n\n## Watering\n\nWater the roots in the morning, not the leaves.\n"
HTML = (
    "<html><head><title>Bikes</title><script>var secret = 'evil()';</script><style>p{}</style></head>"
    "<body><h1>Bicycle care</h1><p>Oil the chain <b>every month</b>.</p><h2>Tyres</h2>"
    "<p>Check the pressure weekly.</p></body></html>"
)
CSV = "city,country\nLisbon,Portugal\nOslo,Norway\n"
JSONL = '{"q": "capital of France", "a": "Paris"}\n{"q": "largest ocean", "a": "Pacific"}\n'
JSON = json.dumps([{"fruit": "mango", "color": "orange"}, {"fruit": "kiwi", "color": "green"}])
PDF_PAGES = ["The first page talks about volcanoes.", "The second page talks about glaciers."]


def corpus() -> dict[str, bytes]:
    return {
        "notes.txt": TXT.encode(),
        "garden.md": MD.encode(),
        "bikes.html": HTML.encode(),
        "earth.pdf": make_pdf(PDF_PAGES),
        "report.docx": make_docx(
            "Quarterly report", ["Sales grew by ten percent."], [["region", "sales"], ["north", "12"]]
        ),
        "cities.csv": CSV.encode(),
        "quiz.jsonl": JSONL.encode(),
        "fruit.json": JSON.encode(),
    }


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def embedding(models_dir, tmp_path_factory) -> Iterator[Service]:
    svc = start_service(
        "comps.embedding", "EMBEDDING_", {"EMBEDDING_DEVICE": "cpu"}, log_dir=tmp_path_factory.mktemp("embedding")
    )
    yield svc
    svc.stop()


def dataprep_env(redis_url: str, embedding_url: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "DATAPREP_EMBEDDING_URL": embedding_url,
        "DATAPREP_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
        "DATAPREP_WORKERS": "2",
        **extra,
    }


@pytest.fixture(scope="module")
def dataprep(redis_url, embedding, tmp_path_factory) -> Iterator[Service]:
    svc = start_service(
        "comps.dataprep",
        "DATAPREP_",
        dataprep_env(redis_url, embedding.url),
        log_dir=tmp_path_factory.mktemp("dataprep"),
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def client(dataprep) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dataprep.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def r(redis_url) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class LocalSite:
    """A tiny HTTP server on 127.0.0.1 with a few fixed pages."""

    PAGES: ClassVar[dict[str, tuple[int, str, bytes]]] = {
        "/page.html": (
            200,
            "text/html; charset=utf-8",
            b"<html><body><h1>Harbor</h1><p>The ferry leaves at nine.</p></body></html>",
        ),
        "/notes.md": (200, "application/octet-stream", b"# Lighthouse\n\nThe lamp turns every ten seconds.\n"),
        "/image": (200, "image/png", b"\x89PNG\r\n\x1a\n...."),
        "/missing": (404, "text/plain", b"not here"),
    }
    REDIRECTS: ClassVar[dict[str, str]] = {"/to-file": "file:///etc/passwd", "/to-page": "/page.html"}

    def __init__(self) -> None:
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path in site.REDIRECTS:
                    self.send_response(302)
                    self.send_header("Location", site.REDIRECTS[self.path])
                    self.end_headers()
                    return
                status, ctype, body = site.PAGES.get(self.path, (404, "text/plain", b"no"))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def site() -> Iterator[LocalSite]:
    with LocalSite() as s:
        yield s


# ---------------------------------------------------------------------------------------------- helpers


def ingest(client: httpx.Client, files: dict[str, bytes] | None = None, **fields: object) -> httpx.Response:
    data = {k: (json.dumps(v) if k == "link_list" and not isinstance(v, str) else str(v)) for k, v in fields.items()}
    parts = [("files", (name, body)) for name, body in (files or {}).items()]
    return client.post("/v1/dataprep/ingest", files=parts or None, data=data)


def wait_jobs(client: httpx.Client, resp: httpx.Response, timeout_s: float = 120) -> list[dict]:
    assert resp.status_code == 202, resp.text
    ids = [j["job_id"] for j in resp.json()["jobs"]]

    def finished() -> list[dict] | None:
        jobs = [client.get(f"/v1/dataprep/jobs/{i}").json() for i in ids]
        return jobs if all(j["status"] in FINISHED for j in jobs) else None

    return wait_for(finished, f"jobs {ids} to finish", timeout_s)


def ingest_ok(client: httpx.Client, files: dict[str, bytes], **fields: object) -> dict[str, dict]:
    jobs = wait_jobs(client, ingest(client, files, **fields))
    assert all(j["status"] in ("succeeded", "skipped") for j in jobs), jobs
    return {j["source"]: j for j in jobs}


def error_of(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]["message"]


def chunk_keys(r: redis.Redis, collection: str) -> set[str]:
    return {k.decode() for k in r.scan_iter(match=f"{collection}:chunk:*", count=1000)}


def chunks_of(r: redis.Redis, collection: str, source: str) -> list[dict[str, bytes]]:
    doc_id = document_id(collection, source)
    found = [r.hgetall(k) for k in chunk_keys(r, collection) if k.split(":")[2] == doc_id]
    return sorted(found, key=lambda h: int(h[b"chunk"]))


def snapshot(r: redis.Redis, collection: str) -> dict[str, object]:
    """Every key of the collection with its full content (vectors included)."""
    state: dict[str, object] = {}
    for key in r.scan_iter(match=f"{collection}:*", count=1000):
        kind = r.type(key)
        if kind == b"string":  # the version counter, c:seq
            state[key.decode()] = r.get(key)
        else:
            state[key.decode()] = r.hgetall(key) if kind == b"hash" else sorted(r.smembers(key))
    return state


def indexed(r: redis.Redis, collection: str) -> int:
    """Chunks the collection's index holds."""
    return int(r.ft(collection).search(Query("*").paging(0, 0)).total)


def get_docs(client: httpx.Client, collection: str) -> dict[str, dict]:
    resp = client.post("/v1/dataprep/get", json={"collection": collection})
    assert resp.status_code == 200, resp.text
    return {d["source"]: d for d in resp.json()}


# ------------------------------------------------------------------------------------------------ tests


def test_ready_needs_redis_and_embedding(client: httpx.Client, embedding: Service) -> None:
    body = client.get("/v1/ready").json()
    assert body["status"] == "ready"
    assert body["embedding"] == embedding.url
    assert body["embedding_model"] == "all-MiniLM-L6-v2"
    assert body["default_collection"] == "rag-redis"


def test_corpus_of_every_format_is_ingested(client: httpx.Client, r: redis.Redis) -> None:
    files = corpus()
    jobs = ingest_ok(client, files, collection="corpus", chunk_size=300, chunk_overlap=30, tags="kb, v1")
    assert set(jobs) == set(files)
    for job in jobs.values():
        assert job["status"] == "succeeded" and job["collection"] == "corpus"
        assert job["chunks_total"] == job["chunks_embedded"] > 0
        assert job["doc_id"] == document_id("corpus", job["source"])
        assert job["error"] is None and job["finished_at"] >= job["created_at"]

    docs = get_docs(client, "corpus")
    assert set(docs) == set(files)
    total = 0
    for name, body in files.items():
        doc = docs[name]
        assert doc["sha256"] == hashlib.sha256(body).hexdigest()
        assert doc["tags"] == ["kb", "v1"]
        assert doc["chunks"] == jobs[name]["chunks_total"]
        chunks = chunks_of(r, "corpus", name)
        assert [int(c[b"chunk"]) for c in chunks] == list(range(doc["chunks"]))
        for c in chunks:
            assert c[b"source"].decode() == name
            assert c[b"doc_id"].decode() == doc["doc_id"]
            assert c[b"tags"] == b"kb,v1"
            assert len(c[b"embedding"]) == 384 * 4
            assert 0 < len(c[b"text"].decode()) <= 300
            assert (b"page" in c) == (name == "earth.pdf")
        total += len(chunks)
    assert len(chunk_keys(r, "corpus")) == total == indexed(r, "corpus")
    meta = r.hgetall(schema.meta_key("corpus"))
    assert meta[b"dim"] == b"384" and meta[b"model"] == b"all-MiniLM-L6-v2"

    def text(name: str) -> str:
        return "\n".join(c[b"text"].decode() for c in chunks_of(r, "corpus", name))

    pdf = chunks_of(r, "corpus", "earth.pdf")
    assert [(int(c[b"page"]), c[b"text"].decode()) for c in pdf] == [(1, PDF_PAGES[0]), (2, PDF_PAGES[1])]
    assert "Bicycle care" in text("bikes.html") and "every month" in text("bikes.html")
    assert "evil()" not in text("bikes.html") and "p{}" not in text("bikes.html")
    assert text("garden.md").startswith("Garden guide\n\nTomatoes")  # the heading path starts each chunk
    assert "Garden guide > Watering\n\nWater the roots" in text("garden.md")
    assert text("report.docx").startswith("Quarterly report\n\n") and "north | 12" in text("report.docx")
    assert "city: Lisbon; country: Portugal" in text("cities.csv")
    assert '"a": "Pacific"' in text("quiz.jsonl")
    assert '"fruit": "kiwi"' in text("fruit.json")
    assert "Solar panels" in text("notes.txt")
    # the embeddings are the model's: a chunk is closest to its own text's vector
    vec = np.frombuffer(pdf[0][b"embedding"], dtype=np.float32)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-3


def test_unchanged_file_is_skipped_and_changed_file_replaced(client: httpx.Client, r: redis.Redis) -> None:
    name = "policy.txt"
    v1 = ("Refunds are possible within 30 days. " * 20).encode()
    first = ingest_ok(client, {name: v1}, collection="versions", chunk_size=200, chunk_overlap=20)[name]
    keys_v1 = chunk_keys(r, "versions")
    record_v1 = r.hgetall(schema.doc_key("versions", first["doc_id"]))
    assert len(keys_v1) == first["chunks_total"] > 1

    again = ingest_ok(client, {name: v1}, collection="versions", chunk_size=200, chunk_overlap=20)[name]
    assert again["status"] == "skipped" and again["doc_id"] == first["doc_id"]
    assert chunk_keys(r, "versions") == keys_v1
    assert r.hgetall(schema.doc_key("versions", first["doc_id"])) == record_v1

    v2 = ("Refunds are possible within 14 days only. " * 10).encode()
    second = ingest_ok(client, {name: v2}, collection="versions", chunk_size=200, chunk_overlap=20)[name]
    assert second["status"] == "succeeded"
    keys_v2 = chunk_keys(r, "versions")
    assert keys_v2.isdisjoint(keys_v1) and len(keys_v2) == second["chunks_total"]
    assert all("14 days" in c[b"text"].decode() for c in chunks_of(r, "versions", name))
    doc = get_docs(client, "versions")[name]
    assert doc["sha256"] == hashlib.sha256(v2).hexdigest() and doc["chunks"] == len(keys_v2)
    assert indexed(r, "versions") == len(keys_v2)

    # other chunking parameters or tags: not skipped
    third = ingest_ok(client, {name: v2}, collection="versions", chunk_size=120, chunk_overlap=10)[name]
    assert third["status"] == "succeeded" and third["chunks_total"] > second["chunks_total"]
    fourth = ingest_ok(client, {name: v2}, collection="versions", chunk_size=120, chunk_overlap=10, tags="new")[name]
    assert fourth["status"] == "succeeded"
    assert {c[b"tags"] for c in chunks_of(r, "versions", name)} == {b"new"}
    assert len(chunk_keys(r, "versions")) == third["chunks_total"]


def test_delete_by_id_by_source_and_all(client: httpx.Client, r: redis.Redis) -> None:
    files = {"a.txt": b"alpha text about owls", "b.txt": b"beta text about cats", "c.txt": b"gamma text about dogs"}
    jobs = ingest_ok(client, files, collection="deletes")
    ingest_ok(client, {"keep.txt": b"another collection stays"}, collection="bystander")
    bystander = snapshot(r, "bystander")

    resp = client.post("/v1/dataprep/delete", json={"file_path": jobs["a.txt"]["doc_id"], "collection": "deletes"})
    assert resp.status_code == 200 and resp.json() == {"deleted": 1}
    resp = client.post("/v1/dataprep/delete", json={"file_path": "b.txt", "collection": "deletes"})
    assert resp.json() == {"deleted": 1}
    assert set(get_docs(client, "deletes")) == {"c.txt"}
    assert {k.split(":")[2] for k in chunk_keys(r, "deletes")} == {jobs["c.txt"]["doc_id"]}
    assert indexed(r, "deletes") == 1

    msg = error_of(client.post("/v1/dataprep/delete", json={"file_path": "b.txt", "collection": "deletes"}), 404)
    assert msg == "no document 'b.txt' (by id or source) in collection 'deletes'"

    resp = client.post("/v1/dataprep/delete", json={"file_path": "all", "collection": "deletes"})
    assert resp.json() == {"deleted": 1}
    assert snapshot(r, "deletes") == {}
    assert b"deletes" not in r.execute_command("FT._LIST")
    assert get_docs(client, "deletes") == {}
    assert snapshot(r, "bystander") == bystander
    # the collection comes back on the next ingest
    ingest_ok(client, {"a.txt": files["a.txt"]}, collection="deletes")
    assert indexed(r, "deletes") == 1


def test_default_collection_is_index_name(client: httpx.Client, r: redis.Redis) -> None:
    ingest_ok(client, {"default.txt": b"goes to rag-redis"})
    assert "default.txt" in get_docs(client, "rag-redis")
    assert {d["source"] for d in client.post("/v1/dataprep/get").json()} >= {"default.txt"}
    assert client.post("/v1/dataprep/delete", json={"file_path": "default.txt"}).json() == {"deleted": 1}


def test_jobs_listing_and_unknown_job(client: httpx.Client) -> None:
    resp = ingest(client, {"listed.txt": b"listed job"}, collection="listing")
    job_id = resp.json()["jobs"][0]["job_id"]
    wait_jobs(client, resp)
    listed = client.get("/v1/dataprep/jobs", params={"limit": 5}).json()["jobs"]
    assert listed[0]["job_id"] == job_id and listed[0]["status"] == "succeeded"
    assert [j["created_at"] for j in listed] == sorted((j["created_at"] for j in listed), reverse=True)
    msg = error_of(client.get("/v1/dataprep/jobs/nope"), 404)
    assert msg == "no job 'nope' (unknown, or older than DATAPREP_JOB_TTL_S)"


BAD_REQUESTS = [
    # (files, fields, status, message part)
    ({}, {}, 400, "nothing to ingest: send files and/or link_list"),
    ({}, {"link_list": "[]"}, 400, "nothing to ingest"),
    (
        {"x.txt": b"x"},
        {"chunk_size": 100, "chunk_overlap": 100},
        400,
        "chunk_overlap (100) must be smaller than chunk_size (100)",
    ),
    ({"x.txt": b"x"}, {"chunk_size": 0}, 400, "chunk_size: Input should be greater than 0"),
    ({"x.txt": b"x"}, {"chunk_overlap": -1}, 400, "chunk_overlap: Input should be greater than or equal to 0"),
    ({"x.txt": b"x"}, {"chunk_size": "big"}, 400, "chunk_size: Input should be a valid integer"),
    ({}, {"link_list": "[not json"}, 400, "link_list: must be a JSON list of URLs"),
    ({}, {"link_list": '{"url": "http://a.b"}'}, 400, "link_list: must be a JSON list of non-empty URL strings"),
    ({"empty.txt": b""}, {}, 400, "empty.txt is empty"),
    ({"tool.exe": b"MZ..."}, {}, 415, "tool.exe: unsupported file type; supported extensions: .csv, .docx"),
    ({"big.txt": b"a" * (MAX_FILE_BYTES + 1)}, {}, 413, f"big.txt is larger than the limit of {MAX_FILE_BYTES} bytes"),
    ({"x.txt": b"x"}, {"collection": "bad name!"}, 400, "collection name 'bad name!' is invalid"),
    ({}, {"link_list": ["file:///etc/passwd"]}, 400, "only http and https URLs are fetched, not 'file'"),
    ({}, {"link_list": ["gopher://example.com/"]}, 400, "only http and https URLs are fetched, not 'gopher'"),
    (
        {},
        {"link_list": ["http://127.0.0.1:6379/"]},
        400,
        "http://127.0.0.1:6379/ is refused: 127.0.0.1 is a loopback address (set DATAPREP_ALLOW_PRIVATE_URLS=true",
    ),
    ({}, {"link_list": ["http://localhost:6379/"]}, 400, "is refused: localhost resolves to "),
    ({}, {"link_list": ["http://[::1]/"]}, 400, "::1 is a loopback address"),
    ({}, {"link_list": ["http://169.254.169.254/latest/meta-data/"]}, 400, "169.254.169.254 is a link-local address"),
    ({}, {"link_list": ["http://10.1.2.3/"]}, 400, "10.1.2.3 is a private address"),
    ({}, {"link_list": ["http://[::ffff:192.168.1.1]/"]}, 400, "::ffff:192.168.1.1 is a private address"),
    ({}, {"link_list": ["http://224.0.0.1/"]}, 400, "224.0.0.1 is a multicast address"),
    ({}, {"link_list": ["http://0.0.0.0:6379/"]}, 400, "0.0.0.0 is an unspecified address"),
]


def test_bad_requests_are_refused_and_touch_nothing(client: httpx.Client, r: redis.Redis, site: LocalSite) -> None:
    ingest_ok(client, {"stored.txt": b"already stored document", "x.txt": b"x"}, collection="guarded")
    before = snapshot(r, "guarded")
    jobs_before = client.get("/v1/dataprep/jobs", params={"limit": 1000}).json()["jobs"]
    cases = [
        *BAD_REQUESTS,
        ({}, {"link_list": [f"{site.url}/page.html"]}, 400, "(set DATAPREP_ALLOW_PRIVATE_URLS=true"),
    ]
    for bad_files, bad_fields, status, message in cases:
        fields = {"collection": "guarded", **bad_fields}
        # a good file along with the bad part: the whole request is refused, nothing is queued
        files = bad_files if "nothing to ingest" in message else {"good.txt": b"a good file", **bad_files}
        msg = error_of(ingest(client, files, **fields), status)
        assert message in msg, (fields, msg)
    msg = error_of(client.post("/v1/dataprep/ingest", json={"link_list": []}), 415)
    assert msg == "ingest expects multipart/form-data (files and/or link_list), not application/json"
    assert snapshot(r, "guarded") == before
    assert client.get("/v1/dataprep/jobs", params={"limit": 1000}).json()["jobs"] == jobs_before


def test_unreadable_documents_fail_their_job_with_the_reason(client: httpx.Client, r: redis.Redis) -> None:
    ingest_ok(client, {"broken.pdf": make_pdf(["the good old version"])}, collection="unreadable")
    before = snapshot(r, "unreadable")
    files = {
        "broken.pdf": b"%PDF-1.4\nthis is not really a pdf",
        "secret.pdf": encrypted_pdf("classified"),
        "scan.pdf": make_pdf([""]),
        "data.json": b'{"unclosed": ',
        "lines.jsonl": b'{"ok": 1}\n{bad}\n',
        "word.docx": b"PK\x03\x04 not a zip",
        "blank.md": b"   \n\n  ",
        "binary.txt": b"\x00\x01\x02\xff" * 10,
    }
    jobs = {j["source"]: j for j in wait_jobs(client, ingest(client, files, collection="unreadable"))}
    expected = {
        "broken.pdf": "the PDF is corrupt or unreadable: ",
        "secret.pdf": "the PDF is encrypted and needs a password",
        "scan.pdf": "the PDF has 1 page(s) but no extractable text",
        "data.json": "invalid JSON: Expecting value: line 1 column 14",
        "lines.jsonl": "line 2 is not valid JSON",
        "word.docx": "not a readable .docx (Word 2007+) file: File is not a zip file",
        "blank.md": "no text found in the markdown document",
        "binary.txt": "the file is binary, not text",
    }
    for name, reason in expected.items():
        assert jobs[name]["status"] == "failed", jobs[name]
        assert jobs[name]["error"].startswith(reason), jobs[name]["error"]
    assert snapshot(r, "unreadable") == before  # the good old broken.pdf is still there, untouched


def test_dimension_mismatch_fails_the_job_and_keeps_the_old_version(
    client: httpx.Client, r: redis.Redis, redis_url: str
) -> None:
    async def seed() -> None:
        ar = schema.connect(redis_url)
        try:
            await schema.ensure_index(ar, "tiny", 8, model="tiny-model")
            record = documents.DocumentRecord(doc_id=document_id("tiny", "a.txt"), source="a.txt", sha256="old")
            await documents.replace_document(ar, "tiny", record, [documents.Chunk("old text", np.ones(8, np.float32))])
        finally:
            await ar.aclose()

    asyncio.run(seed())
    before = snapshot(r, "tiny")
    jobs = wait_jobs(client, ingest(client, {"a.txt": b"new text"}, collection="tiny"))
    assert jobs[0]["status"] == "failed"
    assert jobs[0]["error"] == (
        "collection 'tiny' holds 8-dimensional vectors; got 384-dimensional ones "
        "(was it built with another embedding model than all-MiniLM-L6-v2?)"
    )
    assert snapshot(r, "tiny") == before


def start_embedding_job(c: httpx.Client, paragraphs: int) -> str:
    """A new version of midway.txt (``paragraphs`` chunks) whose embedding has begun; its job id."""
    big = "\n\n".join(f"Paragraph {i} of the second version of the manual." for i in range(paragraphs)).encode()
    resp = ingest(c, {"manual.txt": big}, collection="midway", chunk_size=60, chunk_overlap=0)
    job_id: str = resp.json()["jobs"][0]["job_id"]
    wait_for(lambda: c.get(f"/v1/dataprep/jobs/{job_id}").json()["chunks_embedded"] > 0, "the embedding to begin")
    return job_id


def test_embedding_stopping_midway_fails_the_job_after_its_retries_and_keeps_the_old_version(
    redis_url: str, models_dir: Path, tmp_path: Path, r: redis.Redis
) -> None:
    emb = start_service(
        "comps.embedding", "EMBEDDING_", {"EMBEDDING_DEVICE": "cpu"}, log_dir=tmp_path, name="embedding-2"
    )
    env = dataprep_env(redis_url, emb.url, DATAPREP_EMBEDDING_CONCURRENCY="1", DATAPREP_EMBEDDING_BATCH_SIZE="16",
                       DATAPREP_EMBEDDING_RETRIES="2", DATAPREP_EMBEDDING_RETRY_S="0.1")  # fmt: skip
    dp = start_service("comps.dataprep", "DATAPREP_", env, log_dir=tmp_path, name="dataprep-2")
    try:
        with httpx.Client(base_url=dp.url, timeout=60) as c:
            ingest_ok(c, {"manual.txt": b"version one of the manual"}, collection="midway")
            before = snapshot(r, "midway")
            job_id = start_embedding_job(c, 400)
            emb.stop()
            job = wait_for(lambda: (j := c.get(f"/v1/dataprep/jobs/{job_id}").json())["status"] in FINISHED and j,
                           "the job to give up")  # fmt: skip
            assert (job["status"], job["retries"], job["chunks_total"]) == ("failed", 2, 400), job
            assert job["error"].startswith("the embedding service still failed after 2 retries: embedding "), job
            assert snapshot(r, "midway") == before
            ready = c.get("/v1/ready")
            assert "the embedding service is not ready: embedding is unreachable" in error_of(ready, 503)
    finally:
        dp.stop()
        emb.stop()


def test_a_job_in_flight_when_embedding_dies_is_retried_and_finishes_once_it_is_back(
    redis_url: str, models_dir: Path, tmp_path: Path, r: redis.Redis
) -> None:
    emb_env = {"EMBEDDING_DEVICE": "cpu"}
    emb = start_service("comps.embedding", "EMBEDDING_", emb_env, log_dir=tmp_path, name="embedding-3")
    env = dataprep_env(redis_url, emb.url, DATAPREP_EMBEDDING_CONCURRENCY="1", DATAPREP_EMBEDDING_BATCH_SIZE="16",
                       DATAPREP_EMBEDDING_RETRIES="30", DATAPREP_EMBEDDING_RETRY_S="0.2")  # fmt: skip
    dp = start_service("comps.dataprep", "DATAPREP_", env, log_dir=tmp_path, name="dataprep-3")
    try:
        with httpx.Client(base_url=dp.url, timeout=60) as c:
            ingest_ok(c, {"manual.txt": b"version one of the manual"}, collection="midway")
            before = snapshot(r, "midway")
            job_id = start_embedding_job(c, 160)  # 10 requests of 16: the first one done, 9 to go
            os.killpg(emb.process.pid, signal.SIGKILL)  # dies mid-request
            emb.stop()
            job = wait_for(lambda: (j := c.get(f"/v1/dataprep/jobs/{job_id}").json())["retries"] > 0 and j,
                           "the job to retry")  # fmt: skip
            assert job["status"] == "running", job
            assert snapshot(r, "midway") == before  # the stored version stays while the new one waits
            emb = start_service("comps.embedding", "EMBEDDING_", emb_env, log_dir=tmp_path, name="embedding-3",
                                port=emb.port)  # fmt: skip
            job = wait_for(lambda: (j := c.get(f"/v1/dataprep/jobs/{job_id}").json())["status"] in FINISHED and j,
                           "the job to finish", 300)  # fmt: skip
            assert (job["status"], job["chunks_embedded"], job["chunks_total"]) == ("succeeded", 160, 160), job
            assert job["retries"] >= 1 and job["error"] is None
            (doc,) = get_docs(c, "midway").values()
            assert doc["chunks"] == 160
            assert len(chunks_of(r, "midway", "manual.txt")) == 160  # the new version only
    finally:
        dp.stop()
        emb.stop()


def test_private_urls_when_allowed(
    redis_url: str, embedding: Service, site: LocalSite, tmp_path: Path, r: redis.Redis
) -> None:
    env = dataprep_env(redis_url, embedding.url, DATAPREP_ALLOW_PRIVATE_URLS="true")
    dp = start_service("comps.dataprep", "DATAPREP_", env, log_dir=tmp_path, name="dataprep-private")
    try:
        with httpx.Client(base_url=dp.url, timeout=60) as c:
            links = [
                f"{site.url}{p}" for p in ("/page.html", "/notes.md", "/to-page", "/image", "/missing", "/to-file")
            ]
            jobs = {j["source"]: j for j in wait_jobs(c, ingest(c, link_list=links, collection="web"))}
            assert [jobs[u]["status"] for u in links[:3]] == ["succeeded"] * 3
            assert jobs[links[3]]["error"] == (
                f"{site.url}/image answered with content type 'image/png', which cannot be ingested"
            )
            assert jobs[links[4]]["error"] == f"{site.url}/missing answered HTTP 404 Not Found"
            assert jobs[links[5]]["error"] == "'file:///etc/passwd': only http and https URLs are fetched, not 'file'"
            assert "The ferry leaves at nine." in chunks_of(r, "web", links[0])[0][b"text"].decode()
            assert chunks_of(r, "web", links[1])[0][b"text"].decode().startswith("Lighthouse\n\nThe lamp")
            assert set(get_docs(c, "web")) == set(links[:3])
    finally:
        dp.stop()


def test_job_status_survives_a_restart(redis_url: str, embedding: Service, tmp_path: Path) -> None:
    env = dataprep_env(redis_url, embedding.url)
    first = start_service("comps.dataprep", "DATAPREP_", env, log_dir=tmp_path, name="dataprep-a")
    with httpx.Client(base_url=first.url, timeout=60) as c:
        job = wait_jobs(c, ingest(c, {"kept.txt": b"status outlives the process"}, collection="restart"))[0]
    first.stop()
    second = start_service("comps.dataprep", "DATAPREP_", env, log_dir=tmp_path, name="dataprep-b")
    try:
        with httpx.Client(base_url=second.url, timeout=60) as c:
            assert c.get(f"/v1/dataprep/jobs/{job['job_id']}").json() == job
            assert job["job_id"] in [j["job_id"] for j in c.get("/v1/dataprep/jobs").json()["jobs"]]
    finally:
        second.stop()


def test_cli_ingests_a_folder(dataprep: Service, client: httpx.Client, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("The museum opens at ten.")
    (docs / "sub" / "b.md").write_text("# Hours\n\nClosed on Mondays.")
    (docs / "sub" / "skip.bin").write_bytes(b"\x00\x01")
    (docs / ".hidden.txt").write_text("not uploaded")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "comps.runtime.cli", "ingest", *args, "--url", dataprep.url]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)

    done = cli(str(docs), "--collection", "cli", "--tags", "museum", "--chunk-size", "500", "--chunk-overlap", "50")
    assert done.returncode == 0, done.stderr
    assert "2 document(s): 2 ingested, 0 unchanged, 0 failed" in done.stdout
    assert "chunks embedded" in done.stderr
    listed = get_docs(client, "cli")
    assert set(listed) == {"docs/a.txt", "docs/sub/b.md"}
    assert listed["docs/a.txt"]["tags"] == ["museum"]

    again = cli(str(docs), "--collection", "cli", "--tags", "museum", "--chunk-size", "500", "--chunk-overlap", "50")
    assert again.returncode == 0 and "2 unchanged" in again.stdout

    (docs / "sub" / "bad.pdf").write_bytes(b"%PDF-1.4 nothing")
    failed = cli(str(docs), "--collection", "cli", "--tags", "museum", "--chunk-size", "500", "--chunk-overlap", "50")
    assert failed.returncode == 1
    assert "1 failed" in failed.stdout
    assert "failed: docs/sub/bad.pdf: the PDF is corrupt or unreadable" in failed.stderr

    refused = cli(str(docs / "sub" / "skip.bin"))
    assert refused.returncode == 2 and "skip.bin: unsupported file type" in refused.stderr
    bad = cli(str(docs), "--chunk-size", "10", "--chunk-overlap", "20")
    assert bad.returncode == 1
    assert "answered HTTP 400: chunk_overlap (20) must be smaller than chunk_size (10)" in bad.stderr
