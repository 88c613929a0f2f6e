"""Documents through the one public door: dataprep's routes, proxied with the caller's rights enforced first.

Same paths and shapes as dataprep's own (`comps.dataprep.protocol`). Before anything reaches dataprep, the
gateway checks the collection: ingesting and deleting need write access (a collection nobody owns yet becomes
the caller's), listing documents needs read access; a job is shown only to who may read its collection. An
upload is parsed here (files spooled to disk past 1 MiB, never held whole in memory) and streamed on to
dataprep as a new multipart body that names the collection explicitly.

With OPEA compatibility on (``GATEWAY_OPEA_COMPAT``) the three routes OPEA's UIs call answer in OPEA's shapes
(`OpeaShapes`); the job routes and errors stay ours.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import aiohttp
import orjson
from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from comps.core.errors import BadRequest, NotFound
from comps.core.http import HttpClient
from comps.dataprep.protocol import (
    FINISHED,
    DeleteRequest,
    DeleteResponse,
    DocumentInfo,
    GetRequest,
    IngestResponse,
    JobInfo,
    JobList,
)
from comps.identity.auth import principal_of
from comps.identity.service import Principal
from megaservice.access import Access

Caller = Annotated[Principal, Depends(principal_of)]
MAX_UPLOAD_FILES = 1000
MAX_FORM_FIELDS = 100
OPEA_POLL_S = 0.2  # how often an OPEA ingest asks dataprep whether its jobs are done


def build_router(access: Access, dataprep_url: str, timeout_s: float, *, opea_compat: bool = False) -> APIRouter:
    router = APIRouter(prefix="/v1/dataprep", tags=["documents"])
    base = dataprep_url.rstrip("/") + "/v1/dataprep"

    def http(request: Request) -> HttpClient:
        client: HttpClient = request.app.state.service.http
        return client

    async def relay(request: Request, method: str, path: str, **kw: Any) -> tuple[int, bytes]:
        async with http(request).stream(method, base + path, node="dataprep", timeout_s=timeout_s, **kw) as resp:
            return resp.status, await resp.read()

    @router.post("/ingest", status_code=202)
    async def ingest(request: Request, caller: Caller) -> Response:
        """Multipart ``files`` / ``link_list`` / ``chunk_size`` / ``chunk_overlap`` / ``collection`` / ``tags``,
        as dataprep takes them; 202 with one job per file and URL."""
        form = await request.form(max_files=MAX_UPLOAD_FILES, max_fields=MAX_FORM_FIELDS)
        try:
            collection = _text(form.get("collection")) or access.default_collection
            await access.require_write(caller, collection, create=True)
            data = aiohttp.FormData(quote_fields=False)
            for name, value in form.multi_items():
                if name == "collection":
                    continue
                if isinstance(value, UploadFile):
                    data.add_field(
                        name,
                        value.file,
                        filename=value.filename or "upload",
                        content_type=value.content_type or "application/octet-stream",
                    )
                else:
                    data.add_field(name, value)
            data.add_field("collection", collection)
            status, body = await relay(request, "POST", "/ingest", content=data)
        finally:
            await form.close()
        if opea_compat and status == 202:
            accepted = IngestResponse.model_validate_json(body)
            ids = ",".join(j.job_id for j in accepted.jobs)
            _, listed = await relay(request, "GET", f"/jobs?ids={ids}")
            deadline = time.monotonic() + timeout_s
            jobs = JobList.model_validate_json(listed).jobs
            while any(j.status not in FINISHED for j in jobs) and time.monotonic() < deadline:
                await asyncio.sleep(OPEA_POLL_S)
                _, listed = await relay(request, "GET", f"/jobs?ids={ids}")
                jobs = JobList.model_validate_json(listed).jobs
            return Response(orjson.dumps(opea_ingested(jobs)), media_type="application/json")
        return Response(body, status_code=status, media_type="application/json")

    @router.get("/jobs/{job_id}", response_model=JobInfo)
    async def job(job_id: str, request: Request, caller: Caller) -> Response:
        try:
            status, body = await relay(request, "GET", f"/jobs/{job_id}")
        except NotFound:
            raise NotFound(f"no job {job_id!r}", code="job_not_found") from None
        info = JobInfo.model_validate_json(body)
        if not await access.can_read(caller, info.collection):
            raise NotFound(f"no job {job_id!r}", code="job_not_found")
        return Response(body, status_code=status, media_type="application/json")

    @router.get("/jobs", response_model=JobList)
    async def jobs(
        request: Request,
        caller: Caller,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        ids: Annotated[str | None, Query(max_length=10_000)] = None,
    ) -> JobList:
        """The newest jobs in collections the caller may read; with ``ids``, those jobs."""
        params = {"limit": str(limit)} | ({"ids": ids} if ids is not None else {})
        query = "&".join(f"{k}={v}" for k, v in params.items())
        _, body = await relay(request, "GET", f"/jobs?{query}")
        listed = JobList.model_validate_json(body)
        readable = await access.readable(caller)
        return JobList(jobs=[j for j in listed.jobs if readable is None or j.collection in readable])

    @router.post("/get")
    async def get(request: Request, caller: Caller, body: Annotated[GetRequest | None, Body()] = None) -> Response:
        """The documents of a collection the caller may read (default: the shared default collection)."""
        collection = (body.collection if body else None) or access.default_collection
        await access.require_read(caller, collection)
        status, answer = await relay(request, "POST", "/get", content=orjson.dumps({"collection": collection}))
        if opea_compat:
            answer = orjson.dumps([opea_file(DocumentInfo.model_validate(d)) for d in orjson.loads(answer)])
        return Response(answer, status_code=status, media_type="application/json")

    @router.post("/delete")
    async def delete(body: DeleteRequest, request: Request, caller: Caller) -> Response:
        """Delete a document (by doc_id or source), or every document with ``"all"``; needs write access."""
        collection = body.collection or access.default_collection
        await access.require_write(caller, collection)
        payload = {"file_path": body.file_path, "collection": collection}
        status, answer = await relay(request, "POST", "/delete", content=orjson.dumps(payload))
        if opea_compat:
            answer = orjson.dumps({"status": True, "deleted": DeleteResponse.model_validate_json(answer).deleted})
        return Response(answer, status_code=status, media_type="application/json")

    return router


def collections_router(access: Access, dataprep_url: str, timeout_s: float) -> APIRouter:
    """``DELETE /v1/collections/{name}``: its documents in dataprep, then its ownership record."""
    router = APIRouter(tags=["collections"])
    url = dataprep_url.rstrip("/") + "/v1/dataprep/delete"

    @router.delete("/v1/collections/{name}", status_code=204)
    async def delete_collection(name: str, request: Request, caller: Caller) -> Response:
        await access.require_write(caller, name)
        http: HttpClient = request.app.state.service.http
        payload = orjson.dumps({"file_path": "all", "collection": name})
        async with http.stream("POST", url, node="dataprep", timeout_s=timeout_s, content=payload):
            pass
        await access.forget(caller, name)
        return Response(status_code=204)

    return router


def opea_ingested(jobs: list[JobInfo]) -> dict[str, Any]:
    """OPEA's ingest answer (its UIs read ``status`` 200), once the jobs have finished; a job that failed or
    is still running after the timeout makes it 500 / 202, and the jobs say which and why."""
    failed = [j for j in jobs if j.status == "failed"]
    running = [j for j in jobs if j.status not in FINISHED]
    if failed:
        status, message = 500, "; ".join(f"{j.source}: {j.error}" for j in failed)
    elif running:
        status, message = 202, "Data preparation still running: see the jobs"
    else:
        status, message = 200, "Data preparation succeeded"
    return {"status": status, "message": message, "jobs": [j.model_dump(mode="json") for j in jobs]}


def opea_file(doc: DocumentInfo) -> dict[str, Any]:
    """A document as OPEA's ``/v1/dataprep/get`` lists it; its ``id`` is what ``/v1/dataprep/delete`` takes."""
    return {"name": doc.source, "id": doc.doc_id, "type": "File", "parent": "", "children": []}


def _text(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("collection must be a text field, not a file", param="collection", code="invalid_value")
    return value.strip() or None
