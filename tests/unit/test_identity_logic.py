"""Pure logic of identity: the login limiter, the per-process cache, secure settings, where SSO may return."""

from __future__ import annotations

import pytest

from comps.core.errors import BadRequest, ConfigError, Overloaded
from comps.core.settings import load_settings
from comps.identity.router import _check_return_to
from comps.identity.service import LoginLimiter, TTLCache, personal_collection, valid_collection
from megaservice.settings import GatewaySettings

pytestmark = pytest.mark.unit

GOOD = {"database_url": "postgresql://u:p@db/chatqna", "jwt_secret": "k" * 20 + "abcdefghijklmnop"}


def test_the_limiter_blocks_an_account_after_its_failures_and_says_when_to_retry() -> None:
    limiter = LoginLimiter(per_account=3, per_address=100, window_s=60)
    for _ in range(3):
        limiter.check("alice", "10.0.0.1")
        limiter.failed("alice", "10.0.0.1")
    with pytest.raises(Overloaded) as exc:
        limiter.check("alice", "10.0.0.2")  # another address: the account is still locked
    assert 1 <= int(exc.value.headers["Retry-After"]) <= 61
    limiter.check("bob", "10.0.0.1")  # another account from the same address is not


def test_the_limiter_blocks_an_address_trying_many_accounts() -> None:
    limiter = LoginLimiter(per_account=100, per_address=4, window_s=60)
    for n in range(4):
        limiter.failed(f"user{n}", "10.0.0.9")
    with pytest.raises(Overloaded):
        limiter.check("someone-new", "10.0.0.9")
    limiter.check("someone-new", "10.0.0.10")


def test_a_success_clears_the_account_but_not_the_address() -> None:
    limiter = LoginLimiter(per_account=2, per_address=3, window_s=60)
    limiter.failed("carol", "a")
    limiter.failed("carol", "a")
    limiter.succeeded("carol")
    limiter.check("carol", "b")
    limiter.failed("dave", "a")
    with pytest.raises(Overloaded):
        limiter.check("erin", "a")


def test_failures_expire_after_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("comps.identity.service.time.monotonic", lambda: now[0])
    limiter = LoginLimiter(per_account=1, per_address=10, window_s=30)
    limiter.failed("frank", "a")
    with pytest.raises(Overloaded):
        limiter.check("frank", "a")
    now[0] += 31
    limiter.check("frank", "a")


def test_the_cache_forgets_after_its_ttl_and_bounds_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr("comps.identity.service.time.monotonic", lambda: now[0])
    cache: TTLCache[str] = TTLCache(2.0, size=2)
    cache.put("a", "1")
    assert cache.get("a") == "1"
    now[0] = 2.5
    assert cache.get("a") is None
    for key in ("b", "c", "d"):
        cache.put(key, key)
    assert cache.get("b") is None and cache.get("d") == "d"


def test_collection_names_and_personal_collections() -> None:
    assert personal_collection("12345678-1234-5678-1234-567812345678") == "u-123456781234"
    assert valid_collection("team.docs_1") == "team.docs_1"
    for bad in ("", "../etc", "-x", "a" * 65, "name with space"):
        with pytest.raises(BadRequest):
            valid_collection(bad)


@pytest.mark.parametrize("url", ["/chat", "/", "http://ui.example:8501/after"])
def test_sso_may_return_to_this_site_or_an_allowed_origin(url: str) -> None:
    _check_return_to(url, ["http://ui.example:8501"])


@pytest.mark.parametrize("url", ["//evil.example/x", "https://evil.example/", "javascript:alert(1)", "chat"])
def test_sso_may_not_return_anywhere_else(url: str) -> None:
    with pytest.raises(BadRequest):
        _check_return_to(url, ["http://ui.example:8501"])


def test_auth_on_needs_a_database_and_a_strong_secret() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_JWT_SECRET"):
        load_settings(GatewaySettings, database_url=GOOD["database_url"])
    for weak in ("short", "changeme", "a" * 40):
        with pytest.raises(ConfigError, match="GATEWAY_JWT_SECRET"):
            load_settings(GatewaySettings, database_url=GOOD["database_url"], jwt_secret=weak)
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_settings(GatewaySettings, jwt_secret=GOOD["jwt_secret"])
    assert load_settings(GatewaySettings, **GOOD).auth_enabled


def test_auth_off_is_refused_on_a_public_address() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_AUTH_ENABLED"):
        load_settings(GatewaySettings, auth_enabled=False, host="0.0.0.0")
    for host in ("127.0.0.1", "localhost", "::1"):
        assert not load_settings(GatewaySettings, auth_enabled=False, host=host).auth_enabled


def test_one_shared_token_is_refused_when_accounts_are_on() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_AUTH_ENABLED"):
        load_settings(GatewaySettings, api_key="static-token", **GOOD)
