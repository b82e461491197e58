"""Talking to CouchDB (and Cloudant, PouchDB Server): storage URLs, TLS, auth, errors.

Plain HTTP with httpx rather than a client library: the store needs about ten
endpoints of CouchDB's stable HTTP API, vouch is async throughout, and the
maintained official library (IBM's ``ibmcloudant`` SDK) is synchronous, built
on ``requests`` and would bring its own core SDK; httpx is already a
dependency of vouch. What a library would add is done here in a few lines:

* **TLS** with certificate verification always on for ``https`` (the system
  CAs, or ``?cacert=`` for a private CA) and an optional client certificate;
* **credentials** from the URL or, to keep them out of config files, from the
  environment (``VOUCH_COUCHDB_USERNAME`` / ``VOUCH_COUCHDB_PASSWORD``);
* **session (cookie) auth** by default: CouchDB 3.4 hashes passwords with
  many PBKDF2 rounds, which basic auth would pay on every request;
* **IAM** for Cloudant: an API key (``VOUCH_COUCHDB_APIKEY`` or
  ``CLOUDANT_APIKEY``) exchanged for bearer tokens, refreshed before expiry.

Error messages never contain the URL's credentials, the API key or a token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx

from vouch.storage.base import StorageError

AuthKind = Literal["none", "basic", "session", "iam"]

#: URL schemes that name a CouchDB server; ``couchdb``/``couchdbs`` default to
#: CouchDB's ports (5984 plain, 6984 TLS), ``http``/``https`` to the usual ones.
COUCH_SCHEMES = {"couchdb": "http", "couchdbs": "https", "http": "http", "https": "https"}
_DEFAULT_PORTS = {"couchdb": 5984, "couchdbs": 6984}
#: The database when the URL names only the server (notary-style ``https://host:6984/``).
DEFAULT_DATABASE = "vouch"
#: IBM Cloud's IAM token endpoint (Cloudant's API keys are IAM keys).
IAM_TOKEN_URL = "https://iam.cloud.ibm.com/identity/token"  # noqa: S105  (a URL)
_DB_NAME = re.compile(r"[a-z][a-z0-9_$()+/-]*")
_PARAMS = {
    "cacert",
    "cert",
    "key",
    "auth",
    "timeout",
    "iam_url",
    "region",
    "regions",
    "resolve_every",
}
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_AUTH_KINDS: tuple[AuthKind, ...] = ("none", "basic", "session", "iam")
#: Refresh an IAM token when less than this share of its lifetime is left.
_IAM_REFRESH_SHARE = 0.2
#: Repeats of a request refused with 429 Too Many Requests, and the longest wait.
_THROTTLE_RETRIES = 4
_THROTTLE_MAX_WAIT = 5.0


def is_couch_url(url: str) -> bool:
    """Whether a storage URL names a CouchDB server (rather than an SQL database)."""
    scheme, sep, _ = url.strip().partition("://")
    return bool(sep) and scheme.lower() in COUCH_SCHEMES


@dataclass(frozen=True)
class CouchTarget:
    """A parsed CouchDB storage URL: where to connect and how to authenticate."""

    server: str  # scheme://host:port/prefix/ without credentials, ending in "/"
    database: str
    auth: AuthKind = "none"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    apikey: str | None = field(default=None, repr=False)
    iam_url: str = IAM_TOKEN_URL
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    timeout: float = 30.0
    #: Multi-region replication: this region's name and every region's, in one
    #: order shared by all (change ids are striped by the position); empty: one region.
    region: str = ""
    regions: tuple[str, ...] = ()
    #: Seconds between scans for forks that replication brought in (multi-region only).
    resolve_every: float = 2.0

    def ssl_context(self) -> ssl.SSLContext | None:
        """Verification on (hostname and chain), against ``cacert`` or the system CAs."""
        if not self.server.startswith("https:"):
            return None
        ctx = ssl.create_default_context(cafile=self.cacert)
        if self.cert:
            ctx.load_cert_chain(self.cert, keyfile=self.key)
        return ctx


def parse_couch_url(raw: str, environ: Mapping[str, str] | None = None) -> CouchTarget:
    """Parse ``couchdb[s]://`` or ``http[s]://[user[:pass]@]host[:port][/prefix]/[db][?…]``.

    The database is the last path segment; a path ending in ``/`` names only the
    server (the form notary-style configs use) and the database is ``vouch``.
    Query parameters: ``cacert``, ``cert``, ``key`` (TLS files), ``auth``
    (``none``/``basic``/``session``/``iam``), ``timeout`` (seconds), ``iam_url``,
    and for multi-region replication ``region`` (this region's name), ``regions``
    (every region's name, comma-separated, the same list everywhere) and
    ``resolve_every`` (seconds between fork scans).
    Credentials missing from the URL come from the environment.
    """
    env = os.environ if environ is None else environ
    try:
        parts = urlsplit(raw.strip())
        port = parts.port
    except ValueError:
        raise ValueError("malformed CouchDB storage URL") from None
    scheme = parts.scheme.lower()
    if scheme not in COUCH_SCHEMES or not parts.hostname:
        raise ValueError("a CouchDB storage URL is couchdb[s]://host/db or http[s]://host/db")
    http_scheme = COUCH_SCHEMES[scheme]
    port = port or _DEFAULT_PORTS.get(scheme)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{port}" if port else host
    path = parts.path or "/"
    if path.endswith("/"):
        prefix, database = path, DEFAULT_DATABASE
    else:
        prefix, _, last = path.rpartition("/")
        prefix, database = prefix + "/", unquote(last)
    if not _DB_NAME.fullmatch(database):
        raise ValueError(
            "CouchDB database names start with a lowercase letter and contain only "
            "a-z, 0-9 and _$()+/-"
        )
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise ValueError(f"unsupported CouchDB URL parameters: {unknown}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    username = username or env.get("VOUCH_COUCHDB_USERNAME") or None
    if password is None:
        password = env.get("VOUCH_COUCHDB_PASSWORD") or None
    apikey = env.get("VOUCH_COUCHDB_APIKEY") or env.get("CLOUDANT_APIKEY") or None
    auth = params.get("auth") or (
        "iam" if apikey and not username else "session" if username else "none"
    )
    if auth not in _AUTH_KINDS:
        raise ValueError(f"auth must be one of {', '.join(_AUTH_KINDS)}")
    if auth in ("basic", "session") and (not username or password is None):
        raise ValueError(
            f"auth={auth} needs a user name and password (in the URL or "
            "VOUCH_COUCHDB_USERNAME / VOUCH_COUCHDB_PASSWORD)"
        )
    if auth == "iam" and not apikey:
        raise ValueError("auth=iam needs an API key in VOUCH_COUCHDB_APIKEY or CLOUDANT_APIKEY")
    if params.get("key") and not params.get("cert"):
        raise ValueError("key= needs cert=")
    if (params.get("cacert") or params.get("cert")) and http_scheme != "https":
        raise ValueError("cacert=/cert= need an https (or couchdbs) URL")
    try:
        timeout = float(params.get("timeout", "30"))
    except ValueError:
        raise ValueError("timeout must be a number of seconds") from None
    if not timeout > 0:
        raise ValueError("timeout must be a number of seconds")
    region, regions = _parse_regions(params.get("region", ""), params.get("regions", ""))
    try:
        resolve_every = float(params.get("resolve_every", "2"))
    except ValueError:
        raise ValueError("resolve_every must be a number of seconds") from None
    if not resolve_every > 0:
        raise ValueError("resolve_every must be a number of seconds")
    return CouchTarget(
        server=f"{http_scheme}://{netloc}{prefix}",
        database=database,
        auth=auth,
        username=username,
        password=password,
        apikey=apikey,
        iam_url=params.get("iam_url") or IAM_TOKEN_URL,
        cacert=params.get("cacert") or None,
        cert=params.get("cert") or None,
        key=params.get("key") or None,
        timeout=timeout,
        region=region,
        regions=regions,
        resolve_every=resolve_every,
    )


def _parse_regions(region: str, regions: str) -> tuple[str, tuple[str, ...]]:
    """``region=b&regions=a,b``: both or neither, names unique, ``region`` among them."""
    if not region and not regions:
        return "", ()
    names = tuple(r.strip() for r in regions.split(",")) if regions else ()
    if not region or not names:
        raise ValueError("region= and regions= go together (this region, and every region)")
    for name in (region, *names):
        if not _REGION.fullmatch(name):
            raise ValueError(
                f"region names are 1-32 characters a-z, 0-9 and '-' (got {name[:40]!r})"
            )
    if len(set(names)) != len(names):
        raise ValueError("regions= names a region twice")
    if region not in names:
        raise ValueError(f"region {region!r} is not in regions={','.join(names)}")
    return region, names


class CouchHTTPError(StorageError):
    """CouchDB answered with an error status."""

    def __init__(self, status: int, error: str, reason: str, what: str) -> None:
        super().__init__(f"couchdb: {what}: HTTP {status} {error}: {reason}".rstrip(": "))
        self.status = status
        self.error = error


class CouchNotFoundError(CouchHTTPError):
    """404: no such document, attachment or database."""


class CouchConflictError(CouchHTTPError):
    """409 (document update conflict) or 412 (database already exists)."""


def _error_for(resp: httpx.Response, what: str) -> CouchHTTPError:
    error, reason = "", ""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error, reason = str(body.get("error", "")), str(body.get("reason", ""))
    cls: type[CouchHTTPError] = CouchHTTPError
    if resp.status_code == 404:
        cls = CouchNotFoundError
    elif resp.status_code in (409, 412):
        cls = CouchConflictError
    elif resp.status_code in (401, 403):
        reason = reason or "check the credentials and the user's roles on the database"
    return cls(resp.status_code, error, reason[:200], what)


def jparams(**values: Any) -> dict[str, str]:
    """Query parameters as CouchDB wants them: keys JSON-encoded, booleans lowercase."""
    out: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name in ("key", "startkey", "endkey"):
            out[name] = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


class CouchClient:
    """An authenticated HTTP client for one CouchDB database."""

    def __init__(
        self, target: CouchTarget, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.target = target
        self.db_path = quote(target.database, safe="")
        self._http = httpx.AsyncClient(
            base_url=target.server,
            verify=target.ssl_context() or True,
            timeout=target.timeout,
            # Never send the database's credentials through a proxy from the environment.
            trust_env=False,
            transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            headers={"Accept": "application/json"},
        )
        # IAM's endpoint has a public certificate: not verified against the database's CA.
        self._iam_http = httpx.AsyncClient(
            timeout=target.timeout, trust_env=False, transport=transport
        )
        self._auth_lock = asyncio.Lock()
        self._cookie: str | None = None
        self._token: str | None = None
        self._token_refresh_at = 0.0

    def doc_path(self, doc_id: str, attachment: str | None = None) -> str:
        path = f"{self.db_path}/{quote(doc_id, safe='')}"
        return f"{path}/{quote(attachment, safe='')}" if attachment else path

    async def request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> httpx.Response:
        """Send one request; raise a :class:`CouchHTTPError` unless its status is in ``ok``.

        A 401 with session or IAM auth logs in again (the cookie or token may
        have expired) and repeats the request once. A 429 (Cloudant's answer
        above a plan's provisioned throughput; the request was not carried out)
        is repeated after ``Retry-After`` or a short backoff, a few times.
        """
        renew, renewed, throttled = False, False, 0
        while True:
            headers = await self._auth_headers(renew=renew)
            renew = False
            if body is not None:
                headers["Content-Type"] = "application/json"
            try:
                resp = await self._http.request(
                    method,
                    path,
                    params=params,
                    headers=headers,
                    content=None if body is None else _dumps(body),
                )
            except httpx.HTTPError as e:
                # httpx messages name the host at most; the base URL has no credentials.
                raise StorageError(f"couchdb: {what}: {type(e).__name__}: {e}") from e
            self._remember_cookie(resp)
            if resp.status_code == 401 and not renewed and self.target.auth in ("session", "iam"):
                renew = renewed = True
                continue
            if resp.status_code == 429 and throttled < _THROTTLE_RETRIES:
                throttled += 1
                await asyncio.sleep(_retry_after(resp, throttled))
                continue
            if resp.status_code not in ok:
                raise _error_for(resp, what)
            return resp

    async def get_json(
        self, path: str, what: str, *, params: Mapping[str, str] | None = None
    ) -> Any:
        return (await self.request("GET", path, what, params=params)).json()

    async def post_json(
        self, path: str, what: str, body: Any, *, params: Mapping[str, str] | None = None
    ) -> Any:
        return (await self.request("POST", path, what, params=params, body=body)).json()

    async def close(self) -> None:
        await self._http.aclose()
        await self._iam_http.aclose()

    # -- authentication ---------------------------------------------------------

    async def _auth_headers(self, *, renew: bool) -> dict[str, str]:
        t = self.target
        if t.auth == "basic":
            pair = f"{t.username}:{t.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if t.auth == "session":
            cookie = self._cookie
            if cookie is None or renew:
                cookie = await self._login(stale=cookie)
            return {"Cookie": f"AuthSession={cookie}"}
        if t.auth == "iam":
            token = self._token
            if token is None or renew or time.monotonic() >= self._token_refresh_at:
                token = await self._iam_token(stale=token)
            return {"Authorization": f"Bearer {token}"}
        return {}

    async def _login(self, *, stale: str | None) -> str:
        """POST /_session once for all concurrent requests whose cookie was ``stale``."""
        async with self._auth_lock:
            if self._cookie is not None and self._cookie != stale:
                return self._cookie  # another request logged in meanwhile
            try:
                login = {"name": self.target.username, "password": self.target.password}
                resp = await self._http.post(
                    "_session",
                    content=_dumps(login),
                    headers={"Content-Type": "application/json"},
                )
            except httpx.HTTPError as e:
                raise StorageError(f"couchdb: log in: {type(e).__name__}: {e}") from e
            if resp.status_code != 200:
                raise _error_for(resp, "log in (session auth)")
            if not self._remember_cookie(resp) or self._cookie is None:
                raise StorageError("couchdb: log in: the server sent no AuthSession cookie")
            return self._cookie

    def _remember_cookie(self, resp: httpx.Response) -> bool:
        """Keep a (re)issued AuthSession cookie: CouchDB refreshes it on ordinary responses."""
        for header in resp.headers.get_list("set-cookie"):
            name, _, rest = header.partition("=")
            if name.strip() == "AuthSession":
                value = rest.split(";", 1)[0].strip()
                if value:
                    self._cookie = value
                    return True
        return False

    async def _iam_token(self, *, stale: str | None) -> str:
        """Exchange the API key for a bearer token (IBM Cloud IAM), once for all waiters."""
        async with self._auth_lock:
            if (
                self._token is not None
                and self._token != stale
                and time.monotonic() < self._token_refresh_at
            ):
                return self._token
            try:
                resp = await self._iam_http.post(
                    self.target.iam_url,
                    data={
                        "grant_type": "urn:ibm:params:oauth:grant-type:apikey",
                        "apikey": self.target.apikey or "",
                    },
                    headers={"Accept": "application/json"},
                )
            except httpx.HTTPError as e:
                raise StorageError(f"couchdb: IAM token: {type(e).__name__}") from e
            if resp.status_code != 200:
                raise StorageError(f"couchdb: IAM token: HTTP {resp.status_code}")
            try:
                body = resp.json()
                token = str(body["access_token"])
                lifetime = float(body.get("expires_in", 3600))
            except (ValueError, KeyError, TypeError):
                raise StorageError("couchdb: IAM token: unexpected response") from None
            self._token = token
            self._token_refresh_at = time.monotonic() + lifetime * (1 - _IAM_REFRESH_SHARE)
            return token


def _retry_after(resp: httpx.Response, attempt: int) -> float:
    """Seconds to wait after a 429: the server's ``Retry-After``, else 0.1 s doubling."""
    try:
        wait = float(resp.headers.get("retry-after", ""))
    except ValueError:
        wait = 0.1 * 2 ** (attempt - 1)
    return min(max(wait, 0.0), _THROTTLE_MAX_WAIT)


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
