"""SSRF guard: which addresses are refused, URL shapes, and the connect-time resolver."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from comps.dataprep.urls import GuardedResolver, UrlRefused, check_url, forbidden_reason

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.9.9.9", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.0.0.8", "a private address"),
        ("172.16.5.4", "a private address"),
        ("192.168.0.1", "a private address"),
        ("fd00::1", "a private address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),  # not "private" in Python's table
        ("100.127.255.254", "a shared (carrier-grade NAT) address"),
        ("2002::1", "a 6to4 address"),  # tunnels to any IPv4 address; is_global says True on Python 3.11
        ("2002:7f00:1::1", "a 6to4 address"),  # 127.0.0.1 inside
        ("2002:808:808::1", "a 6to4 address"),
        ("64:ff9b::7f00:1", "a loopback address"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a00:1", "a private address"),
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
        ("64:ff9b:1::1", "a local-use NAT64 address"),
        ("198.18.0.1", "a private address"),  # benchmarking
        ("233.252.0.1", "a multicast address"),
        ("169.254.169.254", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("224.0.0.251", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("::ffff:10.0.0.1", "a private address"),
        ("240.0.0.1", "a private address"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_forbidden_addresses(ip: str, reason: str | None) -> None:
    assert forbidden_reason(ipaddress.ip_address(ip)) == reason


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/a.txt", "'ftp://example.com/a.txt': only http and https URLs are fetched, not 'ftp'"),
        ("file:///etc/passwd", "'file:///etc/passwd': only http and https URLs are fetched, not 'file'"),
        ("/relative/path", "only http and https URLs are fetched, not 'a relative URL'"),
        ("http:///nohost", "'http:///nohost' has no host"),
        ("http://example.com:99999/", "is not a valid URL: Port out of range"),
        ("http://127.0.0.1:8080/x", "http://127.0.0.1:8080/x is refused: 127.0.0.1 is a loopback address"),
        ("https://localhost/", "https://localhost/ is refused: localhost resolves to 127.0.0.1, a loopback address"),
        ("http://[fe80::1]/", "fe80::1 is a link-local address"),
        ("http://no-such-host.invalid/", "host 'no-such-host.invalid' does not resolve"),
    ],
)
def test_refused_urls(url: str, message: str) -> None:
    with pytest.raises(UrlRefused) as err:
        asyncio.run(check_url(url, allow_private=False))
    assert message in str(err.value)


def test_private_addresses_pass_only_when_allowed() -> None:
    asyncio.run(check_url("http://127.0.0.1:1/", allow_private=True))
    asyncio.run(check_url("http://8.8.8.8/", allow_private=False))  # a literal: nothing to resolve
    with pytest.raises(UrlRefused, match="only http and https"):
        asyncio.run(check_url("gopher://127.0.0.1/", allow_private=True))  # the scheme rule always holds


def test_resolver_refuses_at_connect_time() -> None:
    async def resolve(host: str) -> list:
        resolver = GuardedResolver()
        try:
            return await resolver.resolve(host, 80)
        finally:
            await resolver.close()

    with pytest.raises(
        OSError, match=r"refused to connect to localhost: it resolves to 127\.0\.0\.1, a loopback address"
    ):
        asyncio.run(resolve("localhost"))


def test_each_redirect_hop_is_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A public first hop redirecting to a non-global address (here CGNAT) is refused at that hop."""
    from aiohttp import web

    from comps.dataprep import urls

    real = urls.forbidden_reason
    monkeypatch.setattr(urls, "forbidden_reason", lambda ip: None if str(ip) == "127.0.0.1" else real(ip))

    async def run() -> str:
        async def redirect(_req: web.Request) -> web.Response:
            raise web.HTTPFound("http://100.64.0.1/secret")

        app = web.Application()
        app.router.add_get("/", redirect)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fetcher = urls.UrlFetcher(allow_private=False, timeout_s=30, max_bytes=1000, max_redirects=3)
        await fetcher.start()
        try:
            with pytest.raises(UrlRefused) as err:
                await fetcher.fetch(f"http://127.0.0.1:{port}/")
            return str(err.value)
        finally:
            await fetcher.close()
            await runner.cleanup()

    assert "100.64.0.1 is a shared (carrier-grade NAT) address" in asyncio.run(run())


def test_name_resolution_is_bounded_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> str:
        loop = asyncio.get_running_loop()

        async def hang(*_a: object, **_kw: object) -> list:
            await asyncio.Event().wait()
            return []

        monkeypatch.setattr(loop, "getaddrinfo", hang)
        with pytest.raises(UrlRefused) as err:
            await check_url("http://slow.example/", allow_private=False, dns_timeout_s=0.05)
        return str(err.value)

    assert "host 'slow.example' did not resolve within 0.05s" in asyncio.run(run())
