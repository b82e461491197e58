"""notary-server's HTTP API as an ASGI application (Starlette).

Paths are parsed by hand rather than by a router: a GUN may contain ``/``
and so may a delegated role, and notary-server resolves
``<role>.<hex>.json`` before ``<version>.<role>.json`` before
``<role>.json``. One explicit parser keeps that order obvious.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response
from starlette.types import Receive, Scope, Send

from vouch.server.errors import JSON_TYPE, error_response
from vouch.server.gun import InvalidGunError, check_gun, check_role
from vouch.server.multipart import MalformedUploadError, NoFilenameError, parse_update
from vouch.server.service import NotFoundError, SigningUnavailableError, TrustService
from vouch.storage.base import StorageError, StoredFile, VersionConflictError
from vouch.tuf import roles
from vouch.tuf.canonical import loads
from vouch.tuf.errors import FormatError
from vouch.tuf.publish import UpdateError

log = logging.getLogger("vouch.server")

TEXT_TYPE = "text/plain; charset=utf-8"
_BY_HASH = re.compile(
    r"(?P<role>.+)\.(?P<hex>[0-9a-fA-F]{64}|[0-9a-fA-F]{96}|[0-9a-fA-F]{128})\.json\Z"
)
_BY_VERSION = re.compile(r"(?P<version>[1-9]*[0-9]+)\.(?P<role>.+)\.json\Z")
_CURRENT = re.compile(r"(?P<role>.+)\.json\Z")
_KEY = re.compile(r"(?P<role>timestamp|snapshot)\.key\Z")
_ROLE = re.compile(r"(?:root|targets(?:/[^/\s]+)*|snapshot|timestamp)\Z")
_GO_INT = re.compile(r"[+-]?[0-9]+\Z")
MAX_INT32 = 2**31 - 1


class Authorizer(Protocol):
    """Decides whether a request may proceed; returns a 401 response if not."""

    def check(self, request: Request, kind: str, gun: str | None) -> Response | None: ...


@dataclass
class HTTPSettings:
    current_max_age: int = 300
    consistent_max_age: int = 2_592_000
    max_upload_bytes: int = 100 * 1024 * 1024
    gun_prefixes: tuple[str, ...] = ()


def _cache_control(max_age: int, *, current: bool) -> dict[str, str]:
    if max_age <= 0:
        return {"Cache-Control": "max-age=0, no-cache, no-store", "Pragma": "no-cache"}
    value = f"public, max-age={max_age}, s-maxage={max_age}"
    return {"Cache-Control": value + (", must-revalidate" if current else "")}


@functools.lru_cache(maxsize=8192)
def _http_date(when: datetime) -> str:
    # notary-server writes Go's RFC 1123 with the zone's name: "UTC", not "GMT".
    # Memoised: the same few current files are served over and over.
    return when.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vouch_server_http_requests",
            "Requests by operation and status",
            ["operation", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vouch_server_http_request_duration_seconds",
            "Request latency by operation",
            ["operation"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.updates = Counter(
            "vouch_server_updates", "Publishes by result", ["result"], registry=self.registry
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def exposition(self) -> bytes:
        """The text format; with several workers, summed over all of them."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    def record(self, op: str, status: int, seconds: float) -> None:
        """Count one request; the labelled children are looked up once per (op, status)."""
        pair = self._children.get((op, status))
        if pair is None:
            pair = (self.requests.labels(op, str(status)), self.latency.labels(op))
            self._children[(op, status)] = pair
        pair[0].inc()
        pair[1].observe(seconds)


def build_app(
    service: TrustService,
    *,
    settings: HTTPSettings | None = None,
    authorizer: Authorizer | None = None,
) -> TrustApp:
    cfg = settings or HTTPSettings()
    metrics = Metrics()

    def allowed_gun(gun: str) -> bool:
        return not cfg.gun_prefixes or any(gun.startswith(p) for p in cfg.gun_prefixes)

    def deny(request: Request, kind: str, gun: str | None) -> Response | None:
        return authorizer.check(request, kind, gun) if authorizer is not None else None

    def metadata(file: StoredFile, *, current: bool) -> Response:
        headers = _cache_control(
            cfg.current_max_age if current else cfg.consistent_max_age, current=current
        )
        headers["Last-Modified"] = _http_date(file.updated_at if current else file.created_at)
        return Response(file.data, media_type=TEXT_TYPE, headers=headers)

    async def fetch(op: str, gun: str, role: str, arg: str) -> StoredFile:
        """The file a metadata GET names (raises :class:`NotFoundError`)."""
        if op == "GetRoleByHash":
            if len(arg) != 64 or arg != arg.lower():
                raise NotFoundError(role)
            return await service.get_checksum(gun, role, arg)
        if op == "GetRoleByVersion":
            digits = arg.lstrip("0")  # Go parses "007" as 7
            if len(digits) > 19:  # past any 64-bit version (and Python's int parsing limit)
                raise NotFoundError(role)
            version = int(digits or "0")
            if version < 1:
                raise NotFoundError(role)
            return await service.get_version(gun, role, version)
        return await service.get_current(gun, role)

    async def get_tuf(request: Request, gun: str, name: str) -> tuple[str, Response]:
        key = _KEY.match(name)
        if key:
            if denied := deny(request, "key_get", gun):
                return "GetKey", denied
            k = await service.get_key(gun, key["role"])
            return "GetKey", _key_response(k)
        route = _metadata_route(name)
        if route is None:
            return "NotFound", unrouted(request)
        op, role, arg = route
        if denied := deny(request, "metadata_get", gun):
            return op, denied
        try:
            file = await fetch(op, gun, role, arg)
        except NotFoundError:
            return op, error_response("METADATA_NOT_FOUND", {})
        return op, metadata(file, current=op == "GetRole")

    def unrouted(request: Request) -> Response:
        # notary-server's catch-all: any request no route matches needs the
        # catalog scope before it learns that nothing is there.
        return deny(request, "catalog", None) or error_response("METADATA_NOT_FOUND")

    async def post_update(request: Request, gun: str) -> Response:
        if not allowed_gun(gun):
            return error_response(
                "INVALID_GUN", f"Require GUNs with prefix: [{' '.join(cfg.gun_prefixes)}]"
            )
        if denied := deny(request, "update", gun):
            return denied
        body = await _read_body(request, cfg.max_upload_bytes)
        if body is None:
            return error_response("TOO_LARGE")
        try:
            uploads = parse_update(body, request.headers.get("content-type", ""))
        except NoFilenameError:
            return error_response("NO_FILENAME")
        except MalformedUploadError as exc:
            return error_response("MALFORMED_UPLOAD", str(exc))
        documents: dict[str, Any] = {}
        for role, data in uploads.items():
            try:
                check_role(role)
            except InvalidGunError:
                return error_response("INVALID_ROLE", role)
            doc = _well_formed(data)
            if doc is None:
                return error_response("MALFORMED_JSON", {})
            documents[role] = doc
        try:
            await service.update(gun, uploads, documents=documents)
        except UpdateError as exc:
            metrics.updates.labels("invalid").inc()
            return error_response("INVALID_UPDATE", exc.detail())
        except VersionConflictError:
            metrics.updates.labels("version").inc()
            return error_response("VERSION", {})
        except SigningUnavailableError as exc:
            log.warning("publish to %s needs a signature the key service cannot give: %s", gun, exc)
            metrics.updates.labels("unavailable").inc()
            return error_response("UNAVAILABLE", str(exc))
        metrics.updates.labels("ok").inc()
        return Response(b"", media_type=TEXT_TYPE)

    async def dispatch(request: Request) -> Response:
        path = _path(request)
        method = request.method
        if path == "/_notary_server/health" and method == "GET":
            return await health()
        if path == "/metrics" and method == "GET":
            return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
        if path == "/v2/" and method == "GET":
            return deny(request, "catalog", None) or Response(b"{}", media_type=TEXT_TYPE)
        if path == "/v2/_trust/changefeed" and method == "GET":
            return deny(request, "catalog", None) or await changefeed(request, None)
        if method not in ("GET", "POST", "DELETE", "PUT", "HEAD"):
            return Response(b"", status_code=405)
        if not path.startswith("/v2/"):
            return unrouted(request)
        rest = path[4:]
        if "/_trust/tuf/" in rest:
            gun, _, name = rest.partition("/_trust/tuf/")
        elif rest.endswith("/_trust/changefeed"):
            gun, name = rest[: -len("/_trust/changefeed")], None
        else:
            return unrouted(request)
        try:
            check_gun(gun)
        except InvalidGunError as exc:
            if method == "POST" and name == "":
                return error_response("INVALID_GUN", str(exc))
            return unrouted(request)
        if name is None:
            if method != "GET" or not allowed_gun(gun):
                return unrouted(request)
            return deny(request, "changefeed_gun", gun) or await changefeed(request, gun)
        if not allowed_gun(gun) and not (method == "POST" and name == ""):
            return unrouted(request)
        if name == "":
            if method == "POST":
                return await post_update(request, gun)
            if method == "DELETE":
                if denied := deny(request, "delete", gun):
                    return denied
                await service.delete(gun)
                return Response(b"", media_type=TEXT_TYPE)
            return unrouted(request)
        if method == "POST" and (key := _KEY.match(name)):
            if denied := deny(request, "key_rotate", gun):
                return denied
            return _key_response(await service.rotate_key(gun, key["role"]))
        if method != "GET":
            return unrouted(request)
        _, response = await get_tuf(request, gun, name)
        return response

    async def changefeed(request: Request, gun: str | None) -> Response:
        params = request.query_params
        raw_records = params.get("records", "")
        try:
            records = _parse_int32(raw_records)
        except ValueError as exc:
            return error_response("INVALID_PARAMETERS", f"invalid records parameter: {exc}")
        raw_id = params.get("change_id", "")
        try:
            change_id = _parse_int32(raw_id) if raw_id else 0
        except ValueError:
            return error_response("INVALID_PARAMETERS", {})
        if records == 0:
            records = 100
        records = max(-1000, min(1000, records))
        if records < 0 and change_id == 0:
            change_id = -1
        changes = await service.store.changes(gun, change_id, records)
        body = {
            "count": len(changes),
            "records": [
                {
                    "ID": str(c.id),
                    "CreatedAt": c.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                    "GUN": c.gun,
                    "Version": c.version,
                    "SHA256": c.sha256,
                    "Category": c.category,
                }
                for c in changes
            ],
        }
        return Response(json.dumps(body).encode() + b"\n", media_type=JSON_TYPE)

    async def health() -> Response:
        failures: dict[str, str] = {}
        for name, check in (
            ("DB operational", service.store.check_health),
            ("Trust operational", service.keys.check_health),
        ):
            try:
                await asyncio.wait_for(check(), timeout=5)
            except Exception as exc:
                failures[name] = str(exc) or type(exc).__name__
        status = 503 if failures else 200
        return Response(
            json.dumps(failures).encode() + b"\n", status_code=status, media_type=JSON_TYPE
        )

    async def endpoint(request: Request) -> Response:
        start = time.perf_counter()
        op = _operation(request)
        try:
            response = await dispatch(request)
        except StorageError:
            log.exception("storage failure on %s %s", request.method, _path(request))
            response = error_response("UNKNOWN", {})
        except SigningUnavailableError as exc:
            response = error_response("UNAVAILABLE", str(exc))
        metrics.record(op, response.status_code, time.perf_counter() - start)
        return response

    # No routes: every path and method reaches dispatch (a route's regex would not
    # match a path holding a newline, and Starlette's own 405 and 404 carry bodies).
    app = Starlette()
    app.router.default = request_response(endpoint)
    app.state.metrics = metrics
    app.state.service = service

    current_cc = _header_pairs(_cache_control(cfg.current_max_age, current=True))
    consistent_cc = _header_pairs(_cache_control(cfg.consistent_max_age, current=False))
    text_type = TEXT_TYPE.encode()

    async def fast_get(scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve a metadata GET that succeeds without Starlette's objects; False: not here.

        The same checks as :func:`dispatch` and :func:`get_tuf`, in the same order;
        everything else (errors, denials, keys, other routes) takes the general path.
        """
        path: str = scope["path"]
        if not path.startswith("/v2/") or not path.endswith(".json"):
            return False
        gun, sep, name = path[4:].partition("/_trust/tuf/")
        route = _metadata_route(name) if sep else None
        if route is None or not allowed_gun(gun):
            return False
        try:
            check_gun(gun)
        except InvalidGunError:
            return False
        op, role, arg = route
        start = time.perf_counter()
        if authorizer is not None:
            denied = authorizer.check(Request(scope), "metadata_get", gun)
            if denied is not None:  # answered here: asking twice would log the refusal twice
                await denied(scope, receive, send)
                metrics.record(op, denied.status_code, time.perf_counter() - start)
                return True
        try:
            file = await fetch(op, gun, role, arg)
        except (NotFoundError, StorageError, SigningUnavailableError):
            return False  # answered (and counted) by the general path
        current = op == "GetRole"
        modified = _http_date(file.updated_at if current else file.created_at)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    *(current_cc if current else consistent_cc),
                    (b"last-modified", modified.encode()),
                    (b"content-length", str(len(file.data)).encode()),
                    (b"content-type", text_type),
                ],
            }
        )
        await send({"type": "http.response.body", "body": file.data})
        metrics.record(op, 200, time.perf_counter() - start)
        return True

    return TrustApp(app, fast_get)


class TrustApp:
    """The ASGI app: metadata GETs that succeed take a short path, the rest Starlette.

    A GET of current or content-addressed metadata is nearly every request a
    trust server sees; Starlette's request, routing and response objects cost
    about as much as the look-up itself on a cached read.
    """

    def __init__(
        self, app: Starlette, fast_get: Callable[[Scope, Receive, Send], Awaitable[bool]]
    ) -> None:
        self.app = app
        self.state = app.state
        self._fast_get = fast_get

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and await self._fast_get(scope, receive, send)
        ):
            return
        await self.app(scope, receive, send)


def _header_pairs(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def _metadata_route(name: str) -> tuple[str, str, str] | None:
    """(operation, role, checksum or version or "") for a metadata file name, as
    notary-server resolves it: by hash before by version before current."""
    for op, pattern in (
        ("GetRoleByHash", _BY_HASH),
        ("GetRoleByVersion", _BY_VERSION),
        ("GetRole", _CURRENT),
    ):
        m = pattern.match(name)
        if m is None or not _ROLE.match(m["role"]):
            continue
        if op == "GetRoleByHash":
            return op, m["role"], m["hex"]
        if op == "GetRoleByVersion":
            return op, m["role"], m["version"]
        return op, m["role"], ""
    return None


def _path(request: Request) -> str:
    """The percent-decoded path as received. Not ``request.url.path``: that re-parses the
    path as a URL, which drops tabs and newlines (``a%09b`` would name GUN ``ab``)."""
    path: str = request.scope["path"]
    return path


def _parse_int32(text: str) -> int:
    """Go's ``strconv.ParseInt(text, 10, 32)``: ASCII digits, optional sign, nothing else."""
    quoted = json.dumps(text, ensure_ascii=False)
    if not _GO_INT.match(text):
        raise ValueError(f"strconv.ParseInt: parsing {quoted}: invalid syntax")
    digits = text.lstrip("+-").lstrip("0")
    out_of_range = ValueError(f"strconv.ParseInt: parsing {quoted}: value out of range")
    if len(digits) > 10:  # before int(): the text may be thousands of digits long
        raise out_of_range
    value = -int(digits or "0") if text.startswith("-") else int(digits or "0")
    if not -MAX_INT32 - 1 <= value <= MAX_INT32:
        raise out_of_range
    return value


def _operation(request: Request) -> str:
    path = _path(request)
    if "/_trust/tuf/" not in path:
        return "Changefeed" if path.endswith("/changefeed") else "Other"
    name = path.rsplit("/_trust/tuf/", 1)[1]
    if name == "":
        return "UpdateTUF" if request.method == "POST" else "DeleteTUF"
    if name.endswith(".key"):
        return "RotateKey" if request.method == "POST" else "GetKey"
    if _BY_HASH.match(name):
        return "GetRoleByHash"
    if _BY_VERSION.match(name):
        return "GetRoleByVersion"
    return "GetRole"


def _key_response(key: Any) -> Response:
    # Go struct order, not canonical: public before private.
    body = {"keytype": key.keytype, "keyval": {"public": key.public, "private": None}}
    return Response(json.dumps(body, separators=(",", ":")).encode(), media_type=JSON_TYPE)


def _well_formed(data: bytes) -> Any:
    """notary-server's MALFORMED_JSON check: parseable, with typed signed members.

    Returns the parsed document (handed on to validation, which would otherwise
    parse it again), or None if the upload is malformed."""
    try:
        doc = loads(data)
    except (FormatError, ValueError):  # ValueError: an integer literal over 4300 digits
        return None
    signed = doc.get("signed") if isinstance(doc, dict) else None
    if not isinstance(signed, dict):
        return None
    ok = (
        isinstance(signed.get("_type"), str)
        and isinstance(signed.get("expires"), str)
        and isinstance(signed.get("version"), int)
        and not isinstance(signed.get("version"), bool)
    )
    return doc if ok else None


async def _read_body(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length")
    if (
        declared is not None
        and declared.isdigit()
        and (
            len(declared) > 18 or int(declared) > limit  # no int() of a 5,000-digit header
        )
    ):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            return None
    return bytes(body)


Handler = Callable[[Request], Awaitable[Response]]
__all__ = ["Authorizer", "HTTPSettings", "build_app", "roles"]
