"""The one place that turns ``VECTORSTORE_BACKEND`` into a store (imported lazily: Redis or asyncpg)."""

from __future__ import annotations

from comps.core.errors import ConfigError
from comps.vectorstore.protocol import VectorStore
from comps.vectorstore.settings import VectorStoreSettings


def make_store(backend: str, *, redis_url: str | None = None, database_url: str | None = None) -> VectorStore:
    """A closed store of kind ``backend``; call `open` before use."""
    if backend == "redis":
        from comps.vectorstore.redis_store import RedisVectorStore

        return RedisVectorStore(redis_url or "redis://127.0.0.1:6379")
    if backend == "pgvector":
        if not database_url:
            raise ConfigError("the pgvector store needs a PostgreSQL URL (VECTORSTORE_DATABASE_URL or DATABASE_URL)")
        from comps.vectorstore.pgvector_store import PgvectorStore

        return PgvectorStore(database_url)
    raise ConfigError(f"VECTORSTORE_BACKEND={backend!r} is not a known vector store; valid: redis, pgvector")


def store_for(settings: VectorStoreSettings) -> VectorStore:
    return make_store(
        settings.vectorstore_backend, redis_url=settings.redis_url, database_url=settings.vectorstore_database_url
    )
