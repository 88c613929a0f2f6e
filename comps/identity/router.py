"""Identity's routes (served by the gateway): accounts, tokens, API keys, users (admins), collections.

The contract is in `comps.identity.protocol`; the logic in `comps.identity.service`.
"""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from comps.core.errors import BadRequest, Forbidden, NotFound, NotReady
from comps.identity.auth import AuthState, admin_of, principal_of
from comps.identity.oidc import OIDCVerifier, new_pkce
from comps.identity.protocol import (
    CollectionCreate,
    CollectionInfo,
    CollectionUpdate,
    KeyCreate,
    KeyCreated,
    KeyInfo,
    LoginRequest,
    RefreshRequest,
    RegisterRequest,
    TokenPair,
    UserCreate,
    UserInfo,
    UserUpdate,
)
from comps.identity.service import IdentityService, Principal

OIDC_COOKIE = "chatqna_oidc"
OIDC_STATE_AUDIENCE = "chatqna-oidc-state"
OIDC_STATE_TTL_S = 600


def auth_state(request: Request) -> AuthState:
    state: AuthState = request.app.state.auth
    return state


def identity_of(request: Request) -> IdentityService:
    """FastAPI dependency: the identity service, 503 until the user store is ready; 404 with auth off."""
    state = auth_state(request)
    if not state.enabled:
        raise NotFound("accounts are switched off on this gateway (GATEWAY_AUTH_ENABLED=false)", code="auth_disabled")
    if state.authenticator is None:
        raise NotReady("identity is starting (the user store is not ready yet)")
    return state.authenticator.identity


Identity = Annotated[IdentityService, Depends(identity_of)]
Caller = Annotated[Principal, Depends(principal_of)]
Admin = Annotated[Principal, Depends(admin_of)]


def build_router(*, open_registration: bool, allowed_origins: list[str]) -> APIRouter:
    router = APIRouter()

    # -- accounts and tokens ---------------------------------------------------------------------------

    @router.post("/v1/auth/login", response_model=TokenPair, tags=["auth"])
    async def login(body: LoginRequest, request: Request, identity: Identity) -> TokenPair:
        """Username and password -> a short-lived access token and a refresh token."""
        address = request.client.host if request.client else "-"
        return await identity.login(body.username, body.password, address)

    @router.post("/v1/auth/refresh", response_model=TokenPair, tags=["auth"])
    async def refresh(body: RefreshRequest, identity: Identity) -> TokenPair:
        """A new pair for a refresh token, which stops working (presenting it again ends the login)."""
        return await identity.refresh(body.refresh_token)

    @router.post("/v1/auth/logout", status_code=204, tags=["auth"])
    async def logout(body: RefreshRequest, identity: Identity) -> Response:
        await identity.logout(body.refresh_token)
        return Response(status_code=204)

    @router.post("/v1/auth/register", status_code=201, response_model=UserInfo, tags=["auth"])
    async def register(body: RegisterRequest, identity: Identity) -> UserInfo:
        """Create an account (only when the gateway allows open registration; otherwise admins create users)."""
        if not open_registration:
            raise Forbidden("registration is closed: an admin creates accounts", code="registration_closed")
        return await identity.create_user(body.username, body.password)

    @router.get("/v1/auth/me", response_model=UserInfo, tags=["auth"])
    async def me(caller: Caller, identity: Identity) -> UserInfo:
        return await identity.get_user(caller.user_id)

    # -- API keys --------------------------------------------------------------------------------------

    @router.post("/v1/auth/keys", status_code=201, response_model=KeyCreated, tags=["auth"])
    async def create_key(body: KeyCreate, caller: Caller, identity: Identity) -> KeyCreated:
        """A new API key for the caller; the key is in this answer only."""
        return await identity.create_key(caller, body.name, body.expires_in_days)

    @router.get("/v1/auth/keys", response_model=list[KeyInfo], tags=["auth"])
    async def list_keys(caller: Caller, identity: Identity) -> list[KeyInfo]:
        return await identity.list_keys(caller)

    @router.delete("/v1/auth/keys/{key_id}", status_code=204, tags=["auth"])
    async def revoke_key(key_id: str, caller: Caller, identity: Identity) -> Response:
        await identity.revoke_key(caller, key_id)
        return Response(status_code=204)

    # -- single sign-on (browser flow: authorization code + PKCE) --------------------------------------

    @router.get("/v1/auth/oidc/login", tags=["auth"])
    async def oidc_login(
        request: Request, identity: Identity, return_to: Annotated[str | None, Query(max_length=2000)] = None
    ) -> Response:
        """Redirects to the identity provider; it comes back to /v1/auth/oidc/callback."""
        oidc = _oidc(request)
        if return_to is not None:
            _check_return_to(return_to, allowed_origins)
        verifier, _ = new_pkce()
        state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        url = await oidc.authorization_url(state=state, code_verifier=verifier, nonce=nonce)
        sealed = identity.seal(
            {"state": state, "verifier": verifier, "nonce": nonce, "return_to": return_to},
            OIDC_STATE_AUDIENCE,
            OIDC_STATE_TTL_S,
        )
        resp = RedirectResponse(url, status_code=302)
        resp.set_cookie(
            OIDC_COOKIE,
            sealed,
            max_age=OIDC_STATE_TTL_S,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/v1/auth/oidc",
        )
        return resp

    @router.get("/v1/auth/oidc/callback", tags=["auth"])
    async def oidc_callback(
        request: Request,
        identity: Identity,
        code: Annotated[str, Query(min_length=1, max_length=4000)],
        state: Annotated[str, Query(min_length=1, max_length=200)],
    ) -> Response:
        """Exchanges the code, signs the user in (creating the account the first time), returns our tokens."""
        oidc = _oidc(request)
        sealed = request.cookies.get(OIDC_COOKIE)
        if not sealed:
            raise BadRequest("sign-in state is missing: start again at /v1/auth/oidc/login", code="invalid_state")
        saved = identity.unseal(sealed, OIDC_STATE_AUDIENCE)
        if not secrets.compare_digest(str(saved.get("state")), state):
            raise BadRequest("sign-in state does not match: start again", code="invalid_state")
        ext = await oidc.exchange_code(code=code, code_verifier=saved["verifier"], nonce=saved["nonce"])
        principal = await identity.principal_for_external(ext.issuer, ext.subject, ext.username, ext.is_admin)
        pair = await identity.issue_for(principal)
        return_to = saved.get("return_to")
        resp: Response
        if return_to:
            fragment = urlencode(
                {"access_token": pair.access_token, "refresh_token": pair.refresh_token, "expires_in": pair.expires_in}
            )
            resp = RedirectResponse(f"{return_to}#{fragment}", status_code=302)
        else:
            resp = JSONResponse(pair.model_dump(mode="json"))
        resp.delete_cookie(OIDC_COOKIE, path="/v1/auth/oidc")
        return resp

    # -- administration --------------------------------------------------------------------------------

    @router.get("/v1/admin/users", response_model=list[UserInfo], tags=["admin"])
    async def list_users(
        _: Admin,
        identity: Identity,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[UserInfo]:
        return await identity.list_users(limit=limit, offset=offset)

    @router.post("/v1/admin/users", status_code=201, response_model=UserInfo, tags=["admin"])
    async def create_user(body: UserCreate, _: Admin, identity: Identity) -> UserInfo:
        return await identity.create_user(body.username, body.password, role=body.role)

    @router.get("/v1/admin/users/{user_id}", response_model=UserInfo, tags=["admin"])
    async def get_user(user_id: str, _: Admin, identity: Identity) -> UserInfo:
        return await identity.get_user(user_id)

    @router.patch("/v1/admin/users/{user_id}", response_model=UserInfo, tags=["admin"])
    async def update_user(user_id: str, body: UserUpdate, admin: Admin, identity: Identity) -> UserInfo:
        """Set the role, disable or enable, or reset the password (disabling or a new password signs them out)."""
        return await identity.update_user(
            user_id, role=body.role, disabled=body.disabled, password=body.password, by=admin
        )

    @router.delete("/v1/admin/users/{user_id}", status_code=204, tags=["admin"])
    async def delete_user(user_id: str, admin: Admin, identity: Identity) -> Response:
        await identity.delete_user(user_id, by=admin)
        return Response(status_code=204)

    # -- collections -----------------------------------------------------------------------------------

    @router.get("/v1/collections", response_model=list[CollectionInfo], tags=["collections"])
    async def collections(caller: Caller, identity: Identity) -> list[CollectionInfo]:
        """The collections the caller may read: the shared ones and their own (admins: all)."""
        return await identity.list_collections(caller)

    @router.post("/v1/collections", status_code=201, response_model=CollectionInfo, tags=["collections"])
    async def create_collection(body: CollectionCreate, caller: Caller, identity: Identity) -> CollectionInfo:
        return await identity.create_collection(caller, body.name, body.visibility)

    @router.patch("/v1/collections/{name}", response_model=CollectionInfo, tags=["collections"])
    async def update_collection(
        name: str, body: CollectionUpdate, caller: Caller, identity: Identity
    ) -> CollectionInfo:
        return await identity.update_collection(caller, name, body.visibility)

    return router


def _oidc(request: Request) -> OIDCVerifier:
    state = auth_state(request)
    oidc = state.authenticator.oidc if state.authenticator else None
    if oidc is None:
        raise NotFound("single sign-on is not configured (GATEWAY_OIDC_ISSUER)", code="oidc_disabled")
    return oidc


def _check_return_to(url: str, allowed_origins: list[str]) -> None:
    """Where the browser flow may send tokens: a path of this site, or an origin of the CORS allowlist."""
    parts = urlsplit(url)
    if not parts.scheme and not parts.netloc and url.startswith("/") and not url.startswith("//"):
        return
    if f"{parts.scheme}://{parts.netloc}" in allowed_origins:
        return
    raise BadRequest(
        "return_to must be a path of this site or an allowed origin", param="return_to", code="invalid_value"
    )
