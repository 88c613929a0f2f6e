"""Index schema and key layout of a collection in Redis (RediSearch).

A collection ``c`` (OPEA's ``INDEX_NAME``, default ``rag-redis``) is:
- the RediSearch index ``c`` over hashes whose keys start with ``c:chunk:``;
- one hash per chunk, key ``c:chunk:<doc_id>:<version>:<n>``, fields ``text`` (TEXT, BM25),
  ``embedding`` (VECTOR, FLOAT32, COSINE), ``source``, ``doc_id``, ``tags`` (TAG), ``page``, ``chunk`` (NUMERIC);
- ``c:meta``: the collection's vector dimension, algorithm and embedding model; ``c:seq``: its version counter;
- ``c:doc:<doc_id>``: one document's record (source, sha256, version, chunk count, ...);
- ``c:docs``: the set of document ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import redis.asyncio as aioredis
from redis.commands.search.field import NumericField, TagField, TextField, VectorField
from redis.commands.search.index_definition import IndexDefinition, IndexType
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from comps.core.errors import BadRequest
from comps.vectorstore.names import validate_collection

Algorithm = Literal["HNSW", "FLAT"]

TEXT = "text"
EMBEDDING = "embedding"
SOURCE = "source"
DOC_ID = "doc_id"
TAGS = "tags"
PAGE = "page"
CHUNK = "chunk"
TAG_FIELDS = (SOURCE, DOC_ID, TAGS)
NUMERIC_FIELDS = (PAGE, CHUNK)

_TAG_SPECIAL = re.compile(r"([,.<>{}\[\]\"':;!@#$%^&*()\-+=~|/\\ ?])")


def chunk_prefix(collection: str) -> str:
    return f"{collection}:chunk:"


def chunk_key(collection: str, doc_id: str, version: int, n: int) -> str:
    return f"{collection}:chunk:{doc_id}:{version}:{n}"


def doc_key(collection: str, doc_id: str) -> str:
    return f"{collection}:doc:{doc_id}"


def docs_key(collection: str) -> str:
    return f"{collection}:docs"


def meta_key(collection: str) -> str:
    return f"{collection}:meta"


def escape_tag(value: str) -> str:
    """Escape a value for a RediSearch TAG query (``@field:{value}``)."""
    return _TAG_SPECIAL.sub(r"\\\1", str(value))


def vector_bytes(vector: np.ndarray | Sequence[float]) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dim: int
    algorithm: str
    model: str


def connect(url: str) -> aioredis.Redis:
    """An async client for ``url`` (binary-safe: vectors are bytes). A pooled connection that a Redis restart
    closed is replaced and the command retried (redis-py retries only the errors it is told to)."""
    return aioredis.Redis.from_url(
        url, decode_responses=False, socket_timeout=30, socket_connect_timeout=5,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )  # fmt: skip


async def collection_info(r: aioredis.Redis, collection: str) -> CollectionInfo | None:
    meta = await r.hgetall(meta_key(collection))
    if not meta:
        return None

    def get(field: str) -> str:
        return str(meta.get(field.encode(), b"").decode())

    return CollectionInfo(collection, int(get("dim")), get("algorithm"), get("model"))


async def ensure_index(
    r: aioredis.Redis,
    collection: str,
    dim: int,
    *,
    model: str = "",
    algorithm: Algorithm = "HNSW",
    hnsw_m: int = 16,
    hnsw_ef_construction: int = 200,
    hnsw_ef_runtime: int = 10,
) -> CollectionInfo:
    """Create the collection's index if it does not exist; refuse vectors of another dimension."""
    validate_collection(collection)
    info = await collection_info(r, collection)
    if info is not None and info.dim != dim:
        raise BadRequest(
            f"collection {collection!r} holds {info.dim}-dimensional vectors; got {dim}-dimensional ones "
            f"(was it built with another embedding model than {model or 'this one'}?)",
            param="embedding",
            code="dimension_mismatch",
        )
    params: dict[str, object] = {"TYPE": "FLOAT32", "DIM": dim, "DISTANCE_METRIC": "COSINE"}
    if algorithm == "HNSW":
        params.update({"M": hnsw_m, "EF_CONSTRUCTION": hnsw_ef_construction, "EF_RUNTIME": hnsw_ef_runtime})
    fields = [
        TextField(TEXT),
        VectorField(EMBEDDING, algorithm, params),
        TagField(SOURCE),
        TagField(DOC_ID),
        TagField(TAGS, separator=","),
        NumericField(PAGE),
        NumericField(CHUNK),
    ]
    try:
        await r.ft(collection).create_index(
            fields, definition=IndexDefinition(prefix=[chunk_prefix(collection)], index_type=IndexType.HASH)
        )
    except ResponseError as exc:
        if "already exists" not in str(exc).lower():
            raise
    if info is None:
        await r.hset(meta_key(collection), mapping={"dim": dim, "algorithm": algorithm, "model": model})
        info = CollectionInfo(collection, dim, algorithm, model)
    return info


async def list_collections(r: aioredis.Redis) -> list[str]:
    names = []
    async for key in r.scan_iter(match="*:meta", count=1000):
        names.append(key.decode()[: -len(":meta")])
    return sorted(names)
