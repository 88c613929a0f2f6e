"""Copy a collection from one vector store to the other (`chatqna vectors migrate`): the stored vectors, never
re-embedded. Each document is copied by one `replace_document` (atomic), so the target itself is the checkpoint:
a run that stops half way is resumed by running it again, which skips every document already there as it is in
the source (same sha256, chunk count, source, tags and update time) and copies the rest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from comps.vectorstore.documents import CollectionMissing, DocumentRecord
from comps.vectorstore.protocol import VectorStore


@dataclass
class MigrationReport:
    documents: int = 0
    copied: int = 0
    skipped: int = 0  # already in the target (an earlier run's work)
    chunks: int = 0  # copied now


def _same(a: DocumentRecord, b: DocumentRecord) -> bool:
    keys = ("sha256", "chunks", "source", "tags", "updated_at", "model")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


async def copy_collection(
    source: VectorStore,
    target: VectorStore,
    collection: str,
    *,
    progress: Callable[[MigrationReport, DocumentRecord], None] = lambda report, record: None,
) -> MigrationReport:
    """Copy ``collection`` from ``source`` to ``target`` (created there with the same dimension and model);
    ``progress`` is called after each document."""
    info = await source.collection_info(collection)
    if info is None:
        raise CollectionMissing(f"collection {collection!r} does not exist in the {source.name} store")
    await target.ensure_collection(collection, info.dim, model=info.model, algorithm=info.algorithm or "HNSW")
    records = await source.list_documents(collection)
    report = MigrationReport(documents=len(records))
    for listed in records:
        record = listed
        done = await target.get_document(collection, record.doc_id)
        if done is not None and _same(done, record):
            report.skipped += 1
        else:
            chunks = await source.document_chunks(collection, record)
            if len(chunks) != record.chunks:  # replaced while being read: copy what is current now
                fresh = await source.get_document(collection, record.doc_id)
                if fresh is None:
                    report.documents -= 1
                    continue
                record = fresh
                chunks = await source.document_chunks(collection, record)
            await target.replace_document(collection, record, chunks)
            report.copied += 1
            report.chunks += len(chunks)
        progress(report, record)
    return report
