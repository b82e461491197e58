"""``vouch signer`` with its keys on a real PKCS#11 token (SoftHSM2, a fresh token per test).

* CreateKey/GetKeyInfo/Sign through the real gRPC API over mTLS: the public key is
  notary's (DER SPKI, notary's key ID) and the signature notary's raw ``r||s``.
* The private key cannot be read out of the token (attack: ask for CKA_VALUE, make it
  extractable, wrap it), even by someone holding the PIN.
* A restarted signer process finds its keys, their GUN/role and which were used.
* A wrong PIN stops the signer with a clear message before it listens.
* The real notary-server publishes through ``vouch signer`` on the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from notary_harness import free_port
from softhsm import SoftHSM, make_softhsm, use_in_process
from test_signer_interop import (
    SignerProcess,
    assert_signed_by,
    notary_through_signer,
    vouch_signer_argv,
)
from vouch.crypto.pkcs11token import key_id_bytes
from vouch.keyservice.remote import RemoteKeyService
from vouch.signer import config_from_dict
from vouch.signer._grpc import grpc
from vouch.signer.certs import MTLSBundle, issue_mtls_bundle
from vouch.signer.protocol import pb
from vouch.signer.server import start_signer
from vouch.tuf import keys as tufkeys
from vouch.tuf.keys import Key

GUN = "example.com/hsm/app"
PIN_VAR = "NOTARY_SIGNER_PKCS11_PIN"


@pytest.fixture
def hsm(tmp_path: Path) -> SoftHSM:
    return make_softhsm(tmp_path / "softhsm")


def config_doc(tls: MTLSBundle, port: int, hsm: SoftHSM) -> dict[str, Any]:
    """notary-signer's config format with the storage on the token."""
    return {
        "server": {
            "grpc_addr": f"127.0.0.1:{port}",
            "tls_cert_file": str(tls.signer_cert),
            "tls_key_file": str(tls.signer_key),
            "client_ca_file": str(tls.ca_cert),
        },
        "storage": {"backend": "pkcs11"},
        "pkcs11": {"module": hsm.module, "token_label": hsm.label},
        "logging": {"level": "info"},
    }


def write_config(path: Path, tls: MTLSBundle, port: int, hsm: SoftHSM) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_doc(tls, port, hsm)))
    return path


def remote(tls: MTLSBundle, port: int) -> RemoteKeyService:
    return RemoteKeyService(
        "127.0.0.1",
        port,
        ca_file=tls.ca_cert,
        cert_file=tls.client_cert,
        key_file=tls.client_key,
    )


async def raw_rpc(tls: MTLSBundle, port: int, path: str, request: Any, response: Any) -> Any:
    creds = grpc.ssl_channel_credentials(
        tls.ca_cert.read_bytes(), tls.client_key.read_bytes(), tls.client_cert.read_bytes()
    )
    async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
        call: Any = channel.unary_unary(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )
        return await call(request, timeout=10)


def test_create_sign_verify_through_grpc(
    tmp_path: Path, hsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_in_process(hsm, monkeypatch)
    tls = issue_mtls_bundle(tmp_path / "tls")
    config = config_from_dict(config_doc(tls, 0, hsm), tmp_path, {PIN_VAR: hsm.pin})

    async def scenario() -> None:
        running = await start_signer(config)
        try:
            port = running.port
            created = await raw_rpc(
                tls,
                port,
                "/proto.KeyManagement/CreateKey",
                pb.CreateKeyRequest(algorithm="ecdsa", gun=GUN, role="timestamp"),
                pb.PublicKey,
            )
            # notary's key format: DER SPKI of a P-256 key, ID = sha256 of the canonical key
            spki = serialization.load_der_public_key(created.publicKey)
            assert spki.curve.name == "secp256r1"  # type: ignore[union-attr]
            key = Key(tufkeys.ECDSA, tufkeys.b64encode(created.publicKey))
            assert key.keyid == created.keyInfo.keyID.ID
            assert created.keyInfo.algorithm.algorithm == "ecdsa"

            info = await raw_rpc(
                tls,
                port,
                "/proto.KeyManagement/GetKeyInfo",
                pb.KeyID(ID=key.keyid),
                pb.GetKeyInfoResponse,
            )
            assert (info.publicKey, info.role) == (created.publicKey, "timestamp")

            message = b'{"signed":{"_type":"Timestamp"}}'
            sig = await raw_rpc(
                tls,
                port,
                "/proto.Signer/Sign",
                pb.SignatureRequest(keyID=pb.KeyID(ID=key.keyid), content=message),
                pb.Signature,
            )
            assert sig.algorithm.algorithm == "ecdsa" and len(sig.content) == 64  # raw r||s
            assert tufkeys.verify(key, "ecdsa", sig.content, message)
            assert not tufkeys.verify(key, "ecdsa", sig.content, message + b" ")

            # Through the client vouch server uses: same key until it signed, then a new one.
            keys = remote(tls, port)
            try:
                again = await keys.create_key(GUN, "timestamp")
                assert again.keyid != key.keyid  # the first one has signed: not handed out
                assert await keys.create_key(GUN, "timestamp") == again
                signature = await keys.sign(again.keyid, b"payload")
                raw = tufkeys.b64decode(signature.sig, "sig")
                assert tufkeys.verify(again, signature.method, raw, b"payload")
                await keys.delete_key(again.keyid)
                assert await keys.public_key(again.keyid) is None
            finally:
                await keys.close()

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw_rpc(
                    tls,
                    port,
                    "/proto.KeyManagement/CreateKey",
                    pb.CreateKeyRequest(algorithm="ed25519", gun=GUN, role="snapshot"),
                    pb.PublicKey,
                )
            assert err.value.code() == grpc.StatusCode.UNKNOWN
            assert "not supported" in (err.value.details() or "")
        finally:
            await running.stop(grace=None)

    asyncio.run(scenario())


def test_private_key_cannot_leave_the_token(
    tmp_path: Path, hsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attacker with the PIN and the module still cannot get the private key out."""
    use_in_process(hsm, monkeypatch)
    tls = issue_mtls_bundle(tmp_path / "tls")
    config = config_from_dict(config_doc(tls, 0, hsm), tmp_path, {PIN_VAR: hsm.pin})

    async def make_key() -> Key:
        running = await start_signer(config)
        keys = remote(tls, running.port)
        try:
            return await keys.create_key(GUN, "timestamp")
        finally:
            await keys.close()
            await running.stop(grace=None)

    key = asyncio.run(make_key())
    token = pkcs11.lib(hsm.module).get_token(token_label=hsm.label)
    with token.open(rw=True, user_pin=hsm.pin) as session:
        (private,) = session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id_bytes(key.keyid)}
        )
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.ALWAYS_SENSITIVE] is True
        assert private[Attribute.NEVER_EXTRACTABLE] is True
        assert private[Attribute.LOCAL] is True  # generated inside the token
        with pytest.raises(p11e.AttributeSensitive):
            private[Attribute.VALUE]
        with pytest.raises(p11e.PKCS11Error):
            private[Attribute.EXTRACTABLE] = True
        with pytest.raises(p11e.PKCS11Error):
            private[Attribute.SENSITIVE] = False
        wrapper = session.generate_key(
            KeyType.AES, 256, template={Attribute.WRAP: True, Attribute.EXTRACTABLE: True}
        )
        with pytest.raises(p11e.PKCS11Error):
            wrapper.wrap_key(private, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        # and what it does give is a signature, only: the public half verifies it.
        raw = private.sign(hashlib.sha256(b"m").digest(), mechanism=Mechanism.ECDSA)
        assert tufkeys.verify(key, "ecdsa", bytes(raw), b"m")


def _signer_env(hsm: SoftHSM, pin: str) -> dict[str, str]:
    return {**hsm.env, PIN_VAR: pin}


def test_restarted_signer_finds_its_keys(tmp_path: Path, hsm: SoftHSM) -> None:
    tls = issue_mtls_bundle(tmp_path / "tls")
    port = free_port()
    config = write_config(tmp_path / "signer" / "signer.json", tls, port, hsm)
    proc = SignerProcess(
        vouch_signer_argv(config), _signer_env(hsm, hsm.pin), tls, port, tmp_path / "signer.log"
    )

    async def first() -> tuple[Key, Key]:
        keys = remote(tls, port)
        try:
            used = await keys.create_key(GUN, "timestamp")
            await keys.sign(used.keyid, b"first")
            unused = await keys.create_key(GUN, "timestamp")
            snapshot = await keys.create_key(GUN, "snapshot")
            assert len({used.keyid, unused.keyid, snapshot.keyid}) == 3
            return used, unused
        finally:
            await keys.close()

    async def second(used: Key, unused: Key) -> None:
        keys = remote(tls, port)
        try:
            info = await keys.key_info(used.keyid)
            assert info is not None and (info.key, info.role) == (used, "timestamp")
            # the unused key is still the one CreateKey hands out, the used one is not
            assert await keys.create_key(GUN, "timestamp") == unused
            signature = await keys.sign(used.keyid, b"after restart")
            raw = tufkeys.b64decode(signature.sig, "sig")
            assert tufkeys.verify(used, "ecdsa", raw, b"after restart")
        finally:
            await keys.close()

    with proc:
        used, unused = asyncio.run(first())
    with proc:
        asyncio.run(second(used, unused))
    assert hsm.pin not in proc.log()


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_wrong_pin_is_a_clear_error(tmp_path: Path, hsm: SoftHSM) -> None:
    tls = issue_mtls_bundle(tmp_path / "tls")
    config = write_config(tmp_path / "signer.json", tls, free_port(), hsm)
    argv = vouch_signer_argv(config)
    wrong = _run(argv, _signer_env(hsm, "0" + hsm.pin))
    assert wrong.returncode != 0
    assert "PIN" in wrong.stderr and "incorrect" in wrong.stderr, wrong.stderr
    assert "Traceback" not in wrong.stderr
    missing = _run(argv, hsm.env)
    assert missing.returncode != 0
    assert PIN_VAR in missing.stderr, missing.stderr
    doc = config_doc(tls, free_port(), hsm)
    doc["pkcs11"]["token_label"] = "no-such-token"
    config.write_text(json.dumps(doc))
    absent = _run(argv, _signer_env(hsm, hsm.pin))
    assert absent.returncode != 0
    assert "no-such-token" in absent.stderr and hsm.label in absent.stderr, absent.stderr


def test_notary_server_signs_with_vouch_signer_on_a_token(tmp_path: Path, hsm: SoftHSM) -> None:
    """Real notary-server + notary CLI; the timestamp key is on the SoftHSM token."""
    tls = issue_mtls_bundle(tmp_path / "tls")
    port = free_port()
    config = write_config(tmp_path / "signer" / "signer.json", tls, port, hsm)
    gun = "example.com/vouch-hsm/app"
    env = _signer_env(hsm, hsm.pin)
    with notary_through_signer(
        tmp_path, config, gun, env=env, tls=tls, port=port, log=tmp_path / "s.log"
    ) as repo:
        ts, keyids = repo.timestamp, repo.keyids

    # the keys root names for the timestamp are the token's
    use_env = dict(os.environ)
    use_env["SOFTHSM2_CONF"] = str(hsm.conf)
    listing = subprocess.run(
        [sys.executable, "-c", _LIST_TOKEN_KEYS, hsm.module, hsm.label, hsm.pin],
        env=use_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    held = {k.keyid: k for k in (Key(tufkeys.ECDSA, line) for line in listing.split())}
    assert_signed_by(ts, keyids, held)


# Lists the token's public keys (base64 DER) from a fresh process: what is on the token.
_LIST_TOKEN_KEYS = """
import sys
from vouch.crypto.pkcs11token import Token, TokenConfig
token = Token(TokenConfig(sys.argv[1], sys.argv[2], pin=sys.argv[3]))
for key, _label in token.key_pairs():
    print(key.public)
"""


@pytest.mark.parametrize(
    ("pkcs11", "env", "message"),
    [
        ({"token_label": "t"}, {PIN_VAR: "1"}, "pkcs11.module"),
        ({"module": "/m.so"}, {PIN_VAR: "1"}, "token_label or pkcs11.slot"),
        ({"module": "/m.so", "slot": "one"}, {PIN_VAR: "1"}, "slot number"),
        ({"module": "/m.so", "token_label": "t"}, {}, PIN_VAR),
        ({"module": "/m.so", "token_label": "t", "pin": "1234"}, {PIN_VAR: "1"}, "never read"),
    ],
)
def test_pkcs11_settings_are_checked(
    tmp_path: Path, pkcs11: dict[str, str], env: dict[str, str], message: str
) -> None:
    from vouch.signer.config import ConfigError

    doc = {
        "server": {"grpc_addr": ":7899", "tls_cert_file": "c", "tls_key_file": "k"},
        "storage": {"backend": "pkcs11"},
        "pkcs11": pkcs11,
    }
    with pytest.raises(ConfigError, match=message):
        config_from_dict(doc, tmp_path, env)


def test_pkcs11_settings_from_environment_and_pin_is_not_an_alias(tmp_path: Path) -> None:
    doc = {
        "server": {"grpc_addr": ":7899", "tls_cert_file": "c", "tls_key_file": "k"},
        "storage": {"backend": "pkcs11"},
    }
    env = {
        "NOTARY_SIGNER_PKCS11_MODULE": "/lib/p11.so",
        "NOTARY_SIGNER_PKCS11_SLOT": "7",
        PIN_VAR: "secret-pin",
        "NOTARY_SIGNER_OTHER": "alias-passphrase",
    }
    config = config_from_dict(doc, tmp_path, env)
    assert config.pkcs11 is not None
    assert (config.pkcs11.module, config.pkcs11.slot, config.pkcs11.token_label) == (
        "/lib/p11.so",
        7,
        None,
    )
    assert config.pkcs11.pin == "secret-pin"
    assert "secret-pin" not in repr(config)
    assert dict(config.passphrases) == {"other": "alias-passphrase"}


def test_two_signers_on_one_token_share_keys(hsm: SoftHSM, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key one signer creates, another signer on the same token signs with and deletes."""
    from vouch.keyservice.base import KeyNotFoundError
    from vouch.keyservice.pkcs11 import RELOAD_INTERVAL, Pkcs11KeyService

    use_in_process(hsm, monkeypatch)

    async def scenario() -> None:
        first = await Pkcs11KeyService.open(hsm.config())
        second = await Pkcs11KeyService.open(hsm.config())
        try:
            key = await first.create_key(GUN, "timestamp")
            await asyncio.sleep(RELOAD_INTERVAL)
            signature = await second.sign(key.keyid, b"from the second signer")
            raw = tufkeys.b64decode(signature.sig, "sig")
            assert tufkeys.verify(key, "ecdsa", raw, b"from the second signer")
            info = await second.key_info(key.keyid)
            assert info is not None and (info.gun, info.role) == (GUN, "timestamp")
            await second.delete_key(key.keyid)
            with pytest.raises(KeyNotFoundError):
                await first.sign(key.keyid, b"deleted elsewhere")
            with pytest.raises(KeyNotFoundError):
                await second.sign("0" * 64, b"unknown")
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())
