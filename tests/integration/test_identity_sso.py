"""Single sign-on through the real gateway, against a real OIDC provider on 127.0.0.1 (tests/support/oidc_issuer.py):
bearer tokens of the provider are accepted and mapped to users and roles (Keycloak's ``realm_access.roles``), bad
ones are 401, and the browser flow (authorization code + PKCE) ends with our own tokens."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from comps.runtime.process import free_port
from tests.support.oidc_issuer import TestIssuer
from tests.support.procs import Service, start_service
from tests.support.stubs import StubMesh

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sso(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, TestIssuer]]:
    port = free_port()
    issuer = TestIssuer(redirect_uri=f"http://127.0.0.1:{port}/v1/auth/oidc/callback")
    with issuer, StubMesh() as mesh:
        env = {
            **mesh.env(),
            **issuer.gateway_env(),
            "GATEWAY_AUTH_ENABLED": "true",
            "DATABASE_URL": database_url,
            "GATEWAY_JWT_SECRET": secrets.token_urlsafe(48),
            "GATEWAY_OIDC_ROLES_CLAIM": "realm_access.roles",
            "GATEWAY_OIDC_ADMIN_ROLES": '["admin"]',
        }
        gateway = start_service(
            "megaservice",
            "GATEWAY_",
            env,
            name="gateway-sso",
            port=port,
            log_dir=tmp_path_factory.mktemp("sso"),
            timeout_s=120,
        )
        try:
            yield gateway, issuer
        finally:
            gateway.stop()


def me(gateway: Service, token: str) -> httpx.Response:
    return httpx.get(f"{gateway.url}/v1/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_a_provider_token_signs_in_and_its_roles_make_an_admin(sso: tuple[Service, TestIssuer]) -> None:
    gateway, issuer = sso
    r = me(gateway, issuer.mint())
    assert r.status_code == 200, r.text
    assert r.json()["username"] == "jane" and r.json()["role"] == "admin" and r.json()["sso"] is True
    # The same person again is the same account.
    assert me(gateway, issuer.mint()).json()["id"] == r.json()["id"]


def test_without_the_admin_role_a_provider_user_is_a_user(sso: tuple[Service, TestIssuer]) -> None:
    gateway, issuer = sso
    token = issuer.mint(
        {"sub": "u-" + secrets.token_hex(4), "preferred_username": "joe", "realm_access": {"roles": ["offline_access"]}}
    )
    r = me(gateway, token)
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "user"
    assert (
        httpx.get(f"{gateway.url}/v1/admin/users", headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code
        == 403
    )


def test_bad_provider_tokens_are_401(sso: tuple[Service, TestIssuer]) -> None:
    gateway, issuer = sso
    for token in (
        issuer.forge_alg_none(),
        issuer.forge_hs256_with_public_key(),
        issuer.mint({"aud": "someone-else"}),
        issuer.mint(lifetime_s=-120),
    ):
        r = me(gateway, token)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"].lower().startswith("bearer")


def test_the_browser_flow_with_pkce_ends_with_our_tokens(sso: tuple[Service, TestIssuer]) -> None:
    gateway, _ = sso
    with httpx.Client(base_url=gateway.url, timeout=10, follow_redirects=False) as browser:
        start = browser.get("/v1/auth/oidc/login")
        assert start.status_code == 302
        to_provider = start.headers["location"]
        assert parse_qs(urlsplit(to_provider).query)["code_challenge_method"] == ["S256"]
        back = httpx.get(to_provider, follow_redirects=False, timeout=10)  # the provider signs jane in
        assert back.status_code == 302
        callback = urlsplit(back.headers["location"])
        forged = browser.get("/v1/auth/oidc/callback?code=x&state=forged")
        assert forged.status_code == 400  # a state that is not the one this browser started with
        done = browser.get(f"{callback.path}?{callback.query}")
        assert done.status_code == 200, done.text
        pair = done.json()
    assert pair["user"]["username"] == "jane"
    assert me(gateway, pair["access_token"]).status_code == 200
    # The code was used once; replaying the callback fails.
    with httpx.Client(base_url=gateway.url, timeout=10, follow_redirects=False) as other:
        assert other.get(f"{callback.path}?{callback.query}").status_code == 400  # no sign-in state cookie
