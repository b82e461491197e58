"""Users' keys on a real PKCS#11 token (SoftHSM2), end to end against a real ``vouch server``.

``vouch init --hsm`` makes the root key inside the token and signs root (its
certificate too) there; a delegate's ``key generate --hsm`` key signs its role there.
The metadata is then read and verified by the real ``notary`` CLI from a fresh trust
directory. Without the PIN, or with a wrong one, signing fails with a clear message.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any

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


def _fresh_lib(hsm: SoftHSM) -> Any:
    """The PKCS#11 library reinitialised, so that the next session sees the token
    as a fresh process would (what other sessions wrote included)."""
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    import pkcs11

    lib = pkcs11.lib(hsm.module)
    lib.reinitialize()
    return lib


def token_keys(hsm: SoftHSM) -> dict[str, tufkeys.Key]:
    """What is on the token, read with a separate session (a fresh process's view)."""
    _fresh_lib(hsm)
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


def _token_key_objects(hsm: SoftHSM) -> list[tuple[str, str]]:
    """(class, CKA_ID hex) of every key object on the token, from a fresh session."""
    from pkcs11 import Attribute, ObjectClass

    with _fresh_lib(hsm).get_token(token_label=hsm.label).open(user_pin=hsm.pin) as session:
        return sorted(
            (str(o[Attribute.CLASS]), bytes(o[Attribute.ID]).hex())
            for cls in (ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY)
            for o in session.get_objects({Attribute.CLASS: cls})
        )


def _put_key_pair(hsm: SoftHSM, object_id: bytes, kind: str) -> None:
    """A key pair made by another tool under ``object_id``: RSA or an EC curve."""
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    token = _fresh_lib(hsm).get_token(token_label=hsm.label)
    with token.open(rw=True, user_pin=hsm.pin) as session:
        if kind == "rsa":
            session.generate_keypair(KeyType.RSA, 2048, store=True, id=object_id, label=kind)
        else:
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(kind)}, local=True
            )
            params.generate_keypair(store=True, id=object_id, label=kind)


def _server_at(url: str) -> VouchServer:
    """Something with a ``url``, for :func:`vouch_cli` to point a client at."""
    return types.SimpleNamespace(url=url)  # type: ignore[return-value]


class _Front:
    """In front of a trust server: GETs pass through, every POST is answered with
    ``status`` (400: a validation refusal, nothing stored; 503: no telling)."""

    def __init__(self, target: str, status: int) -> None:
        import http.server
        import threading
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    with opener.open(target + self.path) as r:
                        code, body = r.status, r.read()
                except urllib.error.HTTPError as e:
                    code, body = e.code, e.read()
                self._answer(code, body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = b'{"errors":[{"code":"INVALID_UPDATE","message":"refused","detail":null}]}'
                self._answer(status, body if status == 400 else b"")

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.parametrize("kind", ["rsa", "secp384r1"])
def test_pkcs11_id_of_another_kind_of_key_is_refused(
    tmp_path: Path, hsm: SoftHSM, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """``--pkcs11-id`` naming an RSA or P-384 key pair: vouch neither adopts it nor
    makes a P-256 pair beside it under the same CKA_ID (a PIV slot on ykcs11)."""
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    with VouchServer(tmp_path / "server") as server:
        owner = vouch_cli(server, tmp_path / "owner" / "trust", hsm)
        owner.run("init", GUN, "-p")
        _put_key_pair(hsm, b"\x42", kind)
        before = _token_key_objects(hsm)
        failed = owner.run(
            "key", "rotate", GUN, "root", "--hsm", "--pkcs11-id", "42", "-y", check=False
        )
        assert failed.returncode != 0
        assert "other keys under CKA_ID 42" in failed.stderr, failed.stderr
        assert _token_key_objects(hsm) == before
        root = Metadata.from_bytes(fetch(metadata_url(server.url, GUN, "root.json")), Root)
        assert root.signed.version == 1
        assert not list((owner.trust_dir / "private").glob("pkcs11/*.json"))
        generated = owner.run("key", "generate", "--hsm", "--pkcs11-id", "42", check=False)
        assert generated.returncode != 0 and "CKA_ID 42" in generated.stderr


def test_root_rotation_refused_by_the_server_leaves_no_key_behind(
    tmp_path: Path, hsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server refuses the new root (400: nothing stored): the key pair made
    for it is destroyed and its reference removed, so nothing half-done stays;
    with a file key, the file goes."""
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    with VouchServer(tmp_path / "server") as server:
        owner = vouch_cli(server, tmp_path / "owner" / "trust", hsm)
        owner.run("init", GUN, "-p")

        def key_files() -> list[str]:
            return sorted(p.name for p in (owner.trust_dir / "private").rglob("*") if p.is_file())

        keys_before = key_files()
        front = _Front(server.url, 400)
        try:
            refused = vouch_cli(_server_at(front.url), owner.trust_dir, hsm)
            for args in (("--hsm",), ("--hsm", "--pkcs11-id", "0a"), ()):
                failed = refused.run("key", "rotate", GUN, "root", *args, "-y", check=False)
                assert failed.returncode != 0 and "refused" in failed.stderr, failed.stderr
                assert _token_key_objects(hsm) == []
                assert key_files() == keys_before
        finally:
            front.close()


def test_root_rotation_with_an_unknown_outcome_keeps_the_key_for_a_retry(
    tmp_path: Path, hsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publish fails without saying whether the server stored it (503 from
    something in front): the new key stays (the server may hold a root naming
    it), the error says how to retry with it, and the retry uses that key
    rather than making another."""
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    with VouchServer(tmp_path / "server") as server:
        owner = vouch_cli(server, tmp_path / "owner" / "trust", hsm)
        owner.run("init", GUN, "-p")
        front = _Front(server.url, 503)
        try:
            unsure = vouch_cli(_server_at(front.url), owner.trust_dir, hsm)
            failed = unsure.run("key", "rotate", GUN, "root", "--hsm", "-y", check=False)
        finally:
            front.close()
        assert failed.returncode != 0
        hint = failed.stderr.split("retry with --hsm --pkcs11-id ", 1)
        assert len(hint) == 2, failed.stderr
        cka = hint[1].split()[0]
        kept = _token_key_objects(hsm)
        assert len(kept) == 2
        owner.run("key", "rotate", GUN, "root", "--hsm", "--pkcs11-id", cka, "-y")
        assert _token_key_objects(hsm) == kept  # the same pair, nothing new
        root = Metadata.from_bytes(fetch(metadata_url(server.url, GUN, "root.json")), Root)
        assert root.signed.version == 2
        ((_, cert_key),) = root.signed.role_keys("root").items()
        assert cert_key.canonical_keyid() in token_keys(hsm)
