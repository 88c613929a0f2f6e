"""Reading an ingest request's form while it streams in, so limits hold before data piles up.

Starlette's form parser would spool every upload, whole, before the route sees it. Here each upload
goes to its own spool file (the job reads it later) and is refused as soon as it is known to be bad:
an unsupported extension when its headers arrive (415), a file over the size limit at the first byte
past it (413, the rest of the body is not read). Disk writes and hashing run in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import parse_qsl

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from comps.core.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from comps.dataprep.protocol import SUPPORTED_EXTENSIONS, DocumentKind, kind_of

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # defined for type checkers only

MAX_FIELD_BYTES = 1024 * 1024
FILE_FIELD = "files"


@dataclass
class Upload:
    filename: str
    kind: DocumentKind
    path: Path
    size: int = 0
    sha256: str = ""
    _hash: object = field(default_factory=hashlib.sha256, repr=False)
    _file: IO[bytes] | None = field(default=None, repr=False)
    _pending: list[bytes] = field(default_factory=list, repr=False)

    def flush(self, final: bool = False) -> None:
        """Write what arrived (in a thread); on ``final`` close the file and fix the digest."""
        if self._file is None:
            self._file = self.path.open("wb")
        for block in self._pending:
            self._file.write(block)
            self._hash.update(block)  # type: ignore[attr-defined]
        self._pending.clear()
        if final:
            self._file.close()
            self.sha256 = self._hash.hexdigest()  # type: ignore[attr-defined]

    def discard(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


@dataclass
class IngestForm:
    fields: dict[str, str] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)

    def discard(self) -> None:
        for upload in self.uploads:
            upload.discard()


def supported_list() -> str:
    return ", ".join(sorted(SUPPORTED_EXTENSIONS))


async def read_ingest_form(request: Request, *, spool_dir: Path, max_file_bytes: int, max_files: int) -> IngestForm:
    """The form's text fields and its uploads (spooled under ``spool_dir``); on any error nothing is left
    on disk and the error says which file or field broke which rule."""
    media, params = parse_options_header(request.headers.get("content-type"))
    if media == b"application/x-www-form-urlencoded":
        return IngestForm(fields=await _urlencoded(request))
    if media != b"multipart/form-data":
        given = media.decode("latin-1") or "no content type"
        raise UnsupportedMediaType(f"ingest expects multipart/form-data (files and/or link_list), not {given}")
    if b"boundary" not in params:
        raise BadRequest("multipart/form-data without a boundary")
    form = IngestForm()
    reader = _MultipartReader(form, spool_dir, max_file_bytes, max_files)
    parser = MultipartParser(params[b"boundary"], reader.callbacks())
    try:
        async for block in request.stream():
            parser.write(block)
            await reader.flush()
        parser.finalize()
        if not reader.ended:
            raise BadRequest("the multipart body ended before its closing boundary")
        await reader.flush()
    except MultipartParseError as exc:  # e.g. a part without headers, or a header line without a colon
        await asyncio.to_thread(form.discard)
        raise BadRequest(f"the multipart body is malformed: {exc}") from None
    except BaseException:
        await asyncio.to_thread(form.discard)
        raise
    return form


async def _urlencoded(request: Request) -> dict[str, str]:
    body = bytearray()
    async for block in request.stream():
        body += block
        if len(body) > MAX_FIELD_BYTES:
            raise PayloadTooLarge(f"the form is larger than {MAX_FIELD_BYTES} bytes")
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


class _MultipartReader:
    def __init__(self, form: IngestForm, spool_dir: Path, max_file_bytes: int, max_files: int) -> None:
        self.form = form
        self.spool_dir = spool_dir
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._name = ""
        self._upload: Upload | None = None
        self._skip_empty = False
        self._field = bytearray()
        self._finished: list[Upload] = []

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._add(d[s:e], value=False),
            "on_header_value": lambda d, s, e: self._add(d[s:e], value=True),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def _add(self, data: bytes, *, value: bool) -> None:
        if value:
            self._header_value += data
        else:
            self._header_name += data

    def on_part_begin(self) -> None:
        self._headers = {}
        self._upload = None
        self._skip_empty = False
        self._field = bytearray()

    def on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise BadRequest('a multipart part has no name (Content-Disposition: form-data; name="...")')
        self._name = options[b"name"].decode("utf-8", errors="replace")
        if b"filename" not in options:
            return
        filename = options[b"filename"].decode("utf-8", errors="replace").strip()
        if self._name != FILE_FIELD:
            raise BadRequest(
                f"unexpected file in form field {self._name!r}; send files as {FILE_FIELD!r}", param=self._name
            )
        if not filename:
            self._skip_empty = True  # a form's empty file input: no file chosen
            return
        kind = kind_of(filename)
        if kind is None:
            raise UnsupportedMediaType(
                f"{filename}: unsupported file type; supported extensions: {supported_list()}", param=FILE_FIELD
            )
        if len(self.form.uploads) >= self.max_files:
            raise BadRequest(f"more than {self.max_files} files in one request", param=FILE_FIELD)
        self._upload = Upload(filename, kind, self.spool_dir / f"upload-{uuid.uuid4().hex}")
        self.form.uploads.append(self._upload)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        if self._upload is not None:
            self._upload.size += size
            if self._upload.size > self.max_file_bytes:
                raise PayloadTooLarge(
                    f"{self._upload.filename} is larger than the limit of {self.max_file_bytes} bytes",
                    param=FILE_FIELD,
                )
            self._upload._pending.append(bytes(data[start:end]))
        elif self._skip_empty:
            if size:
                raise BadRequest(f"a file in {FILE_FIELD!r} has content but no file name", param=FILE_FIELD)
        else:
            self._field += data[start:end]
            if len(self._field) > MAX_FIELD_BYTES:
                raise PayloadTooLarge(
                    f"form field {self._name!r} is larger than {MAX_FIELD_BYTES} bytes", param=self._name
                )

    def on_part_end(self) -> None:
        if self._upload is not None:
            if self._upload.size == 0:
                raise BadRequest(f"{self._upload.filename} is empty", param=FILE_FIELD)
            self._finished.append(self._upload)
        elif not self._skip_empty:
            self.form.fields[self._name] = self._field.decode("utf-8", errors="replace")

    def on_end(self) -> None:
        self.ended = True

    async def flush(self) -> None:
        """Write the data that arrived to the spool files, off the event loop."""
        todo = [u for u in self.form.uploads if u._pending or u in self._finished]
        finished, self._finished = self._finished, []
        if todo:
            await asyncio.to_thread(_flush_all, todo, finished)


def _flush_all(uploads: list[Upload], finished: list[Upload]) -> None:
    for upload in uploads:
        upload.flush(final=upload in finished)
