"""`chatqna ingest`: upload files and folders to the dataprep service, then follow the jobs to the end.

Folders are walked recursively for files with a supported extension (hidden ones skipped); a file's
source name is its path from the folder given, prefixed with that folder's name (``docs/a/b.md``), so
two files with the same name in different folders stay two documents. Uploads go in batches; the jobs
are polled and shown as one progress bar of chunks embedded / total. The exit code is 0 when every job
succeeded or was skipped (unchanged), 1 when a job failed or the service refused a request, 2 for
bad arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from comps.core.http import bearer
from comps.dataprep.protocol import FINISHED, SUPPORTED_EXTENSIONS, kind_of

BATCH_FILES = 20
BATCH_BYTES = 32 * 1024 * 1024
POLL_S = 0.25
POLL_IDS = 100  # job ids per status request


class UsageError(Exception):
    """Bad arguments (exit code 2)."""


class ServiceRefused(Exception):
    """The dataprep service answered a request with an error (exit code 1)."""


@dataclass(frozen=True)
class LocalFile:
    path: Path
    name: str  # the source name sent as the upload's file name
    size: int


def collect(paths: list[Path]) -> list[LocalFile]:
    """Files to upload: named files (which must be supported) and supported files under named folders."""
    files: list[LocalFile] = []
    for given in paths:
        if given.is_dir():
            root = given.resolve()
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if path.is_file() and kind_of(path.name) and not any(p.startswith(".") for p in rel.parts):
                    files.append(LocalFile(path, f"{root.name}/{rel.as_posix()}", path.stat().st_size))
        elif given.is_file():
            if kind_of(given.name) is None:
                supported = ", ".join(sorted(SUPPORTED_EXTENSIONS))
                raise UsageError(f"{given}: unsupported file type; supported: {supported}")
            files.append(LocalFile(given, given.name, given.stat().st_size))
        else:
            raise UsageError(f"{given}: no such file or folder")
    if not files:
        raise UsageError(f"no supported files found (supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))})")
    return files


def batches(files: list[LocalFile]) -> list[list[LocalFile]]:
    out: list[list[LocalFile]] = [[]]
    size = 0
    for f in files:
        if out[-1] and (len(out[-1]) >= BATCH_FILES or size + f.size > BATCH_BYTES):
            out.append([])
            size = 0
        out[-1].append(f)
        size += f.size
    return out


async def upload(
    session: aiohttp.ClientSession, base: str, batch: list[LocalFile], fields: dict[str, str]
) -> list[dict[str, Any]]:
    form = aiohttp.FormData(quote_fields=False)  # file names as they are (UTF-8), not percent-encoded
    for name, value in fields.items():
        form.add_field(name, value)
    with contextlib.ExitStack() as stack:
        for f in batch:
            form.add_field("files", stack.enter_context(f.path.open("rb")), filename=f.name)
        async with session.post(f"{base}/v1/dataprep/ingest", data=form) as resp:
            body = await _json(resp)
    jobs: list[dict[str, Any]] = body["jobs"]
    return jobs


async def _json(resp: aiohttp.ClientResponse) -> Any:
    text = await resp.text()
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        body = None
    if resp.status >= 400:
        message = body["error"]["message"] if isinstance(body, dict) and isinstance(body.get("error"), dict) else text
        raise ServiceRefused(f"the gateway answered HTTP {resp.status}: {message}")
    return body


async def run(
    paths: list[Path],
    *,
    url: str,
    fields: dict[str, str],
    api_key: str | None = None,
    on_update: Callable[[dict[str, dict[str, Any]]], None] = lambda jobs: None,
) -> dict[str, dict[str, Any]]:
    """Upload ``paths`` and poll until every job has finished; returns the jobs by id (their last state)."""
    files = collect(paths)
    base = url.rstrip("/")
    headers = bearer(api_key)
    jobs: dict[str, dict[str, Any]] = {}
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=300)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        try:
            for batch in batches(files):
                try:
                    refs = await upload(session, base, batch, fields)
                except ServiceRefused as exc:
                    queued = f"; the {len(jobs)} job(s) queued before go on on the server" if jobs else ""
                    raise ServiceRefused(f"{exc}{queued}") from None
                for ref in refs:
                    jobs[ref["job_id"]] = {**ref, "chunks_total": 0, "chunks_embedded": 0}
                on_update(jobs)

            async def poll(ids: list[str]) -> None:
                async with session.get(f"{base}/v1/dataprep/jobs", params={"ids": ",".join(ids)}) as resp:
                    found = {j["job_id"]: j for j in (await _json(resp))["jobs"]}
                for job_id in ids:
                    if job_id not in found:
                        raise ServiceRefused(f"dataprep no longer knows job {job_id} ({jobs[job_id]['source']})")
                    jobs[job_id] = found[job_id]

            while pending := [j for j, s in jobs.items() if s["status"] not in FINISHED]:
                await asyncio.sleep(POLL_S)
                await asyncio.gather(*(poll(pending[i : i + POLL_IDS]) for i in range(0, len(pending), POLL_IDS)))
                on_update(jobs)
        except aiohttp.ClientConnectionError as exc:
            raise ServiceRefused(f"cannot reach the gateway at {base}: {exc}") from None
    return jobs
