"""HTTP routes of the dataprep service; the logic lives in `service.py`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request

from comps.core.app import create_app, ready_backend
from comps.core.backends import load_backend
from comps.dataprep.backends import REGISTRY
from comps.dataprep.protocol import (
    DeleteRequest,
    DeleteResponse,
    DocumentInfo,
    GetRequest,
    IngestResponse,
    JobInfo,
    JobList,
)
from comps.dataprep.service import DataprepService
from comps.dataprep.settings import DataprepSettings

MAX_IDS = 100
ServiceDep = Annotated[DataprepService, Depends(ready_backend)]

_INGEST_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "link_list": {"type": "string", "description": 'JSON list of URLs, e.g. ["https://a.b/c"]'},
                        "chunk_tokens": {"type": "integer", "description": "Default: DATAPREP_CHUNK_TOKENS"},
                        "chunk_overlap_tokens": {
                            "type": "integer",
                            "description": "Default: DATAPREP_CHUNK_OVERLAP_TOKENS",
                        },
                        "chunk_size": {"type": "integer", "description": "Characters (OPEA's unit), instead of tokens"},
                        "chunk_overlap": {"type": "integer", "description": "Characters; default 100"},
                        "collection": {"type": "string", "description": "Default: INDEX_NAME"},
                        "tags": {"type": "string", "description": "Comma-separated tags"},
                    },
                }
            }
        },
    }
}


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1/dataprep", tags=["dataprep"])

    @router.post("/ingest", status_code=202, response_model=IngestResponse, openapi_extra=_INGEST_FORM)
    async def ingest(request: Request, service: ServiceDep) -> IngestResponse:
        """Queue one job per uploaded file and per URL; poll them at /v1/dataprep/jobs/{job_id}."""
        return await service.ingest(request)

    @router.get("/jobs/{job_id}", response_model=JobInfo)
    async def job(job_id: str, service: ServiceDep) -> JobInfo:
        return await service.job(job_id)

    @router.get("/jobs", response_model=JobList)
    async def jobs(
        service: ServiceDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        ids: Annotated[str | None, Query(description="Comma-separated job ids (at most 100): just these.")] = None,
    ) -> JobList:
        """The newest jobs first; with ``ids``, those jobs (unknown ids are left out)."""
        if ids is not None:
            return JobList(jobs=await service.jobs_by_id([i for i in ids.split(",") if i][:MAX_IDS]))
        return JobList(jobs=await service.jobs(limit))

    @router.post("/get", response_model=list[DocumentInfo])
    async def get(service: ServiceDep, body: Annotated[GetRequest | None, Body()] = None) -> list[DocumentInfo]:
        """The collection's documents (OPEA: list files)."""
        return await service.documents(body.collection if body else None)

    @router.post("/delete", response_model=DeleteResponse)
    async def delete(body: DeleteRequest, service: ServiceDep) -> DeleteResponse:
        """Delete one document (by doc_id or source), or the whole collection with ``"all"``."""
        return DeleteResponse(deleted=await service.delete(body))

    return router


def build_app(settings: DataprepSettings) -> FastAPI:
    store_cls = load_backend("dataprep", REGISTRY, settings.vectorstore_backend, "VECTORSTORE_BACKEND")
    service = DataprepService(settings, store_cls(settings))
    return create_app(settings, backend=service, routers=[build_router()], title="dataprep")
