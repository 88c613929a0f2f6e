"""Single sign-on with an external OpenID Connect issuer (Entra ID, Keycloak, any OIDC provider).

`OIDCVerifier` verifies the issuer's bearer tokens against the keys it publishes, and runs the browser's
authorization-code flow with PKCE. The discovery document and the JWKS are fetched with the kit's async
HTTP client and cached; a token signed with a key id that is not in the cache makes the verifier fetch the
JWKS again (at most once per `JWKS_MIN_REFRESH_S`), so a key rotation at the issuer is followed without a
restart, and the cache is renewed after `METADATA_TTL_S` so that a key the issuer withdrew stops working.

Every problem with a token is `Unauthorized` (401). An issuer that cannot be reached before its keys were
ever fetched is `UpstreamUnavailable`/`UpstreamTimeout` (503/504): the token may well be good. Tokens never
appear in messages or logs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import jwt

from comps.core.errors import BadRequest, ConfigError, Unauthorized, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from comps.core.http import HttpClient

log = logging.getLogger("comps.identity.oidc")

DISCOVERY_PATH = "/.well-known/openid-configuration"
NODE = "oidc-issuer"  # how upstream errors name the issuer
HTTP_TIMEOUT_S = 10.0
LEEWAY_S = 30  # clock skew allowed for exp, nbf and iat
JWKS_MIN_REFRESH_S = 30.0  # an unknown kid fetches the JWKS again at most this often
METADATA_TTL_S = 3600.0  # discovery document and JWKS are fetched again after this
VERIFIED_CACHE_S = 60.0  # a verified token is answered from memory for at most this long (never past its exp)
VERIFIED_CACHE_SIZE = 4096
MAX_TOKEN_CHARS = 16384
USERNAME_FALLBACKS = ("preferred_username", "upn", "email")  # then `sub`
REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat"]

# The signature algorithms each kind of public key may be used with: asymmetric only, so never `none`
# and never HS* (an HMAC "signed" with the issuer's public key is the classic confusion attack).
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_PARSE_AS = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}  # any alg of the key type reads its JWK
ACCEPTED_ALGS = _RSA_ALGS | frozenset(_EC_ALGS.values()) | {"EdDSA"}


@dataclass(frozen=True)
class OIDCConfig:
    """Which issuer to trust and how its claims map to our users (from ``GatewaySettings.oidc_*``)."""

    issuer: str
    audience: str | None = None  # expected `aud` of bearer tokens; default: client_id
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    redirect_url: str | None = None  # this gateway's callback, for the browser flow
    scopes: str = "openid profile email"
    username_claim: str = "preferred_username"
    roles_claim: str = "roles"  # dotted path, e.g. "realm_access.roles"
    admin_roles: tuple[str, ...] = ("admin",)

    @classmethod
    def from_settings(cls, s: Any) -> OIDCConfig | None:
        """From an object with the gateway's ``oidc_*`` fields; None when no issuer is configured."""
        if not s.oidc_issuer:
            return None
        secret = s.oidc_client_secret
        return cls(
            issuer=s.oidc_issuer,
            audience=s.oidc_audience,
            client_id=s.oidc_client_id,
            client_secret=secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret,
            redirect_url=s.oidc_redirect_url,
            scopes=s.oidc_scopes,
            username_claim=s.oidc_username_claim,
            roles_claim=s.oidc_roles_claim,
            admin_roles=tuple(s.oidc_admin_roles),
        )


@dataclass(frozen=True)
class ExternalIdentity:
    """Who a verified token of the issuer names; users are keyed by (issuer, subject), not by username."""

    issuer: str
    subject: str
    username: str
    email: str | None
    roles: frozenset[str]
    is_admin: bool


@dataclass(frozen=True)
class _Metadata:
    issuer: str
    jwks_uri: str
    authorization_endpoint: str | None
    token_endpoint: str | None
    token_auth_methods: tuple[str, ...]


@dataclass(frozen=True)
class _Key:
    algs: frozenset[str]
    key: Any  # a `cryptography` public key


def new_pkce() -> tuple[str, str]:
    """A PKCE pair: (code_verifier, its S256 code_challenge), RFC 7636."""
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    return verifier, _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim named ``path``, else the value at its dotted path (``realm_access.roles``), else None."""
    if path in claims:  # namespaced claim names may contain dots ("https://example.com/roles")
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


class OIDCVerifier:
    """Verifies the issuer's tokens and runs the code flow; construct once, share across requests."""

    def __init__(
        self,
        config: OIDCConfig,
        http: HttpClient,
        *,
        clock: Callable[[], float] = time.monotonic,  # for the refresh limits only; `exp` uses the wall clock
    ) -> None:
        audience = config.audience or config.client_id
        if not audience:
            raise ConfigError("OIDC needs the expected audience: set GATEWAY_OIDC_AUDIENCE or GATEWAY_OIDC_CLIENT_ID")
        self.config = config
        self._audience = audience
        self._issuer = config.issuer.rstrip("/")
        self._admin_roles = frozenset(config.admin_roles)
        self._http = http
        self._clock = clock
        self._lock = asyncio.Lock()
        self._meta: _Metadata | None = None
        self._keys: dict[str | None, _Key] = {}
        self._fetched_at: float | None = None  # last successful JWKS fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._verified: dict[bytes, tuple[float, ExternalIdentity]] = {}  # sha256(token) -> (until, identity)

    @property
    def issuer(self) -> str:
        return self._issuer

    @property
    def code_flow_enabled(self) -> bool:
        """Whether the browser flow is configured (client id and redirect URL)."""
        return bool(self.config.client_id and self.config.redirect_url)

    async def warm_up(self) -> None:
        """Fetch the discovery document and the keys now (else the first token does)."""
        async with self._lock:
            await self._fetch()

    def looks_like_mine(self, token: str) -> bool:
        """Cheap routing test, no verification: is this a JWT whose unverified `iss` is our issuer?"""
        parts = token.split(".")
        if len(parts) != 3 or len(token) > MAX_TOKEN_CHARS:
            return False
        claims = _segment_json(parts[1])
        iss = claims.get("iss") if isinstance(claims, dict) else None
        return isinstance(iss, str) and iss.rstrip("/") == self._issuer

    async def verify(self, token: str) -> ExternalIdentity:
        """The identity of a bearer (access) token of the issuer; `Unauthorized` for any bad token.

        A token verified before is answered from memory until its `exp`, for at most `VERIFIED_CACHE_S`, and
        only while the issuer's keys are the ones it was verified with."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("malformed bearer token: too long", code="invalid_token")
        await self._keys_now()  # keys that are due are renewed first, which empties the cache
        digest = hashlib.sha256(token.encode()).digest()  # the cache holds no tokens
        now = time.time()
        hit = self._verified.get(digest)
        if hit is not None and now < hit[0]:
            return hit[1]
        claims = await self._decode(token, audience=self._audience)
        identity = self._identity(claims)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[digest] = (min(float(claims["exp"]), now + VERIFIED_CACHE_S), identity)
        return identity

    async def authorization_url(self, *, state: str, code_verifier: str, nonce: str) -> str:
        """Where to send the browser: the issuer's authorization endpoint, code flow with PKCE (S256)."""
        client_id, redirect_url = self._code_flow()
        meta = await self._metadata()
        if not meta.authorization_endpoint:
            raise UpstreamError(f"the discovery document of {self._issuer} has no authorization_endpoint", node=NODE)
        challenge = _b64url(hashlib.sha256(code_verifier.encode("ascii")).digest())
        query = urlencode(
            {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_url,
                "scope": self.config.scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        sep = "&" if "?" in meta.authorization_endpoint else "?"
        return f"{meta.authorization_endpoint}{sep}{query}"

    async def exchange_code(self, *, code: str, code_verifier: str, nonce: str) -> ExternalIdentity:
        """Redeem the authorization code at the token endpoint; the verified id_token's identity."""
        client_id, redirect_url = self._code_flow()
        meta = await self._metadata()
        if not meta.token_endpoint:
            raise UpstreamError(f"the discovery document of {self._issuer} has no token_endpoint", node=NODE)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_url,
            "code_verifier": code_verifier,
            "client_id": client_id,
        }
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        secret = self.config.client_secret
        if secret and "client_secret_basic" in meta.token_auth_methods:
            pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"  # RFC 6749 2.3.1: form-encoded first
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        elif secret:
            form["client_secret"] = secret
        try:
            answer = await self._http.request_json(
                "POST",
                meta.token_endpoint,
                node=NODE,
                timeout_s=HTTP_TIMEOUT_S,
                content=urlencode(form).encode(),
                headers=headers,
            )
        except UpstreamError as exc:
            status = exc.upstream_status
            if status is not None and 400 <= status < 500:  # invalid_grant, invalid_client, ...
                log.info("the token endpoint of %s refused a code exchange: %s", self._issuer, exc.message[:300])
                raise Unauthorized(
                    f"sign-in failed: the OIDC provider refused the authorization code (HTTP {status})",
                    code="invalid_grant",
                ) from None
            raise
        id_token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(id_token, str):
            raise UpstreamError(f"the token endpoint of {self._issuer} answered without an id_token", node=NODE)
        claims = await self._decode(id_token, audience=client_id)
        got = claims.get("nonce")
        if not nonce or not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise Unauthorized("sign-in failed: the id_token's nonce does not match this sign-in", code="invalid_token")
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:  # OIDC Core 3.1.3.7
            raise Unauthorized("sign-in failed: the id_token was issued to another client (azp)", code="invalid_token")
        return self._identity(claims)

    # -- verification ---------------------------------------------------------------------------------------

    async def _decode(self, token: str, *, audience: str) -> dict[str, Any]:
        # Read here rather than with PyJWT's get_unverified_header, which checks every segment a second time;
        # the header is covered by the signature, and PyJWT reads it again below (with alg pinned).
        header = _segment_json(token.split(".", 1)[0]) if token.count(".") == 2 else None
        if not isinstance(header, dict):
            raise Unauthorized("malformed bearer token: not a JWT", code="invalid_token")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ACCEPTED_ALGS:
            raise Unauthorized(
                f"token algorithm {str(alg)[:10]!r} is not accepted: tokens of {self._issuer} must be signed with "
                f"one of {', '.join(sorted(ACCEPTED_ALGS))}",
                code="invalid_token",
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("malformed bearer token: its key id (kid) is not a string", code="invalid_token")
        key = await self._key_for(kid)
        issuer = (await self._metadata()).issuer  # exactly as the discovery document publishes it
        if alg not in key.algs:
            raise Unauthorized(
                f"token algorithm {alg} does not fit the issuer's key (which signs with {', '.join(sorted(key.algs))})",
                code="invalid_token",
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer,
                leeway=LEEWAY_S,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(exc, self._issuer) from None
        return claims

    def _identity(self, claims: Mapping[str, Any]) -> ExternalIdentity:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("token has no subject (sub)", code="invalid_token")
        username = subject
        for name in (self.config.username_claim, *USERNAME_FALLBACKS):
            value = claim_at(claims, name)
            if isinstance(value, str) and value.strip():
                username = value.strip()
                break
        email = claims.get("email")
        roles = self._roles(claims)
        return ExternalIdentity(
            issuer=self._issuer,
            subject=subject,
            username=username,
            email=email if isinstance(email, str) and email else None,
            roles=roles,
            is_admin=not roles.isdisjoint(self._admin_roles),
        )

    def _roles(self, claims: Mapping[str, Any]) -> frozenset[str]:
        """The roles at the configured claim path; none when it is missing or not a list of strings.

        Entra ID leaves `groups` out when a user has too many (group overage: `_claim_names`/`hasgroups`
        instead); such a token carries no roles here rather than failing."""
        value = claim_at(claims, self.config.roles_claim)
        if isinstance(value, list):
            return frozenset(v for v in value if isinstance(v, str))
        if value is not None:
            log.debug("roles claim %s is a %s, not a list: no roles", self.config.roles_claim, type(value).__name__)
        elif "_claim_names" in claims or claims.get("hasgroups"):
            log.debug(
                "token of %s carries a group overage instead of %s: no roles", self._issuer, self.config.roles_claim
            )
        return frozenset()

    def _code_flow(self) -> tuple[str, str]:
        client_id, redirect_url = self.config.client_id, self.config.redirect_url
        if not client_id or not redirect_url:
            raise BadRequest(
                "single sign-on in the browser is not configured: set GATEWAY_OIDC_CLIENT_ID and "
                "GATEWAY_OIDC_REDIRECT_URL",
                code="oidc_not_configured",
            )
        return client_id, redirect_url

    # -- discovery and keys ---------------------------------------------------------------------------------

    async def _metadata(self) -> _Metadata:
        if self._meta is None:
            await self._keys_now()
        assert self._meta is not None
        return self._meta

    async def _keys_now(self) -> dict[str | None, _Key]:
        """The cached keys; fetched first, and again once they are older than METADATA_TTL_S."""
        if self._fetched_at is not None and self._clock() - self._fetched_at < METADATA_TTL_S:
            return self._keys
        async with self._lock:
            if self._fetched_at is None:
                await self._fetch()  # nothing cached: a failure is the caller's (503/504)
            elif self._clock() - self._fetched_at >= METADATA_TTL_S and self._may_try():
                try:
                    await self._fetch()
                except UpstreamError as exc:
                    log.warning(
                        "keeping the cached keys of %s, fetching them again failed: %s", self._issuer, exc.message
                    )
        return self._keys

    def _may_try(self) -> bool:
        """Whether the issuer may be asked again now (at most once per JWKS_MIN_REFRESH_S)."""
        return self._tried_at is None or self._clock() - self._tried_at >= JWKS_MIN_REFRESH_S

    async def _key_for(self, kid: str | None) -> _Key:
        key = _pick(await self._keys_now(), kid)
        if key is None and kid is not None:
            async with self._lock:
                key = _pick(self._keys, kid)  # fetched meanwhile by another request?
                if key is None and self._may_try():
                    log.info("a token names a key id unknown to %s: fetching its JWKS again", self._issuer)
                    try:
                        await self._fetch()
                    except UpstreamError as exc:
                        log.warning("could not fetch the JWKS of %s again: %s", self._issuer, exc.message)
                    key = _pick(self._keys, kid)
        if key is None:
            what = "names a key id (kid) that the issuer does not publish" if kid else "has no key id (kid)"
            raise Unauthorized(f"token {what}", code="invalid_token")
        return key

    async def _fetch(self) -> None:
        """Fetch the discovery document (when missing or old) and the JWKS; call under the lock."""
        if not self._may_try():  # an issuer that just failed is not asked on every request
            raise UpstreamUnavailable(f"the OIDC issuer {self._issuer} could not be reached just now", node=NODE)
        now = self._clock()
        self._tried_at = now
        if self._meta is None or self._fetched_at is None or now - self._fetched_at >= METADATA_TTL_S:
            self._meta = _metadata(await self._get(self._issuer + DISCOVERY_PATH), self._issuer)
        jwks = await self._get(self._meta.jwks_uri)
        keys = _parse_jwks(jwks, self._issuer)
        if not keys:
            raise UpstreamError(f"the JWKS of {self._issuer} holds no usable signing key", node=NODE)
        self._keys, self._fetched_at = keys, self._clock()
        self._verified.clear()  # a withdrawn key's tokens must verify again (and fail)
        log.info("JWKS of %s loaded: %d signing key(s)", self._issuer, len(keys))

    async def _get(self, url: str) -> Any:
        try:
            return await self._http.request_json(
                "GET", url, node=NODE, timeout_s=HTTP_TIMEOUT_S, headers={"Accept": "application/json"}
            )
        except (UpstreamUnavailable, UpstreamTimeout):
            raise
        except UpstreamError as exc:  # e.g. a 404: the issuer URL is wrong; a 502 here, never the issuer's 4xx
            raise UpstreamError(exc.message, node=NODE, status=exc.upstream_status) from None


def _pick(keys: Mapping[str | None, _Key], kid: str | None) -> _Key | None:
    if kid is not None:
        return keys.get(kid)
    return next(iter(keys.values())) if len(keys) == 1 else None  # no kid: only an issuer with one key


def _metadata(doc: Any, issuer: str) -> _Metadata:
    if not isinstance(doc, dict):
        raise UpstreamError(f"the discovery document of {issuer} is not a JSON object", node=NODE)
    published = doc.get("issuer")
    if not isinstance(published, str) or published.rstrip("/") != issuer:
        raise UpstreamError(
            f"the discovery document at {issuer}{DISCOVERY_PATH} names the issuer {published!r}; "
            "GATEWAY_OIDC_ISSUER must be that exact URL",
            node=NODE,
        )
    jwks_uri = doc.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise UpstreamError(f"the discovery document of {issuer} has no jwks_uri", node=NODE)

    def text(name: str) -> str | None:
        value = doc.get(name)
        return value if isinstance(value, str) and value else None

    methods = doc.get("token_endpoint_auth_methods_supported")
    return _Metadata(
        issuer=published,  # tokens carry it exactly as published
        jwks_uri=jwks_uri,
        authorization_endpoint=text("authorization_endpoint"),
        token_endpoint=text("token_endpoint"),
        # OIDC Discovery: when absent, client_secret_basic is the default
        token_auth_methods=tuple(m for m in methods if isinstance(m, str))
        if isinstance(methods, list)
        else ("client_secret_basic",),
    )


def _parse_jwks(doc: Any, issuer: str) -> dict[str | None, _Key]:
    """The signing keys of a JWKS by kid, each with the algorithms it may verify (from its `alg`, or its type)."""
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise UpstreamError(f"the JWKS of {issuer} has no `keys` list", node=NODE)
    keys: dict[str | None, _Key] = {}
    for jwk in entries:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else None
        kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
        if kty == "RSA":
            algs = _RSA_ALGS
        elif kty == "EC" and crv in _EC_ALGS:
            algs = frozenset({_EC_ALGS[crv]})
        elif kty == "OKP" and crv in ("Ed25519", "Ed448"):
            algs = frozenset({"EdDSA"})
        else:
            continue  # symmetric ("oct") or unknown keys never verify external tokens
        if alg is not None:
            if alg not in algs:
                log.warning("skipping key %s of %s: alg %r does not fit a %s key", kid, issuer, alg, kty)
                continue
            algs = frozenset({alg})
        try:
            key = jwt.PyJWK(jwk, algorithm=alg or _PARSE_AS[kty]).key  # one key object for all its algs
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.warning("skipping key %s of %s: %s", kid, issuer, exc)
            continue
        keys[kid] = _Key(algs=algs, key=key)
    return keys


_MESSAGES: tuple[tuple[type[jwt.InvalidTokenError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "token has expired", "token_expired"),
    (jwt.ImmatureSignatureError, "token is not valid yet (nbf or iat in the future)", "invalid_token"),
    (jwt.InvalidAudienceError, "token was issued for another audience (aud)", "invalid_token"),
    (jwt.InvalidIssuerError, "token was issued by another issuer (iss)", "invalid_token"),
    (jwt.InvalidSignatureError, "token signature does not verify with the issuer's key", "invalid_token"),
    (jwt.InvalidAlgorithmError, "token algorithm is not accepted", "invalid_token"),
    (jwt.DecodeError, "malformed bearer token", "invalid_token"),
)


def _unauthorized(exc: jwt.InvalidTokenError, issuer: str) -> Unauthorized:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return Unauthorized(f"token lacks the required {exc.claim!r} claim", code="invalid_token")
    for kind, message, code in _MESSAGES:
        if isinstance(exc, kind):
            return Unauthorized(message, code=code)
    return Unauthorized(f"token of {issuer} is not valid ({type(exc).__name__})", code="invalid_token")


def _segment_json(segment: str) -> Any:
    """The JSON value of a base64url JWT segment, unverified; None when it is not one."""
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):  # not base64 (binascii.Error), not UTF-8, not JSON, nested too deep
        return None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
