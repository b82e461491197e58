"""``vouch self-check``: prove on this machine that the trust core works.

Builds a complete repository in memory for each key type (root certificate,
targets, a delegation, snapshot, timestamp), signs it, verifies it through the
client's trusted set, and checks that a forged file is refused. Until the
trust server lands this is what ``make run`` does on a fresh machine.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from vouch.crypto.certs import root_key
from vouch.crypto.privkey import PrivateKey
from vouch.tuf import build, roles
from vouch.tuf.errors import TrustError
from vouch.tuf.metadata import DelegatedRole, FileMeta, Metadata, Targets
from vouch.tuf.trusted import TrustedSet

GUN = "example.com/vouch/self-check"


def _repository(keytype: str, now: datetime) -> dict[str, bytes]:
    root_priv = PrivateKey.generate("rsa" if keytype == "rsa" else "ecdsa")
    root_pub = root_key(root_priv, GUN, now=now)
    privs = {
        r: PrivateKey.generate(keytype) for r in (roles.TARGETS, roles.SNAPSHOT, roles.TIMESTAMP)
    }
    delegate = PrivateKey.generate(keytype)
    root = Metadata(
        build.root({roles.ROOT: [root_pub], **{r: [k.public] for r, k in privs.items()}}, now)
    )
    root.sign(root_priv.signer(root_pub))
    files = {roles.ROOT: root.to_bytes()}

    top = build.targets(now)
    top.targets["v1"] = FileMeta.for_bytes(b"image manifest v1", {"size": 17})
    assert top.delegations is not None
    top.delegations.keys[delegate.keyid] = delegate.public
    top.delegations.roles.append(DelegatedRole("targets/releases", [delegate.keyid], 1, ["rel/"]))
    signed_top: Metadata[Targets] = Metadata(top)
    signed_top.sign(privs[roles.TARGETS].signer())
    files[roles.TARGETS] = signed_top.to_bytes()

    rel = build.targets(now, role="targets/releases")
    rel.targets["rel/2.0"] = FileMeta.for_bytes(b"release 2.0")
    signed_rel: Metadata[Targets] = Metadata(rel)
    signed_rel.sign(delegate.signer())
    files["targets/releases"] = signed_rel.to_bytes()

    snap = Metadata(build.snapshot(files, now))
    snap.sign(privs[roles.SNAPSHOT].signer())
    files[roles.SNAPSHOT] = snap.to_bytes()
    ts = Metadata(build.timestamp(files[roles.SNAPSHOT], now))
    ts.sign(privs[roles.TIMESTAMP].signer())
    files[roles.TIMESTAMP] = ts.to_bytes()
    return files


def _verify(files: dict[str, bytes], now: datetime) -> TrustedSet:
    ts = TrustedSet(GUN, files[roles.ROOT], now=now, bootstrap=True)
    ts.update_timestamp(files[roles.TIMESTAMP])
    ts.update_snapshot(files[roles.SNAPSHOT])
    ts.update_targets(files[roles.TARGETS])
    ts.update_delegated_targets(files["targets/releases"], "targets/releases")
    return ts


def run(echo: Callable[[str], object]) -> bool:
    """Run every check, reporting each line through ``echo``; True if all pass."""
    now = datetime.now(UTC)
    ok = True
    for keytype in ("ecdsa", "ed25519", "rsa"):
        files = _repository(keytype, now)
        try:
            seen = sorted(_verify(files, now).all_targets())
        except TrustError as exc:
            echo(f"FAIL {keytype}: honest repository refused: {exc}")
            ok = False
            continue
        forged = dict(files)
        forged[roles.TARGETS] = files[roles.TARGETS].replace(b'"v1"', b'"v9"')
        try:
            _verify(forged, now)
        except TrustError as exc:
            refused = type(exc).__name__
        else:
            refused = ""
        if seen != ["rel/2.0", "v1"] or not refused:
            echo(f"FAIL {keytype}: targets {seen}, forgery refused: {bool(refused)}")
            ok = False
            continue
        echo(f"ok   {keytype}: signed and verified {len(files)} roles, forgery refused ({refused})")
    echo("self-check passed" if ok else "self-check FAILED")
    return ok
