"""Docker registry token auth for the trust-server client (spec §7.4).

A trust server behind token auth answers 401 with
``WWW-Authenticate: Bearer realm=…,service=…,scope=…``; the client fetches a
token for the scope it needs from the realm and repeats the request with
``Authorization: Bearer <token>``. :class:`TokenAuth` does that transparently
for :class:`~vouch.client.remote.Remote`, the way the notary CLI does:

* reads (``pull``) ask for a token anonymously first, and with credentials
  only when the server still says 401, so public repositories never need a
  login and a login is never sent where it is not needed;
* writes (``push,pull``) and admin operations (``*``) use credentials at once;
* tokens are cached per (realm, service, scope) until ``expires_in`` (at least
  60 s) runs out, and the challenge learnt from one 401 (or the ping) lets
  later requests carry a token from the start instead of paying for a 401
  round trip each time.

Credentials come, in this order, from an explicit callback, ``NOTARY_AUTH``
(base64 ``user:password``, the notary CLI's variable) and the Docker client's
configuration (``config.json`` ``auths``, ``credHelpers``, ``credsStore``),
so a machine that can ``docker pull`` can also verify trust data.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import logging
import os
import shutil
import string
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import httpx

from vouch.client.errors import BadResponse, Offline, ServerUnavailable, TooLarge, Unauthorized

log = logging.getLogger(__name__)

PULL: Final = "pull"
PUSH_PULL: Final = "push,pull"
ADMIN: Final = "*"
CATALOG_SCOPE: Final = "registry:catalog:*"

MIN_EXPIRES_IN: Final = 60  # docker/distribution treats less (or none) as 60 s
#: Refresh this many seconds before the token's end, so it cannot expire in flight.
EXPIRY_MARGIN: Final = 5.0
MAX_TOKEN_RESPONSE: Final = 1 << 20
HELPER_TIMEOUT: Final = 30.0
CLIENT_ID: Final = "vouch"

#: The key ``docker login`` writes for Docker Hub, and every name Hub goes by.
#: ``notary.docker.io`` is Hub's trust server: Docker Content Trust logs in to
#: it with the Hub credentials, so it must find them.
DOCKER_HUB_KEY: Final = "https://index.docker.io/v1/"
DOCKER_HUB_HOSTS: Final = frozenset(
    {
        "docker.io",
        "index.docker.io",
        "registry-1.docker.io",
        "registry.hub.docker.com",
        "notary.docker.io",
    }
)
#: A credential helper's ``Username`` meaning "the secret is an identity token".
IDENTITY_TOKEN_USER: Final = "<token>"  # noqa: S105 (a marker, not a secret)


def repository_scope(gun: str, actions: str) -> str:
    """``repository:<gun>:<actions>``, the scope a GUN's routes need (spec §7.3)."""
    return f"repository:{gun}:{actions}"


# -- credentials ----------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A login for the token server.

    With ``identity_token`` set (``docker login`` against an OAuth2 registry,
    or a credential helper answering ``Username: <token>``) the token is
    obtained by an OAuth2 refresh-token POST instead of HTTP Basic.
    ``source`` says where they came from, for error messages.
    """

    username: str
    password: str = field(default="", repr=False)
    identity_token: str | None = field(default=None, repr=False)
    source: str = ""


CredentialCallback = Callable[[str], Credentials | Awaitable[Credentials | None] | None]


class CredentialError(Unauthorized):
    """A credential source is present but unusable (e.g. a malformed ``NOTARY_AUTH``)."""


def parse_notary_auth(value: str) -> Credentials:
    """``NOTARY_AUTH``: standard base64 of ``user:password``, as the notary CLI reads it."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise CredentialError("NOTARY_AUTH is not valid base64 of username:password") from exc
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise CredentialError("NOTARY_AUTH must be base64 of username:password")
    return Credentials(user, password, source="NOTARY_AUTH")


def _hostname(key: str) -> str:
    """Docker's ``ConvertToHostname``: a config key without scheme and path, lower-case."""
    text = key.strip()
    for prefix in ("http://", "https://"):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
            break
    return text.split("/", 1)[0].lower()


def _is_hub(host: str) -> bool:
    return host.split(":", 1)[0] in DOCKER_HUB_HOSTS


def _match_key(keys: Iterable[str], server_url: str) -> str | None:
    """The config key that names ``server_url``'s registry, best match first.

    Order: the URL as written; for Docker Hub, the canonical Hub key then any
    Hub alias; the same ``host:port``; the bare host (for a key without port).
    """
    keys = list(keys)
    url = server_url.rstrip("/")
    parts = urlsplit(server_url)
    netloc = (parts.netloc or "").lower()
    host = (parts.hostname or "").lower()
    for key in keys:
        if key.rstrip("/") == url:
            return key
    if _is_hub(netloc):
        if DOCKER_HUB_KEY in keys:
            return DOCKER_HUB_KEY
        for key in keys:
            if _is_hub(_hostname(key)):
                return key
    for want in (netloc, host):
        for key in keys:
            if _hostname(key) == want:
                return key
    return None


def _helper_server_args(server_url: str, matched_key: str | None) -> list[str]:
    """What to pass a credential helper on stdin, most likely first.

    The Docker CLI asks helpers for the registry's host(:port) (Hub:
    ``https://index.docker.io/v1/``), which is what ``docker login`` stored,
    so that comes first; then the config key as written and the full server
    URL, for stores that were filled in by hand.
    """
    parts = urlsplit(server_url)
    netloc = (parts.netloc or "").lower()
    args = [DOCKER_HUB_KEY] if _is_hub(netloc) else []
    args += [netloc, matched_key or "", f"{parts.scheme}://{netloc}"]
    return list(dict.fromkeys(a for a in args if a))


def docker_config_path(environ: Mapping[str, str]) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    config_dir = environ.get("DOCKER_CONFIG")
    if config_dir:
        return Path(config_dir) / "config.json"
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".docker" / "config.json"


def _auths_entry(entry: Any, key: str) -> Credentials | None:
    """Credentials from one ``auths`` entry (``auth``, ``username``/``password``,
    ``identitytoken``); an empty entry (what ``docker login`` leaves when a
    credential store holds the secret) gives ``None``."""
    if not isinstance(entry, dict):
        return None
    source = f"docker config auths[{key!r}]"
    user = entry.get("username") if isinstance(entry.get("username"), str) else ""
    password = entry.get("password") if isinstance(entry.get("password"), str) else ""
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            log.warning("ignoring %s: its auth is not base64 of user:password", source)
            return None
        user, _, password = decoded.partition(":")
    identity = entry.get("identitytoken")
    if isinstance(identity, str) and identity:
        return Credentials(user or "", identity_token=identity, source=source)
    if user:
        return Credentials(user, password or "", source=source)
    return None


async def run_credential_helper(
    name: str,
    server: str,
    *,
    environ: Mapping[str, str],
    timeout: float = HELPER_TIMEOUT,
) -> Credentials | None:
    """``docker-credential-<name> get`` with ``server`` on stdin, as the Docker CLI runs it.

    Any failure (helper missing, "credentials not found", bad output, timeout)
    gives ``None`` with a log line: a broken helper must not stop a lookup
    that other sources or anonymous access can still satisfy.
    """
    if not name or "/" in name or os.sep in name:
        log.warning("ignoring credential helper with an unusable name %r", name)
        return None
    exe = shutil.which(f"docker-credential-{name}", path=environ.get("PATH", os.defpath))
    if exe is None:
        log.warning("credential helper docker-credential-%s is not on PATH", name)
        return None
    try:
        with anyio.fail_after(timeout):
            result = await anyio.run_process(
                [exe, "get"], input=server.encode(), check=False, env=dict(environ)
            )
    except (OSError, TimeoutError) as exc:
        log.warning("credential helper docker-credential-%s failed: %s", name, exc)
        return None
    if result.returncode != 0:
        log.debug(
            "docker-credential-%s has nothing for %s: %s",
            name,
            server,
            result.stdout.decode(errors="replace").strip(),
        )
        return None
    try:
        data = json.loads(result.stdout)
    except ValueError:
        log.warning("credential helper docker-credential-%s printed no JSON", name)
        return None
    user = data.get("Username") if isinstance(data, dict) else None
    secret = data.get("Secret") if isinstance(data, dict) else None
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    source = f"credential helper docker-credential-{name}"
    if user == IDENTITY_TOKEN_USER:
        return Credentials("", identity_token=secret, source=source)
    return Credentials(user, secret, source=source)


async def docker_credentials(
    server_url: str,
    *,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    helper_timeout: float = HELPER_TIMEOUT,
) -> Credentials | None:
    """The Docker client's credentials for ``server_url``'s host.

    Order: a ``credHelpers`` entry for this registry; an ``auths`` entry that
    holds credentials itself; the default ``credsStore``. Docker consults the
    store before ``auths``; we prefer credentials written inline because a
    config that has them (an image pull secret, a CI login) meant them, and a
    store that is missing on this machine (a config copied from a laptop)
    should not hide them.
    """
    env = os.environ if environ is None else environ
    path = config_path or docker_config_path(env)
    try:
        config = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring Docker config %s: %s", path, exc)
        return None
    if not isinstance(config, dict):
        return None
    raw_auths, raw_helpers = config.get("auths"), config.get("credHelpers")
    auths: dict[str, Any] = raw_auths if isinstance(raw_auths, dict) else {}
    helpers: dict[str, Any] = raw_helpers if isinstance(raw_helpers, dict) else {}
    auth_key = _match_key(auths, server_url)

    helper_key = _match_key(helpers, server_url)
    if helper_key is not None and isinstance(helpers[helper_key], str):
        for arg in _helper_server_args(server_url, helper_key):
            creds = await run_credential_helper(
                helpers[helper_key], arg, environ=env, timeout=helper_timeout
            )
            if creds is not None:
                return creds
    if auth_key is not None:
        creds = _auths_entry(auths[auth_key], auth_key)
        if creds is not None:
            return creds
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        for arg in _helper_server_args(server_url, auth_key):
            creds = await run_credential_helper(store, arg, environ=env, timeout=helper_timeout)
            if creds is not None:
                return creds
    return None


# -- challenges -----------------------------------------------------------------

_TCHARS: Final = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme (lower-case) and its parameters
    (names lower-case, values unquoted)."""

    scheme: str
    params: Mapping[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")

    @property
    def error(self) -> str | None:
        return self.params.get("error")


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The quoted-string starting at ``text[start] == '"'``; returns (value, next index)."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    return "".join(out), i  # unterminated: take the rest, as lenient parsers do


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Every challenge in every ``WWW-Authenticate`` value (RFC 7235).

    One header may hold several challenges (``Basic realm="x", Bearer
    realm="y",…``) and quoted values may contain commas and escaped quotes
    (``scope="repository:a:push,pull"``); a token not followed by ``=``
    starts the next challenge. Malformed input never raises: it just yields
    fewer or odder challenges, and only a Bearer challenge with a realm is
    ever used.
    """
    found: list[tuple[str, dict[str, str]]] = []
    for header in values:
        current: dict[str, str] | None = None
        i, n = 0, len(header)
        while i < n:
            while i < n and header[i] in " \t,":
                i += 1
            j = i
            while j < n and header[j] in _TCHARS:
                j += 1
            if j == i:
                i += 1  # a stray character: skip it
                continue
            token = header[i:j]
            k = j
            while k < n and header[k] in " \t":
                k += 1
            if k < n and header[k] == "=":
                k += 1
                while k < n and header[k] in " \t":
                    k += 1
                if k < n and header[k] == '"':
                    value, k = _quoted(header, k)
                else:
                    m = k
                    while m < n and header[m] not in ", \t":
                        m += 1
                    value, k = header[k:m], m
                if current is not None:
                    current[token.lower()] = value  # the last one wins, as in Go
                i = k
            else:
                current = {}
                found.append((token.lower(), current))
                i = j
    return [Challenge(scheme, params) for scheme, params in found]


def bearer_challenge(values: Iterable[str]) -> Challenge | None:
    """The first ``Bearer`` challenge (scheme matched case-insensitively) that has a realm."""
    for challenge in parse_challenges(values):
        if challenge.scheme == "bearer" and challenge.realm:
            return challenge
    return None


# -- tokens ---------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A bearer token, when it stops being usable (on ``TokenAuth``'s clock),
    and whether it was issued without credentials."""

    value: str
    expires_at: float
    anonymous: bool


async def read_capped(response: httpx.Response, limit: int, *, what: str, url: str) -> bytes:
    """The body of a streamed response, refusing more than ``limit`` bytes.

    A declared ``Content-Length`` above the limit is refused before reading a
    byte; otherwise reading stops as soon as the body passes the limit, so a
    hostile server cannot make us buffer more than ``limit`` plus one chunk.
    """
    declared = response.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            length = None
        if length is not None and length > limit:
            raise TooLarge(what, limit=limit, declared=length, url=url)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise TooLarge(what, limit=limit, declared=None, url=url)
    return bytes(body)


#: Requests in one redirect chain at most: Go's http.Client's limit ("stopped
#: after 10 redirects", which it says on the 10th request's redirect).
MAX_REDIRECTS: Final = 10


async def send_following(
    client: httpx.AsyncClient, request: httpx.Request, *, what: str
) -> httpx.Response:
    """``request`` sent and its redirects followed as Go's client follows them
    for notary: a GET always, another method (a publish, a token POST) on 307
    and 308 only, with the same method and body (Go resends a buffered body;
    on 301-303 it would turn a POST into a GET, which no trust server route
    wants, so that answer is returned as it is). At most
    :data:`MAX_REDIRECTS` requests, to http(s) URLs only. httpx would read
    each redirect's body whole first (an endless one would fill memory); here
    it is never read. httpx builds each next request (an ``Authorization``
    header is dropped on the way to another origin). Transport errors are the
    caller's to map.
    """
    url = str(request.url)
    for _ in range(MAX_REDIRECTS):
        response = await client.send(request, stream=True, follow_redirects=False)
        following = response.next_request
        if following is not None and following.method != request.method:
            following = None  # POST → GET on 301-303
        if request.method != "GET" and response.status_code not in (307, 308):
            following = None
        if following is None:
            return response
        await response.aclose()  # its body is never read
        if following.url.scheme not in ("http", "https"):
            raise BadResponse(f"{what} redirected to {following.url}", url=url)
        request = following
    raise BadResponse(f"{what} stopped after {MAX_REDIRECTS} redirects", url=url)


#: How much of an error's body is read: notary reads 1 KiB of errors.
MAX_ERROR_BODY: Final = 1 << 10


async def read_error_body(response: httpx.Response) -> bytes:
    """At most :data:`MAX_ERROR_BODY` bytes: an error body is advice, not data."""
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass  # the status alone still says what happened
    return bytes(body[:MAX_ERROR_BODY])


async def _detached(response: httpx.Response) -> httpx.Response:
    """``response`` with its error body (:func:`read_error_body`) in memory and its
    connection released: the same status and headers for the caller to map."""
    try:
        body = await read_error_body(response)
    finally:
        await response.aclose()
    return httpx.Response(
        response.status_code, headers=response.headers, content=body, request=response.request
    )


def _with_query(realm: str, params: Mapping[str, str]) -> str:
    """``realm`` plus ``params``, all keys sorted as Go's ``url.Values.Encode`` does."""
    parts = urlsplit(realm)
    pairs = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    query = urlencode(sorted(pairs, key=lambda kv: kv[0]))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


_HEADER_SAFE: Final = frozenset(string.ascii_letters + string.digits + "-._~+/=")


def _parse_token_response(body: bytes, realm: str) -> tuple[str, int, str | None]:
    """(token, expires_in, refresh_token) from a token server reply.

    ``access_token`` wins over ``token`` (OAuth2 servers send both); an
    ``expires_in`` below 60 s (or none) counts as 60 s, like docker's client.
    The token must be a plain token68 string: it goes into a header verbatim.
    """
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise BadResponse(f"token server at {realm} did not answer with JSON", url=realm)
    token = data.get("access_token") or data.get("token")
    if not isinstance(token, str) or not token or not set(token) <= _HEADER_SAFE:
        raise BadResponse(f"token server at {realm} sent no usable token", url=realm)
    expires_in = data.get("expires_in")
    if not isinstance(expires_in, int) or isinstance(expires_in, bool):
        expires_in = MIN_EXPIRES_IN
    refresh = data.get("refresh_token")
    return token, max(expires_in, MIN_EXPIRES_IN), refresh if isinstance(refresh, str) else None


SendFn = Callable[[str | None], Awaitable[httpx.Response]]


class TokenAuth:
    """Token auth state shared by every request of one or more :class:`Remote`\\ s.

    ``credentials`` is an optional callback ``(server_url) -> Credentials |
    None`` (may be async), asked before ``NOTARY_AUTH`` and the Docker config;
    ``environ`` replaces ``os.environ`` for those lookups (tests, or a caller
    that keeps its secrets elsewhere). ``use_docker_config=False`` stops the
    Docker config and credential helpers from being consulted. ``clock`` is
    a monotonic clock in seconds, for token expiry.

    Resolved credentials are remembered per server for the object's life;
    :meth:`clear` forgets them together with all tokens (after a re-login).
    """

    def __init__(
        self,
        credentials: CredentialCallback | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        use_docker_config: bool = True,
        docker_config: Path | None = None,
        client_id: str = CLIENT_ID,
        clock: Callable[[], float] = time.monotonic,
        helper_timeout: float = HELPER_TIMEOUT,
    ) -> None:
        self._callback = credentials
        self._environ = environ
        self._use_docker = use_docker_config
        self._docker_config = docker_config
        self._client_id = client_id
        self._clock = clock
        self._helper_timeout = helper_timeout
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str, str], Token] = {}
        self._refresh_tokens: dict[tuple[str, str, str], str] = {}
        self._creds: dict[str, Credentials | None] = {}
        self._locks: dict[tuple[str, ...], anyio.Lock] = {}
        #: Token requests sent so far (observability; tests count them).
        self.token_requests = 0

    def clear(self) -> None:
        """Forget tokens, learnt challenges and resolved credentials."""
        self._challenges.clear()
        self._tokens.clear()
        self._refresh_tokens.clear()
        self._creds.clear()

    def challenge_for(self, server: str) -> Challenge | None:
        return self._challenges.get(server)

    def learn(self, server: str, headers: httpx.Headers) -> Challenge | None:
        """Remember the Bearer challenge of a 401 from ``server`` (e.g. from the ping)."""
        challenge = bearer_challenge(headers.get_list("www-authenticate"))
        if challenge is not None:
            self._challenges[server] = challenge
        return challenge

    # -- credentials --

    async def credentials(self, server: str) -> Credentials | None:
        """The credentials for ``server``: callback, ``NOTARY_AUTH``, Docker config."""
        if server in self._creds:
            return self._creds[server]
        async with self._lock(("creds", server)):
            if server not in self._creds:
                self._creds[server] = await self._resolve(server)
        return self._creds[server]

    async def _resolve(self, server: str) -> Credentials | None:
        env = os.environ if self._environ is None else self._environ
        if self._callback is not None:
            result = self._callback(server)
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                return result
        notary_auth = env.get("NOTARY_AUTH")
        if notary_auth:
            return parse_notary_auth(notary_auth)
        if self._use_docker:
            return await docker_credentials(
                server,
                environ=env,
                config_path=self._docker_config,
                helper_timeout=self._helper_timeout,
            )
        return None

    # -- the request flow --

    async def send(
        self, client: httpx.AsyncClient, server: str, scope: str, *, read: bool, send: SendFn
    ) -> httpx.Response:
        """Send a request through ``send(token)``, answering 401 challenges.

        Before sending, a cached (or, when the challenge is known, freshly
        fetched) token is attached. On a 401 with a Bearer challenge: a cached
        token that was refused is replaced by a fresh one of the same kind; an
        anonymous token that was not enough is replaced by one fetched with
        credentials. At most three sends in all; the last response is
        returned whatever its status, for the caller to map.
        """
        challenge = self._challenges.get(server)
        token: Token | None = None
        fresh = False
        if challenge is not None:
            token, fresh = await self._initial_token(client, server, challenge, scope, read=read)
        response = await send(token.value if token else None)
        for _ in range(2):
            if response.status_code != 401:
                return response
            new = self.learn(server, response.headers)
            if new is None:
                return response
            # Let go of the 401's connection before asking the token server: with
            # as many 401s in flight as the pool has connections, the token
            # requests would otherwise wait for a slot that none of them frees.
            response = await _detached(response)
            nxt = await self._next_token(
                client, server, new, scope, refused=token, fresh=fresh, read=read
            )
            if nxt is None:
                return response
            token, fresh = nxt, True
            response = await send(token.value)
        return response

    async def _next_token(
        self,
        client: httpx.AsyncClient,
        server: str,
        ch: Challenge,
        scope: str,
        *,
        refused: Token | None,
        fresh: bool,
        read: bool,
    ) -> Token | None:
        """What to try after ``refused`` (``None``: nothing was sent) got a 401."""
        if refused is None:
            return await self._first_token(client, server, ch, scope, read=read)
        if not fresh:  # a cached token: it may have expired or been revoked meanwhile
            return await self._obtain(client, server, ch, scope, refused.anonymous, stale=refused)
        if refused.anonymous and await self.credentials(server) is not None:
            return await self._obtain(client, server, ch, scope, False, stale=refused)
        return None

    async def _initial_token(
        self, client: httpx.AsyncClient, server: str, ch: Challenge, scope: str, *, read: bool
    ) -> tuple[Token | None, bool]:
        key = self._key(ch, scope)
        cached = self._tokens.get(key)
        if cached is not None and self._valid(cached):
            return cached, False
        if cached is not None:  # expired: renew the same kind that worked before
            renewed = await self._obtain(client, server, ch, scope, cached.anonymous, stale=cached)
            if renewed is not None:
                return renewed, True
        return await self._first_token(client, server, ch, scope, read=read), True

    async def _first_token(
        self, client: httpx.AsyncClient, server: str, ch: Challenge, scope: str, *, read: bool
    ) -> Token | None:
        """Reads: anonymous first (credentials if the token server refuses that);
        writes: credentials, or anonymous when there are none."""
        if read:
            token = await self._obtain(client, server, ch, scope, True)
            if token is not None:
                return token
            return await self._obtain(client, server, ch, scope, False)
        token = await self._obtain(client, server, ch, scope, False)
        if token is not None:
            return token
        return await self._obtain(client, server, ch, scope, True)

    def _key(self, ch: Challenge, scope: str) -> tuple[str, str, str]:
        return (ch.realm or "", ch.service or "", scope)

    def _valid(self, token: Token) -> bool:
        return self._clock() < token.expires_at - EXPIRY_MARGIN

    def _lock(self, key: tuple[str, ...]) -> anyio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = anyio.Lock()
        return lock

    async def _obtain(
        self,
        client: httpx.AsyncClient,
        server: str,
        ch: Challenge,
        scope: str,
        anonymous: bool,
        *,
        stale: Token | None = None,
    ) -> Token | None:
        """A token of the wanted kind, fetched once even if many requests want it.

        ``None`` when there are no credentials (for a credentialed token) or
        the token server refuses anonymous access.
        """
        key = self._key(ch, scope)
        async with self._lock(key):
            current = self._tokens.get(key)
            if (
                current is not None
                and current != stale
                and self._valid(current)
                and (anonymous or not current.anonymous)
            ):
                return current  # another request just fetched it
            creds = None
            if not anonymous:
                creds = await self.credentials(server)
                if creds is None:
                    return None
            token = await self._fetch(client, ch, scope, creds)
            if token is not None:
                self._tokens[key] = token
            return token

    async def _fetch(
        self, client: httpx.AsyncClient, ch: Challenge, scope: str, creds: Credentials | None
    ) -> Token | None:
        realm = ch.realm or ""
        service = ch.service or ""
        if urlsplit(realm).scheme not in ("http", "https"):
            raise BadResponse(f"the server's auth challenge names an unusable realm {realm!r}")
        refresh_key = (realm, service, creds.username if creds else "")
        refresh = None
        if creds is not None and creds.identity_token:
            refresh = self._refresh_tokens.get(refresh_key, creds.identity_token)
        if refresh is not None:
            # OAuth2 refresh-token grant (docker/distribution's fetchTokenWithOAuth).
            form = {
                "client_id": self._client_id,
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "scope": scope,
                "service": service,
            }
            request = client.build_request(
                "POST",
                realm,
                content=urlencode(sorted(form.items())).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        else:
            params = {"scope": scope, "service": service}
            headers: dict[str, str] = {}
            if creds is not None:
                params["account"] = creds.username
                basic = f"{creds.username}:{creds.password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(basic).decode()
            request = client.build_request("GET", _with_query(realm, params), headers=headers)
        self.token_requests += 1
        try:
            response = await send_following(client, request, what=f"the token server at {realm}")
        except httpx.TransportError as exc:
            raise Offline(f"unable to reach the token server at {realm}: {exc}", url=realm) from exc
        try:
            status = response.status_code
            if status in (401, 403):
                if creds is None:
                    return None
                who = f"{creds.username or 'identity token'}"
                raise Unauthorized(
                    f"the token server at {realm} refused the credentials of {who} "
                    f"from {creds.source or 'the caller'} ({status})",
                    url=realm,
                    scope=scope,
                )
            if not 200 <= status < 300:
                raise ServerUnavailable(
                    f"the token server at {realm} answered {status}", status=status, url=realm
                )
            body = await read_capped(response, MAX_TOKEN_RESPONSE, what="token", url=realm)
        except httpx.TransportError as exc:
            raise Offline(f"the token server at {realm} failed: {exc}", url=realm) from exc
        finally:
            await response.aclose()
        value, expires_in, new_refresh = _parse_token_response(body, realm)
        if refresh is not None and new_refresh and new_refresh != refresh:
            self._refresh_tokens[refresh_key] = new_refresh
        return Token(value, self._clock() + expires_in, anonymous=creds is None)


__all__ = [
    "ADMIN",
    "MAX_ERROR_BODY",
    "MAX_REDIRECTS",
    "CATALOG_SCOPE",
    "PULL",
    "PUSH_PULL",
    "Challenge",
    "CredentialCallback",
    "CredentialError",
    "Credentials",
    "Token",
    "TokenAuth",
    "bearer_challenge",
    "docker_config_path",
    "docker_credentials",
    "parse_challenges",
    "parse_notary_auth",
    "read_capped",
    "read_error_body",
    "repository_scope",
    "run_credential_helper",
    "send_following",
]
