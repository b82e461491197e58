"""``vouch signer`` in-process: notary-signer's wire semantics, mTLS, the remote client.

Everything here runs a real grpc.aio server on 127.0.0.1 with real TLS (a CA made
per test) and talks to it either with raw gRPC calls (to pin the exact wire
behaviour notary-server depends on: status codes, messages, raw signature
encodings) or through :class:`RemoteKeyService` (what ``vouch server`` uses). The
real notary programs are exercised in tests/test_signer_interop.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

import couchdb_harness as ch
from notary_harness import free_port
from vouch.cli.signer_cmd import signer as signer_cli
from vouch.crypto.privkey import PrivateKey
from vouch.keyservice import (
    KeyInfo,
    KeyNotFoundError,
    KeyServiceError,
    KeyServiceUnavailableError,
    LocalKeyService,
    MemoryKeyService,
    UnsupportedAlgorithmError,
    sign_metadata,
)
from vouch.keyservice.couch import CouchKeyService, key_target
from vouch.keyservice.remote import MIN_CHANNEL_AGE, RemoteKeyService
from vouch.keyservice.schema import private_keys
from vouch.signer import ConfigError, SignerConfig, config_from_dict, load_config
from vouch.signer._grpc import grpc
from vouch.signer.certs import CA, MTLSBundle, issue_mtls_bundle, write_pair
from vouch.signer.protocol import health_pb, pb
from vouch.signer.rotate import rotate_alias
from vouch.signer.server import RunningSigner, start_signer
from vouch.signer.storage import database_target, make_engine, open_key_service
from vouch.tuf import build
from vouch.tuf.keys import Key, verify
from vouch.tuf.metadata import Metadata, Signature

T = TypeVar("T")
GUN = "example.com/signer/app"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def tls(tmp_path: Path) -> MTLSBundle:
    return issue_mtls_bundle(tmp_path / "tls")


def config_for(tls: MTLSBundle, *, mtls: bool = True, port: int = 0, **kw: Any) -> SignerConfig:
    fields: dict[str, Any] = {
        "grpc_addr": f"127.0.0.1:{port}",
        "tls_cert_file": tls.signer_cert,
        "tls_key_file": tls.signer_key,
        "client_ca_file": tls.ca_cert if mtls else None,
        "backend": "memory",
        "db_url": None,
        "default_alias": None,
    }
    fields.update(kw)
    return SignerConfig(**fields)


def client(tls: MTLSBundle, port: int, **kw: Any) -> RemoteKeyService:
    args: dict[str, Any] = {
        "ca_file": tls.ca_cert,
        "cert_file": tls.client_cert,
        "key_file": tls.client_key,
    }
    args.update(kw)
    return RemoteKeyService("127.0.0.1", port, **args)


@asynccontextmanager
async def signer_running(config: SignerConfig, keys: Any = None) -> AsyncIterator[RunningSigner]:
    running = await start_signer(config, keys)
    try:
        yield running
    finally:
        await running.stop(grace=None)


@asynccontextmanager
async def raw_channel(tls: MTLSBundle, port: int) -> AsyncIterator[grpc.aio.Channel]:
    creds = grpc.ssl_channel_credentials(
        tls.ca_cert.read_bytes(), tls.client_key.read_bytes(), tls.client_cert.read_bytes()
    )
    async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
        yield channel


async def rpc(channel: grpc.aio.Channel, path: str, request: Any, response: Any) -> Any:
    call: Any = channel.unary_unary(
        path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response.FromString,
    )
    return await call(request, timeout=10)


async def rpc_error(channel: grpc.aio.Channel, path: str, request: Any, response: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rpc(channel, path, request, response)
    return err.value


# -- configuration ---------------------------------------------------------------------------


def test_reads_notary_signers_config_as_is(tmp_path: Path) -> None:
    """notary-signer's sample config, relative paths, viper's environment overrides."""
    cfg = tmp_path / "conf" / "signer.json"
    cfg.parent.mkdir()
    cfg.write_text(
        json.dumps(
            {
                "server": {
                    "grpc_addr": ":7899",
                    "tls_cert_file": "./signer.crt",
                    "tls_key_file": "./signer.key",
                    "client_ca_file": "./root-ca.crt",
                },
                "storage": {
                    "backend": "mysql",
                    "db_url": "user:pass@tcp(db:3306)/notarysigner?parseTime=true",
                    "default_alias": "alias1",
                },
                "logging": {"level": "info"},
                "reporting": {"bugsnag": {"api_key": "x"}},
            }
        )
    )
    env = {"NOTARY_SIGNER_ALIAS1": "secret-pass-1", "NOTARY_SIGNER_OLD": "secret-pass-0"}
    config = load_config(cfg, env)
    assert config.listen_address == "[::]:7899"
    assert config.tls_cert_file == cfg.parent / "signer.crt"
    assert config.client_ca_file == cfg.parent / "root-ca.crt"
    assert (config.backend, config.default_alias, config.log_level) == ("mysql", "alias1", "info")
    assert config.passphrases["alias1"] == "secret-pass-1"
    assert config.passphrases["old"] == "secret-pass-0"
    assert "secret-pass" not in repr(config)
    assert database_target(config).dialect == "mysql"

    env |= {
        "NOTARY_SIGNER_STORAGE_DB_URL": "postgres://u@h:5432/db?sslmode=disable",
        "NOTARY_SIGNER_STORAGE_BACKEND": "postgres",
        "NOTARY_SIGNER_SERVER_GRPC_ADDR": "127.0.0.1:17899",
    }
    config = load_config(cfg, env)
    assert config.backend == "postgres"
    assert config.listen_address == "127.0.0.1:17899"
    assert database_target(config).dialect == "postgresql"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"server": {"tls_cert_file": "c", "tls_key_file": "k"}}, "grpc listen address"),
        ({"server": {"grpc_addr": ":1", "tls_cert_file": "c"}}, "tls_key_file are required"),
        (
            {"server": {"grpc_addr": ":1", "tls_cert_file": "c", "tls_key_file": "k"}},
            "storage.backend is required",
        ),
        (
            {
                "server": {"grpc_addr": ":1", "tls_cert_file": "c", "tls_key_file": "k"},
                "storage": {"backend": "rethinkdb"},
            },
            "not an allowed backend",
        ),
        (
            {
                "server": {"grpc_addr": ":1", "tls_cert_file": "c", "tls_key_file": "k"},
                "storage": {"backend": "postgres", "db_url": "postgres://h/db"},
            },
            "default alias",
        ),
    ],
)
def test_refuses_configs_notary_signer_refuses(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(doc, Path("/etc/notary"), {})


def test_default_alias_from_environment_and_sqlite_path(tmp_path: Path) -> None:
    doc = {
        "server": {"grpc_addr": "localhost:0", "tls_cert_file": "c", "tls_key_file": "k"},
        "storage": {"backend": "sqlite3", "db_url": "keys.db"},
    }
    config = config_from_dict(doc, tmp_path, {"NOTARY_SIGNER_DEFAULT_ALIAS": "env-alias"})
    assert config.default_alias == "env-alias"
    assert config.db_url == str(tmp_path / "keys.db")
    assert "env-alias" not in config.passphrases  # DEFAULT_ALIAS names an alias, it is none


def test_cli_refuses_to_serve_without_tls_or_config(tmp_path: Path) -> None:
    cfg = tmp_path / "signer.json"
    cfg.write_text(json.dumps({"server": {"grpc_addr": ":0"}, "storage": {"backend": "memory"}}))
    result = CliRunner().invoke(signer_cli, ["--config", str(cfg)])
    assert result.exit_code != 0
    assert "tls_cert_file and server.tls_key_file are required" in result.output
    result = CliRunner().invoke(signer_cli, [])
    assert result.exit_code != 0
    assert "needs --config" in result.output


# -- wire semantics ----------------------------------------------------------------------------


def test_rpcs_match_notary_signer_on_the_wire(tls: MTLSBundle) -> None:
    async def scenario() -> None:
        async with signer_running(config_for(tls)) as srv, raw_channel(tls, srv.port) as ch:
            created = await rpc(
                ch,
                "/proto.KeyManagement/CreateKey",
                pb.CreateKeyRequest(algorithm="ecdsa", gun=GUN, role="timestamp"),
                pb.PublicKey,
            )
            key = Key("ecdsa", base64.b64encode(created.publicKey).decode())
            assert len(created.publicKey) == 91  # raw DER SPKI, not base64
            assert key.keyid == created.keyInfo.keyID.ID
            assert created.keyInfo.algorithm.algorithm == "ecdsa"
            again = await rpc(
                ch,
                "/proto.KeyManagement/CreateKey",
                pb.CreateKeyRequest(algorithm="ecdsa", gun=GUN, role="timestamp"),
                pb.PublicKey,
            )
            assert key.keyid == again.keyInfo.keyID.ID  # unused keys are handed out again

            info = await rpc(
                ch, "/proto.KeyManagement/GetKeyInfo", pb.KeyID(ID=key.keyid), pb.GetKeyInfoResponse
            )
            assert (info.role, info.publicKey) == ("timestamp", created.publicKey)

            message = b'{"_type":"Timestamp","version":1}'  # the full message, not a hash
            sig = await rpc(
                ch,
                "/proto.Signer/Sign",
                pb.SignatureRequest(keyID=pb.KeyID(ID=key.keyid), content=message),
                pb.Signature,
            )
            assert sig.algorithm.algorithm == "ecdsa"  # the signature method
            assert sig.keyInfo.algorithm.algorithm == "ecdsa"  # the key type
            assert key.keyid == sig.keyInfo.keyID.ID
            assert len(sig.content) == 64  # raw r||s, never DER
            assert verify(key, "ecdsa", sig.content, message)

            ed = await rpc(
                ch,
                "/proto.KeyManagement/CreateKey",
                pb.CreateKeyRequest(algorithm="ed25519", gun=GUN, role="snapshot"),
                pb.PublicKey,
            )
            assert len(ed.publicKey) == 32
            ed_sig = await rpc(
                ch,
                "/proto.Signer/Sign",
                pb.SignatureRequest(keyID=ed.keyInfo.keyID, content=message),
                pb.Signature,
            )
            assert (ed_sig.algorithm.algorithm, ed_sig.keyInfo.algorithm.algorithm) == (
                "eddsa",
                "ed25519",
            )
            ed_key = Key("ed25519", base64.b64encode(ed.publicKey).decode())
            assert verify(ed_key, "eddsa", ed_sig.content, message)

            err = await rpc_error(
                ch,
                "/proto.KeyManagement/CreateKey",
                pb.CreateKeyRequest(algorithm="rsa", gun=GUN, role="timestamp"),
                pb.PublicKey,
            )
            assert err.code() == grpc.StatusCode.UNKNOWN
            assert err.details() == "algorithm rsa not supported for create key"
            err = await rpc_error(
                ch, "/proto.KeyManagement/GetKeyInfo", pb.KeyID(ID="abc"), pb.GetKeyInfoResponse
            )
            assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "key abc not found")
            err = await rpc_error(
                ch,
                "/proto.Signer/Sign",
                pb.SignatureRequest(keyID=pb.KeyID(ID="abc"), content=b"x"),
                pb.Signature,
            )
            assert (err.code(), err.details()) == (
                grpc.StatusCode.NOT_FOUND,
                "signing key not found: abc",
            )
            await rpc(ch, "/proto.KeyManagement/DeleteKey", pb.KeyID(ID="abc"), pb.Void)
            await rpc(ch, "/proto.KeyManagement/DeleteKey", pb.KeyID(ID=key.keyid), pb.Void)
            err = await rpc_error(
                ch, "/proto.KeyManagement/GetKeyInfo", pb.KeyID(ID=key.keyid), pb.GetKeyInfoResponse
            )
            assert err.code() == grpc.StatusCode.NOT_FOUND

            for name in ("", "grpc.health.v1.Health.KeyManagement", "grpc.health.v1.Health.Signer"):
                health = await rpc(
                    ch,
                    "/grpc.health.v1.Health/Check",
                    health_pb.HealthCheckRequest(service=name),
                    health_pb.HealthCheckResponse,
                )
                assert health.status == health_pb.HealthCheckResponse.SERVING
            err = await rpc_error(
                ch,
                "/grpc.health.v1.Health/Check",
                health_pb.HealthCheckRequest(service="nope"),
                health_pb.HealthCheckResponse,
            )
            assert err.code() == grpc.StatusCode.NOT_FOUND
            watch: Any = ch.unary_stream(
                "/grpc.health.v1.Health/Watch",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=health_pb.HealthCheckResponse.FromString,
            )
            stream = watch(health_pb.HealthCheckRequest(service=""), timeout=10)
            first = await stream.read()
            assert first.status == health_pb.HealthCheckResponse.SERVING
            stream.cancel()

    run(scenario())


# -- the remote key service ----------------------------------------------------------------------


def test_remote_key_service_round_trip(tls: MTLSBundle) -> None:
    """What ``vouch server`` does through RemoteKeyService, end to end on real TLS."""

    async def scenario() -> None:
        async with signer_running(config_for(tls)) as srv:
            keys = client(tls, srv.port)
            try:
                await keys.check_health()
                ts_key = await keys.create_key(GUN, "timestamp", "ecdsa")
                assert await keys.create_key(GUN, "timestamp", "ecdsa") == ts_key
                assert await keys.rotate_key(GUN, "timestamp", "ecdsa") == ts_key  # = CreateKey
                assert await keys.public_key(ts_key.keyid) == ts_key
                info = await keys.key_info(ts_key.keyid)
                assert info == KeyInfo(ts_key, "", "timestamp", None, None)
                assert await keys.get_key(GUN, "timestamp") is None  # the API cannot list

                message = b"canonical bytes"
                sig = await keys.sign(ts_key.keyid, message)
                assert sig.keyid == ts_key.keyid and sig.method == "ecdsa"
                assert verify(ts_key, "ecdsa", base64.b64decode(sig.sig), message)

                ed = await keys.create_key(GUN, "snapshot", "ed25519")
                assert (await keys.sign(ed.keyid, message)).method == "eddsa"

                with pytest.raises(UnsupportedAlgorithmError, match="rsa not supported"):
                    await keys.create_key(GUN, "timestamp", "rsa")
                with pytest.raises(KeyNotFoundError, match="signing key not found"):
                    await keys.sign("0" * 64, message)
                assert await keys.public_key("0" * 64) is None
                await keys.delete_key("0" * 64)
                await keys.delete_key(ed.keyid)
                assert await keys.public_key(ed.keyid) is None
            finally:
                await keys.close()

    run(scenario())


def test_remote_key_service_signs_metadata(tls: MTLSBundle) -> None:
    async def scenario() -> None:
        async with signer_running(config_for(tls)) as srv:
            keys = client(tls, srv.port)
            try:
                key = await keys.create_key(GUN, "timestamp", "ed25519")
                now = datetime.now(UTC)
                md = Metadata(build.timestamp(b"snapshot bytes", now))
                await sign_metadata(md, [keys.signer(key.keyid)])
                parsed = Metadata.from_bytes(md.to_bytes())
                assert parsed.verified_keyids({key.keyid: key}, 1, "timestamp") == {key.keyid}
            finally:
                await keys.close()

    run(scenario())


class _Lying:
    """A key service that answers with the wrong key or a signature over something else."""

    def __init__(self, inner: MemoryKeyService, *, bad_sig: bool, bad_key: bool) -> None:
        self.inner, self.bad_sig, self.bad_key = inner, bad_sig, bad_key

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def key_info(self, key_id: str) -> KeyInfo | None:
        info = await self.inner.key_info(key_id)
        if info is not None and self.bad_key:
            return KeyInfo(PrivateKey.generate("ecdsa").public, info.gun, info.role, None, None)
        return info

    async def sign(self, key_id: str, message: bytes) -> Signature:
        return await self.inner.sign(key_id, b"something else" if self.bad_sig else message)


@pytest.mark.parametrize("fault", ["bad_sig", "bad_key"])
def test_remote_key_service_checks_what_the_signer_returns(tls: MTLSBundle, fault: str) -> None:
    """A faulty signer must not make the server publish metadata clients would reject."""

    async def scenario() -> None:
        inner = MemoryKeyService()
        lying = _Lying(inner, bad_sig=fault == "bad_sig", bad_key=fault == "bad_key")
        async with signer_running(config_for(tls), lying) as srv:
            keys = client(tls, srv.port)
            try:
                key = await keys.create_key(GUN, "timestamp", "ecdsa")
                if fault == "bad_key":
                    with pytest.raises(KeyServiceError, match="not key"):
                        await keys.public_key(key.keyid)
                else:
                    with pytest.raises(KeyServiceError, match="does not verify"):
                        await keys.sign(key.keyid, b"message")
            finally:
                await keys.close()

    run(scenario())


# -- mutual TLS ----------------------------------------------------------------------------------


def test_mtls_refuses_clients_without_a_certificate_from_the_ca(
    tls: MTLSBundle, tmp_path: Path
) -> None:
    other = issue_mtls_bundle(tmp_path / "other")  # same names, another CA

    async def refused(keys: RemoteKeyService) -> str:
        try:
            with pytest.raises(KeyServiceUnavailableError) as err:
                await keys.check_health()
            with pytest.raises(KeyServiceUnavailableError):
                await keys.create_key(GUN, "timestamp", "ecdsa")
            return str(err.value)
        finally:
            await keys.close()

    async def scenario() -> None:
        async with signer_running(config_for(tls)) as srv:
            no_cert = client(tls, srv.port, cert_file=None, key_file=None)
            assert "UNAVAILABLE" in await refused(no_cert)
            foreign = client(tls, srv.port, cert_file=other.client_cert, key_file=other.client_key)
            assert "UNAVAILABLE" in await refused(foreign)
            # ...and a client does not talk to a signer its CA did not certify.
            impostor = client(tls, srv.port, ca_file=other.ca_cert)
            assert "UNAVAILABLE" in await refused(impostor)
            good = client(tls, srv.port)
            try:
                await good.check_health()
            finally:
                await good.close()
            assert srv.keys is not None
            # No request from a refused client reached the key store.
            assert await srv.keys.get_key(GUN, "timestamp") is None

        # Without client_ca_file the signer is TLS-only, like notary-signer.
        async with signer_running(config_for(tls, mtls=False)) as srv:
            anyone = client(tls, srv.port, cert_file=None, key_file=None)
            try:
                await anyone.check_health()
            finally:
                await anyone.close()

    run(scenario())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_is_at_least_1_2_with_alpn_h2(tls: MTLSBundle) -> None:
    async def handshake(port: int, version: ssl.TLSVersion) -> tuple[str | None, str | None]:
        def go() -> tuple[str | None, str | None]:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(tls.ca_cert)
            ctx.load_cert_chain(tls.client_cert, tls.client_key)
            ctx.set_alpn_protocols(["h2"])
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = version
            if version < ssl.TLSVersion.TLSv1_2:
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost") as conn,
            ):
                return conn.version(), conn.selected_alpn_protocol()

        return await asyncio.to_thread(go)

    async def scenario() -> None:
        async with signer_running(config_for(tls)) as srv:
            assert await handshake(srv.port, ssl.TLSVersion.TLSv1_2) == ("TLSv1.2", "h2")
            assert await handshake(srv.port, ssl.TLSVersion.TLSv1_3) == ("TLSv1.3", "h2")
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await handshake(srv.port, ssl.TLSVersion.TLSv1_1)

    run(scenario())


# -- outages -------------------------------------------------------------------------------------


class _StoreDown(MemoryKeyService):
    """A key store whose database is unreachable."""

    async def check_health(self) -> None:
        raise KeyServiceUnavailableError("key database unreachable: connection refused")

    async def create_key(self, gun: str, role: str, algorithm: str = "ecdsa") -> Key:
        raise KeyServiceUnavailableError("key database unreachable: connection refused")


def test_store_outage_is_not_serving_and_unavailable(tls: MTLSBundle) -> None:
    async def scenario() -> None:
        async with signer_running(config_for(tls), _StoreDown()) as srv:
            keys = client(tls, srv.port)
            try:
                with pytest.raises(KeyServiceUnavailableError, match="NOT_SERVING"):
                    await keys.check_health()
                with pytest.raises(KeyServiceUnavailableError, match="UNAVAILABLE"):
                    await keys.create_key(GUN, "timestamp", "ecdsa")
            finally:
                await keys.close()

    run(scenario())


def test_remote_key_service_reconnects_by_itself(tls: MTLSBundle) -> None:
    """Signer down: fast, clear failures. Signer back on its port: the very next call works."""

    async def scenario() -> None:
        store = MemoryKeyService()  # survives the "restart", like a database would
        port = free_port()
        config = config_for(tls, port=port)
        keys = client(tls, port)
        try:
            async with signer_running(config, store):
                key = await keys.create_key(GUN, "timestamp", "ecdsa")
                await keys.sign(key.keyid, b"before")
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(KeyServiceUnavailableError, match="unavailable"):
                    await keys.sign(key.keyid, b"during")
                assert time.monotonic() - started < 3
            with pytest.raises(KeyServiceUnavailableError):
                await keys.check_health()
            async with signer_running(config, store):
                # Failed channels are replaced at most every MIN_CHANNEL_AGE; after that
                # the very first call reconnects (no retry loop, no health poll).
                await asyncio.sleep(MIN_CHANNEL_AGE)
                signature = await keys.sign(key.keyid, b"after")
                assert signature.keyid == key.keyid
                await keys.check_health()
        finally:
            await keys.close()

    run(scenario())


# -- storage, logging ----------------------------------------------------------------------------


def test_sql_backend_from_config_and_nothing_secret_logged(
    tls: MTLSBundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """sqlite3 backend from a notary-signer config; with DEBUG logging on everywhere, no
    log line carries a passphrase, a private key (plain or encrypted) or signed content."""
    passphrase = "correct horse battery staple 42"
    cfg = tmp_path / "signer.json"
    cfg.write_text(
        json.dumps(
            {
                "server": {
                    "grpc_addr": "127.0.0.1:0",
                    "tls_cert_file": str(tls.signer_cert),
                    "tls_key_file": str(tls.signer_key),
                    "client_ca_file": str(tls.ca_cert),
                },
                "storage": {"backend": "sqlite3", "db_url": "keys.db", "default_alias": "main"},
                "logging": {"level": "debug"},
            }
        )
    )
    config = load_config(cfg, {"NOTARY_SIGNER_MAIN": passphrase})
    content = b"TOP-SECRET-PAYLOAD-7f3a"
    caplog.set_level(logging.DEBUG)

    async def scenario() -> list[bytes]:
        async with signer_running(config) as srv:
            keys = client(tls, srv.port)
            try:
                for alg in ("ecdsa", "ed25519"):
                    key = await keys.create_key(GUN, "timestamp", alg)
                    await keys.sign(key.keyid, content)
                    await keys.key_info(key.keyid)
            finally:
                await keys.close()
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
        async with engine.connect() as conn:
            rows = (await conn.execute(select(private_keys.c.private))).scalars().all()
        await engine.dispose()
        return [bytes(r) for r in rows]

    privates = run(scenario())
    assert len(privates) == 2 and all(p.count(b".") == 4 for p in privates)  # JWEs
    text = caplog.text
    assert "CreateKey" in text and "Sign" in text  # the audit lines are there...
    assert passphrase not in text  # ...but nothing secret
    assert content.decode() not in text
    for private in privates:
        for part in private.decode().split("."):
            if len(part) > 16:
                assert part not in text


# -- passphrase alias rotation -------------------------------------------------------------------


def test_rotate_alias_while_signers_keep_signing(tls: MTLSBundle, tmp_path: Path) -> None:
    """Every key re-encrypted under the new alias, a soft-deleted one included, while a
    running signer signs continuously; afterwards the old passphrase is not needed."""
    db = tmp_path / "keys.db"
    url = f"sqlite+aiosqlite:///{db}"
    old, new = {"old": "old-pass-123456"}, {"new": "new-pass-654321"}
    config = config_for(
        tls,
        backend="sqlite",
        db_url=str(db),
        default_alias="new",
        passphrases={**old, **new},
    )

    async def scenario() -> None:
        seed = await LocalKeyService.open(url, old, "old", p2c=1000)
        made = [
            await seed.rotate_key(f"{GUN}/{i}", "timestamp", alg)
            for i, alg in enumerate(["ecdsa", "ed25519", "ecdsa", "ed25519"])
        ]
        await seed.delete_key(made[-1].keyid)
        await seed.close()
        live = made[:-1]
        async with signer_running(config) as srv:
            keys = client(tls, srv.port)
            failures: list[BaseException] = []
            stop = asyncio.Event()

            async def keep_signing() -> int:
                count = 0
                while not stop.is_set():
                    for key in live:
                        try:
                            await keys.sign(key.keyid, b"during rotation")
                            count += 1
                        except Exception as exc:
                            failures.append(exc)
                return count

            signing = asyncio.create_task(keep_signing())
            await asyncio.sleep(0.05)
            engine = make_engine(database_target(config))
            try:
                report = await rotate_alias(engine, {**old, **new}, "new", p2c=1000)
                again = await rotate_alias(engine, {**old, **new}, "new", p2c=1000)
            finally:
                await engine.dispose()
            await asyncio.sleep(0.05)
            stop.set()
            signed = await signing
            await keys.close()
        assert not failures and signed > 0
        assert report.ok and sorted(report.rotated) == sorted(k.keyid for k in made)
        assert (again.rotated, again.already) == ([], len(made))

        check = create_async_engine(url)
        async with check.connect() as conn:
            aliases = (await conn.execute(select(private_keys.c.passphrase_alias))).scalars()
            assert set(aliases) == {"new"}
        await check.dispose()
        only_new = await LocalKeyService.open(url, new, "new")
        try:
            for key in live:
                sig = await only_new.sign(key.keyid, b"after")
                assert verify(key, sig.method, base64.b64decode(sig.sig), b"after")
        finally:
            await only_new.close()

    run(scenario())


def test_rotate_alias_cli_reports_keys_it_cannot_read(tmp_path: Path, tls: MTLSBundle) -> None:
    db = tmp_path / "keys.db"
    url = f"sqlite+aiosqlite:///{db}"

    async def seed() -> tuple[Key, Key]:
        a = await LocalKeyService.open(url, {"a": "pass-a-123"}, "a", p2c=1000)
        ka = await a.create_key(GUN, "timestamp", "ecdsa")
        await a.close()
        lost = await LocalKeyService.open(url, {"lost": "pass-lost-1"}, "lost", p2c=1000)
        kl = await lost.create_key(GUN, "snapshot", "ecdsa")
        await lost.close()
        return ka, kl

    ka, kl = run(seed())
    cfg = tmp_path / "signer.json"
    server = {
        "grpc_addr": ":7899",
        "tls_cert_file": str(tls.signer_cert),
        "tls_key_file": str(tls.signer_key),
    }
    storage = {"backend": "sqlite3", "db_url": "keys.db", "default_alias": "b"}
    cfg.write_text(json.dumps({"server": server, "storage": storage}))
    env = {"NOTARY_SIGNER_A": "pass-a-123", "NOTARY_SIGNER_B": "pass-b-456"}
    result = CliRunner().invoke(
        signer_cli, ["rotate-alias", "--config", str(cfg), "--to", "b"], env=env
    )
    assert result.exit_code == 1, result.output
    assert "re-encrypted 1 keys under 'b'" in result.output
    assert f"failed: {kl.keyid}: no passphrase for alias 'lost'" in result.output
    assert "pass-" not in result.output

    result = CliRunner().invoke(
        signer_cli,
        ["rotate-alias", "--config", str(cfg), "--to", "b"],
        env={**env, "NOTARY_SIGNER_LOST": "pass-lost-1"},
    )
    assert result.exit_code == 0, result.output
    assert "re-encrypted 1 keys under 'b'; 1 already were" in result.output

    async def readable_with_b_only() -> None:
        svc = await LocalKeyService.open(url, {"b": "pass-b-456"}, "b")
        try:
            for key in (ka, kl):
                await svc.sign(key.keyid, b"m")
        finally:
            await svc.close()

    run(readable_with_b_only())


def test_init_tls_writes_a_usable_bundle_and_never_overwrites(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        signer_cli, ["init-tls", str(tmp_path / "pki"), "--name", "signer.internal"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pki" / "signer.key").stat().st_mode & 0o077 == 0
    again = CliRunner().invoke(signer_cli, ["init-tls", str(tmp_path / "pki")])
    assert again.exit_code != 0 and "refusing to overwrite" in again.output
    ca = CA.create()
    cert, key = ca.issue("both", server_names=["localhost"], client=True)
    write_pair(tmp_path / "b.crt", tmp_path / "b.key", cert, key)
    assert (tmp_path / "b.key").stat().st_mode & 0o777 == 0o600


def test_open_key_service_memory_and_bad_alias(tmp_path: Path, tls: MTLSBundle) -> None:
    async def scenario() -> None:
        memory = await open_key_service(config_for(tls))
        assert isinstance(memory, MemoryKeyService)
        bad = config_for(
            tls, backend="sqlite", db_url=str(tmp_path / "k.db"), default_alias="nopass"
        )
        with pytest.raises(ValueError, match="NOTARY_SIGNER_NOPASS"):
            await open_key_service(bad)
        with pytest.raises(ConfigError, match="postgresql URL"):
            database_target(replace(bad, db_url="postgres://h/db"))

    run(scenario())


def test_couchdb_backend_from_a_notary_style_config(tmp_path: Path, tls: MTLSBundle) -> None:
    """``{"backend": "couchdb", "db_url": …}``: a URL naming only the server means the
    database ``vouch_keys``; one naming a database uses it; a bad URL or a missing
    database (without create) is a clear error; the store is the CouchDB key service."""
    ch.require_couch()
    server = {"grpc_addr": ":7899", "tls_cert_file": "c", "tls_key_file": "k"}
    storage = {"backend": "couchdb", "db_url": "https://u:p@couch.example.com:6984/"}
    with pytest.raises(ConfigError, match="default alias"):
        config_from_dict({"server": server, "storage": storage}, tmp_path, {})
    storage["default_alias"] = "main"
    config = config_from_dict({"server": server, "storage": storage}, tmp_path, {})
    assert (config.backend, config.db_url) == ("couchdb", storage["db_url"])
    assert key_target(storage["db_url"]).database == "vouch_keys"
    with pytest.raises(ConfigError, match="no SQL database"):
        database_target(config)
    name = ch.new_db_name("vouch_signer_cfg")

    async def scenario() -> None:
        on_couch = config_for(
            tls,
            backend="couchdb",
            db_url=ch.store_url(name),
            default_alias="main",
            passphrases={"main": "pass-main-1"},
        )
        with pytest.raises(KeyServiceUnavailableError, match="does not exist"):
            await open_key_service(on_couch, create_table=False)
        with pytest.raises(ConfigError, match=r"storage\.db_url"):
            await open_key_service(replace(on_couch, db_url="couchdb://h/Upper"))
        keys = await open_key_service(on_couch)
        try:
            assert isinstance(keys, CouchKeyService)
            key = await keys.create_key(GUN, "timestamp", "ed25519")
            sig = await keys.sign(key.keyid, b"m")
            assert verify(key, sig.method, sig.signature_bytes, b"m")
        finally:
            await keys.close()

    try:
        run(scenario())
    finally:
        ch.drop_db(name)


# -- vouch server wiring ---------------------------------------------------------------------


def test_vouch_server_keys_type_remote_uses_the_signer(tls: MTLSBundle, tmp_path: Path) -> None:
    """``keys.type: remote`` in vouch's own config opens a RemoteKeyService on the signer;
    a missing client key file is a start-up error, not a failure on the first publish."""
    from vouch.server.main import open_components
    from vouch.server.settings import load_settings

    async def scenario() -> None:
        async with signer_running(config_for(tls)) as srv:
            cfg = tmp_path / "vouch.json"
            keys_section = {
                "type": "remote",
                "hostname": "localhost",
                "port": srv.port,
                "tls_ca_file": "tls/ca.crt",
                "tls_client_cert": "tls/client.crt",
                "tls_client_key": "tls/client.key",
            }
            base = {"storage": {"url": "memory"}, "data_dir": str(tmp_path / "data")}
            cfg.write_text(json.dumps({**base, "keys": keys_section}))
            settings = load_settings(cfg)
            store, keys = await open_components(settings, echo=lambda _: None)
            try:
                assert isinstance(keys, RemoteKeyService)
                await keys.check_health()
                key = await keys.create_key(GUN, "timestamp", "ecdsa")
                assert await srv.keys.public_key(key.keyid) == key
            finally:
                await store.close()
                await keys.close()  # type: ignore[attr-defined]
            keys_section["tls_client_key"] = "tls/missing.key"
            cfg.write_text(json.dumps({**base, "keys": keys_section}))
            with pytest.raises(SystemExit, match=r"keys\.type remote"):
                await open_components(load_settings(cfg), echo=lambda _: None)

    run(scenario())


def test_registered_as_vouch_signer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one line cli/main.py needs (``"signer": "vouch.cli.signer_cmd:signer"``) works."""
    from vouch.cli import main

    lazy = getattr(main.cli, "lazy_commands", None)
    if lazy is not None:
        monkeypatch.setitem(lazy, "signer", "vouch.cli.signer_cmd:signer")
    elif "signer" not in main.cli.commands:  # an eager group
        monkeypatch.setitem(main.cli.commands, "signer", signer_cli)  # type: ignore[attr-defined]
    result = CliRunner().invoke(main.cli, ["signer", "init-tls", str(tmp_path / "pki")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pki" / "client.crt").exists()
    assert "rotate-alias" in CliRunner().invoke(main.cli, ["signer", "--help"]).output


def test_certificate_rotation_without_restart(tls: MTLSBundle) -> None:
    """New signer certificate files are served from the next handshake on; a half-written
    rotation (new certificate, old key) keeps the previous certificate in service."""
    ca = CA(
        x509.load_pem_x509_certificate(tls.ca_cert.read_bytes()),
        load_ec_key(tls.ca_key.read_bytes()),
    )

    def served_serial(port: int) -> int:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(tls.ca_cert)
        ctx.load_cert_chain(tls.client_cert, tls.client_key)
        ctx.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as conn,
        ):
            der = conn.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    async def scenario() -> None:
        async with signer_running(config_for(tls)) as srv:
            keys = client(tls, srv.port)
            try:
                await keys.check_health()
                first = await asyncio.to_thread(served_serial, srv.port)
                cert, key = ca.issue("rotated", server_names=["localhost", "127.0.0.1"])
                # Half a rotation: the certificate is new, the key not yet.
                tls.signer_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
                assert await asyncio.to_thread(served_serial, srv.port) == first
                write_pair(tls.signer_cert, tls.signer_key, cert, key)
                assert await asyncio.to_thread(served_serial, srv.port) == cert.serial_number
                assert srv.certificates.reloads == 1
                await keys.check_health()  # the open connection was never interrupted
                fresh = client(tls, srv.port)
                try:
                    await fresh.check_health()  # and new ones verify the new certificate
                finally:
                    await fresh.close()
            finally:
                await keys.close()

    run(scenario())


def load_ec_key(pem: bytes) -> Any:
    return serialization.load_pem_private_key(pem, password=None)
