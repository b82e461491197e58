"""Proxies from the environment, chosen the way the notary CLI (Go's net/http) chooses them.

httpx applies ``HTTP_PROXY`` and friends only to its own default transport,
and with rules of its own; vouch's client has its own transport
(:mod:`vouch.client.http11`) and follows Go's rules (``httpproxy.FromEnvironment``
in golang.org/x/net), so a machine set up for ``notary`` and ``docker`` behaves
the same with ``vouch``:

* ``HTTPS_PROXY`` for https URLs, ``HTTP_PROXY`` for http URLs; the upper-case
  name wins, an empty value counts as unset; ``ALL_PROXY`` is not used. Under
  CGI (``REQUEST_METHOD`` set) ``HTTP_PROXY`` may come from a request header
  (httpoxy) and is ignored.
* A proxy given without a scheme is ``http://``; http and https proxies are
  supported (SOCKS ones fail with a clear error when a request would use them).
* Never proxied: ``localhost`` and loopback addresses, and what ``NO_PROXY``
  names: ``*`` (nothing is proxied), IP addresses and CIDR ranges
  (``10.0.0.0/8``), ``example.com`` (it and its subdomains), ``.example.com``
  or ``*.example.com`` (subdomains only), each optionally with ``:port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from vouch.client.http11 import DEFAULT_PORTS

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Proxy:
    variable: str  # where it came from, for error messages
    url: str


@dataclass(frozen=True)
class NoProxy:
    """``NO_PROXY``, parsed as Go parses it."""

    everything: bool = False
    networks: tuple[IPNetwork, ...] = ()
    #: (address, port as written or "")
    addresses: tuple[tuple[IPAddress, str], ...] = ()
    #: (".example.com" in IDNA form, port as written or "", whether
    #: "example.com" itself matches)
    domains: tuple[tuple[str, str, bool], ...] = ()

    @classmethod
    def parse(cls, value: str) -> NoProxy:
        networks: list[IPNetwork] = []
        addresses: list[tuple[IPAddress, str]] = []
        domains: list[tuple[str, str, bool]] = []
        for raw in value.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                return cls(everything=True)
            network = _cidr(entry)
            if network is not None:
                networks.append(network)
                continue
            host, port = _split_host_port(entry)
            if not host:
                continue
            try:
                addresses.append((_ip(host), port))
                continue
            except ValueError:
                pass
            if host.startswith("*."):
                host = host[1:]
            exact = not host.startswith(".")
            name = host if exact else host[1:]
            # The request's host is IDNA 2008-encoded by httpx; encode entries alike.
            with contextlib.suppress(httpx.InvalidURL, ValueError, UnicodeError):
                name = httpx.URL(f"http://{name}/").raw_host.decode("ascii")
            domains.append(("." + name, port, exact))
        return cls(False, tuple(networks), tuple(addresses), tuple(domains))

    def bypasses(self, host: str, port: str) -> bool:
        """Whether ``host:port`` (the request's, port as digits) is reached directly."""
        host = host.lower()
        if host == "localhost":
            return True
        try:
            ip: IPAddress | None = _ip(host)
        except ValueError:
            ip = None
        if ip is not None and ip.is_loopback:
            return True
        if self.everything:
            return True
        if ip is not None:
            if any(ip in net for net in self.networks if net.version == ip.version):
                return True
            if any(ip == a and p in ("", port) for a, p in self.addresses):
                return True
        if ip is not None:
            return False  # domain entries never match an IP address (as in Go)
        for suffix, p, exact in self.domains:
            if (host.endswith(suffix) or (exact and host == suffix[1:])) and p in ("", port):
                return True
        return False


def _ip(text: str) -> IPAddress:
    """An IP address, an IPv4-mapped IPv6 one as the IPv4 address (as Go compares)."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _cidr(entry: str) -> IPNetwork | None:
    """``addr/len`` as Go's ParseCIDR reads it (no netmask form), else None."""
    addr, slash, bits = entry.partition("/")
    if not slash or not bits.isdigit():
        return None
    try:
        return ipaddress.ip_network(f"{addr}/{int(bits)}", strict=False)
    except ValueError:
        return None


def _split_host_port(entry: str) -> tuple[str, str]:
    """Go's ``net.SplitHostPort`` where it succeeds (``host:port``, ``[v6]:port``),
    else the whole entry as the host (``[v6]`` without a port then matches no
    request, as in Go)."""
    if entry.startswith("["):
        host, close, rest = entry[1:].partition("]")
        if close and rest.startswith(":") and ":" not in rest[1:]:
            return host, rest[1:]
        return entry, ""
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""


@dataclass(frozen=True)
class ProxyConfig:
    http: Proxy | None = None
    https: Proxy | None = None
    no_proxy: NoProxy = field(default_factory=NoProxy)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ProxyConfig | None:
        """The environment's proxies, or None when no request would use one."""
        env = os.environ if environ is None else environ

        def first(*names: str) -> Proxy | None:
            for name in names:
                if value := env.get(name, ""):
                    return Proxy(name, value if "://" in value else f"http://{value}")
            return None

        http = None if env.get("REQUEST_METHOD") else first("HTTP_PROXY", "http_proxy")
        https = first("HTTPS_PROXY", "https_proxy")
        if http is None and https is None:
            return None
        no_proxy = NoProxy.parse(env.get("NO_PROXY") or env.get("no_proxy") or "")
        return cls(http, https, no_proxy)

    def proxy_for(self, url: httpx.URL) -> Proxy | None:
        proxy = self.https if url.scheme == "https" else self.http
        if proxy is None:
            return None
        port = str(url.port or DEFAULT_PORTS.get(url.scheme, 0))
        host = url.raw_host.decode("ascii")  # IDNA-encoded, as Go compares it
        return None if self.no_proxy.bypasses(host, port) else proxy


class ProxyRouter(httpx.AsyncBaseTransport):
    """Sends each request direct (through ``direct``) or through its proxy
    (httpx's proxy transport, ``verify`` checking the server through a tunnel)."""

    def __init__(
        self, direct: httpx.AsyncBaseTransport, config: ProxyConfig, verify: ssl.SSLContext
    ) -> None:
        self._direct = direct
        self._config = config
        self._verify = verify
        self._proxied: dict[str, httpx.AsyncBaseTransport] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self._config.proxy_for(request.url)
        if proxy is None:
            return await self._direct.handle_async_request(request)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # the proxy transports' connections belong to the old loop
            self._loop = loop
            self._proxied.clear()
        return await self._transport(proxy).handle_async_request(request)

    def _transport(self, proxy: Proxy) -> httpx.AsyncBaseTransport:
        transport = self._proxied.get(proxy.url)
        if transport is None:
            try:
                # The proxy's own TLS (an https:// proxy) is checked like the trust
                # server's, as Go's transport does: same roots, same client cert.
                tls = self._verify if proxy.url.lower().startswith("https:") else None
                transport = httpx.AsyncHTTPTransport(
                    proxy=httpx.Proxy(proxy.url, ssl_context=tls), verify=self._verify
                )
            except (ImportError, ValueError) as exc:
                # A SOCKS proxy without socksio, an unknown scheme: say which variable.
                raise httpx.ProxyError(
                    f"cannot use {proxy.variable}={_redacted(proxy.url)}: {exc}"
                ) from None
            self._proxied[proxy.url] = transport
        return transport

    async def aclose(self) -> None:
        await self._direct.aclose()
        for transport in self._proxied.values():
            await transport.aclose()


def _redacted(url: str) -> str:
    """``url`` without its password, for messages (Go's URL.Redacted)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return "(an unparsable URL)"
    if not parsed.password:
        return url
    return str(parsed.copy_with(username=parsed.username, password="xxxxx"))  # noqa: S106


__all__ = ["NoProxy", "Proxy", "ProxyConfig", "ProxyRouter"]
