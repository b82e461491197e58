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

import contextlib
import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import httpx

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Proxy:
    variable: str  # where it came from, for error messages
    url: str


@dataclass(frozen=True)
class NoProxy:
    """``NO_PROXY``, parsed as Go parses it."""

    everything: bool = False
    networks: tuple[IPNetwork, ...] = ()
    addresses: tuple[tuple[IPAddress, int | None], ...] = ()
    #: (".example.com", port, whether "example.com" itself matches)
    domains: tuple[tuple[str, int | None, bool], ...] = ()

    @classmethod
    def parse(cls, value: str) -> NoProxy:
        networks: list[IPNetwork] = []
        addresses: list[tuple[IPAddress, int | None]] = []
        domains: list[tuple[str, int | None, bool]] = []
        for raw in value.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                return cls(everything=True)
            if "/" in entry:
                with contextlib.suppress(ValueError):  # Go skips what it cannot parse
                    networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            host, port = _split_host_port(entry)
            if not host:
                continue
            try:
                addresses.append((ipaddress.ip_address(host), port))
                continue
            except ValueError:
                pass
            if host.startswith("*."):
                host = host[1:]
            exact = not host.startswith(".")
            domains.append((host if not exact else "." + host, port, exact))
        return cls(False, tuple(networks), tuple(addresses), tuple(domains))

    def bypasses(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is reached directly."""
        host = host.lower()
        if host == "localhost":
            return True
        try:
            ip: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and ip.is_loopback:
            return True
        if self.everything:
            return True
        if ip is not None:
            if any(ip in net for net in self.networks):
                return True
            if any(ip == a and p in (None, port) for a, p in self.addresses):
                return True
        for suffix, p, exact in self.domains:
            if (host.endswith(suffix) or (exact and host == suffix[1:])) and p in (None, port):
                return True
        return False


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    return host, (int(port) if port.isdigit() else None)


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
        port = url.port or _DEFAULT_PORTS.get(url.scheme, 0)
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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self._config.proxy_for(request.url)
        if proxy is None:
            return await self._direct.handle_async_request(request)
        return await self._transport(proxy).handle_async_request(request)

    def _transport(self, proxy: Proxy) -> httpx.AsyncBaseTransport:
        transport = self._proxied.get(proxy.url)
        if transport is None:
            try:
                transport = httpx.AsyncHTTPTransport(proxy=proxy.url, verify=self._verify)
            except (ImportError, ValueError) as exc:
                # A SOCKS proxy without socksio, an unknown scheme: say which variable.
                raise httpx.ProxyError(f"cannot use {proxy.variable}={proxy.url}: {exc}") from exc
            self._proxied[proxy.url] = transport
        return transport

    async def aclose(self) -> None:
        await self._direct.aclose()
        for transport in self._proxied.values():
            await transport.aclose()


__all__ = ["NoProxy", "Proxy", "ProxyConfig", "ProxyRouter"]
