"""A real OpenID Connect provider on 127.0.0.1 for tests: discovery, JWKS, authorization and token endpoints.

It signs with real keys (an RSA key without `alg` in its JWK, as Entra ID publishes them, and an EC P-256
key with `alg: ES256`), served over HTTP by aiohttp from a background thread. ``rotate_keys()`` replaces
the keys; ``mint()`` issues access tokens with any claims, and the ``forge_*`` helpers build the tokens an
attacker would send (alg none, HS256 keyed with the public key, a key the issuer never published).

``/authorize`` approves the configured test user at once and redirects to the client's redirect URI with a
code and the state; ``/token`` checks the client's credentials (Basic or form), the redirect URI and the
PKCE code_verifier (S256 only) and answers an id_token (with the nonce) and an access token. Codes are
single-use. ``hits`` counts the requests per endpoint.

    with TestIssuer() as issuer:
        token = issuer.mint({"roles": ["admin"]})
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from comps.runtime.process import free_port

REALM_PATH = "/realms/test"  # the issuer has a path, as Keycloak's and Entra's do
CODE_TTL_S = 60.0


@dataclass
class SigningKey:
    kid: str
    alg: str  # what `mint` signs with by default for this key
    private: Any
    publish_alg: bool  # whether the JWK names its alg (Keycloak does; Entra ID does not)

    @property
    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        algo = jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm
        data: dict[str, Any] = json.loads(algo.to_jwk(public))
        data.update(kid=self.kid, use="sig")
        if self.publish_alg:
            data["alg"] = self.alg
        return data

    def public_pem(self) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem


def new_rsa_key(kid: str | None = None, *, publish_alg: bool = False) -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid or f"rsa-{secrets.token_hex(4)}", "RS256", private, publish_alg)


def new_ec_key(kid: str | None = None) -> SigningKey:
    return SigningKey(kid or f"ec-{secrets.token_hex(4)}", "ES256", ec.generate_private_key(ec.SECP256R1()), True)


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    expires: float


@dataclass
class TestIssuer:
    """The provider; ``url`` is its issuer. Start with ``with TestIssuer() as issuer:``."""

    __test__ = False  # not a pytest test class

    client_id: str = "chatqna-web"
    client_secret: str = "test-client-secret"
    redirect_uri: str = "http://127.0.0.1:1/v1/auth/oidc/callback"  # nothing listens: tests read the redirect
    api_audience: str = "chatqna-api"
    user: dict[str, Any] = field(
        default_factory=lambda: {
            "sub": "248289761001",
            "preferred_username": "jane",
            "email": "jane@example.test",
            "realm_access": {"roles": ["admin", "offline_access"]},
            "roles": ["ChatQnA.Admin"],
        }
    )
    port: int = 0
    discovery_issuer: str | None = None  # publish another issuer in the discovery document (a misconfiguration)
    hits: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.keys = [new_rsa_key(), new_ec_key()]
        self._grants: dict[str, _Grant] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="oidc-issuer", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + REALM_PATH

    def gateway_env(self, prefix: str = "GATEWAY_") -> dict[str, str]:
        """The gateway's settings for this provider (set ``redirect_uri`` to the gateway's callback first)."""
        return {
            f"{prefix}OIDC_ISSUER": self.url,
            f"{prefix}OIDC_AUDIENCE": self.api_audience,
            f"{prefix}OIDC_CLIENT_ID": self.client_id,
            f"{prefix}OIDC_CLIENT_SECRET": self.client_secret,
            f"{prefix}OIDC_REDIRECT_URL": self.redirect_uri,
        }

    # -- keys and tokens ------------------------------------------------------------------------------------

    def rotate_keys(self, *, keep_old: bool = False) -> SigningKey:
        """Publish a new RSA key first (the one `mint` signs with); the old keys go unless ``keep_old``."""
        new = new_rsa_key()
        self.keys = [new, *self.keys] if keep_old else [new, new_ec_key()]
        return new

    def claims(self, extra: dict[str, Any] | None = None, *, lifetime_s: float = 300.0) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": self.url, "aud": self.api_audience, "iat": now, "nbf": now, "exp": now + int(lifetime_s)}
        return {**base, **self.user, **(extra or {})}

    def mint(
        self,
        extra: dict[str, Any] | None = None,
        *,
        drop: tuple[str, ...] = (),
        key: SigningKey | None = None,
        alg: str | None = None,
        headers: dict[str, Any] | None = None,
        lifetime_s: float = 300.0,
    ) -> str:
        """An access token signed with ``key`` (default: the first published key); ``extra`` overrides
        claims (a value of None removes the claim, like ``drop``)."""
        key = key or self.keys[0]
        claims = {k: v for k, v in self.claims(extra, lifetime_s=lifetime_s).items() if k not in drop and v is not None}
        return jwt.encode(claims, key.private, algorithm=alg or key.alg, headers={"kid": key.kid, **(headers or {})})

    def forge_alg_none(self, extra: dict[str, Any] | None = None) -> str:
        """An unsigned token (``alg: none``) naming a published kid."""
        return _jws({"alg": "none", "typ": "JWT", "kid": self.keys[0].kid}, self.claims(extra), lambda _: b"")

    def forge_hs256_with_public_key(self, extra: dict[str, Any] | None = None) -> str:
        """HS256 whose HMAC key is the issuer's public key (PEM): the RS/HS confusion attack."""
        pem = self.keys[0].public_pem()
        header = {"alg": "HS256", "typ": "JWT", "kid": self.keys[0].kid}
        return _jws(header, self.claims(extra), lambda data: hmac.new(pem, data, hashlib.sha256).digest())

    # -- server ---------------------------------------------------------------------------------------------

    def start(self) -> TestIssuer:
        self.port = self.port or free_port()
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> TestIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get(REALM_PATH + "/.well-known/openid-configuration", self._discovery)
        app.router.add_get(REALM_PATH + "/jwks", self._jwks)
        app.router.add_get(REALM_PATH + "/authorize", self._authorize)
        app.router.add_post(REALM_PATH + "/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _discovery(self, _: web.Request) -> web.Response:
        self.hits["discovery"] += 1
        return web.json_response(
            {
                "issuer": self.discovery_issuer or self.url,
                "authorization_endpoint": self.url + "/authorize",
                "token_endpoint": self.url + "/token",
                "jwks_uri": self.url + "/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "scopes_supported": ["openid", "profile", "email"],
            }
        )

    async def _jwks(self, _: web.Request) -> web.Response:
        self.hits["jwks"] += 1
        return web.json_response({"keys": [k.jwk for k in self.keys]})

    async def _authorize(self, request: web.Request) -> web.Response:
        self.hits["authorize"] += 1
        q = request.query
        if q.get("client_id") != self.client_id or q.get("redirect_uri") != self.redirect_uri:
            return _oauth_error("unauthorized_client", "unknown client or redirect_uri", 400)
        if q.get("response_type") != "code" or "openid" not in q.get("scope", "").split():
            return _oauth_error("invalid_request", "response_type=code and scope openid are required", 400)
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return _oauth_error("invalid_request", "PKCE with S256 is required", 400)
        code = secrets.token_urlsafe(24)
        self._grants[code] = _Grant(
            self.client_id, self.redirect_uri, q["code_challenge"], q.get("nonce"), time.monotonic() + CODE_TTL_S
        )
        params = {"code": code, **({"state": q["state"]} if "state" in q else {})}
        raise web.HTTPFound(f"{self.redirect_uri}?{urlencode(params)}")

    async def _token(self, request: web.Request) -> web.Response:
        self.hits["token"] += 1
        form = await request.post()
        client_id, secret = _client_credentials(request, form)
        if client_id != self.client_id or not secret or not hmac.compare_digest(secret, self.client_secret):
            return _oauth_error("invalid_client", "client authentication failed", 401)
        if form.get("grant_type") != "authorization_code":
            return _oauth_error("unsupported_grant_type", "only authorization_code", 400)
        grant = self._grants.pop(str(form.get("code", "")), None)  # single use
        if grant is None or grant.expires < time.monotonic() or grant.client_id != client_id:
            return _oauth_error("invalid_grant", "unknown, used or expired code", 400)
        if form.get("redirect_uri") != grant.redirect_uri:
            return _oauth_error("invalid_grant", "redirect_uri differs from the authorization request", 400)
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or not hmac.compare_digest(challenge, grant.challenge):
            return _oauth_error("invalid_grant", "PKCE verification failed", 400)
        key = self.keys[0]
        id_claims = self.claims({"aud": self.client_id, "azp": self.client_id, "nonce": grant.nonce})
        id_token = jwt.encode(
            {k: v for k, v in id_claims.items() if v is not None},
            key.private,
            algorithm=key.alg,
            headers={"kid": key.kid},
        )
        return web.json_response(
            {"access_token": self.mint(), "id_token": id_token, "token_type": "Bearer", "expires_in": 300}
        )


def _client_credentials(request: web.Request, form: Any) -> tuple[str | None, str | None]:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Basic "):
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        return unquote(user), unquote(password)
    secret = form.get("client_secret")
    return form.get("client_id"), str(secret) if secret else None


def _oauth_error(error: str, description: str, status: int) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


def _jws(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def redirect_params(location: str) -> dict[str, str]:
    """The query of a redirect's Location as a dict."""
    return dict(parse_qsl(urlsplit(location).query))


def main(argv: list[str]) -> None:
    """``python -m tests.support.oidc_issuer [PORT]``: serve the provider until interrupted, printing a token."""
    issuer = TestIssuer(port=int(argv[0]) if argv else 0).start()
    print(f"issuer {issuer.url}\naccess token (aud {issuer.api_audience}, 5 min):\n{issuer.mint()}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        issuer.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
