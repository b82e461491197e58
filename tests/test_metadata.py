"""Metadata models: lossless round trips and the structure rules of §6.2."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from vouch.tuf import canonical, timefmt
from vouch.tuf.errors import FormatError, HashMismatchError, RoleError
from vouch.tuf.metadata import FileMeta, Metadata, Root, Snapshot, Targets, Timestamp

H256 = "w6uP8Tcg6K2QR905Rms8iXTlksL6OD1KOWBxTK7wxPI="  # sha256(b"foobar")


def _targets_doc() -> dict[str, object]:
    return {
        "signed": {
            "_type": "Targets",
            "delegations": {
                "keys": {},
                "roles": [
                    {
                        "keyids": [],
                        "name": "targets/x",
                        "paths": ["a/"],
                        "terminating": True,
                        "path_hash_prefixes": ["ab"],
                        "threshold": 1,
                        "zzz": {"k": 1},
                    }
                ],
                "extra": True,
            },
            "expires": "2030-01-01T00:00:00.123456789+05:30",
            "targets": {
                "t": {
                    "custom": {"b": 1, "a": [1]},
                    "hashes": {"sha256": H256, "md5": "x"},
                    "length": 6,
                    "more": 1,
                }
            },
            "unknown_member": {"nested": ["v"]},
            "version": 3,
        },
        "signatures": [{"keyid": "ab", "method": "ECDSA", "sig": "AAAA"}],
    }


def test_unknown_fields_survive_round_trip() -> None:
    doc = _targets_doc()
    raw = canonical.envelope(
        canonical.encode(doc["signed"]), [{"keyid": "ab", "method": "ecdsa", "sig": "AAAA"}]
    )
    md = Metadata.from_bytes(raw)
    assert isinstance(md.signed, Targets)
    assert md.signed.unrecognized == {"unknown_member": {"nested": ["v"]}}
    assert md.signatures[0].method == "ecdsa"  # lower-cased like Go
    assert md.to_bytes() == raw
    role = md.signed.delegations.roles[0] if md.signed.delegations else None
    assert role is not None and role.terminating and role.path_hash_prefixes == ["ab"]


def test_expires_with_offset_and_nanoseconds() -> None:
    t = timefmt.parse("2036-11-30T18:13:09.583514406+05:30")
    assert t == datetime(2036, 11, 30, 12, 43, 9, 583514, tzinfo=UTC)
    assert timefmt.parse("2026-12-17T12:34:00Z").microsecond == 0
    assert (
        timefmt.format(datetime(2026, 1, 1, 0, 0, 0, 120000, tzinfo=UTC))
        == "2026-01-01T00:00:00.12Z"
    )
    assert (
        timefmt.format(datetime(2026, 1, 1, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))))
        == "2026-01-01T00:00:00Z"
    )
    for bad in [
        "2026-12-17",
        "2026-12-17T12:34:00",
        "2026-12-17T12:34:00.1234567890Z",
        "2026-13-01T00:00:00Z",
        "2026-12-17T12:34:00+25:00",
    ]:
        with pytest.raises(FormatError):
            timefmt.parse(bad)


def _doc(kind: str, **signed: object) -> bytes:
    body = {"_type": kind, "expires": "2030-01-01T00:00:00Z", "version": 1, **signed}
    return json.dumps({"signed": body, "signatures": []}).encode()


def test_root_needs_all_roles_and_known_keys() -> None:
    roles = {r: {"keyids": [], "threshold": 1} for r in ("root", "targets", "snapshot")}
    with pytest.raises(FormatError, match="missing timestamp role"):
        Metadata.from_bytes(_doc("Root", keys={}, roles=roles))
    roles["timestamp"] = {"keyids": ["nope"], "threshold": 1}
    with pytest.raises(FormatError, match="without corresponding key"):
        Metadata.from_bytes(_doc("Root", keys={}, roles=roles))
    roles["timestamp"] = {"keyids": [], "threshold": 0}
    with pytest.raises(FormatError, match="threshold"):
        Metadata.from_bytes(_doc("Root", keys={}, roles=roles))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"version": 0}, FormatError),
        ({"version": True}, FormatError),
        ({"version": "1"}, FormatError),
        ({"expires": "soon"}, FormatError),
        ({"_type": "targets"}, RoleError),
        ({"targets": []}, FormatError),
    ],
)
def test_bad_types_refused(change: dict[str, object], error: type[Exception]) -> None:
    body: dict[str, object] = {
        "_type": "Targets",
        "expires": "2030-01-01T00:00:00Z",
        "version": 1,
        "targets": {},
    }
    body.update(change)
    with pytest.raises(error):
        Metadata.from_bytes(json.dumps({"signed": body, "signatures": []}).encode())


def test_snapshot_and_timestamp_need_sha256_of_their_pins() -> None:
    meta = {"hashes": {"sha512": "A" * 86 + "=="}, "length": 1}
    with pytest.raises(FormatError, match="sha256"):
        Metadata.from_bytes(_doc("Snapshot", meta={"root": meta, "targets": meta}))
    with pytest.raises(FormatError, match="snapshot"):
        Metadata.from_bytes(_doc("Timestamp", meta={}))
    good = {"hashes": {"sha256": H256}, "length": 6}
    md = Metadata.from_bytes(_doc("Snapshot", meta={"root": good, "targets": good}))
    assert isinstance(md.signed, Snapshot)
    md2 = Metadata.from_bytes(_doc("Timestamp", meta={"snapshot": good}))
    assert isinstance(md2.signed, Timestamp)


def test_file_meta_hash_rules() -> None:
    with pytest.raises(FormatError, match="no sha256 or sha512"):
        FileMeta.from_dict({"hashes": {"md5": "AA=="}, "length": 1})
    with pytest.raises(FormatError, match="wrong length"):
        FileMeta.from_dict({"hashes": {"sha256": "AAAA"}, "length": 1})
    with pytest.raises(FormatError):
        FileMeta.from_dict({"hashes": {"sha256": H256}, "length": -1})
    meta = FileMeta.for_bytes(b"foobar")
    meta.verify(b"foobar")
    assert meta.hashes["sha256"] == H256
    with pytest.raises(HashMismatchError):
        meta.verify(b"foobaz")
    with pytest.raises(HashMismatchError):
        meta.verify(b"foobar!")


@pytest.mark.parametrize(
    "value",
    [
        H256[:-1],  # padding missing
        H256[:-2] + "==",  # 31 bytes
        H256[:-1] + "A",  # 33 bytes' worth of characters, no padding
        H256[:5] + "_" + H256[6:],  # URL-safe alphabet
        H256[:10] + " " + H256[11:],
        H256[:-1] + "=\n",
        "=" + H256[1:],
        H256 + "AAAA",
    ],
)
def test_file_meta_refuses_digests_of_the_wrong_size_or_alphabet(value: str) -> None:
    """The fast digest check must refuse exactly what the strict decoder refuses."""
    with pytest.raises(FormatError, match="sha256"):
        FileMeta.from_dict({"hashes": {"sha256": value}, "length": 1}, "t", "target")


def test_file_meta_keeps_custom_and_unknown_members() -> None:
    meta = FileMeta.from_dict(
        {"hashes": {"sha256": H256, "md5": "xx"}, "length": 6, "custom": {"a": 1}, "z": [1]}
    )
    assert meta.custom == {"a": 1} and meta.unrecognized == {"z": [1]}
    assert meta.hashes == {"sha256": H256, "md5": "xx"}
    assert meta.to_dict() == {
        "hashes": {"sha256": H256, "md5": "xx"},
        "length": 6,
        "custom": {"a": 1},
        "z": [1],
    }
    plain = FileMeta.from_dict({"hashes": {"sha256": H256}, "length": 6})
    assert plain.unrecognized == {} and plain.to_dict() == {"hashes": {"sha256": H256}, "length": 6}


def test_custom_with_float_refused_when_building() -> None:
    with pytest.raises(FormatError):
        FileMeta.for_bytes(b"x", {"ratio": 0.5})


def test_envelope_must_have_signed_and_signatures() -> None:
    for raw in [b"[]", b'{"signed":{}}', b'{"signatures":[]}', b'{"signed":1,"signatures":[]}']:
        with pytest.raises((FormatError, RoleError)):
            Metadata.from_bytes(raw)


def test_editing_then_signing_covers_the_edit() -> None:
    from vouch.crypto.privkey import PrivateKey
    from vouch.tuf import build

    key = PrivateKey.generate("ed25519")
    now = datetime.now(UTC)
    md: Metadata[Targets] = Metadata(build.targets(now))
    md.sign(key.signer())
    md.signed.targets["new"] = FileMeta.for_bytes(b"1")
    md.sign(key.signer())
    again = Metadata.from_bytes(md.to_bytes())
    assert again.verified_keyids({key.keyid: key.public}, 1, "targets") == {key.keyid}
    assert "new" in again.signed.targets


def test_root_round_trip_keeps_consistent_snapshot_absence() -> None:
    roles = {
        r: {"keyids": [], "threshold": 1} for r in ("root", "targets", "snapshot", "timestamp")
    }
    raw = _doc("Root", keys={}, roles=roles)
    md = Metadata.from_bytes(raw)
    assert isinstance(md.signed, Root)
    assert md.signed.consistent_snapshot is None
    assert canonical.encode(md.signed.to_dict()) == md.signed_bytes()
    doc = copy.deepcopy(json.loads(raw))
    doc["signed"]["consistent_snapshot"] = False
    md2 = Metadata.from_bytes(json.dumps(doc).encode())
    assert canonical.encode(md2.signed.to_dict()) == md2.signed_bytes()
