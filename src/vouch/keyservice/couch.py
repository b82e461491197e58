"""The key service on CouchDB: notary-signer's rows as documents, encrypted the same way.

One document per key, ``_id`` ``key:<key ID>``, holding what a ``private_keys``
row holds (``private`` is the same JWE token, under the passphrase of
``passphrase_alias``), so a key can move between the SQL and CouchDB stores
with its ciphertext untouched. ``public`` is base64 of the raw public key;
times are naive-UTC ISO strings with microseconds (they sort as they compare);
``deleted`` is null or the time of the soft delete.

A view ``_design/vouch_keys`` indexes live keys by ``[gun, role, created_at,
key_id]``: ``get_key`` and ``create_key``'s reuse of an unused key read it
newest first. Signing reads the key's document by ID (shared by concurrent
signatures, as :class:`~vouch.keyservice.local.LocalKeyService`), so a delete
through any instance stops signing at the next read.

Every document read is checked before use: its ``_id``, ``key_id`` and the
key ID its public key hashes to must agree, or the key is refused (a key
database writer cannot make a document sign, or be served, under another
key's ID). After replication between regions a document may carry
conflicting revisions; if any of them is deleted, the key is deleted (a
deletion can never be lost to a concurrent ``last_used`` update), and the
revisions are merged into one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Self

import httpx

from vouch.crypto import jwe
from vouch.crypto.privkey import PrivateKey, public_der
from vouch.keyservice.base import (
    MAX_NAME,
    KeyDecryptionError,
    KeyInfo,
    KeyNotFoundError,
    KeyServiceUnavailableError,
    make_signature,
)
from vouch.keyservice.encrypted import DEFAULT_CACHE_SIZE, EncryptedKeys
from vouch.keyservice.local import LAST_USED_RESOLUTION
from vouch.keyservice.schema import (
    ENCRYPTION_ALG,
    KEYWRAP_ALG,
    public_key_of,
)
from vouch.storage.base import StorageError
from vouch.storage.couchhttp import (
    CouchClient,
    CouchConflictError,
    CouchNotFoundError,
    CouchTarget,
    jparams,
    parse_couch_url,
)
from vouch.tuf.keys import Key
from vouch.tuf.metadata import Signature

#: The key database when a URL names only the server (``https://host:6984/``).
DEFAULT_KEY_DATABASE: Final = "vouch_keys"
DESIGN_ID: Final = "_design/vouch_keys"
DOC_TYPE: Final = "private_key"
KEY_SCHEMA: Final = 1
_LIVE_MAP = """function (doc) {
  if (doc.type !== 'private_key' || doc.deleted) { return; }
  emit([doc.gun, doc.role, doc.created_at, doc.key_id],
       {algorithm: doc.algorithm, public: doc.public, last_used: doc.last_used});
}"""
DESIGN: Final[dict[str, Any]] = {
    "language": "javascript",
    "vouch_keys_schema": KEY_SCHEMA,
    "views": {"live": {"map": _LIVE_MAP}},
}
#: Write attempts when another writer changed the document in between (409).
_ATTEMPTS: Final = 8
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


def key_target(url: str, environ: Mapping[str, str] | None = None) -> CouchTarget:
    """The key database a CouchDB URL names: its last path segment, else ``vouch_keys``.

    Same URL forms, credentials and TLS parameters as the metadata store's.
    """
    target = parse_couch_url(url, environ)
    if url.split("?", 1)[0].endswith("/"):
        target = _with_database(target, DEFAULT_KEY_DATABASE)
    return target


def keys_beside(storage_url: str, environ: Mapping[str, str] | None = None) -> CouchTarget:
    """The default key database of a CouchDB metadata store: ``<its database>_keys``.

    A database of its own, on the same server with the same credentials: key
    documents stay out of the metadata views and replication can treat them apart.
    """
    target = parse_couch_url(storage_url, environ)
    return _with_database(target, f"{target.database}_keys")


def _with_database(target: CouchTarget, database: str) -> CouchTarget:
    fields = {name: getattr(target, name) for name in target.__dataclass_fields__}
    fields["database"] = database
    return CouchTarget(**fields)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _fmt(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime(_TIME_FORMAT)


def _parse_time(value: Any, key_id: str, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise KeyDecryptionError(f"key {key_id}: malformed {field} in its document")
    try:
        return datetime.strptime(value, _TIME_FORMAT)
    except ValueError:
        raise KeyDecryptionError(f"key {key_id}: malformed {field} in its document") from None


def doc_id(key_id: str) -> str:
    return f"key:{key_id}"


def _public_bytes(key_id: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise KeyDecryptionError(f"key {key_id}: malformed public key in its document")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeyDecryptionError(f"key {key_id}: malformed public key in its document") from None


def checked_key(key_id: str, algorithm: Any, public: Any) -> tuple[Key, bytes]:
    """The public key a document holds, refused unless it hashes to ``key_id``."""
    raw = _public_bytes(key_id, public)
    if not isinstance(algorithm, str) or algorithm not in ("ecdsa", "ed25519"):
        raise KeyDecryptionError(f"key {key_id}: unsupported algorithm in its document")
    key = public_key_of(algorithm, raw)
    if key.keyid != key_id:
        raise KeyDecryptionError(
            f"key {key_id}: the document's public key does not hash to its key ID"
        )
    return key, raw


class CouchKeyService(EncryptedKeys[dict[str, Any]]):
    """:class:`~vouch.keyservice.base.KeyService` over a CouchDB database of key documents.

    Same contract and concurrency as :class:`~vouch.keyservice.local.LocalKeyService`:
    within one instance concurrent :meth:`create_key` calls return one key;
    separate instances may each create one in a race, and both stay usable.
    """

    def __init__(
        self,
        target: CouchTarget,
        passphrases: Mapping[str, str],
        default_alias: str,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        p2c: int = jwe.DEFAULT_P2C,
        clock: Callable[[], datetime] = _now,  # naive UTC, as stored
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(passphrases, default_alias, cache_size=cache_size, p2c=p2c, clock=clock)
        self.target = target
        self._db = CouchClient(target, transport=transport)

    @classmethod
    async def open(
        cls,
        url: str | CouchTarget,
        passphrases: Mapping[str, str],
        default_alias: str,
        *,
        create: bool = True,
        **kwargs: Any,
    ) -> Self:
        """A service on the key database ``url`` names (see :func:`key_target`).

        With ``create`` the database and its view are created if missing
        (admin rights needed); without, :meth:`check_health` must pass.
        """
        target = key_target(url) if isinstance(url, str) else url
        service = cls(target, passphrases, default_alias, **kwargs)
        try:
            if create:
                await service.create_database()
            else:
                await service.check_health()
        except BaseException:
            await service.close()
            raise
        return service

    async def create_database(self) -> None:
        """Create the database and the view if missing; concurrent first starts agree."""
        async with self._errors():
            try:
                await self._db.get_json(self._db.db_path, "open key database")
            except CouchNotFoundError:
                with contextlib.suppress(CouchConflictError):
                    await self._db.request("PUT", self._db.db_path, "create key database")
            for _ in range(_ATTEMPTS):
                design = await self._design()
                if design is not None and design.get("views") == DESIGN["views"]:
                    return
                body = dict(DESIGN)
                if design is not None:
                    body["_rev"] = design["_rev"]
                try:
                    await self._db.request(
                        "PUT", self._design_path(), "install key view", body=body
                    )
                    return
                except CouchConflictError:
                    continue
        raise KeyServiceUnavailableError("key database: could not install the key view")

    async def _design(self) -> dict[str, Any] | None:
        try:
            design: dict[str, Any] = await self._db.get_json(self._design_path(), "read key view")
        except CouchNotFoundError:
            return None
        return design

    def _design_path(self) -> str:
        return f"{self._db.db_path}/_design/vouch_keys"

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """Database failures as :class:`KeyServiceUnavailableError` (messages carry no secrets)."""
        try:
            yield
        except StorageError as exc:
            raise KeyServiceUnavailableError(f"key database error: {str(exc)[:300]}") from None

    # -- creating keys -------------------------------------------------------------------

    async def _unused_key(self, gun: str, role: str, algorithm: str) -> Key | None:
        for row in await self._live(gun, role):
            value = row["value"]
            if value.get("algorithm") == algorithm and value.get("last_used") is None:
                key, _ = checked_key(row["key"][3], value.get("algorithm"), value.get("public"))
                return key
        return None

    async def _store_new(
        self, key: PrivateKey, gun: str, role: str, algorithm: str, token: str
    ) -> None:
        now = _fmt(self._clock())
        doc = {
            "type": DOC_TYPE,
            "key_id": key.keyid,
            "gun": gun,
            "role": role,
            "algorithm": algorithm,
            "public": base64.b64encode(public_der(key)).decode("ascii"),
            "private": token,
            "passphrase_alias": self._default_alias,
            "encryption_alg": ENCRYPTION_ALG,
            "keywrap_alg": KEYWRAP_ALG,
            "created_at": now,
            "updated_at": now,
            "last_used": None,
            "deleted": None,
        }
        async with self._errors():
            try:
                # No _rev: create only if absent, never overwrite an existing key.
                await self._db.request(
                    "PUT", self._db.doc_path(doc_id(key.keyid)), "store key", body=doc
                )
            except CouchConflictError:
                raise KeyServiceUnavailableError(
                    f"key database: a document for new key {key.keyid} already exists"
                ) from None

    # -- reading keys --------------------------------------------------------------------

    async def _live(self, gun: str, role: str) -> list[dict[str, Any]]:
        """Live keys of ``gun``/``role``, newest first (exact names: view collation is ICU)."""
        params = jparams(startkey=[gun, role, {}], endkey=[gun, role], descending=True)
        async with self._errors():
            body = await self._db.get_json(
                f"{self._design_path()}/_view/live", "read live keys", params=params
            )
        rows: list[dict[str, Any]] = body.get("rows", [])
        return [
            r
            for r in rows
            if isinstance(r.get("key"), list)
            and len(r["key"]) == 4
            and (r["key"][0], r["key"][1]) == (gun, role)
            and isinstance(r.get("value"), dict)
        ]

    async def get_key(self, gun: str, role: str) -> Key | None:
        for row in await self._live(gun, role):
            value = row["value"]
            key, _ = checked_key(str(row["key"][3]), value.get("algorithm"), value.get("public"))
            return key
        return None

    async def _doc(self, key_id: str) -> dict[str, Any] | None:
        """The key's live document, checked; None if unknown or deleted in any revision."""
        if not key_id or len(key_id) > MAX_NAME:
            return None
        path = self._db.doc_path(doc_id(key_id))
        async with self._errors():
            try:
                doc: dict[str, Any] = await self._db.get_json(
                    path, "read key", params={"conflicts": "true"}
                )
            except CouchNotFoundError:
                return None
            if doc.get("_conflicts"):
                doc = await self._merge(doc)
        if doc.get("type") != DOC_TYPE or doc.get("key_id") != key_id:
            raise KeyDecryptionError(f"key {key_id}: its document names another key")
        if doc.get("deleted"):
            return None
        checked_key(key_id, doc.get("algorithm"), doc.get("public"))
        return doc

    async def _merge(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Fold replication conflicts into the winning revision: the earliest deletion
        and the latest ``last_used`` win; the losing revisions are removed."""
        revs = [r for r in doc.pop("_conflicts") if isinstance(r, str)]
        path = self._db.doc_path(str(doc["_id"]))
        others: list[dict[str, Any]] = []
        for rev in revs:
            with contextlib.suppress(CouchNotFoundError):
                others.append(
                    await self._db.get_json(path, "read key revision", params={"rev": rev})
                )
        deletions = [d["deleted"] for d in (doc, *others) if isinstance(d.get("deleted"), str)]
        uses = [d["last_used"] for d in (doc, *others) if isinstance(d.get("last_used"), str)]
        merged = dict(doc)
        merged["deleted"] = min(deletions) if deletions else None
        merged["last_used"] = max(uses) if uses else None
        losers = [{"_id": doc["_id"], "_rev": rev, "_deleted": True} for rev in revs]
        with contextlib.suppress(StorageError):  # best effort: readers merge anyway
            await self._db.post_json(
                f"{self._db.db_path}/_bulk_docs", "merge key revisions", {"docs": [merged, *losers]}
            )
        return merged

    async def _signing_doc(self, key_id: str) -> dict[str, Any] | None:
        """The document a signature needs (one read shared by concurrent Sign calls)."""
        return await self._shared_read(key_id, lambda: self._doc(key_id))

    async def key_info(self, key_id: str) -> KeyInfo | None:
        doc = await self._doc(key_id)
        if doc is None:
            return None
        key, _ = checked_key(key_id, doc.get("algorithm"), doc.get("public"))
        created = _parse_time(doc.get("created_at"), key_id, "created_at")
        used = _parse_time(doc.get("last_used"), key_id, "last_used")
        return KeyInfo(
            key,
            str(doc.get("gun")),
            str(doc.get("role")),
            created.replace(tzinfo=UTC) if created else None,
            used.replace(tzinfo=UTC) if used else None,
        )

    # -- signing -------------------------------------------------------------------------

    async def sign(self, key_id: str, message: bytes) -> Signature:
        doc = await self._signing_doc(key_id)
        if doc is None:
            raise KeyNotFoundError(f"signing key not found: {key_id}")
        key = await self._decrypt(key_id, doc)
        signature = make_signature(key, message, key_id)
        now = self._clock()
        last = _parse_time(doc.get("last_used"), key_id, "last_used")
        if last is None or now - last >= LAST_USED_RESOLUTION:
            await self._mark_used(key_id, doc, now)
        return signature

    async def _mark_used(self, key_id: str, doc: dict[str, Any], now: datetime) -> None:
        """Set ``last_used`` on the revision read; on a conflict re-read (never undelete)."""
        current: dict[str, Any] | None = doc
        for _ in range(_ATTEMPTS):
            if current is None:
                raise KeyNotFoundError(f"signing key not found: {key_id}")
            update = {**current, "last_used": _fmt(now), "updated_at": _fmt(now)}
            async with self._errors():
                try:
                    await self._db.request(
                        "PUT", self._db.doc_path(doc_id(key_id)), "mark key used", body=update
                    )
                    return
                except CouchConflictError:
                    pass
            current = await self._doc(key_id)
        raise KeyServiceUnavailableError(f"key database: could not record the use of {key_id}")

    async def _decrypt(self, key_id: str, doc: dict[str, Any]) -> PrivateKey:
        alias = doc.get("passphrase_alias")
        private = doc.get("private")
        if not isinstance(alias, str) or not isinstance(private, str) or not private.isascii():
            raise KeyDecryptionError(f"key {key_id}: malformed key document")
        _, public = checked_key(key_id, doc.get("algorithm"), doc.get("public"))
        return await self._private_key(
            key_id, alias, private.encode("ascii"), str(doc["algorithm"]), public
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def delete_key(self, key_id: str) -> None:
        """Soft delete (``deleted`` set), as notary-signer: the ID can never come back."""
        self._cache.pop(key_id, None)
        if not key_id or len(key_id) > MAX_NAME:
            return
        path = self._db.doc_path(doc_id(key_id))
        for _ in range(_ATTEMPTS):
            async with self._errors():
                try:
                    doc: dict[str, Any] = await self._db.get_json(path, "read key")
                except CouchNotFoundError:
                    return
                if doc.get("deleted"):
                    return
                now = _fmt(self._clock())
                try:
                    await self._db.request(
                        "PUT", path, "delete key", body={**doc, "deleted": now, "updated_at": now}
                    )
                    return
                except CouchConflictError:
                    continue
        raise KeyServiceUnavailableError(f"key database: could not delete {key_id}")

    async def check_health(self) -> None:
        async with self._errors():
            try:
                await self._db.get_json(self._db.db_path, "open key database")
            except CouchNotFoundError:
                raise KeyServiceUnavailableError(
                    f"key database {self.target.database!r} does not exist"
                ) from None
            if await self._design() is None:
                raise KeyServiceUnavailableError(
                    f"key database {self.target.database!r} has no key view (open it with create)"
                )

    async def close(self) -> None:
        self._cache.clear()
        await self._db.close()
