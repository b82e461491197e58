"""List and watch: one Kubernetes collection kept in memory, as a controller does.

A :class:`Reflector` lists a collection (paginated), remembers the list's
``resourceVersion``, then watches from it (``?watch=1&allowWatchBookmarks=true``)
and applies each event to its snapshot the moment it arrives:

* ``ADDED``/``MODIFIED`` store the object, ``DELETED`` drops it, and each
  moves the resourceVersion; ``BOOKMARK`` only moves the resourceVersion.
* ``410 Gone`` (as an HTTP status or an ``ERROR`` event: the version was
  compacted away) and any other ``ERROR`` event: the snapshot may have missed
  changes, so it is relisted and **replaced** (objects deleted meanwhile go).
* A stream that ends (the server's ``timeoutSeconds``) is re-opened at once
  from the last resourceVersion; a dropped connection, a read timeout or an
  HTTP error is retried from there with exponential backoff and jitter.
* ``404`` (the CRD is not installed, or was removed) is an empty collection,
  listed again every ``missing_retry`` seconds.

``synced`` is set after the first complete list (or the first 404), so a
caller can report readiness only once it has seen the real state.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from vouch.admission.kube import KubeClient

log = logging.getLogger("vouch.admission")

Key = tuple[str, str]  # (namespace or "", name)
MAX_EVENT_BYTES = 8 * 1024 * 1024  # far above etcd's 1.5 MiB object limit


class WatchExpiredError(Exception):
    """410 Gone: the resourceVersion is too old; relist."""


class WatchError(Exception):
    """An ERROR event or a malformed stream; relist after a backoff."""


class ApiStatusError(Exception):
    """An unexpected HTTP status (429, 5xx, 401...): retry from the same version."""


class CollectionMissingError(Exception):
    """404: the resource type is not served (CRD not installed)."""


@dataclass(frozen=True, slots=True)
class Collection:
    """What to list and watch: a collection path and an optional field selector."""

    path: str
    field_selector: str | None = None

    def __str__(self) -> str:
        return self.path + (f"?fieldSelector={self.field_selector}" if self.field_selector else "")


def object_key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise WatchError("object without metadata.name")
    namespace = meta.get("namespace")
    return (namespace if isinstance(namespace, str) else "", meta["name"])


def _resource_version(obj: dict[str, Any]) -> str | None:
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) and rv else None


async def json_objects(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a watch stream, whatever the chunking.

    The API server writes one object per line, but nothing guarantees that a
    chunk boundary falls on a line (or a UTF-8 character) boundary, so the
    objects are decoded from a buffer rather than split on newlines.
    """
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8")()
    buf = ""
    async for chunk in chunks:
        buf += text.decode(chunk)
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            if buf[0] != "{":
                raise WatchError(f"watch stream is not a sequence of JSON objects: {buf[:40]!r}")
            try:
                obj, end = decoder.raw_decode(buf)
            except json.JSONDecodeError:
                if len(buf) > MAX_EVENT_BYTES:
                    raise WatchError("watch event larger than 8 MiB or malformed") from None
                break  # an incomplete object: wait for more bytes
            buf = buf[end:]
            yield obj
    if (buf + text.decode(b"", final=True)).strip():
        raise WatchError("watch stream ended inside an event")


class Reflector:
    """One collection, listed then watched, as a dict of objects by (namespace, name).

    ``on_change`` is called (synchronously, in the event loop) after every
    change to the snapshot, so its caller sees each event before the next
    one is read.
    """

    def __init__(
        self,
        kube: KubeClient,
        collection: Collection,
        on_change: Callable[[], None],
        *,
        watch_timeout: int = 300,
        missing_retry: float = 30.0,
        backoff_max: float = 30.0,
        page_size: int = 500,
    ) -> None:
        self.kube = kube
        self.collection = collection
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.missing_retry = missing_retry
        self.backoff_max = backoff_max
        self.page_size = page_size
        self.items: dict[Key, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self.missing = False
        self.lists = 0  # complete lists done (the first one, then each relist)

    # -- the loop --------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                events = await self._watch()
                # A stream the server closed at its timeout: re-watch at once.
                # One that closed with nothing in it counts as a failure, so a
                # server that hangs up at once is not hammered.
                failures = 0 if events else failures + 1
                if failures:
                    await asyncio.sleep(self._backoff(failures))
            except WatchExpiredError as exc:
                log.info("%s: %s; relisting", self.collection, exc)
                self.resource_version = None
            except CollectionMissingError:
                if not self.missing:
                    log.warning("%s is not served (CRD not installed?); empty", self.collection)
                self.missing = True
                self._replace({}, None)
                failures = 0
                await asyncio.sleep(self.missing_retry)
            except (httpx.HTTPError, ApiStatusError, WatchError, ValueError) as exc:
                failures += 1
                delay = self._backoff(failures)
                log.warning("%s: %s; retrying in %.1fs", self.collection, exc, delay)
                if isinstance(exc, WatchError | ValueError):
                    self.resource_version = None  # relist after an ERROR event or garbage
                await asyncio.sleep(delay)
            except Exception:  # a bug must not stop the watch for good: start over
                failures += 1
                log.exception("%s: unexpected error; relisting", self.collection)
                self.resource_version = None
                await asyncio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        base = min(self.backoff_max, 0.2 * 2 ** min(failures, 10))
        return float(base * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret

    def _params(self) -> dict[str, str]:
        return (
            {"fieldSelector": self.collection.field_selector}
            if self.collection.field_selector
            else {}
        )

    @staticmethod
    def _check(resp: httpx.Response) -> None:
        if resp.status_code == 404:
            raise CollectionMissingError
        if resp.status_code == 410:
            raise WatchExpiredError("410 Gone")
        if resp.status_code != 200:
            raise ApiStatusError(f"HTTP {resp.status_code} from the API server")

    # -- list ----------------------------------------------------------------------

    async def _list(self) -> None:
        """A complete, consistent list (all pages at one resourceVersion)."""
        items: dict[Key, dict[str, Any]] = {}
        params = {**self._params(), "limit": str(self.page_size)}
        while True:
            resp = await self.kube.http.get(self.collection.path, params=params)
            self._check(resp)
            body = resp.json()
            if not isinstance(body, dict):
                raise WatchError("list response is not an object")
            for item in body.get("items") or []:
                if isinstance(item, dict):
                    items[object_key(item)] = item
            meta = body.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                break
            params = {**params, "continue": token}
        rv = meta.get("resourceVersion")
        if not isinstance(rv, str) or not rv:
            raise WatchError("list response without metadata.resourceVersion")
        if self.missing:
            log.info("%s is served now", self.collection)
        self.missing = False
        self.lists += 1
        self._replace(items, rv)

    def _replace(self, items: dict[Key, dict[str, Any]], rv: str | None) -> None:
        self.items = items
        self.resource_version = rv
        self.synced.set()
        self.on_change()

    # -- watch ---------------------------------------------------------------------

    async def _watch(self) -> int:
        """Watch from the current resourceVersion until the stream ends; the
        number of events seen (bookmarks included)."""
        assert self.resource_version is not None
        params = {
            **self._params(),
            "watch": "1",
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout),
        }
        # No byte for longer than the server's own timeout: the connection is dead.
        timeout = httpx.Timeout(10.0, read=self.watch_timeout + 30.0)
        seen = 0
        async with self.kube.http.stream(
            "GET", self.collection.path, params=params, timeout=timeout
        ) as resp:
            if resp.status_code != 200:
                await resp.aread()
            self._check(resp)
            async for event in json_objects(resp.aiter_bytes()):
                self._apply(event)
                seen += 1
        return seen

    def _apply(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict):
            raise WatchError(f"watch event without an object: {kind}")
        if kind == "ERROR":
            message = obj.get("message") or obj.get("reason") or "unknown error"
            if obj.get("code") == 410 or obj.get("reason") in ("Expired", "Gone"):
                raise WatchExpiredError(f"watch expired: {message}")
            raise WatchError(f"watch error: {message}")
        rv = _resource_version(obj)
        if kind == "BOOKMARK":
            if rv is not None:
                self.resource_version = rv
            return
        key = object_key(obj)
        if kind in ("ADDED", "MODIFIED"):
            self.items[key] = obj
        elif kind == "DELETED":
            self.items.pop(key, None)
        else:
            raise WatchError(f"unknown watch event type {kind!r}")
        if rv is not None:
            self.resource_version = rv
        self.on_change()
