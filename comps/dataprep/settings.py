"""Settings of the dataprep service (env prefix ``DATAPREP_``), read once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from comps.core.ports import PORTS
from comps.vectorstore.settings import VectorStoreSettings

MiB = 1024 * 1024


class DataprepSettings(VectorStoreSettings):
    model_config = SettingsConfigDict(env_prefix="DATAPREP_", extra="ignore", frozen=True)

    service_name: str = "dataprep"
    port: int = Field(default=PORTS["dataprep"], ge=0, le=65535)

    index_algorithm: Literal["HNSW", "FLAT"] = Field(default="HNSW", description="Vector index of new collections.")

    embedding_url: str | None = Field(default=None, description="Embedding service base URL (OpenAI /v1/embeddings).")
    embedding_api_key: SecretStr | None = Field(default=None, description="Bearer token for the embedding service.")
    embedding_model: str | None = Field(default=None, description="`model` sent to the embedding service, if any.")
    embedding_batch_size: int = Field(
        default=64, ge=1, le=512, description="Chunks per embedding request (the longest waiting chunks, of all jobs)."
    )
    embedding_concurrency: int = Field(
        default=2, ge=1, le=64, description="Embedding requests in flight: 2 keeps the model busy during a round trip."
    )
    embedding_timeout_s: float = Field(default=120.0, gt=0, description="Per embedding request.")
    embedding_retries: int = Field(
        default=8,
        ge=0,
        le=100,
        description="Times a job tries its embedding again after the embedding service failed (unreachable, "
        "HTTP 429 or 5xx, timeout), waiting DATAPREP_EMBEDDING_RETRY_S, then twice as long each time (at most "
        "30 s); after the last try the job fails with the reason and the stored version of its document stays.",
    )
    embedding_retry_s: float = Field(default=1.0, gt=0, le=30, description="The first wait before a retry.")

    chunk_tokens: int = Field(
        default=128,
        ge=16,
        le=100_000,
        description="Default chunk length in the embedding model's tokens (heading path included); at most the "
        "model's limit, read from the embedding service (GET /v1/tokenizer).",
    )
    chunk_overlap_tokens: int = Field(default=16, ge=0, description="Default tokens shared by neighbouring chunks.")

    workers: int = Field(
        default=16, ge=1, le=256, description="Jobs processed at once (their chunks share the embedding requests)."
    )
    max_queued_jobs: int = Field(default=1000, ge=1, description="Jobs waiting; beyond that ingest answers 429.")
    max_body_bytes: int | None = Field(
        default=None, ge=1, description="No whole-body limit: uploads are streamed and limited per file."
    )
    max_file_bytes: int = Field(default=50 * MiB, ge=1, description="Largest upload or URL body; over it: 413.")
    max_files: int = Field(default=100, ge=1, description="Most files in one ingest request.")
    spool_dir: Path | None = Field(default=None, description="Where uploads wait for their job; default: a temp dir.")
    job_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, description="How long job status stays in the store.")
    job_lease_s: float = Field(
        default=15.0,
        ge=0.5,
        le=3600,
        description="A job belongs to the replica holding its lease in the store, renewed every third of this; a job "
        "whose lease expired (its replica died) is taken over by another replica sharing the store and spool.",
    )
    replica_id: str | None = Field(
        default=None,
        min_length=1,
        description="This replica's name in job leases, unique among the replicas sharing a store; default: "
        "host:port, so that a replica restarted in place takes its own unfinished jobs back at once.",
    )
    jobs_kept: int = Field(default=1000, ge=10, description="Finished jobs listed by GET /v1/dataprep/jobs.")

    allow_private_urls: bool = Field(
        default=False, description="Fetch URLs that resolve to private, loopback, link-local or multicast addresses."
    )
    url_timeout_s: float = Field(default=30.0, gt=0, description="Per URL fetch (connect + whole body).")
    max_redirects: int = Field(default=5, ge=0, le=20)
