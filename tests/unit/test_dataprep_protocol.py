"""Ingest options, document ids, the streaming upload reader, the job queue and per-document locks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from comps.core.errors import BadRequest, Overloaded, PayloadTooLarge, UnsupportedMediaType
from comps.dataprep.jobs import Job, JobRunner, KeyedLocks
from comps.dataprep.protocol import IngestOptions, document_id, kind_of, parse_tags
from comps.dataprep.uploads import read_ingest_form

pytestmark = pytest.mark.unit


def test_options_defaults_and_rules() -> None:
    opts = IngestOptions(collection="c")
    assert (opts.chunking(200, 24), opts.tags, opts.link_list) == (("tokens", 200, 24), [], [])
    assert IngestOptions(collection="c", chunk_tokens=32).chunking(200, 24) == ("tokens", 32, 16)  # overlap <= half
    assert IngestOptions(collection="c", chunk_size=800).chunking(200, 24) == ("chars", 800, 100)  # OPEA's unit
    opts = IngestOptions(
        collection="c", chunk_size="50", chunk_overlap="0", tags=" a, b ,,a", link_list=' ["http://x/"] '
    )
    assert (opts.chunking(200, 24), opts.tags, opts.link_list) == (("chars", 50, 0), ["a", "b"], ["http://x/"])
    with pytest.raises(ValidationError, match=r"chunk_overlap \(10\) must be smaller than chunk_size \(10\)"):
        IngestOptions(collection="c", chunk_size=10, chunk_overlap=10)
    with pytest.raises(ValidationError, match="not both"):
        IngestOptions(collection="c", chunk_size=100, chunk_tokens=10)
    with pytest.raises(ValueError, match=r"chunk_overlap \(100\) must be smaller than chunk_size \(50\)"):
        IngestOptions(collection="c", chunk_size=50).chunking(200, 24)
    with pytest.raises(ValidationError, match="must be a JSON list of URLs"):
        IngestOptions(collection="c", link_list="http://x/")
    with pytest.raises(ValidationError, match="must be a JSON list of non-empty URL strings"):
        IngestOptions(collection="c", link_list='["http://x/", ""]')
    assert IngestOptions(collection="c", link_list="").link_list == []


def test_tags_limits() -> None:
    assert parse_tags(None) == [] and parse_tags("x,,y, x") == ["x", "y"]
    with pytest.raises(ValueError, match="longer than 100 characters"):
        parse_tags("a" * 101)
    with pytest.raises(ValueError, match="33 tags given; at most 32"):
        parse_tags(",".join(f"t{i}" for i in range(33)))


def test_document_id_is_stable_per_collection_and_source() -> None:
    assert document_id("c", "a.txt") == document_id("c", "a.txt")
    assert len({document_id("c", "a.txt"), document_id("d", "a.txt"), document_id("c", "b.txt")}) == 3
    assert len(document_id("c", "a.txt")) == 32
    assert kind_of("Report.PDF") == "pdf" and kind_of("notes.markdown") == "markdown"
    assert kind_of("archive.tar.gz") is None and kind_of("README") is None


# ------------------------------------------------------------------------------------- streaming uploads

BOUNDARY = "XyZ"


def multipart_request(
    chunks, content_type: str = f"multipart/form-data; boundary={BOUNDARY}"
) -> tuple[Request, list[int]]:
    """A request whose body is the iterator ``chunks``; the list counts the bytes the reader took."""
    taken = [0]
    it = iter(chunks)

    async def receive() -> dict:
        try:
            block = next(it)
        except StopIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        taken[0] += len(block)
        return {"type": "http.request", "body": block, "more_body": True}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-type", content_type.encode())]}
    return Request(scope, receive), taken


def part(name: str, body: bytes, filename: str | None = None) -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + body + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()


def read(request: Request, spool: Path, max_file_bytes: int = 1000, max_files: int = 3):
    return asyncio.run(read_ingest_form(request, spool_dir=spool, max_file_bytes=max_file_bytes, max_files=max_files))


def test_reads_fields_and_spools_files(tmp_path: Path) -> None:
    body = part("chunk_size", b"300") + part("files", b"hello", "a.txt") + part("files", b"# hi", "dir/b.md") + END
    form = read(multipart_request([body[:7], body[7:30], body[30:]])[0], tmp_path)
    assert form.fields == {"chunk_size": "300"}
    assert [(u.filename, u.kind, u.size, u.path.read_bytes()) for u in form.uploads] == [
        ("a.txt", "text", 5, b"hello"),
        ("dir/b.md", "markdown", 4, b"# hi"),
    ]
    assert form.uploads[0].sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    form.discard()
    assert list(tmp_path.iterdir()) == []


def test_oversized_file_is_refused_before_the_rest_is_read(tmp_path: Path) -> None:
    def endless():
        yield part("files", b"small", "ok.txt")[:-2] + b"\r\n"
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="big.txt"\r\n\r\n'.encode()
        while True:
            yield b"x" * 65536

    request, taken = multipart_request(endless())
    with pytest.raises(PayloadTooLarge, match=r"^big\.txt is larger than the limit of 100000 bytes$"):
        read(request, tmp_path, max_file_bytes=100_000)
    assert taken[0] < 100_000 + 2 * 65536 + 1000
    assert list(tmp_path.iterdir()) == []  # the good file's spool is gone too


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (
            part("files", b"MZ", "x.exe") + END,
            UnsupportedMediaType,
            "x.exe: unsupported file type; supported extensions: .csv",
        ),
        (part("files", b"", "empty.txt") + END, BadRequest, "empty.txt is empty"),
        (part("other", b"data", "a.txt") + END, BadRequest, "unexpected file in form field 'other'"),
        (
            b"".join(part("files", b"x", f"{i}.txt") for i in range(4)) + END,
            BadRequest,
            "more than 3 files in one request",
        ),
        (part("link_list", b"x" * (1024 * 1024 + 1)) + END, PayloadTooLarge, "form field 'link_list' is larger than"),
        (part("files", b"abc", "a.txt"), BadRequest, "the multipart body ended before its closing boundary"),
    ],
)
def test_bad_parts(tmp_path: Path, body: bytes, error: type, message: str) -> None:
    with pytest.raises(error) as err:
        read(multipart_request([body])[0], tmp_path)
    assert str(err.value).startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_empty_file_input_is_no_file(tmp_path: Path) -> None:
    form = read(multipart_request([part("files", b"", "") + part("link_list", b'["http://x/"]') + END])[0], tmp_path)
    assert form.uploads == [] and form.fields == {"link_list": '["http://x/"]'}


def test_other_content_types(tmp_path: Path) -> None:
    request, _ = multipart_request([b"link_list=%5B%5D&chunk_size=10"], "application/x-www-form-urlencoded")
    assert read(request, tmp_path).fields == {"link_list": "[]", "chunk_size": "10"}
    with pytest.raises(UnsupportedMediaType, match=r"^ingest expects multipart/form-data .* not application/json$"):
        read(multipart_request([b"{}"], "application/json")[0], tmp_path)
    with pytest.raises(BadRequest, match="without a boundary"):
        read(multipart_request([b""], "multipart/form-data")[0], tmp_path)


# ---------------------------------------------------------------------------------------- jobs and locks


def job(source: str) -> Job:
    return Job(source=source, collection="c", chunk_size=100, chunk_overlap=0, tags=[])


def test_queue_takes_all_jobs_or_none_and_runs_them() -> None:
    async def main() -> None:
        saved: list[tuple[str, str]] = []
        release = asyncio.Event()
        started: asyncio.Queue[str] = asyncio.Queue()
        ended: asyncio.Queue[str] = asyncio.Queue()

        async def run(j: Job) -> None:
            started.put_nowait(j.source)
            await release.wait()
            j.finish("succeeded")
            ended.put_nowait(j.source)

        async def save(info: dict) -> None:
            saved.append((info["source"], info["status"]))

        runner = JobRunner(workers=1, max_queued=2, kept=10, run=run, save=save)
        runner.start()
        first = job("a")
        runner.submit([first])
        assert await started.get() == "a"  # the worker took "a": the queue is empty again
        runner.submit([job("b"), job("c")])
        with pytest.raises(Overloaded, match=r"queue is full \(2 jobs waiting, room for 0\)"):
            runner.submit([job("d")])
        release.set()
        assert [await ended.get() for _ in range(3)] == ["a", "b", "c"]
        assert [j.status for j in runner.recent()] == ["succeeded"] * 3
        assert runner.get(first.job_id) is first and runner.get("nope") is None
        stuck = job("e")
        release.clear()
        runner.submit([stuck])
        assert [await started.get() for _ in range(3)] == ["b", "c", "e"]  # "e" is running, held
        await runner.stop()
        assert stuck.status == "failed" and stuck.error == "dataprep stopped before the job finished; ingest it again"
        assert saved[-1] == ("e", "failed")

    asyncio.run(main())


def test_finished_jobs_beyond_the_limit_are_forgotten() -> None:
    async def main() -> None:
        async def nothing(_: object) -> None:
            return None

        runner = JobRunner(workers=1, max_queued=100, kept=3, run=nothing, save=nothing)
        jobs = [job(str(i)) for i in range(5)]
        for j in jobs:
            j.finish("succeeded")
            runner.submit([j])
        assert [j.source for j in runner.recent()] == ["4", "3", "2"]

    asyncio.run(main())


def test_keyed_locks_serialize_one_key_only() -> None:
    async def main() -> None:
        locks = KeyedLocks()
        order: list[str] = []

        async def hold(key: str, name: str) -> None:
            async with locks.hold(key):
                order.append(f"{name}+")
                await asyncio.sleep(0.02)
                order.append(f"{name}-")

        await asyncio.gather(hold("k", "a"), hold("k", "b"), hold("other", "c"))
        assert order.index("a-") < order.index("b+")
        assert order.index("c+") < order.index("a-")
        assert locks._locks == {}

    asyncio.run(main())
