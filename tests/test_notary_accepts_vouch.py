"""Metadata made by vouch is accepted by the real notary-server and notary CLI.

vouch builds a repository from scratch (root certificate, targets with awkward
names and custom data, delegations with ECDSA, Ed25519 and RSA keys, snapshot),
uploads it to Debian's notary-server in one multipart POST, and the real
notary CLI must list and look up every target, delegated ones included.
"""

from __future__ import annotations

import json
import secrets
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from notary_harness import NotaryCLI, NotaryServer, fetch
from vouch.crypto.certs import root_key
from vouch.crypto.privkey import PrivateKey
from vouch.tuf import build, roles
from vouch.tuf.keys import Key
from vouch.tuf.metadata import MISSING, DelegatedRole, FileMeta, Metadata, Targets


def _post_update(server: NotaryServer, gun: str, files: dict[str, bytes]) -> tuple[int, bytes]:
    boundary = secrets.token_hex(30)
    body = b""
    for role, data in files.items():
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="{role}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        f"{server.url}/v2/{gun}/_trust/tuf/",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _server_key(server: NotaryServer, gun: str, role: str) -> Key:
    doc = json.loads(fetch(f"{server.url}/v2/{gun}/_trust/tuf/{role}.key"))
    return Key.from_dict(doc)


CONTENT = {
    "v1": b"manifest one",
    "a<b>&c/é€ x": b"html chars",
    'q"uote\\back😀': b"quote",
    "rel/2.0": b"release two",
    "ed/1": b"ed25519 signed",
    "rsa/1": b"rsa signed",
}
ROLE_OF = {"rel/2.0": "targets/releases", "ed/1": "targets/ed", "rsa/1": "targets/rsa"}


def _build(gun: str, timestamp_key: Key, now: datetime) -> dict[str, bytes]:
    root_priv = PrivateKey.generate("ecdsa")
    root_pub = root_key(root_priv, gun, now=now)
    tgt, snap = PrivateKey.generate("ecdsa"), PrivateKey.generate("ed25519")
    root = Metadata(
        build.root(
            {
                roles.ROOT: [root_pub],
                roles.TARGETS: [tgt.public],
                roles.SNAPSHOT: [snap.public],
                roles.TIMESTAMP: [timestamp_key],
            },
            now,
        )
    )
    root.sign(root_priv.signer(root_pub))
    files = {roles.ROOT: root.to_bytes()}

    delegates = {
        "targets/releases": (PrivateKey.generate("ecdsa"), ["rel/"]),
        "targets/ed": (PrivateKey.generate("ed25519"), ["ed/"]),
        "targets/rsa": (PrivateKey.generate("rsa"), ["rsa/"]),
    }
    top = build.targets(now)
    assert top.delegations is not None
    for name, (key, paths) in delegates.items():
        top.delegations.keys[key.keyid] = key.public
        top.delegations.roles.append(DelegatedRole(name, [key.keyid], 1, paths))
    for name, data in CONTENT.items():
        if name not in ROLE_OF:
            custom = {"by": "vouch", "n": [1, 2]} if name == "v1" else MISSING
            top.targets[name] = FileMeta.for_bytes(data, custom)
    top_md: Metadata[Targets] = Metadata(top)
    top_md.sign(tgt.signer())
    files[roles.TARGETS] = top_md.to_bytes()
    for name, (key, _) in delegates.items():
        t = build.targets(now, role=name)
        for target, role in ROLE_OF.items():
            if role == name:
                t.targets[target] = FileMeta.for_bytes(CONTENT[target])
        md: Metadata[Targets] = Metadata(t)
        md.sign(key.signer())
        files[name] = md.to_bytes()
    snap_md = Metadata(build.snapshot(files, now))
    snap_md.sign(snap.signer())
    files[roles.SNAPSHOT] = snap_md.to_bytes()
    return files


@pytest.fixture
def vouch_repo(notary_server: NotaryServer) -> tuple[str, dict[str, bytes]]:
    gun = f"example.com/vouch/made-{secrets.token_hex(4)}"
    ts_key = _server_key(notary_server, gun, "timestamp")
    files = _build(gun, ts_key, datetime.now(UTC))
    status, body = _post_update(notary_server, gun, files)
    assert status == 200, body.decode(errors="replace")
    return gun, files


def test_notary_server_stores_vouch_bytes_verbatim(
    notary_server: NotaryServer, vouch_repo: tuple[str, dict[str, bytes]]
) -> None:
    gun, files = vouch_repo
    for role, data in files.items():
        assert fetch(f"{notary_server.url}/v2/{gun}/_trust/tuf/{role}.json") == data


def test_notary_cli_lists_and_looks_up_vouch_targets(
    notary_server: NotaryServer, vouch_repo: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    gun, _ = vouch_repo
    cli = NotaryCLI(notary_server.url, tmp_path / "trust", home=tmp_path / "home")
    out = cli.run("list", gun).stdout
    for name, data in CONTENT.items():
        line = next((ln for ln in out.splitlines() if ln.startswith(name + " ")), None)
        assert line is not None, (name, out)
        assert str(len(data)) in line.split()
        assert ROLE_OF.get(name, "targets") in line.split()
    looked = cli.run("lookup", gun, "rel/2.0").stdout
    assert str(len(CONTENT["rel/2.0"])) in looked


def test_notary_server_refuses_tampered_vouch_upload(notary_server: NotaryServer) -> None:
    """The control: the same upload with one byte changed is refused, so acceptance
    above means notary really verified vouch's signatures."""
    gun = f"example.com/vouch/tampered-{secrets.token_hex(4)}"
    files = _build(gun, _server_key(notary_server, gun, "timestamp"), datetime.now(UTC))
    files[roles.TARGETS] = files[roles.TARGETS].replace(b'"v1"', b'"v2"')
    status, body = _post_update(notary_server, gun, files)
    assert status == 400, body
    assert b"valid signatures did not meet threshold for targets" in body
