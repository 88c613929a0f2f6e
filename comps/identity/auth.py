"""Authentication at the gateway: one ASGI middleware, deny by default.

Every request but the open paths (health, readiness, metrics, docs, and the routes that sign in) needs
``Authorization: Bearer <credential>``, one of:
- an API key ``sk-...`` (looked up by its hash),
- one of our access JWTs (HS256, ``iss``/``aud`` ``chatqna``),
- a token of the configured OIDC provider (verified against its JWKS; its user is created at first use).
The middleware drops every incoming ``x-chatqna-*`` header (only the gateway may name a user to the services),
puts the `Principal` on ``request.state.principal``, and sets the identity headers for the calls this request
makes to internal services. Failures are 401 in the error envelope with ``WWW-Authenticate``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from comps.core.caller import PREFIX, ROLE_HEADER, USER_ID_HEADER, USER_NAME_HEADER, caller_headers_var
from comps.core.errors import Forbidden, NotReady, ServiceError, Unauthorized
from comps.identity.oidc import OIDCVerifier
from comps.identity.service import ANONYMOUS, KEY_PREFIX, IdentityService, Principal, claims_user_id

OPEN_PATHS = frozenset(
    {
        "/v1/health_check",
        "/v1/ready",
        "/health",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/v1/auth/logout",
        "/v1/auth/register",
        "/v1/auth/oidc/login",
        "/v1/auth/oidc/callback",
    }
)


class Authenticator:
    """Turns a bearer credential into a `Principal`."""

    def __init__(self, identity: IdentityService, oidc: OIDCVerifier | None = None) -> None:
        self.identity = identity
        self.oidc = oidc

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized(
                "missing credentials: send Authorization: Bearer <token or API key>", code="missing_token"
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be: Bearer <token or API key>", code="invalid_token")
        if token.startswith(KEY_PREFIX):
            return await self.identity.principal_for_key(token)
        if self.oidc is not None and self.oidc.looks_like_mine(token):
            ext = await self.oidc.verify(token)
            return await self.identity.principal_for_external(ext.issuer, ext.subject, ext.username, ext.is_admin)
        claims = self.identity.verify_access(token)
        return await self.identity.principal_for_user(claims_user_id(claims))


class AuthState:
    """Set at warm-up: the authenticator once the store is ready, or `ANONYMOUS` for everyone (auth off)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.authenticator: Authenticator | None = None


class AuthMiddleware:
    """Pure ASGI (streaming-safe); see the module doc."""

    def __init__(self, app: Any, state: AuthState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        if any(name.startswith(PREFIX) for name, _ in headers):
            scope = {**scope, "headers": [(n, v) for n, v in headers if not n.startswith(PREFIX)]}
        if scope.get("path") in OPEN_PATHS or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._principal(scope)
        except ServiceError as exc:
            await JSONResponse(status_code=exc.status_code, content=exc.envelope(), headers=exc.headers)(
                scope, receive, send
            )
            return
        scope.setdefault("state", {})["principal"] = principal
        token = caller_headers_var.set(
            {USER_ID_HEADER: principal.user_id, USER_NAME_HEADER: principal.username, ROLE_HEADER: principal.role}
        )
        try:
            await self.app(scope, receive, send)
        finally:
            caller_headers_var.reset(token)

    async def _principal(self, scope: Any) -> Principal:
        if not self.state.enabled:
            return ANONYMOUS
        if self.state.authenticator is None:
            raise NotReady("identity is starting (the user store is not ready yet)")
        authorization = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        return await self.state.authenticator.authenticate(authorization)


def principal_of(request: Request) -> Principal:
    """FastAPI dependency: the caller the middleware authenticated."""
    principal = getattr(request.state, "principal", None)
    if principal is None:  # an open path: nobody was authenticated
        raise Unauthorized("missing credentials", code="missing_token")
    found: Principal = principal
    return found


def admin_of(request: Request) -> Principal:
    """FastAPI dependency: the caller, who must be an admin (403 otherwise)."""
    principal = principal_of(request)
    if not principal.is_admin:
        raise Forbidden("this needs the admin role", code="admin_only")
    return principal
