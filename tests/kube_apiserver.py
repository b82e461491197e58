"""A small Kubernetes API server for tests: real sockets, TLS, the real watch protocol.

No kube-apiserver is packaged for Debian, so the webhook's list/watch client
is tested against this one. It follows the API conventions a client relies
on (Kubernetes "API concepts"):

* collections at ``/api/v1[/namespaces/NS]/PLURAL`` and
  ``/apis/GROUP/VERSION[/namespaces/NS]/PLURAL``, objects under ``/NAME``;
  ``404`` with a ``Status`` body for resources that are not served (a CRD
  not installed) and objects that do not exist; ``401`` without the
  current bearer token;
* one global, increasing ``resourceVersion``; lists carry it in
  ``metadata.resourceVersion``, paginate with ``limit``/``continue`` at one
  snapshot, and filter with ``fieldSelector=metadata.name=…``; built-in
  kinds' list items have no ``kind``/``apiVersion``, custom ones do;
* ``?watch=1&resourceVersion=RV`` answers ``200`` with a chunked JSON stream,
  one event object per chunk and line (``ADDED``/``MODIFIED``/``DELETED``
  with the whole object), ``BOOKMARK`` events (only ``kind``, ``apiVersion``
  and ``metadata.resourceVersion``) when ``allowWatchBookmarks=true``, ends
  the stream cleanly after ``timeoutSeconds``; a version older than the
  compacted history gets an ``ERROR`` event with a ``410`` ``Expired`` Status.

Fault injection for the tests: drop every open watch connection mid-stream,
expire open watches (ERROR 410), compact the history, fail requests with a
status, hold list responses, and run a hook between a list's snapshot and
its response (an event arriving during a relist).
"""

from __future__ import annotations

import base64
import copy
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from vouch.server.devtls import ensure_dev_tls

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    group_version: str  # "v1" or "group/version"
    plural: str
    kind: str
    namespaced: bool

    @property
    def builtin(self) -> bool:
        return "/" not in self.group_version


TYPES = [
    ResourceType("v1", "secrets", "Secret", True),
    ResourceType("v1", "serviceaccounts", "ServiceAccount", True),
    ResourceType("apps/v1", "deployments", "Deployment", True),
    *(
        ResourceType(f"{group}/v1", plural, kind, kind == "ImagePolicy")
        for group in ("portieris.cloud.ibm.com", "policy.vouch.dev")
        for plural, kind in (
            ("imagepolicies", "ImagePolicy"),
            ("clusterimagepolicies", "ClusterImagePolicy"),
        )
    ),
]


@dataclass
class Event:
    rv: int
    rtype: ResourceType
    type: str
    obj: Obj


@dataclass
class WatchRecord:
    path: str
    params: dict[str, str]
    token: str


@dataclass
class Faults:
    fail_status: int | None = None  # every request fails with this status while set
    hold_lists: threading.Event | None = None  # lists wait for it
    # path -> a hook run once between a list's snapshot and its answer
    during_list: dict[str, Callable[[], None]] = field(default_factory=dict)


def status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class KubeAPIServer:
    """The store, its history, and the HTTPS server (start with ``with``)."""

    def __init__(
        self, tmp: Path, *, token: str = "token-1", bookmark_interval: float = 0.2
    ) -> None:
        self.tls = ensure_dev_tls(tmp / "apiserver-tls")
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.cond = threading.Condition()
        self.rv = 100
        self.compacted = 0  # watches from a version below this get 410
        self.objects: dict[tuple[ResourceType, str, str], Obj] = {}
        self.history: list[Event] = []
        self.served = {t for t in TYPES}
        self.faults = Faults()
        self.watches: list[WatchRecord] = []
        self.lists: list[WatchRecord] = []
        self.tokens_seen: list[str] = []
        self._snapshots: dict[int, list[Obj]] = {}
        self._drop = 0  # generation: open watches older than it are cut
        self._expire = 0
        self._httpd: ThreadingHTTPServer | None = None

    # -- the store ----------------------------------------------------------------

    def rtype(self, group_version: str, plural: str) -> ResourceType:
        return next(t for t in TYPES if (t.group_version, t.plural) == (group_version, plural))

    def _record(self, rtype: ResourceType, kind: str, obj: Obj) -> None:
        self.history.append(Event(self.rv, rtype, kind, copy.deepcopy(obj)))
        self.cond.notify_all()

    def put(self, obj: Obj) -> Obj:
        """Create or replace an object (as kubectl apply would)."""
        gv, kind = obj["apiVersion"], obj["kind"]
        rtype = next(t for t in TYPES if (t.group_version, t.kind) == (gv, kind))
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace", "") if rtype.namespaced else ""
        key = (rtype, ns, meta["name"])
        with self.cond:
            self.rv += 1
            old = self.objects.get(key)
            meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
            meta["resourceVersion"] = str(self.rv)
            self.objects[key] = obj
            self._record(rtype, "MODIFIED" if old else "ADDED", obj)
        return obj

    def secret(self, namespace: str, name: str, data: dict[str, bytes]) -> Obj:
        return self.put(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "type": "Opaque",
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
            }
        )

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "") -> None:
        rtype = next(t for t in TYPES if (t.group_version, t.kind) == (api_version, kind))
        with self.cond:
            obj = self.objects.pop((rtype, namespace if rtype.namespaced else "", name))
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._record(rtype, "DELETED", obj)

    def touch(self) -> None:
        """Advance the resourceVersion with a change elsewhere (another kind)."""
        self.put(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": f"unrelated-{self.rv}", "namespace": "other"},
            }
        )

    def compact(self) -> None:
        """Forget the history up to now, as etcd compaction does."""
        with self.cond:
            self.compacted = self.rv
            self.history = []

    def serve(self, group_version: str, plural: str, served: bool) -> None:
        """Install (or remove) a resource type, as creating a CRD does."""
        rtype = self.rtype(group_version, plural)
        with self.cond:
            (self.served.add if served else self.served.discard)(rtype)

    def drop_watches(self) -> None:
        """Cut every open watch connection without ending its stream."""
        with self.cond:
            self._drop += 1
            self.cond.notify_all()

    def expire_watches(self) -> None:
        """Send every open watch an ERROR event with a 410 Status."""
        with self.cond:
            self._expire += 1
            self.cond.notify_all()

    # -- the server -----------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"https://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> KubeAPIServer:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.server_cert, self.tls.server_key)
        handler = _handler(self)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.socket = context.wrap_socket(
            httpd.socket, server_side=True, do_handshake_on_connect=False
        )
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        assert self._httpd is not None
        self.drop_watches()
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- request handling (in the server's threads) ------------------------------------

    def route(self, path: str) -> tuple[ResourceType | None, str | None, str | None]:
        """(type, namespace, name) for a path; type None if no such resource."""
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            gv, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None, None, None
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not 1 <= len(rest) <= 2:
            return None, None, None
        try:
            rtype = self.rtype(gv, rest[0])
        except StopIteration:
            return None, None, None
        return rtype, namespace, rest[1] if len(rest) == 2 else None

    def matching(
        self, rtype: ResourceType, namespace: str | None, name: str | None, obj: Obj
    ) -> bool:
        meta = obj["metadata"]
        return (namespace is None or meta.get("namespace", "") == namespace) and (
            name is None or meta["name"] == name
        )

    def list_body(
        self, rtype: ResourceType, namespace: str | None, name: str | None, q: dict[str, str]
    ) -> tuple[int, Obj]:
        with self.cond:
            if "continue" in q:
                snap_rv, snap, offset = (int(x) for x in q["continue"].split(":"))
                if snap_rv < self.compacted or snap not in self._snapshots:
                    return 410, status(410, "Expired", "The provided continue parameter is too old")
                items = self._snapshots[snap]
            else:
                snap_rv, offset = self.rv, 0
                items = [
                    copy.deepcopy(obj)
                    for (t, _, _), obj in sorted(self.objects.items(), key=lambda kv: kv[0][1:])
                    if t == rtype and self.matching(rtype, namespace, name, obj)
                ]
                snap = len(self._snapshots)
                self._snapshots[snap] = items  # the pages of one list are one snapshot
        limit = int(q.get("limit", "0") or 0)
        page = copy.deepcopy(items[offset : offset + limit] if limit else items[offset:])
        more = limit and offset + limit < len(items)
        if rtype.builtin:
            for item in page:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        meta: Obj = {"resourceVersion": str(snap_rv)}
        if more:
            meta["continue"] = f"{snap_rv}:{snap}:{offset + limit}"
        return 200, {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.group_version,
            "metadata": meta,
            "items": page,
        }


def _field_name(q: dict[str, str]) -> str | None:
    selector = q.get("fieldSelector")
    if not selector:
        return None
    key, _, value = selector.partition("=")
    if key != "metadata.name":
        raise ValueError(f"unsupported field selector {selector}")
    return value


def _handler(api: KubeAPIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def _json(self, code: int, body: Obj) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            with api.cond:  # a drop or expiry from now on reaches this request too
                self.generation = (api._drop, api._expire)
            url = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            api.tokens_seen.append(token)
            if token != api.token:
                self._json(401, status(401, "Unauthorized", "Unauthorized"))
                return
            if api.faults.fail_status is not None:
                code = api.faults.fail_status
                self._json(code, status(code, "InternalError", "injected failure"))
                return
            rtype, namespace, name = api.route(url.path)
            if rtype is None or rtype not in api.served:
                self._json(
                    404, status(404, "NotFound", "the server could not find the requested resource")
                )
                return
            if name is not None:  # a get
                obj = api.objects.get((rtype, namespace or "", name))
                if obj is None:
                    self._json(404, status(404, "NotFound", f'{rtype.plural} "{name}" not found'))
                else:
                    self._json(200, obj)
                return
            try:
                name = _field_name(q)
            except ValueError as exc:
                self._json(400, status(400, "BadRequest", str(exc)))
                return
            record = WatchRecord(url.path, q, token)
            if q.get("watch") in ("1", "true"):
                api.watches.append(record)
                try:
                    self._watch(rtype, namespace, name, q)
                except OSError:  # the client went away (ssl.SSLError is one)
                    self.close_connection = True
                return
            api.lists.append(record)
            code, body = api.list_body(rtype, namespace, name, q)
            if api.faults.hold_lists is not None:
                api.faults.hold_lists.wait(30)
            hook = api.faults.during_list.pop(url.path, None)
            if hook is not None:
                hook()
            self._json(code, body)

        def _chunk(self, obj: Obj) -> None:
            data = json.dumps(obj).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _watch(
            self, rtype: ResourceType, namespace: str | None, name: str | None, q: dict[str, str]
        ) -> None:
            since = int(q.get("resourceVersion") or 0)
            bookmarks = q.get("allowWatchBookmarks") == "true"
            deadline = time.monotonic() + float(q.get("timeoutSeconds") or 1800)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            drop, expire = self.generation
            if since < api.compacted:
                message = f"too old resource version: {since} ({api.compacted})"
                self._chunk({"type": "ERROR", "object": status(410, "Expired", message)})
                self.wfile.write(b"0\r\n\r\n")
                return
            last_bookmark = time.monotonic()
            while True:
                with api.cond:
                    api.cond.wait(0.05)
                    if api._drop != drop:
                        # no final chunk: the client sees the stream cut off
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if api._expire != expire:
                        message = "The resourceVersion for the provided watch is too old."
                        events = [{"type": "ERROR", "object": status(410, "Expired", message)}]
                        expire = api._expire
                        done = True
                    else:
                        done = False
                        events = [
                            {"type": e.type, "object": e.obj}
                            for e in api.history
                            if e.rv > since
                            and e.rtype == rtype
                            and api.matching(rtype, namespace, name, e.obj)
                        ]
                        since = api.rv  # every matching event up to here is in `events`
                        current = api.rv
                for event in events:
                    self._chunk(event)
                if done:
                    self.wfile.write(b"0\r\n\r\n")
                    return
                now = time.monotonic()
                if bookmarks and now - last_bookmark >= api.bookmark_interval:
                    self._chunk(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": rtype.kind,
                                "apiVersion": rtype.group_version,
                                "metadata": {"resourceVersion": str(current)},
                            },
                        }
                    )
                    last_bookmark = now
                if now >= deadline:
                    self.wfile.write(b"0\r\n\r\n")  # the server's timeout: a clean end
                    self.wfile.flush()
                    return

    return Handler
