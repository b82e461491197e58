"""The trust server's HTTP API from the client side (spec §5), as the notary CLI uses it.

:class:`Remote` is the only place vouch's client touches the network: every
trust decision is made by :mod:`vouch.tuf` on the bytes it returns. So it is
deliberately dumb about TUF and strict about HTTP:

* every body is read with a size cap (timestamp 1 MiB, root 100 MiB,
  checksum-addressed files exactly their ``length``; the caller passes the
  cap), a ``Content-Length`` above the cap is refused before reading, and
  reading stops as soon as a body runs past it (spec §10.4);
* statuses become the errors of :mod:`vouch.client.errors`, which follow the
  decisions the client makes (fall back to cache, report "not initialised",
  show the server's validation message), with error bodies read only up to
  1 KiB, like notary;
* registry token auth is transparent (:class:`~vouch.client.auth.TokenAuth`);
* uploads are byte-for-byte the notary CLI's multipart form.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote

import anyio
import httpx

from vouch import __version__
from vouch.client.auth import (
    ADMIN,
    CATALOG_SCOPE,
    MAX_ERROR_BODY,
    MAX_REDIRECTS,
    PULL,
    PUSH_PULL,
    TokenAuth,
    bearer_challenge,
    read_capped,
    read_error_body,
    repository_scope,
    send_following,
)
from vouch.client.errors import (
    BadResponse,
    NotFound,
    Offline,
    RemoteError,
    ServerUnavailable,
    Unauthorized,
    UpdateRejected,
    VersionConflict,
)
from vouch.client.http11 import DEFAULT_PORTS, Http11Transport
from vouch.client.proxy import ProxyConfig, ProxyRouter
from vouch.tuf import timefmt
from vouch.tuf.errors import FormatError
from vouch.tuf.keys import Key

MAX_TIMESTAMP_SIZE: Final = 1 << 20
#: Metadata whose length nothing pins: root on bootstrap, ``<v>.root.json``.
MAX_ROOT_SIZE: Final = 100 << 20
MAX_UNKNOWN_SIZE: Final = MAX_ROOT_SIZE
MAX_KEY_SIZE: Final = 256 << 10
MAX_CHANGEFEED_SIZE: Final = 16 << 20

CONNECT_TIMEOUT: Final = 30.0
PING_TIMEOUT: Final = 5.0
#: No notary equivalent (Go's client waits forever once connected); a hung
#: server must not hang an admission webhook, and 60 s is far above any
#: honest response time for files capped at 100 MiB on a working network.
READ_TIMEOUT: Final = 60.0
DEFAULT_TIMEOUT: Final = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
USER_AGENT: Final = f"vouch/{__version__}"
SERVER_KEY_ROLES: Final = frozenset({"timestamp", "snapshot"})

# Characters a GUN or role name may keep unescaped in a URL path.
_PATH_SAFE: Final = "/:@!$&'()*+,;=-._~"


class _SystemRootsContext(ssl.SSLContext):
    """A verifying client context that loads the system's CA roots on its first
    TLS connection rather than when it is made.

    Loading them takes about 30 ms, which every CLI call paid at start-up even
    when it talked plain HTTP or only to a token realm later. The roots are in
    place before any handshake (both ways a socket is wrapped load them), so
    nothing is ever verified against an empty pool by accident; an empty pool
    would fail closed anyway.
    """

    _roots_loaded = False

    def _load_roots(self) -> None:
        if not self._roots_loaded:
            self.load_default_certs(ssl.Purpose.SERVER_AUTH)
            self._roots_loaded = True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load_roots()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load_roots()
        return super().wrap_bio(*args, **kwargs)


@dataclass(frozen=True)
class TLSConfig:
    """Client TLS as the notary CLI configures it (spec §9.3).

    ``ca_file`` *replaces* the system roots (notary builds its pool from that
    file alone); ``client_cert`` and ``client_key`` come together or not at
    all; ``skip_verify`` turns off certificate and host name checks but still
    presents a client certificate if one is set. The fields map one to one
    onto :class:`vouch.client.config.ClientConfig`'s ``root_ca``,
    ``tls_client_cert``, ``tls_client_key`` and ``skip_tls_verify``.
    """

    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    skip_verify: bool = False

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("a TLS client certificate needs its key, and a key its certificate")

    def ssl_context(self) -> ssl.SSLContext:
        if self.ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
        else:
            ctx = _SystemRootsContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None and self.client_key is not None:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


@dataclass(frozen=True)
class Change:
    """One changefeed record (spec §5.5): a new timestamp (``update``) or a deletion."""

    id: str
    created_at: datetime
    gun: str
    version: int
    sha256: str
    category: str


@dataclass(frozen=True)
class ChangeFeed:
    count: int
    records: list[Change]


_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


@functools.lru_cache(maxsize=4096)
def _check_path(value: str, what: str) -> str:
    """``value`` quoted for a URL path; refuses what could leave its place in the path.

    GUNs and delegation names may contain ``/`` but never empty, ``.`` or
    ``..`` segments: those would be normalised away and address another
    resource than the one asked for.
    """
    if not value or value.startswith("/") or value.endswith("/"):
        raise ValueError(f"invalid {what}: {value!r}")
    if any(seg in ("", ".", "..") for seg in value.split("/")):
        raise ValueError(f"invalid {what}: {value!r}")
    if _CONTROL_OR_SPACE.search(value):
        raise ValueError(f"invalid {what}: {value!r}")
    return quote(value, safe=_PATH_SAFE)


def multipart_body(files: Mapping[str, bytes]) -> tuple[bytes, str]:
    """The notary CLI's update form: one part per role, field ``files``,
    ``filename=<role>``, ``application/octet-stream``, a 60-hex-char boundary
    (Go's ``multipart.Writer``). Returns (body, Content-Type)."""
    boundary = secrets.token_hex(30)
    body = bytearray()
    for role, data in files.items():
        if any(c in role for c in "\r\n\0"):
            raise ValueError(f"invalid role name {role!r}")
        # Go's escapeQuotes for the filename parameter.
        name = role.replace("\\", "\\\\").replace('"', '\\"')
        body += b"\r\n" if body else b""
        body += (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        body += data
    body += f"\r\n--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme))


def _envelope(body: bytes) -> tuple[str, str, Any, int]:
    """(code, message, detail, number of errors) of an errcode body; blanks if unparseable."""
    try:
        data = json.loads(body)
    except ValueError:
        return "", "", None, 0
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return "", "", None, 0
    first = errors[0]
    code = first.get("code") if isinstance(first.get("code"), str) else ""
    message = first.get("message") if isinstance(first.get("message"), str) else ""
    return str(code), str(message), first.get("detail"), len(errors)


class Remote:
    """One trust server (``url``, e.g. ``https://notary.example.com:4443``).

    Safe to share between concurrent tasks of one asyncio event loop (the
    default transport, :class:`~vouch.client.http11.Http11Transport`, is
    asyncio's; trio is not supported); connections are pooled and kept alive.
    Use as ``async with Remote(url) as remote:`` or call :meth:`aclose`.
    ``tls`` is a :class:`TLSConfig` or a ready ``ssl.SSLContext``; ``auth`` a
    shared :class:`TokenAuth` (a fresh one by default); ``transport`` replaces
    the network (tests, in-process servers).
    """

    def __init__(
        self,
        url: str,
        *,
        tls: TLSConfig | ssl.SSLContext | None = None,
        auth: TokenAuth | None = None,
        timeout: httpx.Timeout | None = None,
        ping_timeout: float = PING_TIMEOUT,
        user_agent: str = USER_AGENT,
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = True,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"trust server URL must be http(s)://host[:port]: {url!r}")
        self._url = url.rstrip("/")
        self._origin = _origin(parsed)
        self._auth = auth if auth is not None else TokenAuth()
        self._ping_timeout = ping_timeout
        verify: ssl.SSLContext | bool = True
        if transport is None:
            verify = tls if isinstance(tls, ssl.SSLContext) else (tls or TLSConfig()).ssl_context()
            transport = Http11Transport(ssl_context=verify)
            # httpx reads proxies from the environment only for its own default
            # transport (and by rules of its own): vouch follows notary's.
            proxies = ProxyConfig.from_environment() if trust_env else None
            if proxies is not None:
                transport = ProxyRouter(transport, proxies, verify)
        self._client = httpx.AsyncClient(
            verify=verify,
            timeout=timeout or DEFAULT_TIMEOUT,
            # Identity: sizes are then what the wire carries, and a small
            # compressed body cannot expand past a limit inside one chunk.
            headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
            transport=transport,
            # No cookie jar, as Go's http.Client (notary, docker) has none: a
            # cookie a token realm sets must not ride along to the trust server.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            trust_env=trust_env,
            follow_redirects=False,
            max_redirects=MAX_REDIRECTS,
        )

    @property
    def url(self) -> str:
        return self._url

    @property
    def auth(self) -> TokenAuth:
        return self._auth

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the API --

    async def ping(self) -> bool:
        """Whether the server is reachable: ``GET /v2/`` answers 2xx or 401 within
        the ping timeout (5 s). Anything else means the client works offline.

        A 401's challenge is remembered, so the first real request already
        carries a token.
        """
        request = self._client.build_request("GET", f"{self._url}/v2/")
        try:
            with anyio.fail_after(self._ping_timeout):
                response = await self._client.send(request, stream=True)
                await response.aclose()
        except (httpx.HTTPError, TimeoutError):
            return False
        if response.status_code == 401:
            self._auth.learn(self._url, response.headers)
            return True
        return 200 <= response.status_code < 300

    async def get_metadata(self, gun: str, name: str, max_size: int) -> bytes:
        """The bytes of ``name`` (``timestamp.json``, ``snapshot.<sha256>.json``,
        ``3.root.json``, ``targets/releases.<sha256>.json`` …), at most ``max_size``.

        :raises TooLarge: the server declared or sent more than ``max_size``.
        :raises NotFound: 404; ``repository_missing`` for ``root.json``.
        """
        if max_size < 0:
            raise ValueError("max_size must not be negative")
        url = self._tuf_url(gun, _check_path(name, "metadata name"))
        return await self._call(
            "GET",
            url,
            gun=gun,
            resource=name,
            scope=repository_scope(gun, PULL),
            read=True,
            limit=max_size,
        )

    async def get_key(self, gun: str, role: str) -> Key:
        """The public key the server signs ``role`` (timestamp or snapshot) with.

        A new repository's root must list the key from *one* such call: a
        memory-backed notary signer hands out a new key on every call.
        """
        return await self._key("GET", gun, role, PUSH_PULL)

    async def rotate_key(self, gun: str, role: str) -> Key:
        """Make the server create a new key for ``role`` and return it.

        The server keeps signing with the old key until a root naming the new
        one is published.
        """
        return await self._key("POST", gun, role, ADMIN)

    async def publish(self, gun: str, files: Mapping[str, bytes]) -> None:
        """Upload changed metadata (``{"root": bytes, "targets/x": bytes, …}``) atomically.

        :raises UpdateRejected: the server's validation refused it (``str()``
            is the notary CLI's message).
        :raises VersionConflict: someone else published first.
        """
        body, content_type = multipart_body(files)
        await self._call(
            "POST",
            self._tuf_url(gun, ""),
            gun=gun,
            resource="update",
            scope=repository_scope(gun, PUSH_PULL),
            read=False,
            limit=MAX_ERROR_BODY,
            content=body,
            headers={"Content-Type": content_type},
            discard_body=True,
        )

    async def delete(self, gun: str) -> None:
        """Delete all of ``gun``'s metadata on the server (succeeds if there was none)."""
        await self._call(
            "DELETE",
            self._tuf_url(gun, ""),
            gun=gun,
            resource="repository",
            scope=repository_scope(gun, ADMIN),
            read=False,
            limit=MAX_ERROR_BODY,
            discard_body=True,
        )

    async def changefeed(
        self, gun: str | None, change_id: int | str = 0, records: int = 100
    ) -> ChangeFeed:
        """Changes after ``change_id`` (``-1``: from the newest, backwards), ``records``
        at most (negative: the ones before ``change_id``); one GUN's or, with
        ``gun=None``, the whole server's (which needs ``registry:catalog:*``)."""
        query = httpx.QueryParams({"change_id": str(change_id), "records": str(records)})
        if gun is None:
            url, scope = f"{self._url}/v2/_trust/changefeed", CATALOG_SCOPE
        else:
            path = _check_path(gun, "GUN")
            url, scope = f"{self._url}/v2/{path}/_trust/changefeed", repository_scope(gun, PULL)
        body = await self._call(
            "GET",
            f"{url}?{query}",
            gun=gun or "",
            resource="changefeed",
            scope=scope,
            read=True,
            limit=MAX_CHANGEFEED_SIZE,
        )
        return _parse_changefeed(body, url)

    # -- plumbing --

    def _tuf_url(self, gun: str, name: str) -> str:
        return f"{self._url}/v2/{_check_path(gun, 'GUN')}/_trust/tuf/{name}"

    async def _key(self, method: str, gun: str, role: str, actions: str) -> Key:
        if role not in SERVER_KEY_ROLES:
            raise ValueError(f"the server holds keys for timestamp and snapshot only, not {role!r}")
        url = self._tuf_url(gun, f"{role}.key")
        body = await self._call(
            method,
            url,
            gun=gun,
            resource=f"{role}.key",
            scope=repository_scope(gun, actions),
            read=False,
            limit=MAX_KEY_SIZE,
        )
        try:
            return Key.from_dict(json.loads(body))
        except (ValueError, FormatError) as exc:
            raise BadResponse(f"trust server returned a bad {role} key: {exc}", url=url) from exc

    async def _call(
        self,
        method: str,
        url: str,
        *,
        gun: str,
        resource: str,
        scope: str,
        read: bool,
        limit: int,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        discard_body: bool = False,
    ) -> bytes:
        """One request with auth, status mapping and a capped body read."""

        async def send(token: str | None) -> httpx.Response:
            hdrs = dict(headers or {})
            if token is not None:
                hdrs["Authorization"] = f"Bearer {token}"
            request = self._client.build_request(method, url, content=content, headers=hdrs)
            try:
                response = await send_following(self._client, request, what="trust server")
            except httpx.TransportError as exc:
                raise Offline(
                    f"unable to reach trust server at {self._url}: {exc}", url=url
                ) from exc
            return await self._own_challenge(response, url)

        response = await self._auth.send(self._client, self._url, scope, read=read, send=send)
        try:
            if 200 <= response.status_code < 300:
                if discard_body:
                    return b""
                return await read_capped(response, limit, what=resource, url=url)
            raise await self._error(response, gun=gun, resource=resource, url=url)
        except httpx.DecodingError as exc:
            raise BadResponse(f"trust server sent an undecodable body: {exc}", url=url) from exc
        except httpx.TransportError as exc:
            raise Offline(f"connection to {self._url} failed: {exc}", url=url) from exc
        finally:
            await response.aclose()

    async def _own_challenge(self, response: httpx.Response, url: str) -> httpx.Response:
        """``response``, unless it is a 401 from another origin than the trust
        server's (a redirect led there): its challenge must not be answered, or
        the trust server's credentials would go to a token realm that origin
        chose. Go's notary client answers challenges only from the server it
        pinged, too."""
        if response.status_code == 401 and _origin(response.request.url) != self._origin:
            await response.aclose()
            raise BadResponse(
                f"trust server redirected to {response.request.url.copy_with(query=None)}, "
                "which asks for credentials: vouch answers only the trust server's own "
                "challenges",
                url=url,
            )
        return response

    async def _error(
        self, response: httpx.Response, *, gun: str, resource: str, url: str
    ) -> RemoteError:
        status = response.status_code
        code, message, detail, count = _envelope(await read_error_body(response))
        if status == 404:
            return NotFound(gun=gun, resource=resource, server=self._url, url=url, code=code)
        if status == 401:
            challenge = bearer_challenge(response.headers.get_list("www-authenticate"))
            return Unauthorized(
                url=url,
                scope=challenge.scope if challenge else None,
                error=challenge.error if challenge else None,
            )
        if status in (400, 413):
            # notary decodes ``detail`` only from a reply with exactly one error.
            kind = VersionConflict if code == "VERSION" else UpdateRejected
            return kind(
                code=code,
                server_message=message,
                detail=detail if count == 1 else None,
                status=status,
                url=url,
            )
        return ServerUnavailable(status=status, url=url, code=code)


def _parse_changefeed(body: bytes, url: str) -> ChangeFeed:
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        count = data.get("count")
        raw = data.get("records") or []  # the memory store says ``null`` past the end
        if not isinstance(count, int) or not isinstance(raw, list):
            raise ValueError("needs count and records")
        records = []
        for rec in raw:
            if not isinstance(rec, dict):
                raise ValueError("a record is not an object")
            values = (rec.get(k) for k in ("ID", "GUN", "SHA256", "Category", "CreatedAt"))
            version = rec.get("Version")
            if not all(isinstance(v, str) for v in values) or not isinstance(version, int):
                raise ValueError(f"malformed record {rec!r}")
            records.append(
                Change(
                    id=str(rec["ID"]),
                    created_at=timefmt.parse(str(rec["CreatedAt"])),
                    gun=str(rec["GUN"]),
                    version=version,
                    sha256=str(rec["SHA256"]),
                    category=str(rec["Category"]),
                )
            )
    except (ValueError, FormatError) as exc:
        raise BadResponse(f"trust server returned a bad changefeed: {exc}", url=url) from exc
    return ChangeFeed(count, records)


__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_CHANGEFEED_SIZE",
    "MAX_ERROR_BODY",
    "MAX_KEY_SIZE",
    "MAX_ROOT_SIZE",
    "MAX_TIMESTAMP_SIZE",
    "MAX_UNKNOWN_SIZE",
    "PING_TIMEOUT",
    "USER_AGENT",
    "Change",
    "ChangeFeed",
    "Remote",
    "TLSConfig",
    "multipart_body",
]
