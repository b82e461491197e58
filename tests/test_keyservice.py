"""The key service: semantics on every backend, encryption at rest, and a shared table
with the real notary-signer.

SQL backends: SQLite (a temp file), PostgreSQL (127.0.0.1:5432, user postgres) and
MariaDB (127.0.0.1:3306, root). Each xdist worker creates its own uniquely named
database and drops it afterwards; an unreachable server FAILS the run, because a
skipped backend looks exactly like a passing one. Tests share a worker's database
and isolate themselves by using fresh GUNs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import aiomysql
import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

import couchdb_harness as ch
from notary_harness import (
    NotaryCLI,
    NotaryServer,
    _parent_death_signal,
    fetch,
    free_port,
    metadata_url,
)
from vouch.crypto import jwe
from vouch.keyservice import (
    KeyDecryptionError,
    KeyNotFoundError,
    KeyService,
    KeyServiceUnavailableError,
    LocalKeyService,
    MemoryKeyService,
    UnsupportedAlgorithmError,
    passphrases_from_env,
    sign_metadata,
)
from vouch.keyservice.couch import CouchKeyService, doc_id
from vouch.keyservice.schema import private_keys
from vouch.tuf import build
from vouch.tuf.keys import Key, verify
from vouch.tuf.metadata import Metadata, Timestamp

T = TypeVar("T")

ALIAS = "alias1"
PASSPHRASE = "correct horse battery staple"
PASSPHRASES = {ALIAS: PASSPHRASE}
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
MESSAGE = b'{"_type":"Timestamp","version":1}'


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# -- databases ------------------------------------------------------------------------------


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(database="postgres", timeout=10, **PG)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _mariadb_admin(sql: str) -> None:
    conn = await aiomysql.connect(autocommit=True, connect_timeout=10, **MARIADB)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        conn.close()


def _create_database(kind: str, admin: Callable[[str], Coroutine[Any, Any, None]]) -> str:
    name = f"vouch_keys_{uuid.uuid4().hex[:16]}"
    try:
        run(admin(f"CREATE DATABASE {name}"))
    except Exception as exc:  # any failure to reach the server must fail loudly
        pytest.fail(
            f"{kind} is required for the key service tests and was not usable: {exc!r}",
            pytrace=False,
        )
    return name


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = _create_database("PostgreSQL at 127.0.0.1:5432 (user postgres)", _pg_admin)
    yield name
    run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[str]:
    name = _create_database("MariaDB at 127.0.0.1:3306 (root)", _mariadb_admin)
    yield name
    run(_mariadb_admin(f"DROP DATABASE IF EXISTS {name}"))


def _sql_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    if kind == "postgresql":
        return (
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{request.getfixturevalue('pg_database')}"
        )
    name = request.getfixturevalue("mariadb_database")
    return f"mysql+aiomysql://root@127.0.0.1:3306/{name}"


@pytest.fixture
def couch_url() -> Iterator[str]:
    """A fresh key database on the CouchDB-protocol test server (PouchDB Server)."""
    ch.require_couch()
    name = ch.new_db_name("vouch_keys")
    yield ch.store_url(name)
    ch.drop_db(name)


def _url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "couchdb":
        url: str = request.getfixturevalue("couch_url")
        return url
    return _sql_url(kind, request, tmp_path)


def is_couch(url: str) -> bool:
    return url.startswith(("http://", "https://"))


@pytest.fixture(params=["sqlite", "postgresql", "mariadb", "couchdb"])
def stored_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A backend that stores keys: the SQL databases and CouchDB."""
    return _url(request.param, request, tmp_path)


@pytest.fixture(params=["memory", "sqlite", "postgresql", "mariadb", "couchdb"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A backend URL, or "memory" for :class:`MemoryKeyService`."""
    return "memory" if request.param == "memory" else _url(request.param, request, tmp_path)


@pytest.fixture
def gun() -> str:
    return f"example.com/{uuid.uuid4().hex}/app"


@contextlib.asynccontextmanager
async def opened(
    url: str, passphrases: dict[str, str] = PASSPHRASES, alias: str = ALIAS, **kwargs: Any
) -> AsyncIterator[LocalKeyService | CouchKeyService]:
    service: LocalKeyService | CouchKeyService
    if is_couch(url):
        service = await CouchKeyService.open(url, passphrases, alias, **kwargs)
    else:
        service = await LocalKeyService.open(url, passphrases, alias, **kwargs)
    try:
        yield service
    finally:
        await service.close()


@contextlib.asynccontextmanager
async def any_service(url: str) -> AsyncIterator[KeyService]:
    if url == "memory":
        yield MemoryKeyService()
        return
    async with opened(url) as service:
        yield service


def couch_doc(url: str, key_id: str) -> dict[str, Any]:
    name = url.rsplit("/", 1)[1]
    resp = ch.couch("GET", f"/{name}/{doc_id(key_id)}")
    resp.raise_for_status()
    doc: dict[str, Any] = resp.json()
    return doc


def _couch_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")


def as_row(doc: dict[str, Any]) -> dict[str, Any]:
    """A key document in the shape of a ``private_keys`` row, to check both alike."""
    row = dict(doc)
    row["public"] = base64.b64decode(doc["public"])
    row["private"] = doc["private"].encode("ascii")
    row["deleted_at"] = _couch_time(doc["deleted"])
    for name in ("created_at", "updated_at", "last_used"):
        row[name] = _couch_time(doc[name])
    return row


async def raw_row(url: str, key_id: str) -> dict[str, Any]:
    """The row exactly as stored, deleted or not."""
    if is_couch(url):
        return as_row(couch_doc(url, key_id))
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(select(private_keys).where(private_keys.c.key_id == key_id))
            ).one()
        return dict(row._mapping)
    finally:
        await engine.dispose()


async def raw_rows(url: str, gun: str) -> list[dict[str, Any]]:
    if is_couch(url):
        docs = ch.all_docs(url.rsplit("/", 1)[1])
        return [as_row(d) for d in docs if d.get("type") == "private_key" and d["gun"] == gun]
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            query = select(private_keys).where(private_keys.c.gun == gun)
            return [dict(r._mapping) for r in (await conn.execute(query)).all()]
    finally:
        await engine.dispose()


async def tamper(url: str, victim: str, /, **values: Any) -> None:
    """Overwrite stored fields of a key behind the service's back (an attacker with
    write access to the key database). ``bytes`` values go in as the backend stores them."""
    if is_couch(url):
        doc = couch_doc(url, victim)
        for field, value in values.items():
            if field == "public":
                doc[field] = base64.b64encode(value).decode()
            else:
                doc[field] = value.decode("ascii") if isinstance(value, bytes) else value
        db = url.rsplit("/", 1)[1]
        ch.couch("PUT", f"/{db}/{doc_id(victim)}", doc).raise_for_status()
        return
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            update = private_keys.update().where(private_keys.c.key_id == victim)
            await conn.execute(update.values(**values))
    finally:
        await engine.dispose()


async def signs(service: KeyService, key: Key, message: bytes = MESSAGE) -> bool:
    signature = await service.sign(key.keyid, message)
    assert signature.keyid == key.keyid
    assert signature.method == ("eddsa" if key.keytype == "ed25519" else "ecdsa")
    return verify(key, signature.method, signature.signature_bytes, message)


# -- semantics on every backend -----------------------------------------------------------


def test_create_key_reuses_the_unused_key(any_url: str, gun: str) -> None:
    async def scenario() -> None:
        async with any_service(any_url) as keys:
            first = await keys.create_key(gun, "timestamp", "ecdsa")
            assert first.keytype == "ecdsa"
            assert await keys.create_key(gun, "timestamp", "ecdsa") == first
            # Another role, algorithm or GUN (also by case only) is another key.
            others = [
                await keys.create_key(gun, "snapshot", "ecdsa"),
                await keys.create_key(gun, "timestamp", "ed25519"),
                await keys.create_key(gun.upper(), "timestamp", "ecdsa"),
            ]
            assert len({first, *others}) == 4
            # Once it signed, the key is no longer handed out, but still signs.
            assert await signs(keys, first)
            second = await keys.create_key(gun, "timestamp", "ecdsa")
            assert second != first
            assert await keys.create_key(gun, "timestamp", "ecdsa") == second
            assert await signs(keys, first)

    run(scenario())


def test_rotate_always_creates_and_get_key_returns_newest(any_url: str, gun: str) -> None:
    async def scenario() -> None:
        async with any_service(any_url) as keys:
            assert await keys.get_key(gun, "timestamp") is None
            one = await keys.rotate_key(gun, "timestamp", "ecdsa")
            two = await keys.rotate_key(gun, "timestamp", "ecdsa")
            assert one != two
            assert await keys.get_key(gun, "timestamp") == two
            three = await keys.rotate_key(gun, "timestamp", "ed25519")
            assert await keys.get_key(gun, "timestamp") == three
            # create_key hands out the newest unused key of the algorithm
            assert await keys.create_key(gun, "timestamp", "ecdsa") == two
            for key in (one, two, three):
                assert await keys.public_key(key.keyid) == key
                assert await signs(keys, key)

    run(scenario())


@pytest.mark.parametrize("algorithm", ["ecdsa", "ed25519"])
def test_sign_verifies_and_marks_used(any_url: str, gun: str, algorithm: str) -> None:
    async def scenario() -> None:
        async with any_service(any_url) as keys:
            key = await keys.create_key(gun, "snapshot", algorithm)
            info = await keys.key_info(key.keyid)
            assert info is not None
            assert (info.gun, info.role, info.algorithm, info.key) == (
                gun,
                "snapshot",
                algorithm,
                key,
            )
            assert info.last_used is None
            assert await signs(keys, key)
            assert not verify(
                key, "eddsa" if algorithm == "ed25519" else "ecdsa", b"x" * 64, MESSAGE
            )
            info = await keys.key_info(key.keyid)
            assert info is not None and info.last_used is not None
            assert info.created_at is not None and info.created_at.tzinfo is not None
            assert info.last_used.tzinfo is not None
            assert abs(info.last_used - datetime.now(UTC)) < timedelta(minutes=5)
            # The async signer bridge signs real metadata that then verifies.
            md = Metadata(build.timestamp(b"snapshot bytes", datetime(2030, 1, 1, tzinfo=UTC)))
            await sign_metadata(md, [keys.signer(key.keyid)])
            parsed = Metadata.from_bytes(md.to_bytes(), Timestamp)
            assert parsed.verified_keyids({key.keyid: key}, 1, "timestamp") == {key.keyid}

    run(scenario())


def test_ecdsa_public_key_encoding(any_url: str, gun: str) -> None:
    async def scenario() -> None:
        async with any_service(any_url) as keys:
            ec_key = await keys.create_key(gun, "timestamp")
            assert ec_key.public.startswith("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE")
            assert len(ec_key.public_bytes()) == 91
            ed_key = await keys.create_key(gun, "timestamp", "ed25519")
            assert len(ed_key.public_bytes()) == 32

    run(scenario())


def test_refuses_rsa_and_bad_names(any_url: str, gun: str) -> None:
    async def scenario() -> None:
        async with any_service(any_url) as keys:
            with pytest.raises(UnsupportedAlgorithmError, match="algorithm rsa not supported"):
                await keys.create_key(gun, "timestamp", "rsa")
            with pytest.raises(UnsupportedAlgorithmError):
                await keys.rotate_key(gun, "timestamp", "rsa")
            with pytest.raises(ValueError, match="gun"):
                await keys.create_key("g" * 256, "timestamp")
            with pytest.raises(ValueError, match="role"):
                await keys.create_key(gun, "")

    run(scenario())


def test_unknown_key(any_url: str) -> None:
    async def scenario() -> None:
        async with any_service(any_url) as keys:
            missing = "0" * 64
            assert await keys.public_key(missing) is None
            assert await keys.key_info(missing) is None
            with pytest.raises(KeyNotFoundError, match=f"signing key not found: {missing}"):
                await keys.sign(missing, MESSAGE)
            with pytest.raises(KeyNotFoundError):
                await keys.signer("x" * 300).sign(MESSAGE)
            await keys.delete_key(missing)  # succeeds, as notary-signer's DeleteKey
            await keys.check_health()

    run(scenario())


def test_delete_is_soft_and_final(any_url: str, gun: str) -> None:
    async def scenario() -> None:
        async with any_service(any_url) as keys:
            key = await keys.create_key(gun, "timestamp")
            assert await signs(keys, key)
            await keys.delete_key(key.keyid)
            await keys.delete_key(key.keyid)
            assert await keys.public_key(key.keyid) is None
            assert await keys.get_key(gun, "timestamp") is None
            with pytest.raises(KeyNotFoundError):
                await keys.sign(key.keyid, MESSAGE)
            unused = await keys.create_key(gun, "snapshot")
            await keys.delete_key(unused.keyid)
            assert await keys.create_key(gun, "snapshot") != unused
        if any_url != "memory":
            row = await raw_row(any_url, key.keyid)
            assert row["deleted_at"] is not None and row["private"]

    run(scenario())


# -- SQL: encryption at rest, restarts, caching -------------------------------------------


@pytest.mark.parametrize("algorithm", ["ecdsa", "ed25519"])
def test_private_column_is_a_jwe_without_the_key_in_clear(
    stored_url: str, gun: str, algorithm: str
) -> None:
    async def scenario() -> None:
        async with opened(stored_url) as keys:
            key = await keys.create_key(gun, "timestamp", algorithm)
        row = await raw_row(stored_url, key.keyid)
        assert row["key_id"] == key.keyid
        assert (row["encryption_alg"], row["keywrap_alg"]) == ("A256GCM", "PBES2-HS256+A128KW")
        assert (row["algorithm"], row["passphrase_alias"]) == (algorithm, ALIAS)
        assert (row["gun"], row["role"], row["last_used"], row["deleted_at"]) == (
            gun,
            "timestamp",
            None,
            None,
        )
        assert row["created_at"] is not None
        assert bytes(row["public"]) == key.public_bytes()  # raw bytes, not base64
        private = bytes(row["private"])
        parts = private.split(b".")
        assert len(parts) == 5
        header = json.loads(base64.urlsafe_b64decode(parts[0] + b"=" * (-len(parts[0]) % 4)))
        assert (header["alg"], header["enc"], header["p2c"]) == (jwe.ALG, jwe.ENC, 8192)
        plaintext = jwe.decrypt(private, PASSPHRASE)
        if algorithm == "ecdsa":
            assert len(plaintext) == 121 and plaintext.startswith(b"\x30\x77\x02\x01\x01\x04\x20")
            secret = plaintext[7:39]
        else:
            assert len(plaintext) == 96 and plaintext[:32] == plaintext[64:] == key.public_bytes()
            secret = plaintext[32:64]
        for encoding in (bytes, base64.b64encode, base64.urlsafe_b64encode, bytes.hex):
            encoded = encoding(secret)
            assert (encoded.encode() if isinstance(encoded, str) else encoded) not in private
        assert plaintext not in private

    run(scenario())


@pytest.mark.parametrize("algorithm", ["ecdsa", "ed25519"])
def test_restart_finds_and_uses_the_keys(stored_url: str, gun: str, algorithm: str) -> None:
    async def scenario() -> None:
        async with opened(stored_url) as keys:
            used = await keys.create_key(gun, "timestamp", algorithm)
            assert await signs(keys, used)
            unused = await keys.create_key(gun, "timestamp", algorithm)
        async with opened(stored_url) as keys:  # a new process, in effect: empty cache
            assert await keys.public_key(used.keyid) == used
            assert await keys.get_key(gun, "timestamp") == unused
            assert await keys.create_key(gun, "timestamp", algorithm) == unused
            assert await signs(keys, used)
            assert await signs(keys, unused)

    run(scenario())


def test_wrong_or_missing_passphrase_is_a_clear_error(stored_url: str, gun: str) -> None:
    async def scenario() -> None:
        async with opened(stored_url) as keys:
            key = await keys.create_key(gun, "timestamp")
        async with opened(stored_url, {ALIAS: "not the passphrase"}) as keys:
            with pytest.raises(KeyDecryptionError) as info:
                await keys.sign(key.keyid, MESSAGE)
            text = str(info.value)
            assert f"wrong passphrase for alias '{ALIAS}'" in text and key.keyid in text
            assert "not the passphrase" not in text and PASSPHRASE not in text
            # Public information stays available.
            assert await keys.public_key(key.keyid) == key
        async with opened(stored_url, {"other": "x"}, "other") as keys:
            with pytest.raises(KeyDecryptionError, match="no passphrase for alias 'alias1'"):
                await keys.sign(key.keyid, MESSAGE)
            with pytest.raises(KeyDecryptionError, match="NOTARY_SIGNER_ALIAS1"):
                await keys.sign(key.keyid, MESSAGE)
        # Aliases are case-insensitive, as notary-signer's NOTARY_SIGNER_<UPPER(alias)>.
        async with opened(stored_url, {"ALIAS1": PASSPHRASE}, "Alias1") as keys:
            assert await signs(keys, key)
            assert PASSPHRASE not in repr(vars(keys))

    run(scenario())


def test_old_aliases_stay_readable_after_changing_the_default(stored_url: str, gun: str) -> None:
    async def scenario() -> None:
        async with opened(stored_url) as keys:
            old = await keys.create_key(gun, "timestamp")
        both = {ALIAS: PASSPHRASE, "alias2": "second passphrase"}
        async with opened(stored_url, both, "alias2") as keys:
            new = await keys.rotate_key(gun, "timestamp", "ecdsa")
            assert await signs(keys, old) and await signs(keys, new)
        assert (await raw_row(stored_url, new.keyid))["passphrase_alias"] == "alias2"

    run(scenario())


def test_constructor_refuses_unusable_default_alias() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(ValueError, match="NOTARY_SIGNER_MISSING"):
        LocalKeyService(engine, PASSPHRASES, "missing")
    with pytest.raises(ValueError, match="no passphrase"):
        LocalKeyService(engine, {"empty": ""}, "empty")
    with pytest.raises(ValueError, match="alias"):
        LocalKeyService(engine, {"a" * 51: "x"}, "a" * 51)


def test_decrypted_keys_are_cached(
    stored_url: str, gun: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = jwe.decrypt

    def counting(token: str | bytes, passphrase: str, *, max_p2c: int = jwe.MAX_P2C) -> bytes:
        calls.append(1)
        return real(token, passphrase, max_p2c=max_p2c)

    monkeypatch.setattr(jwe, "decrypt", counting)

    async def scenario() -> None:
        async with opened(stored_url) as keys:
            key = await keys.create_key(gun, "timestamp")
            assert await signs(keys, key)  # created here: cached without a decrypt
        assert calls == []
        async with opened(stored_url, cache_size=1) as keys:
            other = await keys.create_key(gun, "snapshot")  # fills the one-entry cache
            for _ in range(3):
                assert await signs(keys, key)
            assert len(calls) == 1
            assert await signs(keys, other)  # evicted by key: decrypted again
            assert len(calls) == 2

    run(scenario())


def test_last_used_is_refreshed_coarsely(stored_url: str, gun: str) -> None:
    now = [datetime(2030, 1, 1, 12, 0, 0)]

    async def scenario() -> None:
        async with opened(stored_url, clock=lambda: now[0]) as keys:
            key = await keys.create_key(gun, "timestamp")
            assert (await raw_row(stored_url, key.keyid))["last_used"] is None
            await keys.sign(key.keyid, MESSAGE)
            assert (await raw_row(stored_url, key.keyid))["last_used"] == now[0]
            first = now[0]
            now[0] += timedelta(minutes=30)
            await keys.sign(key.keyid, MESSAGE)
            assert (await raw_row(stored_url, key.keyid))["last_used"] == first
            now[0] += timedelta(minutes=31)
            await keys.sign(key.keyid, MESSAGE)
            assert (await raw_row(stored_url, key.keyid))["last_used"] == now[0]

    run(scenario())


def test_a_key_deleted_elsewhere_stops_signing_here(stored_url: str, gun: str) -> None:
    async def scenario() -> None:
        async with opened(stored_url) as one, opened(stored_url) as two:
            key = await one.create_key(gun, "timestamp")
            assert await signs(one, key)  # cached in `one`
            await two.delete_key(key.keyid)
            with pytest.raises(KeyNotFoundError):
                await one.sign(key.keyid, MESSAGE)

    run(scenario())


def test_rows_that_do_not_match_their_key_id_are_refused(stored_url: str, gun: str) -> None:
    """A row whose private key is another key's must not sign under the row's ID."""

    async def scenario() -> None:
        async with opened(stored_url) as keys:
            victim = await keys.create_key(gun, "timestamp")
            other = await keys.create_key(gun, "snapshot")
        stolen = (await raw_row(stored_url, other.keyid))["private"]
        await tamper(stored_url, victim.keyid, private=stolen)
        async with opened(stored_url) as keys:
            with pytest.raises(KeyDecryptionError, match="does not match"):
                await keys.sign(victim.keyid, MESSAGE)

    run(scenario())


def test_concurrent_create_key(stored_url: str, gun: str) -> None:
    """One instance: concurrent calls agree on one key. Two instances on one database
    (two server processes) may race and each create a key: both are stored, valid and
    usable, and later calls settle on one of them. notary-signer behaves the same."""

    async def scenario() -> None:
        async with opened(stored_url) as one, opened(stored_url) as two:
            same = await asyncio.gather(*(one.create_key(gun, "timestamp") for _ in range(8)))
            assert len(set(same)) == 1
            assert len(await raw_rows(stored_url, gun)) == 1
            await one.sign(same[0].keyid, MESSAGE)  # used: the race below creates anew
            a, b = await asyncio.gather(
                one.create_key(gun, "timestamp"), two.create_key(gun, "timestamp")
            )
            assert a != same[0] and b != same[0]
            for key in {a, b}:
                assert await two.public_key(key.keyid) == key
                assert await signs(one, key)
            unused = [r for r in await raw_rows(stored_url, gun) if r["last_used"] is None]
            assert unused == []  # both just signed
            settled = await asyncio.gather(
                one.create_key(gun, "snapshot"), one.create_key(gun, "snapshot")
            )
            assert settled[0] == settled[1]

    run(scenario())


def test_database_failures_are_unavailable_errors(gun: str) -> None:
    async def scenario() -> None:
        engine = create_async_engine(
            "postgresql+asyncpg://postgres@127.0.0.1:1/none", hide_parameters=True
        )
        keys = LocalKeyService(engine, PASSPHRASES, ALIAS, owns_engine=True)
        try:
            with pytest.raises(KeyServiceUnavailableError):
                await keys.check_health()
            with pytest.raises(KeyServiceUnavailableError):
                await keys.create_key(gun, "timestamp")
            with pytest.raises(KeyServiceUnavailableError):
                await keys.sign("0" * 64, MESSAGE)
        finally:
            await keys.close()
        with pytest.raises(KeyServiceUnavailableError):
            await LocalKeyService.open(
                "postgresql+asyncpg://postgres@127.0.0.1:1/x", PASSPHRASES, ALIAS
            )

    run(scenario())


def test_missing_table_fails_health_check(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
        keys = LocalKeyService(engine, PASSPHRASES, ALIAS, owns_engine=True)
        try:
            with pytest.raises(KeyServiceUnavailableError, match="private_keys"):
                await keys.check_health()
            await keys.create_table()
            await keys.check_health()
        finally:
            await keys.close()

    run(scenario())


def test_passphrases_from_env() -> None:
    env = {
        "NOTARY_SIGNER_ALIAS1": "one",
        "NOTARY_SIGNER_MyAlias": "two",
        "NOTARY_SIGNER_DEFAULT_ALIAS": "alias1",
        "NOTARY_SIGNER_EMPTY": "",
        "HOME": "/root",
    }
    assert passphrases_from_env(env) == {"alias1": "one", "myalias": "two"}
    assert isinstance(passphrases_from_env(), dict)


# -- the same table as the real notary-signer ------------------------------------------------

SIGNER_BIN = "/usr/bin/notary-signer"


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a ``localhost`` certificate for the signer's mandatory gRPC TLS."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vouch test CA")])
    base = x509.CertificateBuilder().issuer_name(ca_name).serial_number(x509.random_serial_number())
    base = base.not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
    ca = (
        base.subject_name(ca_name)
        .public_key(ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        base.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .public_key(key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "signer.crt", directory / "signer.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class NotarySigner:
    """A real notary-signer on a database DSN (Go syntax), TLS on a free port."""

    def __init__(self, workdir: Path, backend: str, dsn: str) -> None:
        self.workdir = workdir
        self.backend, self.dsn = backend, dsn
        self.port = 0
        self.ca = workdir / "ca.crt"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        if not os.access(SIGNER_BIN, os.X_OK):
            pytest.fail(f"{SIGNER_BIN} is missing: install the Debian package 'notary'")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca, cert, key = _tls_files(self.workdir)
        self.port = free_port()
        config = {
            "server": {
                "grpc_addr": f"127.0.0.1:{self.port}",
                "tls_cert_file": str(cert),
                "tls_key_file": str(key),
            },
            "storage": {"backend": self.backend, "db_url": self.dsn, "default_alias": ALIAS},
            "logging": {"level": "error"},
        }
        (self.workdir / "signer.json").write_text(json.dumps(config))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin"),
            f"NOTARY_SIGNER_{ALIAS.upper()}": PASSPHRASE,
        }
        self._log = (self.workdir / "signer.log").open("wb")
        self._proc = subprocess.Popen(
            [SIGNER_BIN, "-config", str(self.workdir / "signer.json")],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_parent_death_signal(),  # noqa: PLW1509 - only a prctl() call
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.5),
            ):
                return self
            time.sleep(0.05)
        log = (self.workdir / "signer.log").read_text(errors="replace")
        self.__exit__(None, None, None)
        pytest.fail(f"notary-signer did not start:\n{log}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._log.close()

    def server(self, workdir: Path, algorithm: str) -> NotaryServer:
        trust = {
            "type": "remote",
            "hostname": "localhost",
            "port": str(self.port),
            "key_algorithm": algorithm,
            "tls_ca_file": str(self.ca),
        }
        return NotaryServer(workdir, extra_config={"trust_service": trust})


def _server_key(server: NotaryServer, gun: str) -> Key:
    return Key.from_dict(json.loads(fetch(metadata_url(server.url, gun, "timestamp.key"))))


@pytest.mark.interop
@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_shares_private_keys_with_real_notary_signer(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """vouch and notary-signer 0.7.0 on one ``private_keys`` table, both directions:
    notary reuses vouch's unused keys and signs published timestamps with them
    (it decrypts vouch's JWE), and vouch signs with keys notary created (jose2go's JWE)."""
    if backend == "postgresql":
        name = request.getfixturevalue("pg_database")
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        go_backend, dsn = "postgres", f"postgres://postgres@127.0.0.1:5432/{name}?sslmode=disable"
    else:
        name = request.getfixturevalue("mariadb_database")
        url = f"mysql+aiomysql://root@127.0.0.1:3306/{name}"
        go_backend, dsn = "mysql", f"root@tcp(127.0.0.1:3306)/{name}?parseTime=true"
    prefix = f"example.com/{uuid.uuid4().hex[:12]}"
    guns = {
        alg: (f"{prefix}/vouch-{alg}", f"{prefix}/notary-{alg}") for alg in ("ecdsa", "ed25519")
    }

    async def vouch_creates() -> dict[str, Key]:
        async with opened(url) as keys:
            return {alg: await keys.create_key(g[0], "timestamp", alg) for alg, g in guns.items()}

    vouch_keys = run(vouch_creates())
    notary_keys: dict[str, Key] = {}
    with NotarySigner(tmp_path / "signer", go_backend, dsn) as signer:
        for alg, (vouch_gun, notary_gun) in guns.items():
            with signer.server(tmp_path / f"server-{alg}", alg) as server:
                # notary-server → signer CreateKey: vouch's unused key is reused.
                assert _server_key(server, vouch_gun) == vouch_keys[alg]
                notary_keys[alg] = _server_key(server, notary_gun)
                assert notary_keys[alg].keytype == alg
                # Publishing makes notary-signer sign the timestamp with vouch's key.
                cli = NotaryCLI(server.url, tmp_path / f"trust-{alg}")
                cli.run("init", vouch_gun, "-p")
                ts = Metadata.from_bytes(
                    fetch(metadata_url(server.url, vouch_gun, "timestamp.json"))
                )
                key = vouch_keys[alg]
                assert ts.verified_keyids({key.keyid: key}, 1, "timestamp") == {key.keyid}

    async def vouch_uses() -> None:
        async with opened(url) as keys:
            for alg, (vouch_gun, notary_gun) in guns.items():
                key = notary_keys[alg]
                info = await keys.key_info(key.keyid)
                assert info is not None
                assert (info.key, info.gun, info.role, info.last_used) == (
                    key,
                    notary_gun,
                    "timestamp",
                    None,
                )
                assert await signs(keys, key)  # decrypts jose2go's JWE
                used = await keys.key_info(vouch_keys[alg].keyid)
                assert used is not None and used.last_used is not None  # set by notary-signer
                assert await keys.create_key(vouch_gun, "timestamp", alg) != vouch_keys[alg]

    run(vouch_uses())


# -- CouchDB: documents checked against their key ID, deletions that survive replication ----


def test_couch_document_whose_public_key_is_not_its_key_id_is_refused(
    couch_url: str, gun: str
) -> None:
    """A key database writer swaps in another key pair under a victim's key ID (public
    and private both: the private key matches the public one), or serves a document with
    another key's ID: the key is neither served nor used to sign."""

    async def scenario() -> None:
        async with opened(couch_url) as keys:
            victim = await keys.create_key(gun, "timestamp")
            other = await keys.create_key(gun, "snapshot")
        theirs = couch_doc(couch_url, other.keyid)
        await tamper(
            couch_url,
            victim.keyid,
            public=base64.b64decode(theirs["public"]),
            private=theirs["private"].encode(),
        )
        async with opened(couch_url) as keys:
            for call in (
                keys.sign(victim.keyid, MESSAGE),
                keys.public_key(victim.keyid),
                keys.key_info(victim.keyid),
                keys.get_key(gun, "timestamp"),
            ):
                with pytest.raises(KeyDecryptionError, match="does not hash to its key ID"):
                    await call
            assert await signs(keys, other)
        await tamper(couch_url, other.keyid, key_id=victim.keyid)
        async with opened(couch_url) as keys:
            with pytest.raises(KeyDecryptionError, match="names another key"):
                await keys.sign(other.keyid, MESSAGE)

    run(scenario())


def test_couch_deletion_in_a_conflicting_revision_wins(couch_url: str, gun: str) -> None:
    """Two regions: one deletes a key while the other records a signature with it. After
    replication the document has two revisions; whichever CouchDB picks as the winner,
    the key never signs again, and the revisions are merged into a deleted one."""

    async def scenario() -> None:
        async with opened(couch_url) as keys:
            key = await keys.create_key(gun, "timestamp")
        name = couch_url.rsplit("/", 1)[1]
        base = couch_doc(couch_url, key.keyid)
        gen = int(base["_rev"].split("-")[0]) + 1
        used = {**base, "last_used": "2030-01-01T00:00:00.000000Z", "_rev": f"{gen}-{'f' * 32}"}
        deleted = {**base, "deleted": "2030-01-01T00:00:01.000000Z", "_rev": f"{gen}-{'0' * 32}"}
        # new_edits=false stores both as replication would: the used one wins (higher rev).
        resp = ch.couch(
            "POST", f"/{name}/_bulk_docs", {"docs": [used, deleted], "new_edits": False}
        )
        resp.raise_for_status()
        winner = ch.couch("GET", f"/{name}/{doc_id(key.keyid)}?conflicts=true").json()
        assert winner["deleted"] is None and winner["_conflicts"]
        async with opened(couch_url) as keys:
            with pytest.raises(KeyNotFoundError):
                await keys.sign(key.keyid, MESSAGE)
            assert await keys.public_key(key.keyid) is None
        merged = ch.couch("GET", f"/{name}/{doc_id(key.keyid)}?conflicts=true").json()
        assert merged["deleted"] == deleted["deleted"] and "_conflicts" not in merged
        assert merged["last_used"] == used["last_used"]
        async with opened(couch_url) as keys:
            assert await keys.get_key(gun, "timestamp") is None
            assert await keys.create_key(gun, "timestamp") != key

    run(scenario())


def test_couch_failures_are_unavailable_errors(gun: str) -> None:
    async def scenario() -> None:
        with pytest.raises(KeyServiceUnavailableError, match="key database"):
            await CouchKeyService.open("http://127.0.0.1:1/keys", PASSPHRASES, ALIAS)
        name = ch.new_db_name("vouch_keys")
        with pytest.raises(KeyServiceUnavailableError, match="does not exist"):
            await CouchKeyService.open(ch.store_url(name), PASSPHRASES, ALIAS, create=False)

    run(scenario())


def test_couch_key_database_names() -> None:
    from vouch.keyservice.couch import key_target, keys_beside

    assert key_target("https://u:p@couch.example.com:6984/").database == "vouch_keys"
    assert key_target("couchdbs://couch.example.com/signer_keys").database == "signer_keys"
    beside = keys_beside("couchdbs://u:p@couch.example.com/vouch?cacert=/ca.pem")
    assert (beside.database, beside.cacert, beside.username) == ("vouch_keys", "/ca.pem", "u")
    assert beside.server == "https://couch.example.com:6984/"


def test_vouch_server_keys_url_on_couchdb(couch_url: str, tmp_path: Path) -> None:
    """``keys.url`` naming a CouchDB database opens the CouchDB key service there (with
    SQL metadata); a malformed CouchDB URL stops the start with a clear message."""
    from vouch.server.main import open_components
    from vouch.server.settings import ServerSettings

    async def scenario() -> None:
        settings = ServerSettings(
            data_dir=tmp_path / "data",
            storage={"url": f"sqlite:///{tmp_path / 'meta.db'}"},  # type: ignore[arg-type]
            keys={"url": couch_url, "passphrases": {"vouch": "pw-1234"}},  # type: ignore[arg-type]
        )
        store, keys = await open_components(settings, echo=lambda _: None)
        try:
            assert isinstance(keys, CouchKeyService)
            key = await keys.create_key("example.com/wired", "timestamp")
        finally:
            await store.close()
            await keys.close()
        assert couch_doc(couch_url, key.keyid)["gun"] == "example.com/wired"
        assert not (tmp_path / "data" / "keys.db").exists()
        bad = settings.model_copy(
            update={"keys": settings.keys.model_copy(update={"url": "couchdb://h/Bad"})}
        )
        with pytest.raises(SystemExit, match="keys: CouchDB database names"):
            await open_components(bad, echo=lambda _: None)

    run(scenario())
