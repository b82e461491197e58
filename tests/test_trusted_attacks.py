"""Attacks on the client update rules, each of which the trusted set must refuse.

Every test builds an honest repository with the simulator, then plays a
hostile server that serves crafted metadata. A refusal must name the rule
(by exception type), and must not leave the attacker's data trusted.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from simulator import RepoSim, bare_signing, load_all, root_signing
from vouch.tuf import roles
from vouch.tuf.errors import (
    BadKeyIDError,
    CertificateError,
    ExpiredError,
    FormatError,
    HashMismatchError,
    RoleError,
    RollbackError,
    SignatureError,
    TrustError,
)
from vouch.tuf.metadata import Metadata, Root, Timestamp
from vouch.tuf.trusted import TrustedSet


@pytest.fixture
def sim() -> RepoSim:
    s = RepoSim()
    s.add_target("v1", b"one")
    s.publish()
    return s


def fresh(sim: RepoSim, **kw: object) -> TrustedSet:
    return TrustedSet(sim.gun, sim.files["root"], now=sim.now, **kw)  # type: ignore[arg-type]


# -- signatures and thresholds ------------------------------------------------


def test_tampered_targets_signature_refused(sim: RepoSim) -> None:
    md = Metadata.from_bytes(sim.files["targets"])
    md.signed.targets["evil"] = md.signed.targets["v1"]
    md.signed_raw = md.signed.to_dict()  # content changed, old signature kept
    sim.files["targets"] = md.to_bytes()
    sim.sign_snapshot()
    sim.sign_timestamp()
    with pytest.raises(SignatureError, match="threshold"):
        load_all(sim.files, sim.gun)


def test_targets_signed_by_wrong_key_refused(sim: RepoSim) -> None:
    sim.signers["targets"] = [bare_signing()]
    files = sim.publish()
    with pytest.raises(SignatureError):
        load_all(files, sim.gun)


def test_no_signatures_refused(sim: RepoSim) -> None:
    ts = fresh(sim)
    doc = json.loads(sim.files["timestamp"])
    doc["signatures"] = []
    with pytest.raises(SignatureError, match="no signatures"):
        ts.update_timestamp(json.dumps(doc).encode())


def test_below_threshold_refused(sim: RepoSim) -> None:
    extra = bare_signing()
    sim.root.add_key("targets", extra.public)
    sim.root.roles["targets"].threshold = 2
    sim.root.version += 1
    sim.sign_root()
    files = sim.publish()  # still signed by one targets key only
    with pytest.raises(SignatureError, match="1 of 2"):
        load_all(files, sim.gun, root=files["root"])
    sim.signers["targets"].append(extra)
    load_all(sim.publish(), sim.gun)  # and with both keys it is accepted


def test_duplicate_signature_does_not_inflate_threshold(sim: RepoSim) -> None:
    sim.root.roles["targets"].threshold = 2
    sim.sign_root()
    sim.publish()
    doc = json.loads(sim.files["targets"])
    doc["signatures"] = doc["signatures"] * 2
    sim.files["targets"] = json.dumps(doc).encode()
    sim.sign_snapshot()
    sim.sign_timestamp()
    with pytest.raises(SignatureError, match="1 of 2"):
        load_all(sim.files, sim.gun)


def test_same_key_listed_twice_does_not_inflate_threshold(sim: RepoSim) -> None:
    """One private key listed as a bare key and as a certificate is one key."""
    signing = sim.signers["targets"][0]
    from vouch.crypto.certs import root_certificate
    from vouch.tuf.keys import certificate_key

    as_cert = certificate_key([root_certificate(signing.private, "anything")])
    sim.root.add_key("targets", as_cert)
    sim.root.roles["targets"].threshold = 2
    sim.sign_root()
    md = Metadata(sim.targets["targets"])
    md.signed.version += 1
    md.sign(signing.private.signer(signing.public), signing.private.signer(as_cert))
    sim.files["targets"] = md.to_bytes()
    sim.sign_snapshot()
    sim.sign_timestamp()
    with pytest.raises(SignatureError, match="1 of 2"):
        load_all(sim.files, sim.gun)


def test_signature_method_must_fit_key_type(sim: RepoSim) -> None:
    """An ECDSA signature relabelled as eddsa (or rsapss) does not count."""
    for method in ("eddsa", "rsapss", "rsapkcs1v15", "unknown"):
        doc = json.loads(sim.files["timestamp"])
        doc["signatures"][0]["method"] = method
        with pytest.raises(SignatureError):
            fresh(sim).update_timestamp(json.dumps(doc).encode())


def test_wrong_key_type_label_refused(sim: RepoSim) -> None:
    """Root lists an ECDSA key but labels it ed25519: it cannot verify anything."""
    kid = sim.root.roles["timestamp"].keyids[0]
    key = sim.root.keys[kid]
    doc = json.loads(sim.files["root"])
    doc["signed"]["keys"][kid]["keytype"] = "ed25519"
    assert key.keytype == "ecdsa"
    md = Metadata.from_bytes(json.dumps(doc).encode())
    md.sign(*[s.signer() for s in sim.root_signers])
    with pytest.raises((SignatureError, BadKeyIDError, FormatError)):
        TrustedSet(sim.gun, md.to_bytes(), now=sim.now).update_timestamp(sim.files["timestamp"])


def test_key_listed_under_foreign_id_is_hard_error(sim: RepoSim) -> None:
    doc = json.loads(sim.files["root"])
    kid = sim.root.roles["timestamp"].keyids[0]
    other = bare_signing().public
    doc["signed"]["keys"][kid] = other.to_dict()  # the ID no longer matches the key
    md = Metadata.from_bytes(json.dumps(doc).encode())
    md.sign(*[s.signer() for s in sim.root_signers])
    ts = TrustedSet(sim.gun, md.to_bytes(), now=sim.now)
    with pytest.raises(BadKeyIDError):
        ts.update_timestamp(sim.files["timestamp"])


# -- root chain ---------------------------------------------------------------


def test_root_rotation_accepted_with_old_and_new_signatures(sim: RepoSim) -> None:
    old_root = sim.files["root"]
    sim.rotate_root()
    files = sim.publish()
    ts = load_all(files, sim.gun, root=old_root)
    assert ts.root.signed.version == 2


def test_root_rotation_without_old_keys_refused(sim: RepoSim) -> None:
    old_root = sim.files["root"]
    new_root = sim.rotate_root(sign_with_old=False)
    ts = TrustedSet(sim.gun, old_root, now=sim.now)
    with pytest.raises(SignatureError, match="could not rotate trust"):
        ts.update_root(new_root)
    assert ts.root.signed.version == 1


def test_root_rotation_without_new_keys_refused(sim: RepoSim) -> None:
    old_root = sim.files["root"]
    old_signers = list(sim.root_signers)
    sim.rotate_root()
    new_root = sim.sign_root(old_signers)  # only the old key signs the new root
    with pytest.raises(SignatureError):
        TrustedSet(sim.gun, old_root, now=sim.now).update_root(new_root)


def test_unsigned_root_swap_refused(sim: RepoSim) -> None:
    """A server swaps in a whole new repository (new root keys) for the GUN."""
    old_root = sim.files["root"]
    evil = RepoSim(gun=sim.gun)
    evil.root.version = 2
    evil_root = evil.sign_root()
    with pytest.raises(SignatureError):
        TrustedSet(sim.gun, old_root, now=sim.now).update_root(evil_root)


def test_root_version_must_increase_by_one(sim: RepoSim) -> None:
    old_root = sim.files["root"]
    sim.rotate_root()
    sim.rotate_root()  # version 3: skipping version 2 is refused
    v3 = sim.files["root"]
    ts = TrustedSet(sim.gun, old_root, now=sim.now)
    with pytest.raises((RollbackError, SignatureError)):
        ts.update_root(v3)
    ts.update_root(sim.root_history[1])
    ts.update_root(v3)
    assert ts.root.signed.version == 3


def test_root_replay_of_same_version_refused(sim: RepoSim) -> None:
    ts = fresh(sim)
    with pytest.raises(RollbackError):
        ts.update_root(sim.files["root"])


def test_root_rollback_below_floor_refused(sim: RepoSim) -> None:
    with pytest.raises(RollbackError):
        fresh(sim, floors={"root": 2})


def test_root_certificate_for_other_gun_refused(sim: RepoSim) -> None:
    with pytest.raises(CertificateError, match="leaf certificates"):
        TrustedSet("example.com/other/app", sim.files["root"], now=sim.now)


def test_bare_root_key_refused(sim: RepoSim) -> None:
    bare = bare_signing()
    sim.root.roles["root"].keyids = []
    sim.root.add_key("root", bare.public)
    data = sim.sign_root([bare])
    with pytest.raises(CertificateError):
        TrustedSet(sim.gun, data, now=sim.now)


def test_expired_root_certificate_refused(sim: RepoSim) -> None:
    later = sim.now + timedelta(days=3651)
    with pytest.raises(CertificateError):
        TrustedSet(sim.gun, sim.files["root"], now=later)


def test_final_root_expired_refused(sim: RepoSim) -> None:
    sim.root.set_expires(sim.now - timedelta(seconds=1))
    sim.sign_root()
    ts = fresh(sim)  # an expired cached root still anchors trust...
    with pytest.raises(ExpiredError, match="root"):
        ts.update_timestamp(sim.files["timestamp"])  # ...but cannot be used to read


def test_root_rotation_to_other_gun_cert_refused(sim: RepoSim) -> None:
    old_root = sim.files["root"]
    other = root_signing("example.com/other/app", sim.now)
    sim.root.roles["root"].keyids = []
    sim.root.add_key("root", other.public)
    sim.root.version += 1
    data = sim.sign_root([other, *sim.signers["root"]])
    with pytest.raises(CertificateError):
        TrustedSet(sim.gun, old_root, now=sim.now).update_root(data)


# -- freshness: rollback and freeze -------------------------------------------


def test_timestamp_rollback_refused(sim: RepoSim) -> None:
    old_ts = sim.files["timestamp"]
    sim.publish()
    ts = fresh(sim)
    ts.update_timestamp(sim.files["timestamp"])
    with pytest.raises(TrustError):
        ts.update_timestamp(old_ts)
    with pytest.raises(RollbackError):
        fresh(sim, floors={"timestamp": 2}).update_timestamp(old_ts)


def test_snapshot_rollback_refused(sim: RepoSim) -> None:
    old_snapshot = sim.files["snapshot"]
    sim.publish()
    # A timestamp that correctly pins the *old* snapshot, signed by the real key:
    # the attacker replays old, validly signed files.
    ts_bytes = sim.sign_timestamp()
    snap_floor = Metadata.from_bytes(sim.files["snapshot"]).signed.version
    sim.files["snapshot"] = old_snapshot
    ts_bytes = sim.sign_timestamp()
    ts = fresh(sim, floors={"snapshot": snap_floor})
    ts.update_timestamp(ts_bytes)
    with pytest.raises(RollbackError):
        ts.update_snapshot(old_snapshot)


def test_targets_rollback_refused(sim: RepoSim) -> None:
    old_targets = sim.files["targets"]
    sim.add_target("v2", b"two")
    sim.publish()
    floor = Metadata.from_bytes(sim.files["targets"]).signed.version
    sim.files["targets"] = old_targets
    sim.sign_snapshot()
    sim.sign_timestamp()
    with pytest.raises(RollbackError):
        load_all(sim.files, sim.gun, floors={"targets": floor})


def test_equal_timestamp_version_with_other_content_refused(sim: RepoSim) -> None:
    ts = fresh(sim)
    ts.update_timestamp(sim.files["timestamp"])
    sim.timestamp_version -= 1
    sim.sign_snapshot()
    forged = sim.sign_timestamp()
    with pytest.raises(RollbackError, match="without a new version"):
        ts.update_timestamp(forged)


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets"])
def test_freeze_attack_expired_metadata_refused(sim: RepoSim, role: str) -> None:
    """A server keeps serving validly signed files after they expired."""
    past = sim.now - timedelta(seconds=1)
    if role == "targets":
        sim.targets["targets"].set_expires(past)
        sim.sign_targets("targets")
    if role in ("targets", "snapshot"):
        snap = None
        if role == "snapshot":
            snap = Metadata.from_bytes(sim.sign_snapshot()).signed
            snap.set_expires(past)
        sim.sign_snapshot(snap)
    sim.sign_timestamp(expires=past if role == "timestamp" else None)
    ts = fresh(sim)
    steps = [
        (roles.TIMESTAMP, ts.update_timestamp),
        (roles.SNAPSHOT, ts.update_snapshot),
        (roles.TARGETS, ts.update_targets),
    ]
    with pytest.raises(ExpiredError, match=f"^{role} expired"):
        for name, step in steps:
            step(sim.files[name])


def test_expired_timestamp_keeps_floor_but_blocks_snapshot(sim: RepoSim) -> None:
    sim.sign_timestamp(expires=sim.now - timedelta(seconds=1))
    ts = fresh(sim)
    with pytest.raises(ExpiredError):
        ts.update_timestamp(sim.files["timestamp"])
    with pytest.raises(ExpiredError):
        ts.update_snapshot(sim.files["snapshot"])


# -- mix and match, hashes and lengths ----------------------------------------


def test_snapshot_not_pinned_by_timestamp_refused(sim: RepoSim) -> None:
    ts_bytes = sim.files["timestamp"]
    sim.add_target("v2", b"two")
    sim.publish()  # a newer, validly signed snapshot the timestamp does not pin
    ts = fresh(sim)
    ts.update_timestamp(ts_bytes)
    with pytest.raises(HashMismatchError):
        ts.update_snapshot(sim.files["snapshot"])


def test_mix_and_match_targets_refused(sim: RepoSim) -> None:
    """Targets from another (validly signed) repository state."""
    other_targets = sim.files["targets"]
    sim.add_target("v2", b"two")
    files = sim.publish()
    files["targets"] = other_targets
    with pytest.raises(HashMismatchError):
        load_all(files, sim.gun)


def test_length_mismatch_refused(sim: RepoSim) -> None:
    ts = fresh(sim)
    ts.update_timestamp(sim.files["timestamp"])
    with pytest.raises(HashMismatchError, match="bytes"):
        ts.update_snapshot(sim.files["snapshot"] + b" ")


def test_hash_mismatch_same_length_refused(sim: RepoSim) -> None:
    ts = fresh(sim)
    ts.update_timestamp(sim.files["timestamp"])
    snap = bytearray(sim.files["snapshot"])
    i = snap.index(b'"version":')
    snap[i + 10] = ord("9") if snap[i + 10] != ord("9") else ord("8")
    with pytest.raises(HashMismatchError, match="sha"):
        ts.update_snapshot(bytes(snap))


def test_snapshot_pinning_other_root_refused(sim: RepoSim) -> None:
    old_root = sim.files["root"]
    sim.rotate_root()
    files = sim.publish()
    ts = TrustedSet(sim.gun, old_root, now=sim.now)  # client skipped the rotation
    ts.update_timestamp(files["timestamp"])
    with pytest.raises(HashMismatchError, match="root"):
        ts.update_snapshot(files["snapshot"])


def test_timestamp_served_as_snapshot_refused(sim: RepoSim) -> None:
    """Role confusion: a validly signed file of another role."""
    ts = fresh(sim)
    with pytest.raises(RoleError):
        ts.update_timestamp(sim.files["snapshot"])
    md = Metadata.from_bytes(sim.files["timestamp"], Timestamp)
    assert isinstance(md.signed, Timestamp)
    with pytest.raises(RoleError):
        Metadata.from_bytes(sim.files["timestamp"], Root)


def test_out_of_order_updates_refused(sim: RepoSim) -> None:
    ts = fresh(sim)
    with pytest.raises(TrustError, match="timestamp before"):
        ts.update_snapshot(sim.files["snapshot"])
    with pytest.raises(TrustError, match="snapshot before"):
        ts.update_targets(sim.files["targets"])


# -- delegations --------------------------------------------------------------


def test_delegation_path_escape_ignored() -> None:
    sim = RepoSim()
    sim.delegate("targets/releases", ["rel/"])
    sim.add_target("rel/ok", b"ok", role="targets/releases")
    sim.add_target("evil/escape", b"x", role="targets/releases")
    ts = load_all(sim.publish(), sim.gun)
    assert set(ts.all_targets()) == {"rel/ok"}
    assert ts.find_target("evil/escape") is None
    assert ts.find_target("rel/ok") is not None


def test_nested_delegation_cannot_widen_parent_paths() -> None:
    sim = RepoSim()
    sim.delegate("targets/a", ["rel/"])
    sim.delegate("targets/a/b", ["", "rel/x", "other/"], parent="targets/a")
    sim.add_target("rel/x1", b"1", role="targets/a/b")
    sim.add_target("other/y", b"2", role="targets/a/b")
    sim.add_target("rel/z", b"3", role="targets/a/b")
    ts = load_all(sim.publish(), sim.gun)
    assert set(ts.all_targets()) == {"rel/x1"}
    assert ts.find_target("other/y") is None


def test_role_without_paths_signs_nothing() -> None:
    sim = RepoSim()
    sim.delegate("targets/nopaths", None)
    sim.add_target("anything", b"1", role="targets/nopaths")
    ts = load_all(sim.publish(), sim.gun)
    assert ts.all_targets() == {}


def test_top_level_targets_win_over_delegations() -> None:
    sim = RepoSim()
    sim.add_target("v1", b"top")
    sim.delegate("targets/all", [""])
    sim.add_target("v1", b"delegated", role="targets/all")
    ts = load_all(sim.publish(), sim.gun)
    info = ts.find_target("v1")
    assert info is not None and info.role == "targets"


def test_terminating_role_stops_search() -> None:
    sim = RepoSim()
    sim.delegate("targets/first", ["rel/"], terminating=True)
    sim.delegate("targets/second", ["rel/"])
    sim.add_target("rel/only-second", b"x", role="targets/second")
    sim.add_target("rel/first", b"y", role="targets/first")
    ts = load_all(sim.publish(), sim.gun)
    assert ts.find_target("rel/only-second") is None
    assert "rel/only-second" not in ts.all_targets()
    assert ts.find_target("rel/first") is not None


def test_undeclared_delegation_refused() -> None:
    sim = RepoSim()
    keys = sim.delegate("targets/real", [""])
    files = sim.publish()
    ts = load_all(files, sim.gun)
    del ts.targets["targets/real"]
    with pytest.raises(RoleError, match="does not exist"):
        ts.update_delegated_targets(files["targets/real"], "targets/ghost")
    assert keys


def test_delegation_signed_by_wrong_key_refused() -> None:
    sim = RepoSim()
    sim.delegate("targets/rel", [""])
    sim.signers["targets/rel"] = [bare_signing()]
    with pytest.raises(SignatureError):
        load_all(sim.publish(), sim.gun)


def test_delegation_threshold_counts_distinct_keys() -> None:
    sim = RepoSim()
    k1, k2 = bare_signing(), bare_signing()
    sim.delegate("targets/two", [""], keys=[k1, k2], threshold=2)
    sim.signers["targets/two"] = [k1]
    with pytest.raises(SignatureError, match="1 of 2"):
        load_all(sim.publish(), sim.gun)
    sim.signers["targets/two"] = [k1, k2]
    load_all(sim.publish(), sim.gun)


def test_delegation_declaring_non_child_refused() -> None:
    sim = RepoSim()
    sim.delegate("targets/a", [""])
    sim.delegate("targets/b", [""])
    # targets/a tries to declare targets/b/evil, which only targets/b may declare.
    sim.delegate("targets/b/evil", [""], parent="targets/a")
    with pytest.raises(RoleError, match="direct child"):
        load_all(sim.publish(), sim.gun)


@pytest.mark.parametrize("name", ["targets/../root", "targets/UP", "targets/a//b", "targets/"])
def test_bad_delegation_names_refused(name: str) -> None:
    sim = RepoSim()
    sim.delegate(name, [""])
    with pytest.raises(RoleError):
        load_all(sim.publish(), sim.gun)


def test_expired_delegation_refused() -> None:
    sim = RepoSim()
    sim.delegate("targets/rel", [""])
    sim.targets["targets/rel"].set_expires(sim.now - timedelta(seconds=5))
    with pytest.raises(ExpiredError, match="targets/rel"):
        load_all(sim.publish(), sim.gun)


def test_delegation_not_in_snapshot_cannot_load() -> None:
    sim = RepoSim()
    sim.delegate("targets/rel", [""])
    files = sim.publish()
    snap = Metadata.from_bytes(files["snapshot"])
    del snap.signed.meta["targets/rel"]
    sim.sign_snapshot(snap.signed)
    sim.sign_timestamp()
    ts = TrustedSet(sim.gun, sim.files["root"], now=sim.now)
    ts.update_timestamp(sim.files["timestamp"])
    ts.update_snapshot(sim.files["snapshot"])
    ts.update_targets(sim.files["targets"])
    with pytest.raises(RoleError, match="snapshot has no entry"):
        ts.update_delegated_targets(files["targets/rel"], "targets/rel")
