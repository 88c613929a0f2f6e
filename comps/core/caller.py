"""Who the gateway is serving, as internal services see it.

The gateway authenticates a request once, then passes the user to every service it calls in the headers
below (set for the request's task in `caller_headers_var`, added by `comps.core.http` to every outgoing
call). It strips these headers from every incoming request, and services trust them only because every
internal service requires the mesh's internal token (the kit's bearer auth), which only the gateway has.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fastapi import Request

USER_ID_HEADER = "x-chatqna-user-id"
USER_NAME_HEADER = "x-chatqna-user-name"
ROLE_HEADER = "x-chatqna-role"
PREFIX = b"x-chatqna-"  # every identity header starts so; the gateway drops all of them on the way in

# The default is read-only: one mapping shared by every context must never be changed in place.
caller_headers_var: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "caller_headers", default=MappingProxyType({})
)


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: str
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def headers(self) -> dict[str, str]:
        return {USER_ID_HEADER: self.user_id, USER_NAME_HEADER: self.username, ROLE_HEADER: self.role}


def caller_of(request: Request) -> Caller | None:
    """The user the gateway named for this request, or None for a call without one (e.g. the CLI, tests)."""
    user_id = request.headers.get(USER_ID_HEADER)
    if not user_id:
        return None
    return Caller(user_id, request.headers.get(USER_NAME_HEADER, ""), request.headers.get(ROLE_HEADER, "user"))
