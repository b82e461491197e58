"""Users' keys on a real PKCS#11 token (SoftHSM2), end to end against a real ``vouch server``.

``vouch init --hsm`` makes the root key inside the token and signs root (its
certificate too) there; a delegate's ``key generate --hsm`` key signs its role there.
The metadata is then read and verified by the real ``notary`` CLI from a fresh trust
directory. Without the PIN, or with a wrong one, signing fails with a clear message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography import x509

from notary_harness import NOTARY_BIN, NotaryCLI, fetch, metadata_url
from softhsm import SoftHSM, make_softhsm
from vouch.crypto.pkcs11token import Token
from vouch.tuf import keys as tufkeys
from vouch.tuf.metadata import Metadata, Root
from vouch_harness import VOUCH, VouchServer

GUN = "example.com/hsm/client"


@pytest.fixture
def hsm(tmp_path: Path) -> SoftHSM:
    if not os.access(NOTARY_BIN, os.X_OK):
        pytest.fail(f"missing {NOTARY_BIN}: install the Debian package 'notary'", pytrace=False)
    return make_softhsm(tmp_path / "softhsm", label="user-token")


def vouch_cli(server: VouchServer, trust: Path, hsm: SoftHSM, **extra: str) -> NotaryCLI:
    env = {
        "SOFTHSM2_CONF": str(hsm.conf),
        "VOUCH_PKCS11_MODULE": hsm.module,
        "VOUCH_PKCS11_TOKEN": hsm.label,
        "VOUCH_PKCS11_PIN": hsm.pin,
        **extra,
    }
    return NotaryCLI(server.url, trust, binary=VOUCH, env=env, home=trust.parent / "home")


def token_keys(hsm: SoftHSM) -> dict[str, tufkeys.Key]:
    """What is on the token, read with a separate session (a fresh process's view)."""
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    import pkcs11

    pkcs11.lib(hsm.module).reinitialize()
    token = Token(hsm.config())
    try:
        return {key.keyid: key for key, _label in token.key_pairs()}
    finally:
        token.close()


def test_init_hsm_add_publish_list_and_notary_verifies(
    tmp_path: Path, hsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    with VouchServer(tmp_path / "server") as server:
        owner = vouch_cli(server, tmp_path / "owner" / "trust", hsm)
        out = owner.run("init", GUN, "--hsm", "-p").stdout
        assert "on the PKCS#11 token" in out, out
        v1 = tmp_path / "v1.bin"
        v1.write_bytes(b"image v1\n")
        owner.run("add", GUN, "v1", str(v1), "-p")
        assert "v1" in owner.run("list", GUN).stdout

        # The root key is on the token, not in the trust dir: only a reference is.
        refs = list((owner.trust_dir / "private" / "pkcs11").glob("*.json"))
        assert len(refs) == 1
        root_id = json.loads(refs[0].read_text())["keyid"]
        assert not (owner.trust_dir / "private" / f"{root_id}.key").exists()
        for f in (owner.trust_dir / "private").glob("*.key"):
            assert root_id not in f.name
        listing = owner.run("key", "list").stdout
        assert root_id in listing and f"pkcs11:{hsm.label}" in listing

        # root.json's root key is a certificate over the token's key, and verifies.
        on_token = token_keys(hsm)
        assert root_id in on_token
        root = Metadata.from_bytes(fetch(metadata_url(server.url, GUN, "root.json")), Root)
        (cert_key,) = root.signed.role_keys("root").values()
        assert cert_key.canonical_keyid() == root_id
        cert = x509.load_pem_x509_certificate(tufkeys.b64decode(cert_key.public, "cert"))
        assert cert.subject.rfc4514_string() == f"CN={GUN}"
        assert root.verified_keyids(root.signed.role_keys("root"), 1, "root")

        # A server-managed snapshot so delegates can publish: a new root, signed by the token.
        owner.run("key", "rotate", GUN, "snapshot", "-r")
        root2 = Metadata.from_bytes(fetch(metadata_url(server.url, GUN, "root.json")), Root)
        assert root2.signed.version == 2
        assert root2.verified_keyids(root2.signed.role_keys("root"), 1, "root")

        # A delegate whose key is on the token too.
        alice = vouch_cli(server, tmp_path / "alice" / "trust", hsm)
        out = alice.run(
            "key",
            "generate",
            "ecdsa",
            "--role",
            "targets/releases",
            "--hsm",
            "-o",
            str(tmp_path / "alicekey"),
        ).stdout
        assert "on PKCS#11 token user-token" in out, out
        assert not (tmp_path / "alicekey-key.pem").exists()  # nothing private is written
        owner.run(
            "delegation",
            "add",
            GUN,
            "targets/releases",
            str(tmp_path / "alicekey.pem"),
            "--all-paths",
            "-p",
        )
        v2 = tmp_path / "v2.bin"
        v2.write_bytes(b"release 2\n")
        alice.run("add", GUN, "v2", str(v2), "-r", "targets/releases", "-p")

        # The real notary CLI, from scratch, verifies and lists both.
        notary = NotaryCLI(server.url, tmp_path / "notary" / "trust")
        listed = notary.run("list", GUN).stdout
        assert "v1" in listed and "v2" in listed and "targets/releases" in listed, listed

        # No PIN and no terminal: a clear error, nothing published.
        v3 = tmp_path / "v3.bin"
        v3.write_bytes(b"v3\n")
        no_pin = vouch_cli(server, alice.trust_dir, hsm, VOUCH_PKCS11_PIN="")
        failed = no_pin.run("add", GUN, "v3", str(v3), "-r", "targets/releases", "-p", check=False)
        assert failed.returncode != 0
        assert "VOUCH_PKCS11_PIN" in failed.stderr, failed.stderr
        owner_no_pin = vouch_cli(server, owner.trust_dir, hsm, VOUCH_PKCS11_PIN="")
        failed = owner_no_pin.run("key", "rotate", GUN, "targets", check=False)  # root signs
        assert failed.returncode != 0 and "VOUCH_PKCS11_PIN" in failed.stderr, failed.stderr
        wrong = vouch_cli(server, alice.trust_dir, hsm, VOUCH_PKCS11_PIN="0" + hsm.pin)
        failed = wrong.run("publish", GUN, check=False)
        assert failed.returncode != 0
        assert "PIN" in failed.stderr and "incorrect" in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr
        assert "v3" not in notary.run("list", GUN).stdout
        alice.run("publish", GUN)  # with the PIN, the staged v3 goes out
        assert "v3" in notary.run("list", GUN).stdout


def test_key_made_by_another_tool_is_adopted_by_its_cka_id(
    tmp_path: Path, hsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key pair the vendor's tool put on the token (a YubiKey PIV slot, a cloud console)
    under its own CKA_ID: ``key generate --hsm --pkcs11-id`` records it, and it signs."""
    import pkcs11
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    from softhsm import use_in_process
    from vouch.crypto.keystore import KeyStore
    from vouch.crypto.tokenkeys import env_token_provider

    use_in_process(hsm, monkeypatch)
    token = pkcs11.lib(hsm.module).get_token(token_label=hsm.label)
    with token.open(rw=True, user_pin=hsm.pin) as session:
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        params.generate_keypair(store=True, label="made elsewhere", id=b"\x02")
    (made,) = token_keys_any(hsm)

    trust = tmp_path / "bob" / "trust"
    cli = NotaryCLI(
        "http://127.0.0.1:9",
        trust,
        binary=VOUCH,
        env={"SOFTHSM2_CONF": str(hsm.conf), "VOUCH_PKCS11_PIN": hsm.pin},
        home=tmp_path / "bob" / "home",
    )
    out = cli.run(
        "--pkcs11-token",
        hsm.label,
        "key",
        "generate",
        "--role",
        "targets/bob",
        "--hsm",
        "--pkcs11-id",
        "02",
    ).stdout
    assert made.keyid in out, out
    assert token_keys_any(hsm) == [made]  # adopted, not generated anew
    bad = cli.run("key", "generate", "--hsm", "--pkcs11-id", "zz", check=False)
    assert bad.returncode != 0 and "not hex" in bad.stderr

    store = KeyStore(trust, tokens=env_token_provider(module=hsm.module, token_label=hsm.label))
    monkeypatch.setenv("VOUCH_PKCS11_PIN", hsm.pin)
    signature = store.signer(made.keyid).sign(b"bob's targets")
    raw = tufkeys.b64decode(signature.sig, "sig")
    assert signature.keyid == made.keyid
    assert tufkeys.verify(made, signature.method, raw, b"bob's targets")
    with pytest.raises(Exception, match="PKCS#11 token"):
        store.load(made.keyid)  # a token key cannot be read out as a file key

    listed = json.loads(cli.run("key", "list", "--json").stdout)
    assert [(k["key_id"], k["role"], k["location"]) for k in listed] == [
        (made.keyid, "targets/bob", f"pkcs11:{hsm.label}")
    ]
    cli.run("key", "remove", made.keyid, input="y\n")
    assert json.loads(cli.run("key", "list", "--json").stdout) == []
    assert token_keys_any(hsm) == [made]  # removing the reference leaves the key on the token


def token_keys_any(hsm: SoftHSM) -> list[tufkeys.Key]:
    """Every EC public key on the token, whatever its CKA_ID."""
    import pkcs11
    from cryptography.hazmat.primitives import serialization
    from pkcs11 import Attribute, KeyType, ObjectClass
    from pkcs11.util.ec import encode_ec_public_key

    token = pkcs11.lib(hsm.module).get_token(token_label=hsm.label)
    with token.open() as session:  # public key objects need no login
        return [
            tufkeys.public_key_from_crypto(
                serialization.load_der_public_key(encode_ec_public_key(obj))  # type: ignore[arg-type]
            )
            for obj in session.get_objects(
                {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC}
            )
        ]


def test_root_rotated_onto_the_token_and_off_again(
    tmp_path: Path, hsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``key rotate GUN root --hsm``: a repository whose root key is a file moves it
    onto the token (the new root is signed by the old file key and, with its
    certificate, by the token). The real notary CLI, which trusted the first
    root, follows the rotation; a second rotation, off the token, is signed by
    the token key, so the token really holds the root key in between."""
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    with VouchServer(tmp_path / "server") as server:
        owner = vouch_cli(server, tmp_path / "owner" / "trust", hsm)
        owner.run("init", GUN, "-p")
        v1 = tmp_path / "v1.bin"
        v1.write_bytes(b"image v1\n")
        owner.run("add", GUN, "v1", str(v1), "-p")
        notary = NotaryCLI(server.url, tmp_path / "notary" / "trust")
        assert "v1" in notary.run("list", GUN).stdout  # notary now trusts root v1
        (old_id,) = Metadata.from_bytes(
            fetch(metadata_url(server.url, GUN, "root.json")), Root
        ).signed.role_keys("root")

        refused = owner.run("key", "rotate", GUN, "targets", "--hsm", check=False)
        assert refused.returncode != 0 and "root key onto a token" in refused.stderr
        owner.run("key", "rotate", GUN, "root", "--hsm", "-y")
        root2 = Metadata.from_bytes(fetch(metadata_url(server.url, GUN, "root.json")), Root)
        assert root2.signed.version == 2
        ((new_id, cert_key),) = root2.signed.role_keys("root").items()
        token_id = cert_key.canonical_keyid()
        assert token_id in token_keys(hsm)
        assert not list((owner.trust_dir / "private").glob(f"*{token_id}*.key"))
        assert {s.keyid for s in root2.signatures} == {old_id, new_id}
        cert = x509.load_pem_x509_certificate(tufkeys.b64decode(cert_key.public, "cert"))
        assert cert.subject.rfc4514_string() == f"CN={GUN}"

        v2 = tmp_path / "v2.bin"
        v2.write_bytes(b"image v2\n")
        owner.run("add", GUN, "v2", str(v2), "-p")
        listed = notary.run("list", GUN).stdout
        assert "v1" in listed and "v2" in listed, listed

        # Off the token again: only the token can sign for root v2's key.
        no_pin = vouch_cli(server, owner.trust_dir, hsm, VOUCH_PKCS11_PIN="")
        failed = no_pin.run("key", "rotate", GUN, "root", "-y", check=False)
        assert failed.returncode != 0 and "VOUCH_PKCS11_PIN" in failed.stderr, failed.stderr
        owner.run("key", "rotate", GUN, "root", "-y")
        root3 = Metadata.from_bytes(fetch(metadata_url(server.url, GUN, "root.json")), Root)
        assert root3.signed.version == 3
        assert new_id in {s.keyid for s in root3.signatures}
        assert root3.verified_keyids({new_id: cert_key}, 1, "root")
        assert "v2" in notary.run("list", GUN).stdout
        assert "v2" in NotaryCLI(server.url, tmp_path / "fresh").run("list", GUN).stdout
