"""Re-encrypt every stored key under another passphrase alias, while signers run.

Retiring a passphrase (it leaked, or policy says rotate yearly) means every
``private`` value must be re-encrypted under the new alias's passphrase. Each
row is rewritten on its own with a compare-and-swap on its old ciphertext, so
running signers (vouch or notary-signer, which also read the alias per row)
keep signing throughout: a row is always readable under either its old or its
new alias as long as both passphrases are set. Nothing is ever decrypted into
a log or an error message.

Procedure (docs/signer.md): give every signer the new ``NOTARY_SIGNER_<NEW>``
and make NEW the ``default_alias`` (rolling restart), run ``vouch signer
rotate-alias --to NEW``, then drop the old variable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from vouch.crypto import jwe
from vouch.keyservice.base import KeyDecryptionError, KeyServiceUnavailableError
from vouch.keyservice.couch import checked_key
from vouch.keyservice.encrypted import ENV_PREFIX
from vouch.keyservice.schema import KEYWRAP_ALG, load_private, private_keys
from vouch.storage.base import StorageError
from vouch.storage.couchhttp import CouchClient, CouchConflictError, CouchTarget, jparams

_t = private_keys.c


@dataclass
class RotationReport:
    """What :func:`rotate_alias` did; ``failed`` maps key ID → reason (no secrets)."""

    rotated: list[str] = field(default_factory=list)
    already: int = 0
    raced: list[str] = field(default_factory=list)  # changed by someone else meanwhile
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


async def rotate_alias(
    engine: AsyncEngine,
    passphrases: Mapping[str, str],
    to_alias: str,
    *,
    p2c: int = jwe.DEFAULT_P2C,
    include_deleted: bool = True,
) -> RotationReport:
    """Re-encrypt every row not yet under ``to_alias`` with that alias's passphrase.

    Soft-deleted rows are re-encrypted too by default: their ciphertext is
    still in the table, and the old passphrase can only be retired once no
    row needs it. Rows whose alias has no passphrase here are reported as
    failures and left untouched.
    """
    secrets = {alias.upper(): pw for alias, pw in passphrases.items() if pw}
    target = to_alias.upper()
    if not to_alias or len(to_alias) > 50:
        raise ValueError("the alias must be 1 to 50 characters")
    new_passphrase = secrets.get(target)
    if not new_passphrase:
        raise ValueError(f"no passphrase for alias {to_alias!r} (set {ENV_PREFIX}{target})")
    report = RotationReport()
    query = select(
        _t.id, _t.key_id, _t.algorithm, _t.public, _t.private, _t.passphrase_alias
    ).order_by(_t.id)
    if not include_deleted:
        query = query.where(_t.deleted_at.is_(None))
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
    except (SQLAlchemyError, OSError) as exc:
        raise KeyServiceUnavailableError(f"key database error: {type(exc).__name__}") from None
    for row in rows:
        alias: str = row.passphrase_alias
        if alias.upper() == target:
            report.already += 1
            continue
        old_passphrase = secrets.get(alias.upper())
        if not old_passphrase:
            report.failed[row.key_id] = f"no passphrase for alias {alias!r}"
            continue
        old_private = bytes(row.private)
        try:
            plaintext = await asyncio.to_thread(jwe.decrypt, old_private, old_passphrase)
            # Refuse to re-encrypt something that is not the row's key.
            load_private(row.key_id, row.algorithm, bytes(row.public), plaintext)
            token = await asyncio.to_thread(jwe.encrypt, plaintext, new_passphrase, p2c=p2c)
        except jwe.WrongPassphraseError:
            report.failed[row.key_id] = f"wrong passphrase for alias {alias!r}"
            continue
        except (jwe.JWEError, KeyDecryptionError) as exc:
            report.failed[row.key_id] = str(exc)
            continue
        now = datetime.now(UTC).replace(tzinfo=None)
        swap = (
            update(private_keys)
            .where(
                _t.id == row.id,
                _t.passphrase_alias == alias,
                _t.private == old_private,
            )
            .values(
                private=token.encode("ascii"),
                passphrase_alias=to_alias,
                keywrap_alg=KEYWRAP_ALG,
                updated_at=now,
            )
        )
        try:
            async with engine.begin() as conn:
                changed = (await conn.execute(swap)).rowcount
        except (SQLAlchemyError, OSError) as exc:
            report.failed[row.key_id] = f"update failed: {type(exc).__name__}"
            continue
        (report.rotated if changed == 1 else report.raced).append(row.key_id)
    return report


async def rotate_alias_couch(
    target: CouchTarget,
    passphrases: Mapping[str, str],
    to_alias: str,
    *,
    p2c: int = jwe.DEFAULT_P2C,
    include_deleted: bool = True,
) -> RotationReport:
    """:func:`rotate_alias` on a CouchDB key database (:mod:`vouch.keyservice.couch`).

    Each document is rewritten with its ``_rev``: the revision is the
    compare-and-swap, so a document changed meanwhile (a signature's
    ``last_used``, a delete) is reported as raced and left for the next run.
    """
    secrets = {alias.upper(): pw for alias, pw in passphrases.items() if pw}
    target_alias = to_alias.upper()
    if not to_alias or len(to_alias) > 50:
        raise ValueError("the alias must be 1 to 50 characters")
    new_passphrase = secrets.get(target_alias)
    if not new_passphrase:
        raise ValueError(f"no passphrase for alias {to_alias!r} (set {ENV_PREFIX}{target_alias})")
    report = RotationReport()
    db = CouchClient(target)
    try:
        try:
            params = jparams(include_docs=True, startkey="key:", endkey="key:\ufff0")
            body = await db.get_json(f"{db.db_path}/_all_docs", "list keys", params=params)
        except StorageError as exc:
            raise KeyServiceUnavailableError(f"key database error: {exc}") from None
        for row in body.get("rows", []):
            doc = row.get("doc")
            if not isinstance(doc, dict) or doc.get("type") != "private_key":
                continue
            key_id = str(doc.get("key_id"))
            if doc.get("deleted") and not include_deleted:
                continue
            alias = doc.get("passphrase_alias")
            private = doc.get("private")
            if not isinstance(alias, str) or not isinstance(private, str):
                report.failed[key_id] = "malformed key document"
                continue
            if alias.upper() == target_alias:
                report.already += 1
                continue
            old_passphrase = secrets.get(alias.upper())
            if not old_passphrase:
                report.failed[key_id] = f"no passphrase for alias {alias!r}"
                continue
            try:
                if doc.get("_id") != f"key:{key_id}":
                    raise KeyDecryptionError(f"key {key_id}: its document names another key")
                _, public = checked_key(key_id, doc.get("algorithm"), doc.get("public"))
                plaintext = await asyncio.to_thread(jwe.decrypt, private.encode(), old_passphrase)
                load_private(key_id, str(doc["algorithm"]), public, plaintext)
                token = await asyncio.to_thread(jwe.encrypt, plaintext, new_passphrase, p2c=p2c)
            except jwe.WrongPassphraseError:
                report.failed[key_id] = f"wrong passphrase for alias {alias!r}"
                continue
            except (jwe.JWEError, KeyDecryptionError, UnicodeEncodeError) as exc:
                report.failed[key_id] = str(exc)
                continue
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            swapped = {
                **doc,
                "private": token,
                "passphrase_alias": to_alias,
                "keywrap_alg": KEYWRAP_ALG,
                "updated_at": now,
            }
            try:
                await db.request("PUT", db.doc_path(str(doc["_id"])), "re-encrypt", body=swapped)
            except CouchConflictError:
                report.raced.append(key_id)
                continue
            except StorageError as exc:
                report.failed[key_id] = f"update failed: {type(exc).__name__}"
                continue
            report.rotated.append(key_id)
    finally:
        await db.close()
    return report


__all__ = ["RotationReport", "rotate_alias", "rotate_alias_couch"]
