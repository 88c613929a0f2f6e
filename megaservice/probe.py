"""One readiness probe of a service, as the admin API and the model list report it: ready (with the details its
``/v1/ready`` answered), loading (it answers, but not ready: its reason) or unreachable (no answer: why)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from comps.core.errors import ServiceError, UpstreamError
from comps.core.http import HttpClient

State = Literal["ready", "loading", "unreachable"]


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    url: str
    state: State
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.state == "ready"


async def probe(http: HttpClient, name: str, url: str, timeout_s: float, path: str = "/v1/ready") -> Probe:
    """GET ``url + path`` within ``timeout_s``; never raises."""
    try:
        body = await http.request_json("GET", url.rstrip("/") + path, node=name, timeout_s=timeout_s)
    except UpstreamError as exc:  # an HTTP status means the service answered: it is there, not ready yet
        return Probe(name, url, "loading" if exc.upstream_status else "unreachable", exc.message)
    except ServiceError as exc:
        return Probe(name, url, "unreachable", exc.message)
    return Probe(name, url, "ready", None, body if isinstance(body, dict) else {})


async def probe_all(http: HttpClient, targets: dict[str, str], timeout_s: float) -> list[Probe]:
    """Every target at once (one fan-out), in the order given."""
    return list(await asyncio.gather(*(probe(http, name, url, timeout_s) for name, url in targets.items())))
