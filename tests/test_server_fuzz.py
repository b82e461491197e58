"""Fuzz and property-based tests of vouch server's update endpoint and routes, in process.

Requests go straight to the ASGI app (no HTTP client in between), so bodies, header values,
content types and percent-decoded paths reach the server exactly as generated, including
bytes a real HTTP stack might refuse first. Each example starts from a fresh in-memory
server (make_client) with one published repository; the property tests replay the same
signed uploads in every example (signatures are randomised), so hypothesis can shrink.

The properties, for every request:

* never a 5xx (a crash is reported with its traceback);
* an error is one of the documented codes (wire spec §5.3, plus vouch's 413), with its
  HTTP status and message, in the errcode JSON envelope ending in a newline;
* a refused update stores NOTHING: the changefeed and every current file are unchanged,
  and the unmutated valid update is still accepted afterwards (no version was used up);
* an accepted update stored exactly the uploaded bytes (last part wins per role), each
  signed by the keys root names for its role and not expired, plus one server timestamp
  that pins the current snapshot, and exactly one changefeed record.

Example counts are bounded so the whole file runs in well under
a minute (VOUCH_FUZZ_SCALE multiplies them).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import itertools
import json
import os
import re
import string
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from server_helpers import Publisher, make_client
from vouch.crypto.privkey import PrivateKey
from vouch.server.app import HTTPSettings, build_app
from vouch.server.service import TrustService
from vouch.tuf import roles
from vouch.tuf.keys import Key
from vouch.tuf.metadata import Metadata, Root, Targets, Timestamp

GUN = "example.com/fuzz/app"

#: notary-server's documented error codes (wire spec §5.3) and vouch's TOO_LARGE.
DOCUMENTED: dict[str, tuple[int, str]] = {
    "NO_STORAGE": (500, "The server is misconfigured and has no storage."),
    "NO_FILENAME": (400, "No file/role name provided."),
    "INVALID_ROLE": (400, "The role you are attempting to operate on is invalid."),
    "MALFORMED_JSON": (400, "JSON sent by the client could not be parsed by the server"),
    "UPDATING": (500, "An error has occurred while updating the TUF repository."),
    "VERSION": (400, "A newer version of metadata is already available."),
    "METADATA_NOT_FOUND": (404, "You have requested metadata that does not exist."),
    "INVALID_UPDATE": (400, "Update sent by the client is invalid."),
    "MALFORMED_UPLOAD": (400, "The body of your request is malformed."),
    "GENERIC_NOT_FOUND": (404, "You have requested a resource that does not exist."),
    "INVALID_GUN": (400, "The server does not support actions on images of this name."),
    "INVALID_PARAMETERS": (400, "The parameters provided are not valid."),
    "UNKNOWN": (500, "unknown error"),
    "UNAUTHORIZED": (401, "authentication required"),
    "TOO_LARGE": (413, "The request body is larger than the server accepts."),
}
#: What an update may be refused with.
UPDATE_CODES = frozenset(
    {
        "NO_FILENAME",
        "INVALID_ROLE",
        "MALFORMED_JSON",
        "VERSION",
        "INVALID_UPDATE",
        "MALFORMED_UPLOAD",
        "INVALID_GUN",
        "TOO_LARGE",
    }
)
#: What any route may answer with (no auth is configured in process).
ROUTE_CODES = UPDATE_CODES | {"METADATA_NOT_FOUND", "INVALID_PARAMETERS"}
JSON_TYPE = "application/json; charset=utf-8"
#: Router methods; anything else is a bare 405.
ROUTED_METHODS = frozenset({"GET", "POST", "DELETE", "PUT", "HEAD"})


def fuzz(examples: int) -> settings:
    """Bounded example counts, so the whole file stays well under a minute; set
    VOUCH_FUZZ_SCALE (e.g. 20) for a longer hunt."""
    return settings(
        max_examples=examples * int(os.environ.get("VOUCH_FUZZ_SCALE", "1")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- calling the ASGI app ------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks_read: int = 0

    def error(self) -> dict[str, Any]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict) and list(doc) == ["errors"], self
        assert isinstance(doc["errors"], list) and len(doc["errors"]) == 1, self
        err = doc["errors"][0]
        assert isinstance(err, dict), self
        return err

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.headers} {self.body[:3000]!r}"


async def call(
    app: Any,
    method: str,
    raw_path: str,
    *,
    body: bytes | Iterable[bytes] = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
    query: bytes = b"",
    content_length: bool = True,
) -> Reply:
    """One request, decoded the way uvicorn decodes it (``path`` is the unquoted ``raw_path``)."""
    hdrs = [(b"host", b"vouch.test"), *headers]
    if isinstance(body, bytes):
        if content_length:
            hdrs.append((b"content-length", str(len(body)).encode()))
        chunks: Iterator[bytes] = iter([body])
    else:
        chunks = iter(body)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("ascii"),
        "root_path": "",
        "query_string": query,
        "headers": hdrs,
        "client": ("127.0.0.1", 50000),
        "server": ("vouch.test", 80),
    }
    pending = next(chunks, None)
    finished = False
    read = 0
    status = 0
    out_headers: dict[str, str] = {}
    out = bytearray()

    async def receive() -> dict[str, Any]:
        nonlocal pending, finished, read
        if finished:
            await asyncio.sleep(3600)  # the client stays connected until the response
            return {"type": "http.disconnect"}
        chunk, pending = pending or b"", next(chunks, None)
        finished = pending is None
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": not finished}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            for k, v in message.get("headers", []):
                out_headers[k.decode("latin-1").lower()] = v.decode("latin-1")
        elif message["type"] == "http.response.body":
            out.extend(message.get("body", b""))

    try:
        await app(scope, receive, send)
    except Exception:
        # The server crashed; report it as the 500 a client would get, with the cause.
        return Reply(500, {}, traceback.format_exc().encode(), read)
    return Reply(status, out_headers, bytes(out), read)


# -- a repository to attack ----------------------------------------------------------------


@dataclass
class World:
    client: httpx.AsyncClient
    service: TrustService
    app: Any
    pub: Publisher
    #: A valid update as ordered (filename, bytes) parts.
    parts: list[tuple[str, bytes]]
    #: What the client published before (stale now), by role.
    published: dict[str, bytes] = dataclasses.field(default_factory=dict)


async def make_world(*, first: bool = False, gun: str = GUN) -> World:
    """A fresh server holding one published repository (unless ``first``) and a valid next
    update, with new keys.

    With ``first`` nothing is stored and the update is the first publish (root, targets,
    snapshot); otherwise it is targets v2 plus a client-signed snapshot v2.
    """
    client, service = make_client()
    pub = Publisher(gun)
    # The server's keys are fetched under a valid GUN, so that any GUN can be attacked.
    pub.gun = GUN
    await pub.init(client)
    pub.gun = gun
    pub.add("v1", b"one")
    pub.sign_root()
    pub.sign_targets(roles.TARGETS)
    if first:
        upload = pub.upload(roles.ROOT, roles.TARGETS)
        published = {}
    else:
        published = pub.upload(roles.ROOT, roles.TARGETS)
        resp = await pub.publish(client, published)
        assert resp.status_code == 200, resp.text
        pub.add("v2", b"two")
        pub.sign_targets(roles.TARGETS)
        upload = pub.upload(roles.TARGETS)
    app = client._transport.app  # type: ignore[attr-defined]
    return World(client, service, app, pub, list(upload.items()), published)


@dataclass
class Template:
    """One repository's uploads, signed once per process, so that hypothesis sees the same
    bytes for the same example (signatures are randomised) and can replay and shrink."""

    pub: Publisher
    service: TrustService
    initial: dict[str, bytes]
    following: dict[str, bytes]


_TEMPLATE: list[Template] = []


async def replay_world(*, first: bool = False) -> World:
    """Like :func:`make_world`, on a fresh store, but always with the same uploads (the
    server's keys live on in a shared key service)."""
    if not _TEMPLATE:
        w = await make_world(first=True)
        initial = dict(w.parts)
        w.pub.add("v2", b"two")
        w.pub.sign_targets(roles.TARGETS)
        following = w.pub.upload(roles.TARGETS)
        _TEMPLATE.append(Template(w.pub, w.service, initial, following))
        await w.client.aclose()
    tpl = _TEMPLATE[0]
    client, service = make_client()
    service.keys = tpl.service.keys
    app = client._transport.app  # type: ignore[attr-defined]
    w = World(client, service, app, tpl.pub, list(tpl.initial.items()))
    if not first:
        reply = await post_parts(w, named(w.parts))
        assert reply.status == 200, str(reply)
        w.parts = list(tpl.following.items())
        w.published = dict(tpl.initial)
    return w


Fingerprint = tuple[list[tuple[int, str, int, str, str]], dict[str, dict[str, tuple[int, str]]]]


async def fingerprint(service: TrustService, *guns: str) -> Fingerprint:
    """The whole changefeed and the current files of ``guns`` (every update adds a record)."""
    feed = [
        (c.id, c.gun, c.version, c.sha256, c.category)
        for c in await service.store.changes(None, 0, 1_000_000)
    ]
    state: dict[str, dict[str, tuple[int, str]]] = {}
    for gun in guns:
        current = (await service.store.get_state(gun)).current
        state[gun] = {role: (f.version, f.sha256) for role, f in current.items()}
    return feed, state


def boundary_for(parts: list[tuple[bytes | None, bytes]]) -> bytes:
    return hashlib.sha256(b"".join(d for _, d in parts)).hexdigest()[:60].encode()


def disposition(filename: str) -> bytes:
    return f'form-data; name="files"; filename="{filename}"'.encode()


def encode_parts(parts: list[tuple[bytes | None, bytes]], boundary: bytes) -> bytes:
    """A multipart body; each part is (raw Content-Disposition value or None, content)."""
    out = bytearray()
    for disp, data in parts:
        out += b"--" + boundary + b"\r\n"
        if disp is not None:
            out += b"Content-Disposition: " + disp + b"\r\n"
        out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    out += b"--" + boundary + b"--\r\n"
    return bytes(out)


def named(parts: list[tuple[str, bytes]]) -> list[tuple[bytes | None, bytes]]:
    return [(disposition(name), data) for name, data in parts]


async def post_parts(
    w: World,
    parts: list[tuple[bytes | None, bytes]],
    *,
    gun: str | None = None,
    content_type: str | None = None,
) -> Reply:
    boundary = boundary_for(parts)
    ctype = content_type or f"multipart/form-data; boundary={boundary.decode()}"
    return await call(
        w.app,
        "POST",
        f"/v2/{gun or w.pub.gun}/_trust/tuf/",
        body=encode_parts(parts, boundary),
        headers=[(b"content-type", ctype.encode("latin-1"))],
    )


# -- the oracle ----------------------------------------------------------------------------


def check_error(reply: Reply, allowed: frozenset[str]) -> dict[str, Any]:
    assert reply.status < 500, str(reply)
    assert reply.headers.get("content-type") == JSON_TYPE, str(reply)
    assert reply.body.endswith(b"\n"), str(reply)
    err = reply.error()
    assert err.get("code") in allowed, str(reply)
    assert (reply.status, err["message"]) == DOCUMENTED[err["code"]], str(reply)
    assert set(err) <= {"code", "message", "detail"}, str(reply)
    return err


def outcome_event(reply: Reply) -> None:
    """Tally outcomes for ``--hypothesis-show-statistics`` (is the fuzz reaching deep?)."""
    code = ""
    if reply.status >= 400 and reply.headers.get("content-type") == JSON_TYPE:
        code = json.loads(reply.body)["errors"][0]["code"]
    event(f"{reply.status} {code}".strip())


def clean_role_name(filename: str) -> str | None:
    """The role a plain filename names (no quoting or escaping involved), else None."""
    if any(c in filename for c in '"\\\r\n;') or not filename.isprintable():
        return None
    return filename.removesuffix(".json")


def _parses(data: bytes) -> bool:
    try:
        Metadata.from_bytes(data)
    except Exception:
        return False
    return True


async def check_accepted(
    w: World, before: Fingerprint, parts: Sequence[tuple[str | None, bytes]]
) -> None:
    """An accepted update stored exactly what was uploaded, all of it verified, atomically."""
    gun = w.pub.gun
    store = w.service.store
    feed_after, state_after = await fingerprint(w.service, gun)
    feed_before, state_before = before
    assert feed_after[: len(feed_before)] == feed_before
    new = feed_after[len(feed_before) :]
    assert [(c[1], c[4]) for c in new] == [(gun, "update")], new
    now = datetime.now(UTC)
    root_file = await store.get_current(gun, roles.ROOT)
    assert root_file is not None
    root = Metadata.from_bytes(root_file.data, Root).signed
    uploaded = {data for _, data in parts}
    # Strict: each role gets the last part that names it.
    if all(name is not None and clean_role_name(name) is not None for name, _ in parts):
        last = {clean_role_name(name): data for name, data in parts if name is not None}
        for role, data in last.items():
            if role == roles.TIMESTAMP:
                continue
            current = await store.get_current(gun, str(role))
            assert current is not None and current.data == data, f"{role} not stored verbatim"
    # Every file that changed came from the upload and verifies (timestamp: the server's).
    for role, (version, sha) in state_after[gun].items():
        if state_before.get(gun, {}).get(role) == (version, sha):
            continue
        current = await store.get_current(gun, role)
        assert current is not None
        md = Metadata.from_bytes(current.data)
        if role == roles.TIMESTAMP:
            assert current.sha256 == new[0][3]
            assert current.data not in uploaded, "the uploaded timestamp was stored"
        elif role != roles.SNAPSHOT or current.data in uploaded:
            assert current.data in uploaded, f"{role} changed to bytes nobody uploaded"
        if roles.is_delegation(role):
            parent_file = await store.get_current(gun, roles.parent_of(role))
            assert parent_file is not None
            parent = Metadata.from_bytes(parent_file.data, Targets).signed
            assert parent.delegations is not None
            spec = parent.delegations.role(role)
            assert spec is not None
            keys = {k: parent.delegations.keys[k] for k in spec.keyids}
            md.verified_keyids(keys, spec.threshold, role)
        else:
            md.verified_keyids(root.role_keys(role), root.roles[role].threshold, role)
        assert not md.signed.is_expired(now), role
    ts_file = await store.get_current(gun, roles.TIMESTAMP)
    snap_file = await store.get_current(gun, roles.SNAPSHOT)
    assert ts_file is not None and snap_file is not None
    ts = Metadata.from_bytes(ts_file.data, Timestamp)
    ts.signed.meta[roles.SNAPSHOT].verify(snap_file.data, roles.SNAPSHOT)
    if roles.ROOT in state_before.get(gun, {}):
        assert ts.signed.version == state_before[gun][roles.TIMESTAMP][0] + 1


async def check_outcome(
    w: World,
    reply: Reply,
    before: Fingerprint,
    parts: Sequence[tuple[str | None, bytes]],
    *,
    valid: list[tuple[str, bytes]] | None = None,
) -> None:
    """The update property; ``valid`` (the unmutated update) is replayed after a refusal."""
    outcome_event(reply)
    assert reply.status < 500, str(reply)
    if reply.status == 200:
        assert reply.body == b"", str(reply)
        await check_accepted(w, before, parts)
        return
    check_error(reply, UPDATE_CODES)
    assert await fingerprint(w.service, w.pub.gun) == before, f"refused but stored: {reply}"
    if valid is not None:
        again = await post_parts(w, named(valid))
        assert again.status == 200, f"the valid update was refused after {reply}: {again}"


# -- strategies ----------------------------------------------------------------------------

ROLE_FILENAMES = [
    "root",
    "targets",
    "snapshot",
    "timestamp",
    "root.json",
    "targets.json",
    "snapshot.json",
    "timestamp.json",
    "targets/releases",
]
BAD_FILENAMES = [
    "",
    ".",
    "..",
    ".json",
    "targets/../root",
    "../root",
    "../../../../etc/passwd",
    "TARGETS",
    "Root",
    "foo",
    "targets/",
    "targets//x",
    "targets/./x",
    "targets/a/../b",
    "/targets",
    "targets/ x",
    "targets/\u00e9",
    "targets/x\x00",
    "root\r\nX-Evil: 1",
    "snapshot.json.json",
    "timestamp.key",
    "targets\u2028",
    "targets/" + "a" * 300,
    "C:\\root",
    "\\\\server\\share\\targets",
    'tar"gets',
    "root;x",
    "\U0001f600",
]
filenames = st.one_of(
    st.sampled_from(ROLE_FILENAMES),
    st.sampled_from(BAD_FILENAMES),
    st.text(max_size=30),
    st.lists(
        st.sampled_from(["targets", "..", ".", "", "a", "x/y", "\u2028", "A"]), max_size=5
    ).map("/".join),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
TYPES = ["Root", "Targets", "Snapshot", "Timestamp", "root", "targets", "", "Other"]
EXPIRIES = ["2099-01-01T00:00:00Z", "2000-01-01T00:00:00Z", "2099-01-01T00:00:00.123+05:30", "x"]
shaped_docs = st.fixed_dictionaries(
    {
        "signed": st.fixed_dictionaries(
            {
                "_type": st.sampled_from(TYPES) | json_values,
                "version": st.sampled_from([1, 2, 0, -1, 2**53, 2**53 - 1]) | json_values,
                "expires": st.sampled_from(EXPIRIES) | json_values,
            },
            optional={
                "targets": json_values,
                "meta": json_values,
                "keys": json_values,
                "roles": json_values,
                "delegations": json_values,
            },
        ),
        "signatures": json_values
        | st.lists(
            st.fixed_dictionaries(
                {
                    "keyid": st.text(alphabet="0123456789abcdef", max_size=64) | json_values,
                    "method": st.sampled_from(["ecdsa", "ECDSA", "rsapss", "x"]) | json_values,
                    "sig": st.sampled_from(["", "AAAA", "!!"]) | json_values,
                }
            ),
            max_size=3,
        ),
    },
    optional={"extra": json_values},
)


def dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode(
        "utf-8", "surrogatepass"
    )


# Part contents: ("valid", i) is the i-th part of the world's valid update.
contents = st.one_of(
    st.tuples(st.just("valid"), st.integers(0, 10)),
    st.tuples(st.just("json"), json_values.map(dump)),
    st.tuples(st.just("shaped"), shaped_docs.map(dump)),
    st.tuples(st.just("bytes"), st.binary(max_size=300)),
)
# Mostly well-formed, so that most examples get past the filename check.
dispositions = st.one_of(
    st.just("quoted"),
    st.just("quoted"),
    st.just("quoted"),
    st.sampled_from(["quoted", "bare", "no-filename", "no-header", "star", "name-only"]),
)


def make_disposition(kind: str, filename: str) -> bytes | None:
    raw = filename.encode("utf-8", "surrogatepass")
    return {
        "quoted": b'form-data; name="files"; filename="' + raw + b'"',
        "bare": b"form-data; name=files; filename=" + raw,
        "no-filename": b'form-data; name="files"',
        "no-header": None,
        "star": b"form-data; name=files; filename*=UTF-8''" + quote(filename).encode(),
        "name-only": b"form-data; name=" + raw,
    }[kind]


def resolve(w: World, content: tuple[str, Any]) -> bytes:
    kind, value = content
    if kind == "valid":
        return w.parts[int(value) % len(w.parts)][1]
    assert isinstance(value, bytes)
    return value


# -- mutations of a valid upload ----------------------------------------------------------

VERSION_TEXTS = [
    "2.0",
    "2.5",
    "2e0",
    "1E400",
    "-1",
    "0",
    "02",
    "9007199254740992",
    "9007199254740991",
    "1" * 5000,
    "true",
    "null",
    '"2"',
    "[2]",
    "{}",
    "NaN",
    "-0",
]
version_values = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 2**31, 2**53 - 1, 2**53, 2**63, 2**64, 10**30]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.just([]),
    st.just({}),
)
SIG_VARIANTS = ["empty", "dup", "extra-field", "upper-method", "bad-keyid", "not-list", "int-entry"]
MEMBERS = [
    "signed",
    "signatures",
    "signed._type",
    "signed.expires",
    "signed.version",
    "signed.meta",
    "signed.targets",
    "signed.meta.root",
    "signed.meta.targets",
]
idx = st.integers(0, 100)
mutation_ops = st.one_of(
    st.tuples(st.just("flip"), idx, st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), idx, st.integers(0, 10**6)),
    st.tuples(st.just("drop"), idx),
    st.tuples(st.just("dup"), idx),
    st.tuples(st.just("garbage-before"), idx, st.binary(max_size=40)),
    st.tuples(st.just("garbage-after"), idx, st.binary(max_size=40)),
    st.tuples(st.just("rename"), idx, filenames),
    st.tuples(st.just("swap"), idx, idx),
    st.tuples(st.just("version"), idx, version_values),
    st.tuples(st.just("raw-version"), idx, st.sampled_from(VERSION_TEXTS)),
    st.tuples(st.just("signed-member"), idx, st.text(max_size=8), json_values),
    st.tuples(st.just("top-member"), idx, st.text(max_size=8), json_values),
    st.tuples(st.just("delete"), idx, st.sampled_from(MEMBERS)),
    st.tuples(st.just("sigs"), idx, st.sampled_from(SIG_VARIANTS)),
    st.tuples(st.just("type"), idx, st.sampled_from(TYPES)),
    st.tuples(st.just("stale"), idx),
    st.tuples(st.just("deep"), idx, st.integers(0, 10**4), json_values),
    st.tuples(
        st.just("deep-b64"), idx, st.integers(0, 10**4), st.integers(0, 10**4), st.integers(1, 255)
    ),
)


def _json_edit(data: bytes, edit: Any) -> bytes:
    try:
        doc = json.loads(data)
    except ValueError:
        return data  # an earlier mutation already broke it; nothing to edit
    if not isinstance(doc, dict):
        return data
    edit(doc)
    return dump(doc)


def _set_signed(doc: dict[str, Any], key: str, value: Any) -> None:
    signed = doc.get("signed")
    if isinstance(signed, dict):  # an earlier mutation may have replaced it
        signed[key] = value


def _delete(doc: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    node: Any = doc
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON document, containers included, in document order."""
    if path:
        yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, i))


def _deep_set(doc: dict[str, Any], which: int, value: Any) -> None:
    """Replace the ``which``-th node of the document (any depth) by ``value``."""
    found = list(_leaves(doc))
    if found:
        *parents, last = found[which % len(found)]
        node: Any = doc
        for p in parents:
            node = node[p]
        node[last] = value


def _deep_b64_flip(doc: dict[str, Any], which: int, pos: int, xor: int) -> None:
    """Flip a byte inside a base64 string (a certificate, signature or hash) and re-encode."""
    found = [
        path
        for path in _leaves(doc)
        if isinstance(v := _get(doc, path), str) and len(v) >= 8 and _b64(v) is not None
    ]
    if found:
        path = found[which % len(found)]
        raw = bytearray(_b64(_get(doc, path)) or b"")
        raw[pos % len(raw)] ^= xor
        _deep_set_path(doc, path, base64.b64encode(bytes(raw)).decode())


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _deep_set_path(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True) or None
    except ValueError:
        return None


def _sigs(doc: dict[str, Any], variant: str) -> None:
    sigs = doc.get("signatures")
    sigs = sigs if isinstance(sigs, list) else []
    first = sigs[0] if sigs and isinstance(sigs[0], dict) else None
    if variant == "empty":
        doc["signatures"] = []
    elif variant == "not-list":
        doc["signatures"] = {"keyid": "x"}
    elif variant == "int-entry":
        doc["signatures"] = [7]
    elif first is None:
        return
    elif variant == "dup":
        doc["signatures"] = [*sigs, dict(first)]
    elif variant == "extra-field":
        first["extra"] = "x"
    elif variant == "upper-method":
        first["method"] = str(first.get("method", "")).upper()
    elif variant == "bad-keyid":
        first["keyid"] = "0" * 64


def mutate(
    parts: list[tuple[str, bytes]],
    ops: list[tuple[Any, ...]],
    stale: dict[str, bytes] | None = None,
) -> list[tuple[str, bytes]]:
    """Apply mutation ops in order; ``stale`` holds earlier, already stored files by role."""
    out = list(parts)
    for op in ops:
        if not out:
            break
        kind, i = op[0], op[1] % len(out)
        name, data = out[i]
        if kind == "flip" and data:
            pos = op[2] % len(data)
            data = data[:pos] + bytes([data[pos] ^ op[3]]) + data[pos + 1 :]
        elif kind == "truncate":
            data = data[: op[2] % (len(data) + 1)]
        elif kind == "drop":
            del out[i]
            continue
        elif kind == "dup":
            out.append((name, data))
            continue
        elif kind == "garbage-before":
            out.insert(i, (name, op[2]))
            continue
        elif kind == "garbage-after":
            out.append((name, op[2]))
            continue
        elif kind == "rename":
            name = op[2]
        elif kind == "swap":
            j = op[2] % len(out)
            out[i], out[j] = out[j], out[i]
            continue
        elif kind == "version":
            data = _json_edit(data, lambda d, v=op[2]: _set_signed(d, "version", v))
        elif kind == "raw-version":
            data = re.sub(rb'"version":-?\d+', b'"version":' + op[2].encode(), data, count=1)
        elif kind == "signed-member":
            data = _json_edit(data, lambda d, k=op[2], v=op[3]: _set_signed(d, k, v))
        elif kind == "top-member":
            data = _json_edit(data, lambda d, k=op[2], v=op[3]: d.__setitem__(k, v))
        elif kind == "delete":
            data = _json_edit(data, lambda d, p=op[2]: _delete(d, p))
        elif kind == "sigs":
            data = _json_edit(data, lambda d, v=op[2]: _sigs(d, v))
        elif kind == "type":
            data = _json_edit(data, lambda d, t=op[2]: _set_signed(d, "_type", t))
        elif kind == "stale":
            data = (stale or {}).get(name.removesuffix(".json"), data)
        elif kind == "deep":
            data = _json_edit(data, lambda d, n=op[2], v=op[3]: _deep_set(d, n, v))
        elif kind == "deep-b64":
            data = _json_edit(data, lambda d, o=op: _deep_b64_flip(d, o[2], o[3], o[4]))
        out[i] = (name, data)
    return out


# -- property tests ------------------------------------------------------------------------

content_type_kinds = st.sampled_from(
    [
        "none",
        "right",
        "quoted",
        "upper",
        "no-space",
        "extra-param",
        "charset-first",
        "empty-boundary",
        "no-boundary",
        "mixed",
        "text",
        "json",
        "twice",
        "random",
    ]
)
boundaries = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + "'()+_,-./:=? \"", max_size=80),
    st.integers(0, 400).map(lambda n: "b" * n),
    st.text(alphabet=st.characters(max_codepoint=255), max_size=30),
)


def content_type(kind: str, boundary: str, noise: str) -> str | None:
    return {
        "none": None,
        "right": f"multipart/form-data; boundary={boundary}",
        "quoted": f'multipart/form-data; boundary="{boundary}"',
        "upper": f"MULTIPART/Form-Data; BOUNDARY={boundary}",
        "no-space": f"multipart/form-data;boundary={boundary}",
        "extra-param": f"multipart/form-data; boundary={boundary}; x=y",
        "charset-first": f"multipart/form-data; charset=utf-8; boundary={boundary}",
        "empty-boundary": "multipart/form-data; boundary=",
        "no-boundary": "multipart/form-data",
        "mixed": f"multipart/mixed; boundary={boundary}",
        "text": "text/plain",
        "json": "application/json",
        "twice": f"multipart/form-data; boundary={noise}; boundary={boundary}",
        "random": noise,
    }[kind]


bodies = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=2048)),
    st.tuples(st.just("framed"), st.binary(max_size=300)),
    st.tuples(st.just("valid"), st.none()),
    st.tuples(st.just("valid-truncated"), st.integers(0, 10**5)),
)


@fuzz(300)
@given(
    body=bodies,
    kind=content_type_kinds,
    boundary=boundaries,
    noise=st.text(alphabet=st.characters(max_codepoint=255), max_size=40),
    first=st.booleans(),
)
def test_arbitrary_bodies_and_content_types(
    body: tuple[str, Any], kind: str, boundary: str, noise: str, first: bool
) -> None:
    """Any body under any content type: a documented 4xx and nothing stored, or a valid
    update that was stored whole."""

    async def run() -> None:
        w = await replay_world(first=first)
        bnd = boundary.encode("latin-1")
        parts: list[tuple[str | None, bytes]] = []
        what, value = body
        if what == "bytes":
            raw = value
        elif what == "framed":
            raw = b"--" + bnd + b"\r\n" + value + b"\r\n--" + bnd + b"--\r\n"
        else:
            raw = encode_parts(named(w.parts), bnd)
            parts = list(w.parts)
            if what == "valid-truncated":
                raw = raw[: value % (len(raw) + 1)]
        ctype = content_type(kind, boundary, noise)
        headers = [] if ctype is None else [(b"content-type", ctype.encode("latin-1"))]
        before = await fingerprint(w.service, w.pub.gun)
        reply = await call(w.app, "POST", f"/v2/{GUN}/_trust/tuf/", body=raw, headers=headers)
        await check_outcome(w, reply, before, parts, valid=w.parts)
        await w.client.aclose()

    asyncio.run(run())


@fuzz(500)
@given(
    spec=st.lists(st.tuples(dispositions, filenames, contents), max_size=5),
    first=st.booleans(),
)
def test_arbitrary_multipart_parts(
    spec: list[tuple[str, str, tuple[str, Any]]], first: bool
) -> None:
    """Random parts: filenames with slashes, ``..``, unicode, quotes, empty; JSON, non-JSON
    and metadata-shaped content, mixed with the parts of a valid update."""

    async def run() -> None:
        w = await replay_world(first=first)
        raw_parts = [(make_disposition(d, name), resolve(w, c)) for d, name, c in spec]
        oracle: list[tuple[str | None, bytes]] = [
            (name if d in ("quoted", "bare") else None, resolve(w, c)) for d, name, c in spec
        ]
        before = await fingerprint(w.service, w.pub.gun)
        reply = await post_parts(w, raw_parts)
        await check_outcome(w, reply, before, oracle, valid=w.parts)
        await w.client.aclose()

    asyncio.run(run())


@fuzz(800)
@given(ops=st.lists(mutation_ops, min_size=1, max_size=3), first=st.booleans())
def test_mutated_valid_uploads(ops: list[tuple[Any, ...]], first: bool) -> None:
    """A valid signed update with bytes flipped, parts dropped, duplicated, renamed or
    reordered, members retyped (version as string, float, huge, negative, bool), added
    outside ``signed`` or removed, signatures mangled, or truncated."""

    async def run() -> None:
        w = await replay_world(first=first)
        mutated = mutate(w.parts, ops, w.published)
        before = await fingerprint(w.service, w.pub.gun)
        reply = await post_parts(w, named(mutated))
        await check_outcome(w, reply, before, list(mutated), valid=w.parts)
        await w.client.aclose()

    asyncio.run(run())


SEGMENT_CHARS = string.ascii_letters + string.digits + "-._~:@+!$&'()*,;="
percent_bytes = st.binary(min_size=1, max_size=3).map(lambda b: "".join(f"%{x:02X}" for x in b))
segments = st.lists(
    st.one_of(
        st.text(alphabet=SEGMENT_CHARS, max_size=10),
        percent_bytes,
        st.sampled_from(["..", ".", "", "%2e%2e", "%2E", "%2F", "%00", "%0A", "%2A", "*", "%3F"]),
    ),
    max_size=4,
).map("".join)
guns = st.one_of(
    st.just(GUN),
    st.sampled_from(
        [
            GUN,
            quote(GUN, safe=""),
            GUN.replace("/", "%2F"),
            GUN.upper(),
            GUN + "/",
            "/" + GUN,
            GUN + "/..",
            GUN + "/../app",
            "example.com/fuzz/%2e%2e/fuzz/app",
            "",
            "x" * 255,
            "x" * 256,
            "a/" * 127 + "a",
            "a/" * 128 + "a",
            "%00",
            "a%0Ab",
            "a%7Fb",
            "_trust",
            "_trust/tuf",
            "v2",
        ]
    ),
    st.lists(segments, max_size=5).map("/".join),
    st.integers(240, 400).map(lambda n: "g" * n),
)
suffixes = st.one_of(
    st.sampled_from(
        [
            "/_trust/tuf/",
            "/_trust/tuf",
            "/_trust/tuf//",
            "/_trust/tuf/root.json",
            "/_trust/tuf/rootx.json",
            "/_trust/tuf/1.root.json",
            "/_trust/tuf/0.root.json",
            "/_trust/tuf/01.targets.json",
            "/_trust/tuf/99999999999999999999999.root.json",
            "/_trust/tuf/root." + "a" * 64 + ".json",
            "/_trust/tuf/root." + "A" * 64 + ".json",
            "/_trust/tuf/timestamp.json",
            "/_trust/tuf/snapshot.json",
            "/_trust/tuf/timestamp.key",
            "/_trust/tuf/snapshot.key",
            "/_trust/tuf/root.key",
            "/_trust/tuf/targets/releases.json",
            "/_trust/tuf/targets/../root.json",
            "/_trust/tuf/%2e%2e/root.json",
            "/_trust/tuf/targets%2Freleases.json",
            "/_trust/tuf/%3Fx",
            "/_trust/changefeed",
            "/_trust/changefeed/",
            "",
        ]
    ),
    segments.map(lambda s: "/_trust/tuf/" + s),
    segments.map(lambda s: "/" + s),
)
paths = st.one_of(
    suffixes.map(lambda s: f"/v2/{GUN}{s}"),
    st.tuples(guns, suffixes).map(lambda t: f"/v2/{t[0]}{t[1]}"),
    segments.map(lambda s: "/" + s),
    st.sampled_from(
        [
            "/",
            "/v2",
            "/v2/",
            "//v2//",
            "/v2/_trust/changefeed",
            "/_notary_server/health",
            "/metrics",
            "/v1/" + GUN + "/_trust/tuf/",
        ]
    ),
)
NUMBERS = [
    "",
    "0",
    "1",
    "-1",
    "+1",
    "1_0",
    " 1",
    "1 ",
    "\u0661",
    "1e3",
    "0x10",
    "2147483647",
    "2147483648",
    "-2147483649",
    "99999999999999999999",
    "1" * 5000,
    "abc",
]
queries = st.one_of(
    st.just(""),
    st.tuples(
        st.sampled_from(NUMBERS) | st.text(max_size=6),
        st.sampled_from(NUMBERS) | st.text(max_size=6),
    ).map(lambda t: f"records={quote(t[0])}&change_id={quote(t[1])}"),
    st.text(alphabet=string.printable, max_size=30).map(lambda q: quote(q, safe="=&")),
)
methods = st.one_of(
    st.sampled_from(["GET", "POST"]),
    st.sampled_from(["GET", "POST", "DELETE", "PUT", "HEAD", "PATCH", "OPTIONS", "TRACE"]),
)


@fuzz(600)
@given(method=methods, raw_path=paths, query=queries)
def test_random_routes(method: str, raw_path: str, query: str) -> None:
    """Any method on any path (percent-encoded, very long, control characters, traversal)
    with any query: never a 5xx, errors documented, and metadata changes only through the
    update or delete route of the repository itself."""

    async def run() -> None:
        w = await replay_world()
        body = encode_parts(named(w.parts), b"fuzzboundary")
        headers = [(b"content-type", b"multipart/form-data; boundary=fuzzboundary")]
        before = await fingerprint(w.service, w.pub.gun)
        reply = await call(
            w.app, method, raw_path, body=body, headers=headers, query=query.encode("ascii")
        )
        outcome_event(reply)
        assert reply.status < 500, str(reply)
        if reply.status == 405:
            assert method not in ROUTED_METHODS and reply.body == b"", str(reply)
        elif reply.status >= 400:
            err = check_error(reply, ROUTE_CODES)
            if err["code"] == "INVALID_PARAMETERS":
                assert "changefeed" in raw_path, str(reply)
        update_path = f"/v2/{GUN}/_trust/tuf/"
        if unquote(raw_path) == update_path and method == "POST":
            await check_outcome(w, reply, before, list(w.parts))
        elif unquote(raw_path) == update_path and method == "DELETE":
            assert reply.status == 200, str(reply)
            feed, state = await fingerprint(w.service, GUN)
            assert state[GUN] == {} and feed[-1][1:] == (GUN, 0, "", "deletion")
        else:
            assert await fingerprint(w.service, GUN) == before, str(reply)
            if reply.status == 200 and raw_path.endswith(".json"):
                assert _parses(reply.body), str(reply)
        await w.client.aclose()

    asyncio.run(run())


def _valid_gun(gun: str) -> bool:
    """vouch's GUN rule, restated: 1-255 characters of [A-Za-z0-9._-/:@+~], clean segments."""
    return (
        0 < len(gun) <= 255
        and re.fullmatch(r"[A-Za-z0-9._\-/:@+~]+", gun) is not None
        and all(seg not in ("", ".", "..") for seg in gun.split("/"))
    )


@fuzz(30)
@given(
    gun=st.text(alphabet="abAB09._-/:@+~%* \u00e9", min_size=1, max_size=60),
    encode=st.booleans(),
)
def test_first_publish_for_random_guns(gun: str, encode: bool) -> None:
    """A whole first publish to a random GUN (sent raw or percent-encoded) is accepted
    exactly when the GUN is valid; then its files are served under that GUN."""

    async def run() -> None:
        w = await make_world(first=True, gun=gun)
        raw = quote(gun, safe="") if encode else quote(gun, safe="/:@+~*")
        before = await fingerprint(w.service, gun)
        boundary = boundary_for(named(w.parts))
        reply = await call(
            w.app,
            "POST",
            f"/v2/{raw}/_trust/tuf/",
            body=encode_parts(named(w.parts), boundary),
            headers=[(b"content-type", b"multipart/form-data; boundary=" + boundary)],
        )
        if not _valid_gun(gun):
            check_error(reply, frozenset({"INVALID_GUN"}))
            assert await fingerprint(w.service, gun) == before
        else:
            assert reply.status == 200, str(reply)
            await check_accepted(w, before, list(w.parts))
            root = await call(w.app, "GET", f"/v2/{raw}/_trust/tuf/root.json")
            assert root.status == 200 and root.body == dict(w.parts)[roles.ROOT]
        await w.client.aclose()

    asyncio.run(run())


# -- specific bad inputs -------------------------------------------------------------------

pytest_anyio = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _refused(w: World, reply: Reply, before: Fingerprint, code: str) -> dict[str, Any]:
    err = check_error(reply, frozenset({code}))
    assert await fingerprint(w.service, w.pub.gun) == before
    return err


def _chunks(count: int, size: int, counter: list[int]) -> Iterator[bytes]:
    block = b"x" * size
    for _ in range(count):
        counter[0] += 1
        yield block


@pytest_anyio
async def test_huge_part_is_413_and_not_read_to_the_end() -> None:
    """A part over the default 100 MiB limit, streamed without a Content-Length."""
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    mib = 1024 * 1024
    counter = [0]
    head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="targets"\r\n\r\n'
    reply = await call(
        w.app,
        "POST",
        f"/v2/{GUN}/_trust/tuf/",
        body=itertools.chain([head], _chunks(200, mib, counter)),
        headers=[(b"content-type", b"multipart/form-data; boundary=b")],
    )
    assert reply.status == 413
    await _refused(w, reply, before, "TOO_LARGE")
    assert counter[0] <= 101, "the server kept reading past its limit"


@pytest_anyio
async def test_declared_length_over_limit_is_413_before_reading() -> None:
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    reply = await call(
        w.app,
        "POST",
        f"/v2/{GUN}/_trust/tuf/",
        body=b"",
        content_length=False,
        headers=[
            (b"content-type", b"multipart/form-data; boundary=b"),
            (b"content-length", str(100 * 1024 * 1024 + 1).encode()),
        ],
    )
    await _refused(w, reply, before, "TOO_LARGE")
    assert reply.chunks_read == 0


@pytest_anyio
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
async def test_limit_is_inclusive(declared: bool) -> None:
    """A body of exactly the limit is read and accepted; one byte more is 413."""
    w = await make_world(first=True)
    body = encode_parts(named(w.parts), b"limitboundary")
    headers = [(b"content-type", b"multipart/form-data; boundary=limitboundary")]
    before = await fingerprint(w.service, GUN)
    for limit, status in ((len(body) - 1, 413), (len(body), 200)):
        app = build_app(w.service, settings=HTTPSettings(max_upload_bytes=limit))
        reply = await call(
            app,
            "POST",
            f"/v2/{GUN}/_trust/tuf/",
            body=body if declared else [body[:100], body[100:]],
            headers=headers,
        )
        assert reply.status == status, str(reply)
    await check_accepted(w, before, list(w.parts))


@pytest_anyio
async def test_huge_integer_literal_is_malformed_json() -> None:
    """An integer literal beyond Python's 4300-digit parse limit (used to crash: 500)."""
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    targets = dict(w.parts)[roles.TARGETS]
    data = re.sub(rb'"version":\d+', b'"version":' + b"1" * 5000, targets, count=1)
    reply = await post_parts(w, named([(roles.TARGETS, data)]))
    await _refused(w, reply, before, "MALFORMED_JSON")


@pytest_anyio
async def test_overlong_boundary_is_malformed_upload() -> None:
    """python-multipart refuses boundaries over 256 bytes (used to crash: 500)."""
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    boundary = "b" * 300
    reply = await call(
        w.app,
        "POST",
        f"/v2/{GUN}/_trust/tuf/",
        body=encode_parts(named(w.parts), boundary.encode()),
        headers=[(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
    )
    await _refused(w, reply, before, "MALFORMED_UPLOAD")


TRAVERSAL_GUNS = [
    "..",
    "../etc",
    "a/../../b",
    f"{GUN}/..",
    f"{GUN}/../other",
    "%2e%2e",
    "a/%2E%2E/b",
    "a/./b",
    "a//b",
    "/a",
    "a/",
    "a\\..\\b",
    "a%00b",
    "a%0Ab",
    "a%09b",
    "a*b",
    "x" * 256,
    "example.com/" + "y" * 244,
]


@pytest_anyio
@pytest.mark.parametrize("gun", TRAVERSAL_GUNS)
async def test_bad_guns_are_refused_on_every_route(gun: str) -> None:
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    reply = await post_parts(w, named(w.parts), gun=quote(gun, safe="/%\\*"))
    err = await _refused(w, reply, before, "INVALID_GUN")
    assert isinstance(err["detail"], str) and err["detail"]
    for method, name in (
        ("GET", "root.json"),
        ("GET", "1.root.json"),
        ("GET", "timestamp.key"),
        ("POST", "timestamp.key"),
        ("DELETE", ""),
    ):
        resp = await call(w.app, method, f"/v2/{quote(gun, safe='/%*')}/_trust/tuf/{name}")
        await _refused(w, resp, before, "METADATA_NOT_FOUND")
    feed = await call(
        w.app, "GET", f"/v2/{quote(gun, safe='/%*')}/_trust/changefeed", query=b"records=1"
    )
    await _refused(w, feed, before, "METADATA_NOT_FOUND")
    assert (await w.pub.publish(w.client, dict(w.parts))).status_code == 200


@pytest_anyio
async def test_longest_gun_is_accepted() -> None:
    """255 characters is allowed (the refusal is the missing root, not the name)."""
    w = await make_world()
    gun = "example.com/" + "y" * 243
    assert len(gun) == 255
    before = await fingerprint(w.service, gun)
    reply = await post_parts(w, named(w.parts), gun=gun)
    err = check_error(reply, frozenset({"INVALID_UPDATE"}))
    assert err["detail"]["Name"] == "ErrValidation"
    assert await fingerprint(w.service, gun) == before
    key = await call(w.app, "GET", f"/v2/{gun}/_trust/tuf/timestamp.key")
    assert key.status == 200 and Key.from_dict(json.loads(key.body)).keytype == "ecdsa"


@pytest_anyio
@pytest.mark.parametrize(
    ("filename", "role"),
    [
        ("targets/../root", "targets/../root"),
        ("TARGETS", "TARGETS"),
        ("foo", "foo"),
        ("Root", "Root"),
        ("targets/", "targets/"),
        ("targets//x", "targets//x"),
        ("targets/./x", "targets/./x"),
        ("targets/A", "targets/A"),
        ("root/../root", "root/../root"),
        ("../root", "../root"),
        ("snapshot.json.json", "snapshot.json"),
        ("targets/x.json", None),  # a clean delegation name: nobody declared it
        ("targets/" + "a" * 250, "targets/" + "a" * 250),
    ],
)
async def test_unknown_roles_refuse_the_whole_update(filename: str, role: str | None) -> None:
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    targets = dict(w.parts)[roles.TARGETS]
    reply = await post_parts(w, named([*w.parts, (filename, targets)]))
    if role is None:
        err = await _refused(w, reply, before, "INVALID_UPDATE")
        assert "delegation does not exist" in err["detail"]["Error"]["Msg"]
    else:
        err = await _refused(w, reply, before, "INVALID_ROLE")
        assert err["detail"] == role
    assert (await post_parts(w, named(w.parts))).status == 200


@pytest_anyio
async def test_timestamp_upload_is_ignored() -> None:
    """A client's timestamp is never stored: the stored one is the server's, version + 1."""
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    old_ts = await w.service.store.get_current(GUN, roles.TIMESTAMP)
    assert old_ts is not None
    forged = Metadata.from_bytes(old_ts.data, Timestamp)
    forged.signed.version = 99
    forged.sign(PrivateKey.generate("ecdsa").signer())
    forged_bytes = forged.to_bytes()
    reply = await post_parts(w, named([*w.parts, (roles.TIMESTAMP, forged_bytes)]))
    assert reply.status == 200, str(reply)
    await check_accepted(w, before, [*w.parts, (roles.TIMESTAMP, forged_bytes)])
    stored = await w.service.store.get_current(GUN, roles.TIMESTAMP)
    assert stored is not None and stored.data != forged_bytes
    ts = Metadata.from_bytes(stored.data, Timestamp)
    assert ts.signed.version == 2
    root = Metadata.from_bytes(dict(w.pub.files)[roles.ROOT], Root).signed
    ts.verified_keyids(root.role_keys(roles.TIMESTAMP), 1, roles.TIMESTAMP)
    sha = hashlib.sha256(forged_bytes).hexdigest()
    for name in (f"timestamp.{sha}.json", "99.timestamp.json"):
        assert (await call(w.app, "GET", f"/v2/{GUN}/_trust/tuf/{name}")).status == 404
    # A timestamp alone is no update at all.
    before = await fingerprint(w.service, GUN)
    alone = await post_parts(w, named([(roles.TIMESTAMP, forged_bytes)]))
    await _refused(w, alone, before, "INVALID_UPDATE")


async def _stored(w: World, role: str) -> bytes:
    current = await w.service.store.get_current(w.pub.gun, role)
    assert current is not None
    return current.data


@pytest_anyio
@pytest.mark.parametrize("first_part", ["garbage", "stale", "same"])
async def test_duplicate_parts_last_wins(first_part: str) -> None:
    """A bad part for a role followed by a good one: the good one is judged and stored."""
    w = await make_world()
    valid = dict(w.parts)
    before = await fingerprint(w.service, GUN)
    first = {
        "garbage": b"{not json",
        "stale": await _stored(w, roles.TARGETS),
        "same": valid[roles.TARGETS],
    }[first_part]
    parts = [
        (roles.TARGETS, first),
        ("targets.json", valid[roles.TARGETS]),
        (roles.SNAPSHOT, valid[roles.SNAPSHOT]),
    ]
    reply = await post_parts(w, named(parts))
    assert reply.status == 200, str(reply)
    await check_accepted(w, before, parts)
    assert await _stored(w, roles.TARGETS) == valid[roles.TARGETS]


@pytest_anyio
async def test_duplicate_parts_last_wins_even_when_it_is_bad() -> None:
    w = await make_world()
    valid = dict(w.parts)
    before = await fingerprint(w.service, GUN)
    parts = [
        (roles.TARGETS, valid[roles.TARGETS]),
        (roles.SNAPSHOT, valid[roles.SNAPSHOT]),
        ("targets.json", await _stored(w, roles.TARGETS)),
    ]
    reply = await post_parts(w, named(parts))
    check_error(reply, frozenset({"INVALID_UPDATE", "VERSION"}))
    assert await fingerprint(w.service, GUN) == before


def _sign_targets_as(
    w: World, version: int, *, edit: bytes | None = None
) -> list[tuple[str, bytes]]:
    """Targets at ``version`` (optionally with ``"version":N`` rewritten to ``edit`` after
    signing) and a snapshot pinning the exact bytes."""
    pub = w.pub
    pub.versions[roles.TARGETS] = version - 1
    data = pub.sign_targets(roles.TARGETS)
    if edit is not None:
        data = data.replace(f'"version":{version}'.encode(), b'"version":' + edit, 1)
        pub.files[roles.TARGETS] = data
    return [(roles.TARGETS, data), (roles.SNAPSHOT, pub.sign_snapshot())]


@pytest_anyio
async def test_version_zero_and_negative_are_refused() -> None:
    for version in (0, -1):
        w = await make_world()
        before = await fingerprint(w.service, GUN)
        reply = await post_parts(w, named(_sign_targets_as(w, version)))
        err = await _refused(w, reply, before, "INVALID_UPDATE")
        assert err["detail"]["Name"] == "ErrBadTargets"
        assert "version" in err["detail"]["Error"]["Msg"]


@pytest_anyio
async def test_version_2_pow_53_is_refused() -> None:
    """2**53 cannot round-trip through Go's float64 verifier: malformed. 2**53 - 1 parses
    but jumps too far (TUF-01-002)."""
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    reply = await post_parts(w, named(_sign_targets_as(w, 2**53)))
    await _refused(w, reply, before, "MALFORMED_JSON")
    reply = await post_parts(w, named(_sign_targets_as(w, 2**53 - 1)))
    err = await _refused(w, reply, before, "INVALID_UPDATE")
    assert "jumps too far" in err["detail"]["Error"]["Msg"]
    assert (await post_parts(w, named(_sign_targets_as(w, 2)))).status == 200


@pytest_anyio
async def test_non_integral_numbers_are_malformed() -> None:
    for edit in (b"2.5", b"2.000001", b"1e400", b"-0.5"):
        w = await make_world()
        before = await fingerprint(w.service, GUN)
        reply = await post_parts(w, named(_sign_targets_as(w, 2, edit=edit)))
        await _refused(w, reply, before, "MALFORMED_JSON")
    # In custom data too, anywhere in the signed part.
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    parts = _sign_targets_as(w, 2)
    data = parts[0][1].replace(b'"length":3', b'"custom":{"f":0.5},"length":3', 1)
    assert data != parts[0][1]
    reply = await post_parts(w, named([(roles.TARGETS, data), parts[1]]))
    await _refused(w, reply, before, "MALFORMED_JSON")


@pytest_anyio
async def test_integral_float_verifies_like_go() -> None:
    """``2.0`` canonicalises to ``2`` (as in Go), so the signature holds; the bytes are
    stored verbatim."""
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    parts = _sign_targets_as(w, 2, edit=b"2.0")
    assert b'"version":2.0' in parts[0][1]
    reply = await post_parts(w, named(parts))
    assert reply.status == 200, str(reply)
    await check_accepted(w, before, list(parts))


@pytest_anyio
@pytest.mark.parametrize(
    "name", ["\x01", "a\tb", "line\nbreak", "\x1f", "esc\x1b[0m", "nul\x00"], ids=repr
)
async def test_control_characters_in_strings_are_malformed(name: str) -> None:
    """Escaped (as JSON writers do) or raw, control characters have no canonical form
    Notary can read back (vouch cannot even sign them, so they are patched in)."""
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    w.pub.add("CTLNAME", b"ctl")
    parts = _sign_targets_as(w, 2)
    for replacement in (json.dumps(name)[1:-1].encode(), name.encode()):
        data = parts[0][1].replace(b"CTLNAME", replacement, 1)
        reply = await post_parts(w, named([(roles.TARGETS, data), parts[1]]))
        await _refused(w, reply, before, "MALFORMED_JSON")


@pytest_anyio
async def test_del_and_line_separator_are_not_control_characters() -> None:
    """DEL and U+2028 are fine (the notary corpus has them)."""
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    w.pub.add("ls\u2028sep\x7fdel", b"x")
    parts = _sign_targets_as(w, 2)
    reply = await post_parts(w, named(parts))
    assert reply.status == 200, str(reply)
    await check_accepted(w, before, list(parts))


@pytest_anyio
async def test_unsigned_top_level_member_is_refused() -> None:
    w = await make_world()
    before = await fingerprint(w.service, GUN)
    snap = json.loads(dict(w.parts)[roles.SNAPSHOT])
    snap["x"] = 1
    reply = await post_parts(w, named([w.parts[0], (roles.SNAPSHOT, dump(snap))]))
    err = await _refused(w, reply, before, "INVALID_UPDATE")
    assert "unsigned content" in err["detail"]["Error"]["Msg"]


@pytest_anyio
@pytest.mark.parametrize(
    "name", ["rootx.json", "targets/a b.json", "snapshotfoo.json", "targets/x/.json"]
)
async def test_non_role_names_hit_the_catch_all(name: str) -> None:
    """Like notary-server's route regex, a name that is not a role is the catch-all 404
    (no ``detail``), not a storage miss (``detail: {}``)."""
    w = await make_world()
    reply = await call(w.app, "GET", f"/v2/{GUN}/_trust/tuf/{quote(name)}")
    err = check_error(reply, frozenset({"METADATA_NOT_FOUND"}))
    assert "detail" not in err, str(reply)
    missing = await call(w.app, "GET", f"/v2/{GUN}/_trust/tuf/targets/nope.json")
    assert check_error(missing, frozenset({"METADATA_NOT_FOUND"}))["detail"] == {}


@pytest_anyio
@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("records=1_0", 'strconv.ParseInt: parsing "1_0": invalid syntax'),
        ("records=%201", 'strconv.ParseInt: parsing " 1": invalid syntax'),
        ("records=%D9%A1", 'strconv.ParseInt: parsing "\u0661": invalid syntax'),
        ("records=1e3", 'strconv.ParseInt: parsing "1e3": invalid syntax'),
        ("records=2147483648", 'strconv.ParseInt: parsing "2147483648": value out of range'),
        ("records=-2147483649", 'strconv.ParseInt: parsing "-2147483649": value out of range'),
        ("records=1&change_id=1_0", {}),
        ("records=1&change_id=%201", {}),
        ("records=1&change_id=2147483648", {}),
        ("records=1&change_id=99999999999999999999", {}),
    ],
)
async def test_changefeed_parameters_parse_like_go(query: str, detail: object) -> None:
    """notary-server parses ``records`` and ``change_id`` with strconv.ParseInt(…, 10, 32):
    ASCII digits with an optional sign, nothing else (checked against notary-server)."""
    w = await make_world()
    reply = await call(w.app, "GET", "/v2/_trust/changefeed", query=query.encode())
    err = check_error(reply, frozenset({"INVALID_PARAMETERS"}))
    expected = f"invalid records parameter: {detail}" if isinstance(detail, str) else detail
    assert err["detail"] == expected


@pytest_anyio
async def test_changefeed_accepts_what_go_accepts() -> None:
    w = await make_world()
    for query in ("records=%2B1", "records=-1&change_id=-1", "records=01&change_id=%2B0"):
        reply = await call(w.app, "GET", "/v2/_trust/changefeed", query=query.encode())
        assert reply.status == 200, (query, str(reply))
        assert json.loads(reply.body)["count"] == 1


def _corrupt_der(der: bytes, how: str) -> bytes:
    if how == "unsupported-curve":  # prime256v1 (1.2.840.10045.3.1.7) -> ...3.1.8
        oid = bytes.fromhex("06082a8648ce3d030107")
        assert oid in der
        return der.replace(oid, oid[:-1] + b"\x08", 1)
    # X.509 v3 ([0] EXPLICIT INTEGER 2) -> version 6
    version = bytes.fromhex("a003020102")
    assert version in der
    return der.replace(version, bytes.fromhex("a003020106"), 1)


@pytest_anyio
@pytest.mark.parametrize("how", ["unsupported-curve", "bad-version"])
async def test_corrupt_root_certificate_is_refused(how: str) -> None:
    """A first publish whose root certificate does not decode: 400, nothing stored."""
    w = await make_world(first=True)
    before = await fingerprint(w.service, GUN)
    doc = json.loads(dict(w.parts)[roles.ROOT])
    keyid = doc["signed"]["roles"]["root"]["keyids"][0]
    keyval = doc["signed"]["keys"][keyid]["keyval"]
    pem = base64.b64decode(keyval["public"]).decode()
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    der = _corrupt_der(base64.b64decode(body), how)
    lines = [base64.b64encode(der).decode()[i : i + 64] for i in range(0, 4 * len(der), 64)]
    new_pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join(x for x in lines if x)
    keyval["public"] = base64.b64encode(
        (new_pem + "\n-----END CERTIFICATE-----\n").encode()
    ).decode()
    parts = [(roles.ROOT, dump(doc)), *[(r, d) for r, d in w.parts if r != roles.ROOT]]
    reply = await post_parts(w, named(parts))
    assert reply.status == 400, str(reply)
    await _refused(w, reply, before, "INVALID_UPDATE")
