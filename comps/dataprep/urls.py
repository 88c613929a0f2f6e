"""Fetching ``link_list`` URLs without becoming a proxy into the private network (SSRF).

A URL is refused unless its scheme is http(s) and EVERY address its host resolves to is globally
routable (``is_global``, and not multicast; IPv4-mapped and NAT64 addresses are judged by the IPv4
address inside, 6to4 ``2002::/16`` is refused whole), unless ``DATAPREP_ALLOW_PRIVATE_URLS=true``.
Name resolution is bounded in time. The check runs up front (a 400 naming the reason), again for each
redirect hop (redirects are followed by hand), and a third time where it cannot be raced: the fetch
session's resolver refuses forbidden answers at connect time, so DNS rebinding between the check and the
connection does not get through. That is why untrusted URLs go through their own session (`UrlFetcher`),
not the kit's shared client, which also would send our request ids and trace context to third parties.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

USER_AGENT = "chatqna-dataprep/0.1 (+https://github.com/opea-project)"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DNS_TIMEOUT_S = 5.0  # default bound on resolving one host name

_SIXTOFOUR = ipaddress.ip_network("2002::/16")  # tunnels to any IPv4 address, private ones included
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the IPv4 address is in the last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not private to Python, not global either


class UrlRefused(ValueError):
    """The URL may not be fetched; the message says why."""


class FetchFailed(RuntimeError):
    """The URL was allowed but could not be fetched; the message says why."""


def forbidden_reason(ip: IPAddress) -> str | None:
    """What kind of non-public address ``ip`` is ("a loopback address"...), or None when it is globally
    routable."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _SIXTOFOUR:
            return "a 6to4 address"
        elif ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    for attr, what in (
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"),
        ("is_multicast", "a multicast"),
        ("is_unspecified", "an unspecified"),
        ("is_private", "a private"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(ip, attr):
            return f"{what} address"
    if ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if not ip.is_global:
        return "a non-global address"
    return None


def split_url(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; `UrlRefused` for any other scheme or a URL without a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"{url!r} is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UrlRefused(f"{url!r}: only http and https URLs are fetched, not {parts.scheme or 'a relative URL'!r}")
    if not parts.hostname:
        raise UrlRefused(f"{url!r} has no host")
    return parts.hostname, port or (443 if parts.scheme.lower() == "https" else 80)


async def check_url(url: str, *, allow_private: bool, dns_timeout_s: float = DNS_TIMEOUT_S) -> None:
    """Refuse ``url`` (`UrlRefused`) if it is not http(s), its host does not resolve (within
    ``dns_timeout_s``), or any address it resolves to is not public (unless ``allow_private``)."""
    host, port = split_url(url)
    if allow_private:
        return
    literal, addresses = await resolve(host, port, dns_timeout_s)
    for ip in addresses:
        reason = forbidden_reason(ip)
        if reason:
            where = f"{host} is" if literal else f"{host} resolves to {ip},"
            raise UrlRefused(
                f"{url} is refused: {where} {reason} (set DATAPREP_ALLOW_PRIVATE_URLS=true to allow private addresses)"
            )


async def resolve(host: str, port: int, timeout_s: float = DNS_TIMEOUT_S) -> tuple[bool, list[IPAddress]]:
    """(whether ``host`` is an IP literal, the addresses it stands for)."""
    try:
        return True, [ipaddress.ip_address(host)]
    except ValueError:
        pass
    lookup = asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    try:
        infos = await asyncio.wait_for(lookup, timeout_s)
    except TimeoutError:
        raise UrlRefused(f"host {host!r} did not resolve within {timeout_s:g}s") from None
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlRefused(f"host {host!r} does not resolve: {exc}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise UrlRefused(f"host {host!r} resolves to no address")
    return False, addresses


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that fails the connection when any resolved address is not public."""

    def __init__(self, timeout_s: float = DNS_TIMEOUT_S) -> None:
        self._inner = ThreadedResolver()
        self.timeout_s = timeout_s

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            results = await asyncio.wait_for(self._inner.resolve(host, port, family), self.timeout_s)
        except TimeoutError:
            raise OSError(f"{host} did not resolve within {self.timeout_s:g}s") from None
        for result in results:
            reason = forbidden_reason(ipaddress.ip_address(result["host"]))
            if reason:
                raise OSError(f"refused to connect to {host}: it resolves to {result['host']}, {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class Fetched:
    url: str  # after redirects
    data: bytes
    content_type: str  # media type only, lower case ("" if none)


class UrlFetcher:
    """Fetches untrusted URLs: own session (guarded resolver unless private URLs are allowed), bounded
    body size, explicit timeout, redirects followed by hand and checked at each hop."""

    def __init__(
        self, *, allow_private: bool, timeout_s: float, max_bytes: int, max_redirects: int,
        dns_timeout_s: float = DNS_TIMEOUT_S,
    ) -> None:  # fmt: skip
        self.allow_private = allow_private
        self.dns_timeout_s = dns_timeout_s
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        resolver = ThreadedResolver() if self.allow_private else GuardedResolver(self.dns_timeout_s)
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=32)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False, headers={"User-Agent": USER_AGENT})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str) -> Fetched:
        """The body of ``url``; `UrlRefused` or `FetchFailed` with the reason otherwise."""
        try:
            return await asyncio.wait_for(self._fetch(url), self.timeout_s)
        except TimeoutError:
            raise FetchFailed(f"{url} did not answer completely within {self.timeout_s:g}s") from None

    async def _fetch(self, url: str) -> Fetched:
        assert self._session is not None, "UrlFetcher used before start()"
        current = url
        for _ in range(self.max_redirects + 1):
            await check_url(current, allow_private=self.allow_private, dns_timeout_s=self.dns_timeout_s)
            try:
                async with self._session.get(current, allow_redirects=False) as resp:
                    if resp.status in REDIRECTS and "Location" in resp.headers:
                        current = urljoin(current, resp.headers["Location"])
                        continue
                    if resp.status >= 400:
                        raise FetchFailed(f"{current} answered HTTP {resp.status} {resp.reason or ''}".rstrip())
                    if resp.content_length is not None and resp.content_length > self.max_bytes:
                        raise FetchFailed(
                            f"{current} is {resp.content_length} bytes, over the limit of {self.max_bytes} bytes"
                        )
                    body = bytearray()
                    async for block in resp.content.iter_chunked(1 << 16):
                        body += block
                        if len(body) > self.max_bytes:
                            raise FetchFailed(f"{current} is larger than the limit of {self.max_bytes} bytes")
                    return Fetched(current, bytes(body), resp.content_type.lower() if resp.content_type else "")
            except aiohttp.ClientConnectorError as exc:
                raise FetchFailed(f"cannot connect to {current}: {exc.os_error}") from None
            except aiohttp.ClientError as exc:
                raise FetchFailed(f"fetching {current} failed: {type(exc).__name__}: {exc}") from None
        raise FetchFailed(f"{url} redirected more than {self.max_redirects} times")
