# ruff: noqa: S608 - SQL names only our tables (vs_chunks_<int>) and columns; every value is a $n parameter
"""PostgreSQL with pgvector behind the `VectorStore` protocol (asyncpg; vectors in pgvector's binary format).

Layout (fixed tables: Alembic, ``comps/sqlstore/migrations/versions/0006_vectorstore.py``):
- ``vectorstore_collections``: one row per collection (dimension, algorithm, model) and its ``id``;
- ``vs_chunks_<id>``: ONE TABLE PER COLLECTION, made by `ensure_collection` from `_CHUNKS_DDL`: a chunk's
  text, ``vector(dim)``, source, tags, page, a generated ``tsvector`` (GIN) and, for HNSW collections, an
  HNSW index with cosine distance (``m`` 16, ``ef_construction`` 200, as the Redis index). One table per
  collection because an HNSW index needs one fixed dimension (collections may use different models), deleting
  a collection is a DROP TABLE (no dead rows to vacuum), and small graphs build faster: measured in
  ``docs/scaling.md`` (``benchmarks/bench_pgvector_layout.py``);
- ``vectorstore_documents``: a document's record (`DocumentRecord`), key (collection, doc_id);
- ``vectorstore_versions``: each collection's content version, kept when the collection is deleted;
- ``vectorstore_doc_version``: a sequence numbering document versions (what Redis keeps in ``c:meta``).

A write is ONE transaction: replacing a document deletes its rows and inserts the new ones (COPY), upserts
its record and bumps the collection's content version; readers (MVCC) see the old version or the new one.
Writers of one document queue on an advisory lock (last one wins); writers hold the collection's row
``FOR SHARE``, which `delete_all` (``FOR UPDATE``) waits for, so a write never lands in a dropped collection.
Searches run in a read-only transaction that sets ``hnsw.ef_search`` and ``hnsw.iterative_scan =
strict_order`` (filters then never starve the ``k`` results) for that transaction only.

Filters match as RediSearch TAG fields do: case-insensitive, tags split on ``,`` and trimmed. Full text
(hybrid) is PostgreSQL's ``english`` configuration (stemming and stop words, as RediSearch's default),
ranked by ``ts_rank_cd``; RediSearch ranks by BM25, so hybrid orders can differ where the ranks are close.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import numpy as np

from comps.core.errors import BadRequest, NotReady, UpstreamTimeout, UpstreamUnavailable
from comps.sqlstore.db import asyncpg_dsn
from comps.vectorstore.documents import Chunk, CollectionMissing, DocumentRecord
from comps.vectorstore.names import validate_collection
from comps.vectorstore.schema import CollectionInfo
from comps.vectorstore.search import (
    CollectionSummary,
    Hit,
    Query,
    check_dimension,
    filter_values,
    mmr,
    query_vector,
    query_words,
    rrf,
)
from comps.vectorstore.versions import pg_content_versions

log = logging.getLogger("comps.vectorstore.pgvector")

HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
DEFAULT_EF_SEARCH = 40  # pgvector's own default
TEXT_CONFIG = "english"
_COLUMNS = "doc_id, version, n, text, source, tags, page"
_DOC_FIELDS = [f.name for f in dataclasses.fields(DocumentRecord)]

_CHUNKS_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    doc_id text NOT NULL,
    version integer NOT NULL,
    n integer NOT NULL,
    text text NOT NULL,
    embedding vector({dim}) NOT NULL,
    source text NOT NULL,
    tags text NOT NULL,
    tag_set text[] NOT NULL,
    page integer,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('{config}', text)) STORED,
    PRIMARY KEY (doc_id, n)
);
CREATE INDEX IF NOT EXISTS {table}_source ON {table} (lower(source));
CREATE INDEX IF NOT EXISTS {table}_doc ON {table} (lower(doc_id));
CREATE INDEX IF NOT EXISTS {table}_tags ON {table} USING gin (tag_set);
CREATE INDEX IF NOT EXISTS {table}_tsv ON {table} USING gin (tsv);
"""
_HNSW_DDL = (
    "CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops) "
    f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
)


def chunks_table(collection_id: int) -> str:
    return f"vs_chunks_{int(collection_id)}"


def _encode_vector(value: Any) -> bytes:
    a = np.asarray(value, dtype=">f4").reshape(-1)
    return struct.pack(">HH", a.size, 0) + a.tobytes()


def _decode_vector(data: bytes) -> np.ndarray:
    dim, _ = struct.unpack_from(">HH", data)
    return np.frombuffer(data, dtype=">f4", count=dim, offset=4).astype(np.float32)


async def _init_connection(conn: asyncpg.Connection) -> None:
    schema = await conn.fetchval("SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                                 "WHERE t.typname = 'vector'")  # fmt: skip
    if schema is None:
        raise NotReady("PostgreSQL has no 'vector' extension: CREATE EXTENSION vector (pgvector) in this database")
    await conn.set_type_codec("vector", schema=schema, encoder=_encode_vector, decoder=_decode_vector, format="binary")


def tag_set(tags: str) -> list[str]:
    """The stored tag string as RediSearch's TAG field indexes it: split on ``,``, trimmed, lower-cased."""
    return sorted({t.strip().lower() for t in tags.split(",") if t.strip()})


def text_query(text: str | None) -> str:
    """`query_words` OR-ed as a ``to_tsquery`` string (each a quoted lexeme: ``\\w+`` words hold no quote)."""
    return " | ".join(f"'{w}'" for w in query_words(text))


def _where(filters: dict[str, list[str] | list[int]], params: list[Any]) -> str:
    """SQL for the checked filters (`filter_values`), appending their parameters to ``params``."""
    clauses = []
    for key, values in filters.items():
        params.append([int(v) for v in values] if key == "page" else [str(v).lower() for v in values])
        slot = f"${len(params)}"
        if key == "page":
            clauses.append(f"page = ANY({slot}::int[])")
        elif key == "tags":
            clauses.append(f"tag_set && {slot}::text[]")
        else:
            clauses.append(f"lower({key}) = ANY({slot}::text[])")
    return " AND ".join(clauses) if clauses else "TRUE"


class PgvectorStore:
    name = "pgvector"

    def __init__(self, url: str, *, pool_size: int = 10, migrate: bool = True) -> None:
        from comps.sqlstore.db import redacted

        self.url = url
        self.where = redacted(url)
        self.pool_size = pool_size
        self.migrate = migrate
        self._pool: asyncpg.Pool | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Migrate (under the store's advisory lock; creates the extension where the role may), then pool."""
        if self.migrate:
            from comps.sqlstore.db import Database, migrate_when_up

            db = Database(self.url, pool_size=1)
            try:
                await migrate_when_up(db, what="the vector store (PostgreSQL)")
            finally:
                await db.close()
        self._pool = await asyncpg.create_pool(
            asyncpg_dsn(self.url), min_size=1, max_size=self.pool_size, init=_init_connection, command_timeout=60
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def check_ready(self) -> dict[str, Any]:
        async with self.connection() as conn:
            version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        return {"postgres": self.where, "pgvector": version}

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise NotReady("the pgvector store is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except (OSError, asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.CannotConnectNowError) as exc:
            raise UpstreamUnavailable(f"PostgreSQL at {self.where} is unreachable: {exc}", node="postgres") from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"PostgreSQL at {self.where} did not answer in time", node="postgres") from exc

    # ---------------------------------------------------------------------------------------- collections

    async def _collection(self, conn: asyncpg.Connection, collection: str, lock: str = "") -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT id, dim, algorithm, model FROM vectorstore_collections WHERE name = $1 {lock}", collection
        )

    async def collection_info(self, collection: str) -> CollectionInfo | None:
        async with self.connection() as conn:
            row = await self._collection(conn, collection)
        return None if row is None else CollectionInfo(collection, row["dim"], row["algorithm"], row["model"])

    async def ensure_collection(self, collection: str, dim: int, *, model: str = "", algorithm: str = "HNSW") -> None:
        validate_collection(collection)
        async with self.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('vectorstore:' || $1, 0))", collection)
            row = await self._collection(conn, collection)
            if row is not None:
                if row["dim"] != dim:
                    raise BadRequest(
                        f"collection {collection!r} holds {row['dim']}-dimensional vectors; got {dim}-dimensional "
                        f"ones (was it built with another embedding model than {model or 'this one'}?)",
                        param="embedding",
                        code="dimension_mismatch",
                    )
                return
            cid = await conn.fetchval(
                "INSERT INTO vectorstore_collections (name, dim, algorithm, model) VALUES ($1, $2, $3, $4) "
                "RETURNING id",
                collection,
                dim,
                algorithm,
                model,
            )
            table = chunks_table(cid)
            await conn.execute(_CHUNKS_DDL.format(table=table, dim=int(dim), config=TEXT_CONFIG))
            if algorithm == "HNSW":
                await conn.execute(_HNSW_DDL.format(table=table))

    async def collections(self) -> list[CollectionSummary]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT c.name, c.id, c.dim, c.algorithm, c.model, "
                "(SELECT count(*) FROM vectorstore_documents d WHERE d.collection = c.name) AS documents "
                "FROM vectorstore_collections c ORDER BY c.name"
            )
            summaries = []
            for row in rows:
                chunks = await conn.fetchval(f"SELECT count(*) FROM {chunks_table(row['id'])}")
                summaries.append(
                    CollectionSummary(row["name"], row["dim"], row["algorithm"], row["model"], chunks, row["documents"])
                )
        return summaries

    # -------------------------------------------------------------------------------------------- documents

    async def get_document(self, collection: str, doc_id: str) -> DocumentRecord | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {', '.join(_DOC_FIELDS)} FROM vectorstore_documents WHERE collection = $1 AND doc_id = $2",
                collection,
                doc_id,
            )
        return DocumentRecord(**dict(row)) if row else None

    async def list_documents(self, collection: str) -> list[DocumentRecord]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {', '.join(_DOC_FIELDS)} FROM vectorstore_documents WHERE collection = $1 "
                "ORDER BY source, doc_id",
                collection,
            )
        return [DocumentRecord(**dict(row)) for row in rows]

    async def document_chunks(self, collection: str, record: DocumentRecord) -> list[Chunk]:
        async with self.connection() as conn:
            info = await self._collection(conn, collection)
            if info is None:
                raise CollectionMissing(f"collection {collection!r} does not exist")
            rows = await conn.fetch(
                f"SELECT text, embedding, page FROM {chunks_table(info['id'])} WHERE doc_id = $1 AND version = $2 "
                "ORDER BY n",
                record.doc_id,
                record.version,
            )
        return [Chunk(row["text"], row["embedding"], row["page"]) for row in rows]

    async def replace_document(
        self, collection: str, record: DocumentRecord, chunks: Sequence[Chunk]
    ) -> DocumentRecord:
        async with self.connection() as conn, conn.transaction():
            info = await self._collection(conn, collection, "FOR SHARE")
            if info is None:
                raise CollectionMissing(f"collection {collection!r} does not exist; create it with ensure_collection")
            await self._lock_document(conn, collection, record.doc_id)
            version = await conn.fetchval("SELECT nextval('vectorstore_doc_version')")
            record = dataclasses.replace(record, version=int(version), chunks=len(chunks))
            table = chunks_table(info["id"])
            await conn.execute(f"DELETE FROM {table} WHERE doc_id = $1", record.doc_id)
            tags = tag_set(record.tags)
            rows = [
                (record.doc_id, record.version, n, c.text, c.embedding, record.source, record.tags, tags, c.page)
                for n, c in enumerate(chunks)
            ]
            await conn.copy_records_to_table(
                table,
                records=rows,
                columns=["doc_id", "version", "n", "text", "embedding", "source", "tags", "tag_set", "page"],
            )
            values = dataclasses.astuple(record)
            slots = ", ".join(f"${i}" for i in range(2, len(values) + 2))
            updates = ", ".join(f"{f} = EXCLUDED.{f}" for f in _DOC_FIELDS if f != "doc_id")
            await conn.execute(
                f"INSERT INTO vectorstore_documents (collection, {', '.join(_DOC_FIELDS)}) VALUES ($1, {slots}) "
                f"ON CONFLICT (collection, doc_id) DO UPDATE SET {updates}",
                collection,
                *values,
            )
            await self._bump(conn, collection)
        return record

    async def delete_document(self, collection: str, doc_id: str) -> DocumentRecord | None:
        async with self.connection() as conn, conn.transaction():
            info = await self._collection(conn, collection, "FOR SHARE")
            old = None
            if info is not None:
                await self._lock_document(conn, collection, doc_id)
                row = await conn.fetchrow(
                    f"DELETE FROM vectorstore_documents WHERE collection = $1 AND doc_id = $2 "
                    f"RETURNING {', '.join(_DOC_FIELDS)}",
                    collection,
                    doc_id,
                )
                await conn.execute(f"DELETE FROM {chunks_table(info['id'])} WHERE doc_id = $1", doc_id)
                old = DocumentRecord(**dict(row)) if row else None
            await self._bump(conn, collection)
        return old

    async def delete_all(self, collection: str) -> int:
        async with self.connection() as conn, conn.transaction():
            info = await self._collection(conn, collection, "FOR UPDATE")
            count = 0
            if info is not None:
                count = await conn.fetchval(
                    "SELECT count(*) FROM vectorstore_documents WHERE collection = $1", collection
                )
                await conn.execute("DELETE FROM vectorstore_documents WHERE collection = $1", collection)
                await conn.execute("DELETE FROM vectorstore_collections WHERE name = $1", collection)
                await conn.execute(f"DROP TABLE IF EXISTS {chunks_table(info['id'])}")
            await self._bump(conn, collection)
        return int(count)

    async def sweep_orphans(self) -> int:
        """Nothing to sweep: a write is one transaction, so a crash leaves no rows behind."""
        return 0

    async def content_versions(self, collections: Sequence[str]) -> dict[str, int]:
        async with self.connection() as conn:
            return await pg_content_versions(conn, collections)

    @staticmethod
    async def _lock_document(conn: asyncpg.Connection, collection: str, doc_id: str) -> None:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('vectorstore:' || $1 || ':' || $2, 0))", collection, doc_id
        )

    @staticmethod
    async def _bump(conn: asyncpg.Connection, collection: str) -> None:
        """+1 on the collection's content version; last in each write, so its row lock is held briefly."""
        await conn.execute(
            "INSERT INTO vectorstore_versions (collection, version) VALUES ($1, 1) "
            "ON CONFLICT (collection) DO UPDATE SET version = vectorstore_versions.version + 1",
            collection,
        )

    # ---------------------------------------------------------------------------------------------- search

    async def search(self, collection: str, query: Query) -> list[Hit]:
        try:
            return await self._search(collection, query)
        except asyncpg.exceptions.UndefinedTableError:
            return []  # the collection was deleted between reading its row and its table

    async def _search(self, collection: str, query: Query) -> list[Hit]:
        vector = query_vector(collection, query)
        filters = filter_values(query.filters)
        kind = query.search_type
        limit = query.k if kind.startswith("similarity") else max(query.fetch_k, query.k)
        ef = max(query.ef_runtime or DEFAULT_EF_SEARCH, limit)
        async with self.connection() as conn, conn.transaction(readonly=True):
            info = await conn.fetchrow(
                "SELECT id, dim, set_config('hnsw.ef_search', $2, true), "
                "set_config('hnsw.iterative_scan', 'strict_order', true) FROM vectorstore_collections WHERE name = $1",
                collection,
                str(ef),
            )
            if info is None:
                return []
            check_dimension(collection, info["dim"], vector)
            table = chunks_table(info["id"])
            if kind in ("similarity", "similarity_score_threshold", "similarity_distance_threshold"):
                hits = [self._hit(collection, row) for row in await self._knn(conn, table, vector, limit, filters)]
                if kind == "similarity_score_threshold":
                    hits = [h for h in hits if h.score >= query.score_threshold]
                elif kind == "similarity_distance_threshold":
                    assert query.distance_threshold is not None
                    hits = [h for h in hits if 1.0 - h.score <= query.distance_threshold]
                return hits
            if kind == "mmr":
                rows = await self._knn(conn, table, vector, limit, filters, with_vectors=True)
                if not rows:
                    return []
                vectors = np.stack([row["embedding"] for row in rows])
                return [self._hit(collection, rows[i]) for i in mmr(vector, vectors, query.k, query.lambda_mult)]
            vector_rows = await self._knn(conn, table, vector, limit, filters)
            text_rows = await self._text(conn, table, text_query(query.text), limit, filters)
        by_key = {self._key(collection, row): row for row in [*text_rows, *vector_rows]}
        fused = rrf([[self._key(collection, r) for r in vector_rows], [self._key(collection, r) for r in text_rows]])
        return [self._hit(collection, by_key[key], score=score) for key, score in fused[: query.k]]

    @staticmethod
    async def _knn(
        conn: asyncpg.Connection,
        table: str,
        vector: np.ndarray,
        k: int,
        filters: dict[str, list[str] | list[int]],
        *,
        with_vectors: bool = False,
    ) -> list[asyncpg.Record]:
        params: list[Any] = [vector, k]
        where = _where(filters, params)
        extra = ", embedding" if with_vectors else ""
        rows: list[asyncpg.Record] = await conn.fetch(
            f"SELECT {_COLUMNS}, embedding <=> $1 AS distance{extra} FROM {table} WHERE {where} "
            "ORDER BY embedding <=> $1 LIMIT $2",
            *params,
        )
        return rows

    @staticmethod
    async def _text(
        conn: asyncpg.Connection, table: str, terms: str, n: int, filters: dict[str, list[str] | list[int]]
    ) -> list[asyncpg.Record]:
        if not terms:
            return []
        params: list[Any] = [terms, n]
        where = _where(filters, params)
        rows: list[asyncpg.Record] = await conn.fetch(
            f"SELECT {_COLUMNS} FROM {table}, to_tsquery('{TEXT_CONFIG}', $1) AS q WHERE tsv @@ q AND {where} "
            "ORDER BY ts_rank_cd(tsv, q) DESC, doc_id, n LIMIT $2",
            *params,
        )
        return rows

    @staticmethod
    def _key(collection: str, row: asyncpg.Record) -> str:
        """The chunk's id, as the Redis store names it (``<collection>:chunk:<doc_id>:<version>:<n>``)."""
        return f"{collection}:chunk:{row['doc_id']}:{row['version']}:{row['n']}"

    def _hit(self, collection: str, row: asyncpg.Record, *, score: float | None = None) -> Hit:
        return Hit(
            key=self._key(collection, row),
            text=row["text"],
            score=1.0 - float(row["distance"]) if score is None else score,
            source=row["source"],
            doc_id=row["doc_id"],
            page=row["page"],
            chunk=row["n"],
            tags=tuple(t.strip() for t in row["tags"].split(",") if t.strip()),
        )
