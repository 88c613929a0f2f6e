"""The dataprep service's contract (OPEA-compatible paths and field names).

- ``POST /v1/dataprep/ingest`` (multipart/form-data; answers 202 at once with one job per file/URL):

  ========== ======================================================================================
  files      0..n uploads; the file name is the document's ``source`` (its extension picks the parser)
  link_list  a JSON list of http(s) URLs, e.g. ``["https://example.com/a.html"]``
  chunk_tokens  chunk length in the embedding model's tokens, heading path included (default
             ``DATAPREP_CHUNK_TOKENS``, at most the model's limit); chunk_overlap_tokens (default
             ``DATAPREP_CHUNK_OVERLAP_TOKENS``) must be smaller
  chunk_size chunk length in characters (OPEA's; chunks by characters instead of tokens when given);
             chunk_overlap (default 100) must be smaller
  collection the collection (RediSearch index) to write to; default: ``INDEX_NAME`` (``rag-redis``)
  tags       comma-separated tags stored on every chunk (a TAG field the retriever can filter on)
  ========== ======================================================================================

  Refused up front, nothing queued and nothing stored touched: no files and no links, bad sizes, bad
  ``link_list`` JSON, a non-http(s) URL or one that resolves to a private/loopback/link-local/multicast
  address (400); an empty file (400); a file over ``DATAPREP_MAX_FILE_BYTES`` (413, found while streaming,
  the rest is not read); a file whose extension is not in `SUPPORTED_EXTENSIONS` (415); a full job queue
  (429). What can only be known by reading the content fails the job with the reason: a corrupt or
  encrypted PDF, a broken .docx, invalid JSON, a document without text, a URL answering with an
  unsupported content type or an error.
- ``GET /v1/dataprep/jobs/{job_id}`` -> `JobInfo`; ``GET /v1/dataprep/jobs`` -> `JobList` (newest first).
- ``POST /v1/dataprep/get`` (`GetRequest`, body optional) -> ``list[DocumentInfo]``.
- ``POST /v1/dataprep/delete`` (`DeleteRequest`) -> `DeleteResponse`.

A document's id is a stable hash of (collection, source). Ingesting a source again with the same content
(sha256), chunking parameters and tags is ``skipped``; with anything changed its chunks are replaced in one
transaction (readers see the old or the new version, a failed job leaves the old one).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

DocumentKind = Literal["text", "markdown", "html", "pdf", "docx", "csv", "json", "jsonl"]

SUPPORTED_EXTENSIONS: dict[str, DocumentKind] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
}

# Content types of URL answers; anything else (or application/octet-stream) falls back to the URL's extension.
CONTENT_TYPES: dict[str, DocumentKind] = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "text/csv": "csv",
    "application/json": "json",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
}

JobStatus = Literal["queued", "running", "succeeded", "failed", "skipped"]
ChunkUnit = Literal["tokens", "chars"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "skipped"})

DEFAULT_CHUNK_CHARS = 1500  # OPEA's, when chunk sizes are given in characters
DEFAULT_OVERLAP_CHARS = 100
MAX_TAGS = 32
MAX_TAG_LENGTH = 100


def kind_of(name: str) -> DocumentKind | None:
    """The parser for a file name, by its extension (case-insensitive); None when unsupported."""
    dot = name.rfind(".")
    return SUPPORTED_EXTENSIONS.get(name[dot:].lower()) if dot >= 0 else None


def document_id(collection: str, source: str) -> str:
    """The stable id of ``source`` (file name or URL) in ``collection``."""
    return hashlib.sha256(f"{collection}\x00{source}".encode()).hexdigest()[:32]


def parse_tags(value: str | None) -> list[str]:
    """``"a, b,,a"`` -> ``["a", "b"]``."""
    tags: list[str] = []
    for raw in (value or "").split(","):
        tag = raw.strip()
        if tag and tag not in tags:
            if len(tag) > MAX_TAG_LENGTH:
                raise ValueError(f"tag {tag[:20]!r}... is longer than {MAX_TAG_LENGTH} characters")
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise ValueError(f"{len(tags)} tags given; at most {MAX_TAGS} are allowed")
    return tags


class IngestOptions(BaseModel):
    """The non-file form fields of an ingest request, validated once the body has been read."""

    chunk_size: int | None = Field(default=None, gt=0, le=100_000, description="Characters (OPEA's unit).")
    chunk_overlap: int | None = Field(default=None, ge=0, description="Characters; default 100.")
    chunk_tokens: int | None = Field(default=None, gt=0, le=100_000, description="The embedding model's tokens.")
    chunk_overlap_tokens: int | None = Field(default=None, ge=0)
    collection: str
    tags: list[str] = Field(default_factory=list)
    link_list: list[str] = Field(default_factory=list)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: object) -> object:
        return parse_tags(value) if isinstance(value, str) or value is None else value

    @field_validator("link_list", mode="before")
    @classmethod
    def _links(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return []
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f'must be a JSON list of URLs, e.g. ["https://example.com"]: {exc}') from None
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError("must be a JSON list of non-empty URL strings")
        return [v.strip() for v in value]

    @model_validator(mode="after")
    def _one_unit(self) -> IngestOptions:
        chars = self.chunk_size is not None or self.chunk_overlap is not None
        if chars and (self.chunk_tokens is not None or self.chunk_overlap_tokens is not None):
            raise ValueError(
                "give chunk_size/chunk_overlap (characters) or chunk_tokens/chunk_overlap_tokens, not both"
            )
        for size, overlap in (("chunk_size", "chunk_overlap"), ("chunk_tokens", "chunk_overlap_tokens")):
            n, m = getattr(self, size), getattr(self, overlap)
            if n is not None and m is not None and m >= n:
                raise ValueError(f"{overlap} ({m}) must be smaller than {size} ({n})")
        return self

    def chunking(self, tokens: int, overlap_tokens: int) -> tuple[ChunkUnit, int, int]:
        """(unit, size, overlap): characters when chunk_size or chunk_overlap is given, else tokens with the
        given defaults for what is unset."""
        if self.chunk_size is not None or self.chunk_overlap is not None:
            size = self.chunk_size or DEFAULT_CHUNK_CHARS
            overlap = DEFAULT_OVERLAP_CHARS if self.chunk_overlap is None else self.chunk_overlap
            if overlap >= size:
                raise ValueError(f"chunk_overlap ({overlap}) must be smaller than chunk_size ({size})")
            return "chars", size, overlap
        size = self.chunk_tokens or tokens
        overlap = min(overlap_tokens, size // 2) if self.chunk_overlap_tokens is None else self.chunk_overlap_tokens
        if overlap >= size:
            raise ValueError(f"chunk_overlap_tokens ({overlap}) must be smaller than chunk_tokens ({size})")
        return "tokens", size, overlap


class JobRef(BaseModel):
    job_id: str
    source: str
    status: JobStatus


class IngestResponse(BaseModel):
    """202: one job per uploaded file and per URL, in request order (files first)."""

    jobs: list[JobRef]


class JobInfo(BaseModel):
    job_id: str
    source: str
    collection: str
    status: JobStatus
    chunks_total: int = Field(default=0, description="Chunks the document was cut into (0 until parsed).")
    chunks_embedded: int = Field(default=0, description="Chunks embedded so far: progress is this / chunks_total.")
    doc_id: str | None = Field(default=None, description="The document's id, known once the job has started.")
    error: str | None = Field(default=None, description="Why the job failed.")
    created_at: float
    finished_at: float | None = None
    retries: int = Field(default=0, description="Embedding retries after the embedding service failed.")


class JobList(BaseModel):
    jobs: list[JobInfo]


class GetRequest(BaseModel):
    collection: str | None = Field(default=None, description="Default: INDEX_NAME.")


class DocumentInfo(BaseModel):
    doc_id: str
    source: str
    chunks: int
    sha256: str
    updated_at: float
    tags: list[str]


class DeleteRequest(BaseModel):
    file_path: str = Field(min_length=1, description='A doc_id, a source (file name or URL), or "all".')
    collection: str | None = Field(default=None, description="Default: INDEX_NAME.")


class DeleteResponse(BaseModel):
    deleted: int = Field(description="Documents deleted.")
