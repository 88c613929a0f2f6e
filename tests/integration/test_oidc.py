"""Single sign-on against a real OIDC provider on 127.0.0.1 (tests/support/oidc_issuer.py): bad tokens,
claim mapping (Keycloak and Entra ID styles), key rotation, and the code flow with PKCE end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import jwt
import pytest

from comps.core.errors import BadRequest, ConfigError, Unauthorized, UpstreamError, UpstreamUnavailable
from comps.core.http import HttpClient
from comps.identity.oidc import JWKS_MIN_REFRESH_S, METADATA_TTL_S, OIDCConfig, OIDCVerifier, new_pkce
from comps.runtime.process import free_port
from tests.support.oidc_issuer import SigningKey, TestIssuer, new_rsa_key, redirect_params

pytestmark = pytest.mark.integration

T = TypeVar("T")


@pytest.fixture(scope="module")
def issuer() -> Iterator[TestIssuer]:
    with TestIssuer() as provider:
        yield provider


@pytest.fixture(scope="module")
def first_keys(issuer: TestIssuer) -> list[SigningKey]:
    return list(issuer.keys)


@pytest.fixture(autouse=True)
def _first_keys(issuer: TestIssuer, first_keys: list[SigningKey]) -> None:
    """Each test starts from the same published keys: an RSA key (signs by default) and an EC key."""
    issuer.keys = list(first_keys)


class Clock:
    """A monotonic clock the test moves, for the verifier's refresh limits."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(provider: TestIssuer, **kw: Any) -> OIDCConfig:
    base = OIDCConfig(
        issuer=provider.url,
        audience=provider.api_audience,
        client_id=provider.client_id,
        client_secret=provider.client_secret,
        redirect_url=provider.redirect_uri,
    )
    return dataclasses.replace(base, **kw)


def with_verifier(cfg: OIDCConfig, body: Callable[[OIDCVerifier], Awaitable[T]], clock: Clock | None = None) -> T:
    async def main() -> T:
        http = HttpClient()
        await http.start()
        try:
            return await body(OIDCVerifier(cfg, http, clock=clock or Clock()))
        finally:
            await http.close()

    return asyncio.run(main())


def verify(cfg: OIDCConfig, token: str) -> Any:
    return with_verifier(cfg, lambda v: v.verify(token))


def refused(cfg: OIDCConfig, token: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        verify(cfg, token)
    return info.value


# -- bad tokens ------------------------------------------------------------------------------------------------

BAD_TOKENS: dict[str, tuple[Callable[[TestIssuer], str], str]] = {
    "expired": (lambda i: i.mint({"exp": int(time.time()) - 600}), "expired"),
    "not yet valid (nbf)": (lambda i: i.mint({"nbf": int(time.time()) + 600}), "not valid yet"),
    "issued in the future (iat)": (lambda i: i.mint({"iat": int(time.time()) + 600}), "not valid yet"),
    "wrong audience": (lambda i: i.mint({"aud": "someone-else"}), "audience"),
    "wrong issuer": (lambda i: i.mint({"iss": "http://127.0.0.1:1/realms/evil"}), "issuer"),
    "no exp": (lambda i: i.mint(drop=("exp",)), "'exp'"),
    "no sub": (lambda i: i.mint(drop=("sub",)), "'sub'"),
    "no aud": (lambda i: i.mint(drop=("aud",)), "'aud'"),
    "alg none": (lambda i: i.forge_alg_none(), "algorithm 'none'"),
    "HS256 keyed with the public key": (lambda i: i.forge_hs256_with_public_key(), "algorithm 'HS256'"),
    "unknown kid": (lambda i: i.mint(key=new_rsa_key()), "key id"),
    "published kid, other key": (
        lambda i: i.mint(key=dataclasses.replace(new_rsa_key(), kid=i.keys[0].kid)),
        "signature",
    ),
    "embedded jwk header": (
        lambda i: i.mint(key=(k := new_rsa_key()), headers={"jwk": k.jwk, "kid": "attacker"}),
        "key id",
    ),
    "tampered payload": (lambda i: _tamper(i.mint()), "signature"),
    "ES256 header on the RSA key": (lambda i: _relabel(i.mint(), "ES256"), "does not fit"),
    "RS256 on the EC key": (lambda i: _relabel(i.mint(key=i.keys[1]), "RS256"), "does not fit"),
    "no kid, several keys": (lambda i: _relabel(i.mint(), "RS256", kid=None), "no key id"),
    "garbage": (lambda i: "not-a-jwt", "malformed"),
    "three garbage parts": (lambda i: "abc.def.ghi", "malformed"),
    "empty": (lambda i: "", "malformed"),
    "huge": (lambda i: i.mint({"pad": "x" * 20000}), "too long"),
    "deeply nested header": (lambda i: _b64(b"[" * 5000) + "." + i.mint().split(".", 1)[1], "not a JWT"),
}


def _b64(data: bytes) -> str:
    return jwt.utils.base64url_encode(data).decode()


def _tamper(token: str) -> str:
    header, payload, sig = token.split(".")
    claims = jwt.utils.base64url_decode(payload)
    forged = claims.replace(b'"jane"', b'"root"')
    assert forged != claims
    return ".".join((header, jwt.utils.base64url_encode(forged).decode(), sig))


def _relabel(token: str, alg: str, **header_changes: Any) -> str:
    """The same token and signature with another header (alg, kid)."""
    _, payload, sig = token.split(".")
    header = jwt.get_unverified_header(token)
    header.update(alg=alg, **header_changes)
    header = {k: v for k, v in header.items() if v is not None}
    new_header = jwt.utils.base64url_encode(json.dumps(header).encode()).decode()
    return ".".join((new_header, payload, sig))


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_token_is_unauthorized(issuer: TestIssuer, case: str, caplog: pytest.LogCaptureFixture) -> None:
    make, expected = BAD_TOKENS[case]
    token = make(issuer)
    caplog.set_level(logging.DEBUG, logger="comps")
    err = refused(config(issuer), token)
    assert expected in err.message, err.message
    assert err.status_code == 401 and err.headers["WWW-Authenticate"].startswith("Bearer")
    if token:
        for part in token.split("."):
            if len(part) > 8:
                assert part not in err.message
                assert part not in caplog.text


def test_small_clock_skew_is_tolerated(issuer: TestIssuer) -> None:
    skew = int(time.time())
    token = issuer.mint({"exp": skew - 5, "nbf": skew + 5, "iat": skew + 5})
    assert verify(config(issuer), token).username == "jane"


# -- claim mapping ---------------------------------------------------------------------------------------------


def test_keycloak_realm_roles(issuer: TestIssuer) -> None:
    cfg = config(issuer, roles_claim="realm_access.roles")
    who = verify(cfg, issuer.mint())
    assert who.issuer == issuer.url and who.subject == "248289761001"
    assert who.username == "jane" and who.email == "jane@example.test"
    assert who.roles == {"admin", "offline_access"} and who.is_admin
    user = verify(cfg, issuer.mint({"realm_access": {"roles": ["offline_access"]}}))
    assert user.roles == {"offline_access"} and not user.is_admin


def test_entra_app_roles(issuer: TestIssuer) -> None:
    cfg = config(issuer, roles_claim="roles", username_claim="upn", admin_roles=("ChatQnA.Admin",))
    who = verify(cfg, issuer.mint({"upn": "jane@contoso.test", "preferred_username": None}))
    assert who.username == "jane@contoso.test"
    assert who.roles == {"ChatQnA.Admin"} and who.is_admin
    assert not verify(cfg, issuer.mint({"roles": ["ChatQnA.User"]})).is_admin


def test_entra_group_overage_gives_no_roles(issuer: TestIssuer) -> None:
    overage = {
        "hasgroups": True,
        "_claim_names": {"groups": "src1"},
        "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}},
    }
    who = verify(config(issuer, roles_claim="groups"), issuer.mint(overage))
    assert who.roles == frozenset() and not who.is_admin and who.username == "jane"


@pytest.mark.parametrize("value", ["admin", {"admin": True}, 7, None, ["admin", 3, {"x": 1}]])
def test_roles_claim_that_is_not_a_list_of_strings(issuer: TestIssuer, value: Any) -> None:
    who = verify(config(issuer), issuer.mint({"roles": value}))
    expected = {"admin"} if isinstance(value, list) else set()  # the strings of a list count, the rest not
    assert who.roles == expected and who.is_admin == bool(expected)


def test_username_fallbacks(issuer: TestIssuer) -> None:
    cfg = config(issuer, username_claim="nickname")
    assert verify(cfg, issuer.mint({"nickname": "jj"})).username == "jj"
    assert verify(cfg, issuer.mint()).username == "jane"  # preferred_username
    only_email = issuer.mint({"preferred_username": None})
    assert verify(cfg, only_email).username == "jane@example.test"
    bare = issuer.mint({"preferred_username": None, "email": None})
    who = verify(cfg, bare)
    assert who.username == "248289761001" and who.email is None


def test_es256_and_ps256_tokens(issuer: TestIssuer) -> None:
    assert verify(config(issuer), issuer.mint(key=issuer.keys[1])).username == "jane"  # EC key, alg in its JWK
    assert verify(config(issuer), issuer.mint(alg="PS256")).username == "jane"  # RSA key without alg (Entra)


def test_audience_defaults_to_client_id(issuer: TestIssuer) -> None:
    cfg = config(issuer, audience=None)
    assert verify(cfg, issuer.mint({"aud": [issuer.client_id, "other"]})).username == "jane"
    assert "audience" in refused(cfg, issuer.mint()).message  # aud is the API audience, not the client


def test_looks_like_mine(issuer: TestIssuer) -> None:
    async def body(v: OIDCVerifier) -> None:
        assert v.looks_like_mine(issuer.mint())
        assert v.looks_like_mine(issuer.mint(drop=("exp",)))  # routing only; verify() refuses it
        ours = jwt.encode({"iss": "chatqna", "sub": "1", "exp": int(time.time()) + 60}, "s" * 32, algorithm="HS256")
        nested = "a." + _b64(b"[" * 5000) + ".c"
        strangers = (
            ours,
            "sk-abc123",
            "",
            "a.b.c",
            "a.!!.c",
            "a.bnVsbA.c",
            nested,
            issuer.mint({"iss": issuer.url + "x"}),
        )
        for other in (*strangers, issuer.mint({"pad": "x" * 20000})):
            assert not v.looks_like_mine(other)

    with_verifier(config(issuer), body)


# -- keys: caching and rotation --------------------------------------------------------------------------------


def test_keys_are_cached_and_rotation_is_followed(issuer: TestIssuer) -> None:
    clock = Clock()

    async def body(v: OIDCVerifier) -> None:
        before = issuer.hits.copy()
        token = issuer.mint()
        await v.verify(token)
        await v.verify(issuer.mint(key=issuer.keys[1]))
        assert issuer.hits["jwks"] - before["jwks"] == 1 and issuer.hits["discovery"] - before["discovery"] == 1
        assert (await v.verify(token)).username == "jane"  # verified before: from memory

        new = issuer.rotate_keys()  # the key of `token` is withdrawn
        clock.now += JWKS_MIN_REFRESH_S
        assert (await v.verify(issuer.mint(key=new))).username == "jane"  # unknown kid: JWKS fetched again
        assert issuer.hits["jwks"] - before["jwks"] == 2
        assert issuer.hits["discovery"] - before["discovery"] == 1  # the discovery document is kept
        clock.now += JWKS_MIN_REFRESH_S
        with pytest.raises(Unauthorized, match="key id"):  # the withdrawn key no longer verifies, cached or not
            await v.verify(token)

    with_verifier(config(issuer), body, clock)


def test_unknown_kids_refresh_the_jwks_at_most_once_per_interval(issuer: TestIssuer) -> None:
    clock = Clock()

    async def body(v: OIDCVerifier) -> None:
        await v.warm_up()
        start = issuer.hits["jwks"]
        clock.now += JWKS_MIN_REFRESH_S
        strangers = [issuer.mint(key=new_rsa_key()) for _ in range(3)]
        results = await asyncio.gather(*(v.verify(t) for t in strangers * 5), return_exceptions=True)
        assert all(isinstance(r, Unauthorized) for r in results)
        assert issuer.hits["jwks"] - start == 1  # fifteen unknown-kid tokens, concurrently: one fetch

        new = issuer.rotate_keys(keep_old=True)
        with pytest.raises(Unauthorized):  # rotated within the interval: not fetched yet
            await v.verify(issuer.mint(key=new))
        assert issuer.hits["jwks"] - start == 1
        clock.now += JWKS_MIN_REFRESH_S
        assert (await v.verify(issuer.mint(key=new))).username == "jane"
        assert issuer.hits["jwks"] - start == 2

    with_verifier(config(issuer), body, clock)


def test_keys_are_fetched_again_after_their_ttl(issuer: TestIssuer) -> None:
    clock = Clock()

    async def body(v: OIDCVerifier) -> None:
        token = issuer.mint()
        await v.verify(token)
        issuer.rotate_keys()  # the key of `token` is withdrawn at the issuer
        clock.now += METADATA_TTL_S
        with pytest.raises(Unauthorized, match="key id"):
            await v.verify(token)

    with_verifier(config(issuer), body, clock)


def test_unreachable_issuer_is_503_not_401_and_not_asked_on_every_request() -> None:
    clock = Clock()
    cfg = OIDCConfig(issuer=f"http://127.0.0.1:{free_port()}/realms/none", client_id="x")
    token = jwt.encode({"iss": cfg.issuer}, new_rsa_key().private, algorithm="RS256", headers={"kid": "k"})

    async def body(v: OIDCVerifier) -> None:
        assert v.looks_like_mine(token)
        with pytest.raises(UpstreamUnavailable, match="unreachable"):
            await v.verify(token)
        with pytest.raises(UpstreamUnavailable, match="just now"):  # within the interval: no new attempt
            await v.verify(token)

    with_verifier(cfg, body, clock)


def test_issuer_url_must_match_discovery(issuer: TestIssuer) -> None:
    cfg = config(issuer, issuer=issuer.url + "/")  # a trailing slash is tolerated
    assert verify(cfg, issuer.mint()).username == "jane"
    with pytest.raises(UpstreamError, match="404"):
        verify(config(issuer, issuer=issuer.base + "/realms/other"), issuer.mint())
    issuer.discovery_issuer = "https://login.example.test/other"
    try:
        with pytest.raises(UpstreamError, match=re.escape("names the issuer 'https://login.example.test/other'")):
            verify(config(issuer), issuer.mint())
    finally:
        issuer.discovery_issuer = None


def test_configuration_errors(issuer: TestIssuer) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_OIDC_AUDIENCE"):
        OIDCVerifier(OIDCConfig(issuer=issuer.url), HttpClient())
    api_only = config(issuer, redirect_url=None)
    assert verify(api_only, issuer.mint()).username == "jane"
    with pytest.raises(BadRequest, match="GATEWAY_OIDC_REDIRECT_URL"):
        with_verifier(api_only, lambda v: v.authorization_url(state="s", code_verifier=new_pkce()[0], nonce="n"))
    assert "test-client-secret" not in repr(config(issuer))


# -- browser flow: authorization code + PKCE -------------------------------------------------------------------


def _sign_in(
    issuer: TestIssuer,
    cfg: OIDCConfig,
    *,
    other_verifier: str | None = None,
    other_nonce: str | None = None,
    replay: bool = False,
) -> Any:
    async def body(v: OIDCVerifier) -> Any:
        code_verifier, _ = new_pkce()
        url = await v.authorization_url(state="st4te", code_verifier=code_verifier, nonce="n0nce")
        assert url.startswith(issuer.url + "/authorize?")
        assert code_verifier not in url and "code_challenge_method=S256" in url
        async with aiohttp.ClientSession() as browser, browser.get(url, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            location = resp.headers["Location"]
        assert location.startswith(issuer.redirect_uri)
        params = redirect_params(location)
        assert params["state"] == "st4te"
        who = await v.exchange_code(
            code=params["code"], code_verifier=other_verifier or code_verifier, nonce=other_nonce or "n0nce"
        )
        if replay:
            await v.exchange_code(code=params["code"], code_verifier=code_verifier, nonce="n0nce")
        return who

    return with_verifier(cfg, body)


def test_code_flow_with_pkce(issuer: TestIssuer) -> None:
    who = _sign_in(issuer, config(issuer, roles_claim="realm_access.roles"))
    assert who.username == "jane" and who.subject == "248289761001" and who.is_admin


def test_code_flow_refusals(issuer: TestIssuer) -> None:
    with pytest.raises(Unauthorized, match="refused"):
        _sign_in(issuer, config(issuer), other_verifier=new_pkce()[0])  # not the verifier of the challenge
    with pytest.raises(Unauthorized, match="nonce"):
        _sign_in(issuer, config(issuer), other_nonce="another")
    with pytest.raises(Unauthorized, match="refused"):
        _sign_in(issuer, config(issuer), replay=True)  # a code is single-use
    with pytest.raises(Unauthorized, match="refused"):
        _sign_in(issuer, config(issuer, client_secret="wrong"))


def test_pkce_pair() -> None:
    verifier, challenge = new_pkce()
    assert 43 <= len(verifier) <= 128 and len(challenge) == 43 and verifier != new_pkce()[0]
