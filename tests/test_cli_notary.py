"""``vouch`` and the real ``notary`` CLI on one trust directory, against the real notary-server.

A drop-in must work on a trust dir notary made, and leave one notary can
keep using: keys made by one are used by the other, what one stages the
other shows and publishes, what one publishes the other lists, and root
rotations by either are followed by both.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from notary_harness import NotaryCLI, NotaryServer, make_delegation_key
from vouch_harness import VOUCH


class Both:
    """``notary`` and ``vouch`` with the same server, trust dir, HOME and passphrases."""

    def __init__(self, server: NotaryServer, workdir: Path) -> None:
        self.notary = NotaryCLI(server.url, workdir / "trust", home=workdir / "home")
        self.url = server.url
        self.files = workdir / "files"
        self.files.mkdir()

    def vouch(self, *args: str | Path, input: str | None = None) -> str:
        cmd = [VOUCH, "-s", self.url, "-d", str(self.notary.trust_dir), *map(str, args)]
        proc = subprocess.run(
            cmd,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            env=self.notary.environment(),
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    def file(self, name: str, content: bytes) -> Path:
        path = self.files / name
        path.write_bytes(content)
        return path

    def names(self, gun: str) -> dict[str, str]:
        """Target -> role as ``notary list`` prints them."""
        lines = self.notary.run("list", gun).stdout.splitlines()[2:]
        return {line.split()[0]: line.split()[3] for line in lines if line.strip()}

    def vouch_names(self, gun: str) -> dict[str, str]:
        return {t["name"]: t["role"] for t in json.loads(self.vouch("list", gun, "--json"))}


def test_notary_repository_driven_by_vouch(notary_server: NotaryServer, tmp_path: Path) -> None:
    both = Both(notary_server, tmp_path)
    gun = "example.com/cli/shared"
    both.notary.run("init", gun, "-p")
    # vouch stages with notary's keys; notary sees the change and vouch publishes it
    both.vouch("add", gun, "from-vouch", both.file("v", b"vouch"))
    assert "from-vouch" in both.notary.run("status", gun).stdout
    both.vouch("publish", gun)
    assert both.names(gun) == {"from-vouch": "targets"}
    # and the other way round
    both.notary.run("add", gun, "from-notary", both.file("n", b"notary"))
    status = json.loads(both.vouch("status", gun, "--json"))
    assert [(c["action"], c["path"]) for c in status] == [("create", "from-notary")]
    both.notary.run("publish", gun)
    assert both.vouch_names(gun) == {"from-notary": "targets", "from-vouch": "targets"}
    # Identical listings, byte for byte (in a pipe vouch prints notary's layout).
    assert both.vouch("list", gun) == both.notary.run("list", gun).stdout
    # A delegation notary adds from a certificate; vouch lists it with notary's key IDs
    # and signs with the key notary imported.
    dk = make_delegation_key(tmp_path / "dk", "targets/releases")
    both.notary.run("delegation", "add", gun, "targets/releases", dk.cert_path, "--all-paths", "-p")
    both.notary.run("key", "import", dk.key_path, "-r", "targets/releases")
    assert (
        both.vouch("delegation", "list", gun) == both.notary.run("delegation", "list", gun).stdout
    )
    both.vouch("add", gun, "rel", both.file("r", b"rel"), "-r", "targets/releases", "-p")
    assert both.names(gun)["rel"] == "targets/releases"
    # vouch rotates targets and root; notary keeps working with the result
    both.vouch("key", "rotate", gun, "targets")
    both.vouch("key", "rotate", gun, "root", "-y")
    assert both.names(gun) == both.vouch_names(gun)
    both.notary.run("add", gun, "after", both.file("a", b"after"), "-p")
    assert both.vouch_names(gun)["after"] == "targets"
    # vouch's key list is notary's (same IDs, roles and GUNs)
    assert both.vouch("key", "list") == both.notary.run("key", "list").stdout


def test_vouch_repository_driven_by_notary(notary_server: NotaryServer, tmp_path: Path) -> None:
    both = Both(notary_server, tmp_path)
    gun = "example.com/cli/vouchmade"
    delegate = tmp_path / "delegate"
    both.vouch("key", "generate", "--role", "targets/ci", "-o", delegate)
    both.vouch("init", gun)
    both.vouch("delegation", "add", gun, "targets/ci", f"{delegate}.pem", "--paths", "ci/")
    both.vouch("addhash", gun, "img", "5", "--sha256", "ab" * 32, "--sha512", "cd" * 64)
    rows = both.notary.run("status", gun).stdout.splitlines()[4:]
    assert [r.split()[2:] for r in rows] == [
        ["targets/ci", "delegation"],
        ["targets/ci", "delegation"],
        ["targets", "target", "img"],
    ]
    both.notary.run("publish", gun)
    assert both.names(gun) == {"img": "targets"}
    # notary signs for the delegation with the key vouch generated and exported
    both.notary.run("key", "import", f"{delegate}-key.pem")
    both.notary.run("add", gun, "ci/1", both.file("c", b"ci"), "-r", "targets/ci", "-p")
    assert both.vouch_names(gun) == {"img": "targets", "ci/1": "targets/ci"}
    # notary rotates the root key vouch made; vouch follows, and can still publish
    both.notary.run("key", "rotate", gun, "root", input="yes\n")
    both.vouch("add", gun, "img2", both.file("i", b"img2"), "-p")
    assert set(both.names(gun)) == {"img", "ci/1", "img2"}
    certs = json.loads(both.vouch("cert", "list", gun, "--json"))
    assert [c["cn"] for c in certs] == [gun]
    # keys exported by vouch import into a fresh notary trust dir
    bundle = tmp_path / "keys.pem"
    both.vouch("key", "export", "--gun", gun, "-o", bundle)
    fresh = NotaryCLI(both.url, tmp_path / "fresh", home=tmp_path / "home2")
    fresh.run("key", "import", bundle)
    listed = fresh.run("key", "list").stdout
    assert listed.count(gun) == 2  # its targets and snapshot keys
