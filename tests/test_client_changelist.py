"""notary's changelist files: vouch reads and writes them byte for byte.

Unit tests pin the format against bytes the real notary 0.7.0 CLI wrote
(embedded below). The ``interop`` tests stage changes with /usr/bin/notary
and re-encode every file with vouch, then stage changes with vouch and have
notary list (``status``) and apply (``publish``) them. They fail, never skip,
when the notary binaries are missing (the ``notary_server`` fixture).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from notary_harness import (
    CUSTOM_JSON,
    NAME_HTML,
    NAME_QUOTE,
    NAME_SEPARATORS,
    PASSPHRASE,
    NotaryCLI,
    NotaryServer,
    fetch,
    make_delegation_key,
    metadata_url,
)
from vouch.client import changelist as cl
from vouch.client.changelist import (
    Change,
    Changelist,
    ChangelistError,
    DelegationData,
    RoleData,
    TargetData,
)
from vouch.client.config import InvalidGunError
from vouch.crypto.keystore import KeyStore
from vouch.crypto.privkey import PrivateKey
from vouch.tuf import keys as tufkeys
from vouch.tuf.keys import Key
from vouch.tuf.metadata import MISSING, FileMeta

# --- bytes written by /usr/bin/notary 0.7.0 ----------------------------------------

# `notary add <gun> $'a<b>&c/\u00e9\u20ac\u2028' hello.txt --custom custom.json`, where
# hello.txt is b"hello\n" and custom.json is GO_CUSTOM_FILE.
GO_CUSTOM_FILE = b'{ "z": 1,\n "a": "<&>\xe2\x80\xa8", "n": 1e3 }\n'
GO_ADD = (
    b'{"action":"create","role":"targets","type":"target","path":"a\\u003cb\\u003e\\u0026c/'
    b'\xc3\xa9\xe2\x82\xac\\u2028","data":"eyJsZW5ndGgiOjYsImhhc2hlcyI6eyJzaGEyNTYiOiJXSkcxdFNMV'
    b"jN3aHREL0N4RVB2WjBodTAvSEZqcnpUUWdvYWk2RWIydmdNPSIsInNoYTUxMiI6IjU4SXJtVXhaMmM4clNPVkpzZUpH"
    b"Wm1OZ1JaTU5QYWZCckxLWjBjTzMrVEg1U3E1Qjdkb3NLeUI2TnVFUGk4dU5SU0krVkllUFd6RnVmT08ydkFHV0tRPT0"
    b'ifSwiY3VzdG9tIjp7InoiOjEsImEiOiJcdTAwM2NcdTAwMjZcdTAwM2VcdTIwMjgiLCJuIjoxZTN9fQ=="}'
)
GO_ADD_DATA = (
    b'{"length":6,"hashes":{"sha256":"WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=",'
    b'"sha512":"58IrmUxZ2c8rSOVJseJGZmNgRZMNPafBrLKZ0cO3+TH5Sq5B7dosKyB6NuEPi8uNRSI+VIePWzFufOO2'
    b'vAGWKQ=="},"custom":{"z":1,"a":"\\u003c\\u0026\\u003e\\u2028","n":1e3}}'
)
# `notary remove <gun> plain`, `notary witness <gun> targets/rel`,
# `notary delegation remove <gun> targets/rel -y`, `notary delegation purge <gun> --key abc`.
GO_REMOVE = b'{"action":"delete","role":"targets","type":"target","path":"plain","data":null}'
GO_WITNESS = b'{"action":"update","role":"targets/rel","type":"witness","path":"","data":null}'
GO_DELETE_ROLE = (
    b'{"action":"delete","role":"targets/rel","type":"delegation","path":"","data":null}'
)
GO_PURGE = (
    b'{"action":"update","role":"targets/*","type":"delegation","path":"",'
    b'"data":"eyJyZW1vdmVfa2V5cyI6WyJhYmMiXX0="}'
)
# Delegation payloads: `delegation add … --paths rel/ --paths v`, `… --all-paths`,
# `delegation remove … --paths v`, `delegation remove … --all-paths`, purge.
GO_DELEGATION_PAYLOADS = [
    b'{"add_paths":["rel/","v"]}',
    b'{"add_paths":[""]}',
    b'{"remove_paths":["v"]}',
    b'{"clear_paths":true}',
    b'{"remove_keys":["abc"]}',
]


# --- the change record -------------------------------------------------------------


@pytest.mark.parametrize("raw", [GO_ADD, GO_REMOVE, GO_WITNESS, GO_DELETE_ROLE, GO_PURGE])
def test_go_written_changes_reencode_exactly(raw: bytes) -> None:
    assert Change.from_json(raw).to_json() == raw


def test_go_add_decodes_to_what_was_staged() -> None:
    change = Change.from_json(GO_ADD)
    assert change == Change("create", "targets", "target", "a<b>&c/\u00e9\u20ac\u2028", GO_ADD_DATA)
    meta = TargetData.from_json(GO_ADD_DATA)
    assert meta == TargetData.for_bytes(b"hello\n", GO_CUSTOM_FILE)
    assert meta.to_json() == GO_ADD_DATA
    # The custom file, as given to the CLI, compacts to the same bytes as notary's.
    assert TargetData.for_bytes(b"hello\n", GO_CUSTOM_FILE).to_json() == GO_ADD_DATA


def test_spec_example_member_order_and_escaping() -> None:
    change = Change("create", "targets", "target", "a<b>&c/\u00e9\u20ac", b'{"length":6}')
    assert change.to_json() == (
        b'{"action":"create","role":"targets","type":"target",'
        b'"path":"a\\u003cb\\u003e\\u0026c/\xc3\xa9\xe2\x82\xac","data":"eyJsZW5ndGgiOjZ9"}'
    )


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("a<b>&c", b'"a\\u003cb\\u003e\\u0026c"'),
        ("\b\f\n\r\t\x01\x1f", b'"\\u0008\\u000c\\n\\r\\t\\u0001\\u001f"'),  # Go 1.19: no \b \f
        ('q"b\\', b'"q\\"b\\\\"'),
        ("del\x7f/slash", b'"del\x7f/slash"'),
        ("\u2028\u2029", b'"\\u2028\\u2029"'),
        ("\u00e9\U0001f600", '"\u00e9\U0001f600"'.encode()),
        ("lone\ud800", b'"lone\\ufffd"'),
    ],
)
def test_go_string_escaping(text: str, encoded: bytes) -> None:
    assert cl.go_string(text) == encoded


def test_data_null_and_empty_are_different() -> None:
    assert Change("delete", "targets", "target", "x").to_json().endswith(b'"data":null}')
    empty = Change("update", "targets", "target", "x", b"")
    assert empty.to_json().endswith(b'"data":""}')
    assert Change.from_json(empty.to_json()).data == b""


@given(
    action=st.sampled_from(cl.ACTIONS),
    ctype=st.sampled_from(cl.CHANGE_TYPES),
    scope=st.text(),
    path=st.text(),
    data=st.none() | st.binary(),
)
def test_roundtrip_any_text(
    action: str, ctype: str, scope: str, path: str, data: bytes | None
) -> None:
    change = Change(action, scope, ctype, path, data)  # type: ignore[arg-type]
    raw = change.to_json()
    assert Change.from_json(raw) == change
    # Plain JSON readers see the same values.
    assert json.loads(raw)["path"] == path


def test_from_json_is_as_lenient_as_go() -> None:
    # Member names match case-insensitively, the last duplicate wins, unknown
    # members are ignored, whitespace is fine, missing members are zero values.
    raw = (
        b' {"ACTION":"update","Role":"targets","type":"witness","path":"x","extra":[1],'
        b'"Path":"y","DATA":null}\n'
    )
    assert Change.from_json(raw) == Change("update", "targets", "witness", "y", None)
    assert Change.from_json(b'{"action":"delete","type":"target","role":null}') == Change(
        "delete", "", "target", "", None
    )
    assert Change.from_json(b'{"action":"delete","type":"target","data":"YW\\nJj"}').data == b"abc"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b"[]",
        b'{"action":"create","type":"target"',
        b'{"action":"create","type":"target"} x',
        b'{"action":"rename","type":"target"}',
        b'{"action":"create","type":"file"}',
        b'{"action":"create","type":"target","path":7}',
        b'{"action":"create","type":"target","data":"YWJj"}x',
        b'{"action":"create","type":"target","data":"YWJ"}',
        b'{"action":"create","type":"target","data":"YW*j"}',
        b'{"action":"create","type":"target","data":NaN}',
        b'{"action":"create" "type":"target"}',
    ],
)
def test_from_json_rejects(raw: bytes) -> None:
    with pytest.raises(ChangelistError):
        Change.from_json(raw)


def test_constructor_rejects_unknown_action_and_type() -> None:
    with pytest.raises(ChangelistError):
        Change("rename", "targets", "target")  # type: ignore[arg-type]
    with pytest.raises(ChangelistError):
        Change("create", "targets", "file")  # type: ignore[arg-type]


# --- payloads ------------------------------------------------------------------------


def test_target_data_go_struct_order() -> None:
    meta = TargetData(3, {"sha512": base64.b64encode(b"\1" * 64).decode(), "sha256": "AAAA"})
    raw = meta.to_json()
    assert raw.startswith(b'{"length":3,"hashes":{"sha256":"AAAA","sha512":"AQEB')
    assert b"custom" not in raw
    assert TargetData.from_json(raw) == meta


def test_target_data_custom_kept_as_raw_json() -> None:
    meta = TargetData(1, {"sha256": "AAAA"}, b' {"b" : [1, 2.50, 1E3], "a":"\\u00e9 <"} ')
    assert meta.to_json().endswith(b',"custom":{"b":[1,2.50,1E3],"a":"\\u00e9 \\u003c"}}')
    assert TargetData.from_json(meta.to_json()).to_json() == meta.to_json()
    # Go writes a RawMessage "null" as null but reads it back as "no custom".
    nulled = TargetData(1, {"sha256": "AAAA"}, b"null")
    assert nulled.to_json().endswith(b',"custom":null}')
    assert TargetData.from_json(nulled.to_json()).custom is None
    with pytest.raises(ChangelistError):
        TargetData(1, {"sha256": "AAAA"}, b"{nope}")
    with pytest.raises(ChangelistError):
        TargetData(1, {"sha256": "AAAA"}, b"")


def test_target_data_file_meta_conversion() -> None:
    content = b"some target\n"
    meta = FileMeta.for_bytes(content, {"z": [1, {"y": None}], "a": "\u00e9"})
    data = TargetData.from_file_meta(meta)
    assert data.custom == b'{"a":"\xc3\xa9","z":[1,{"y":null}]}'  # canonical: signable by Go
    assert data.to_file_meta() == meta
    assert TargetData.for_bytes(content).to_file_meta() == FileMeta.for_bytes(content)
    assert TargetData.for_bytes(content, b"null").to_file_meta().custom is MISSING
    with pytest.raises(ChangelistError):
        TargetData(1, {"sha256": "AAAA"}).to_file_meta()  # wrong sha256 length
    with pytest.raises(ChangelistError):
        TargetData(1, {"sha256": "AAAA"}, b"[1.5]").to_file_meta()


def test_target_data_parse_errors() -> None:
    for raw in (
        b'{"length":1.0,"hashes":{}}',
        b'{"length":"1","hashes":{}}',
        b'{"length":1,"hashes":[]}',
        b'{"length":1,"hashes":{"sha256":null}}',
        b'{"length":1,"hashes":{"sha256":"!!"}}',
        b'{"length":9223372036854775808,"hashes":{}}',
    ):
        with pytest.raises(ChangelistError):
            TargetData.from_json(raw)


def _ecdsa_key() -> Key:
    return PrivateKey.generate(tufkeys.ECDSA).public


def test_delegation_data_omits_empty_members() -> None:
    assert DelegationData().to_json() == b"{}"
    key = _ecdsa_key()
    full = DelegationData(
        new_name="targets/new",
        threshold=1,
        add_keys=(key,),
        remove_keys=("abc",),
        add_paths=("rel/", ""),
        remove_paths=("v",),
        clear_paths=True,
    )
    assert full.to_json() == (
        b'{"new_name":"targets/new","threshold":1,"add_keys":[{"keytype":"ecdsa","keyval":'
        b'{"public":"' + key.public.encode() + b'","private":null}}],"remove_keys":["abc"],'
        b'"add_paths":["rel/",""],"remove_paths":["v"],"clear_paths":true}'
    )
    assert DelegationData.from_json(full.to_json()) == full
    for raw in GO_DELEGATION_PAYLOADS:
        assert DelegationData.from_json(raw).to_json() == raw


def test_delegation_data_go_leniency_and_errors() -> None:
    # Go folds U+017F to "s" when matching member names that contain an s.
    assert DelegationData.from_json(b'{"thre\xc5\xbfhold":2,"ADD_PATHS":null}').threshold == 2
    for raw in (
        b'{"threshold":"1"}',
        b'{"clear_paths":1}',
        b'{"add_paths":"rel/"}',
        b'{"add_keys":[{"keytype":"ecdsa","keyval":{"public":"AAAA","private":"AAAA"}}]}',
        b'{"add_keys":[{"keytype":"ecdsa","keyval":{"public":null}}]}',
        b'{"add_keys":[{"keytype":"ecdsa"}]}',
    ):
        with pytest.raises(ChangelistError):
            DelegationData.from_json(raw)


def test_role_data() -> None:
    key = _ecdsa_key()
    data = RoleData("snapshot", (key,))
    assert data.to_json() == (
        b'{"keys":[{"keytype":"ecdsa","keyval":{"public":"'
        + key.public.encode()
        + b'","private":null}}],"role":"snapshot"}'
    )
    assert RoleData.from_json(data.to_json()) == data
    assert RoleData.from_json(data.to_json()).keys[0].keyid == key.keyid


def test_change_builders_match_the_cli() -> None:
    assert cl.target_removal("plain").to_json() == GO_REMOVE
    assert cl.witness_change("targets/rel").to_json() == GO_WITNESS
    assert cl.delegation_change("delete", "targets/rel").to_json() == GO_DELETE_ROLE
    purge = cl.delegation_change("update", "targets/*", DelegationData(remove_keys=("abc",)))
    assert purge.to_json() == GO_PURGE
    add = cl.target_change(
        "a<b>&c/\u00e9\u20ac\u2028", TargetData.for_bytes(b"hello\n", GO_CUSTOM_FILE)
    )
    assert add.to_json() == GO_ADD
    key = _ecdsa_key()
    role = cl.role_change("targets", [key])
    assert (role.action, role.scope, role.type, role.path) == ("create", "root", "role", "")


# --- the directory -----------------------------------------------------------------

NAME_RE = re.compile(
    r"\d{20}_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.change\Z"
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_missing_directory_has_no_changes(tmp_path: Path) -> None:
    changes = Changelist(tmp_path / "nope")
    assert changes.names() == []
    assert changes.list() == []
    changes.clear()
    assert not (tmp_path / "nope").exists()


def test_add_writes_private_files_named_like_notary(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        changes = Changelist.for_gun(tmp_path / "trust", "example.com/org/app")
        change = cl.target_removal("x")
        name = changes.add(change)
    finally:
        os.umask(old)
    assert changes.location == tmp_path / "trust/tuf/example.com/org/app/changelist"
    assert NAME_RE.match(name)
    path = changes.location / name
    assert path.read_bytes() == change.to_json()
    assert _mode(path) == 0o600
    for d in (tmp_path / "trust", *path.parents[:5]):
        assert _mode(d) == 0o700, d
    # Nothing but the change itself: no temp files in or beside the directory.
    assert os.listdir(changes.location) == [name]
    assert sorted(os.listdir(changes.location.parent)) == ["changelist"]


def test_order_is_add_order_even_if_the_clock_steps_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([3_000, 2_000, 1_000, 5_000])
    monkeypatch.setattr(cl, "_clock", lambda: next(clock))
    changes = Changelist(tmp_path / "cl")
    added = [cl.target_removal(f"t{i}") for i in range(4)]
    names = [changes.add(c) for c in added]
    assert changes.names() == names
    assert [int(n[:20]) for n in names] == [3_000, 3_001, 3_002, 5_000]
    assert changes.list() == added
    # Another writer (a fresh instance) also lands after what is already there.
    monkeypatch.setattr(cl, "_clock", lambda: 10)
    assert Changelist(tmp_path / "cl").add(added[0]).startswith(f"{5_001:020d}_")


def test_listing_follows_go(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    changes = Changelist(tmp_path)
    (tmp_path / "b.change").write_bytes(GO_REMOVE)
    (tmp_path / "a-not-a-.change-name").write_bytes(GO_WITNESS)  # any file counts, as in Go
    (tmp_path / "subdir").mkdir()
    assert changes.names() == ["a-not-a-.change-name", "b.change"]
    assert [c.type for c in changes.list()] == ["witness", "target"]
    (tmp_path / "c.change").write_bytes(b"{broken")
    with pytest.raises(ChangelistError, match=r"c\.change"):
        changes.list()
    with caplog.at_level(logging.WARNING):
        assert [n for n, _ in changes.items(skip_invalid=True)] == [
            "a-not-a-.change-name",
            "b.change",
        ]
    assert "c.change" in caplog.text


def test_remove_and_clear(tmp_path: Path) -> None:
    changes = Changelist(tmp_path / "cl")
    names = [changes.add(cl.target_removal(f"t{i}")) for i in range(3)]
    changes.remove([names[1], "already-gone.change"])
    assert changes.names() == [names[0], names[2]]
    for bad in ("../x", "", "..", "a/b"):
        with pytest.raises(ChangelistError):
            changes.remove([bad])
    changes.clear()
    assert changes.names() == []
    assert (tmp_path / "cl").is_dir()


@pytest.mark.parametrize("gun", ["../evil", "/abs", "a//b", "a/./b", "a/", ""])
def test_changelist_location_refuses_traversal(tmp_path: Path, gun: str) -> None:
    with pytest.raises(InvalidGunError):
        Changelist.for_gun(tmp_path, gun)


# --- interop: the real notary CLI ----------------------------------------------------

_STATUS_HEADER = re.compile(r"#\s+ACTION\s+SCOPE\s+TYPE\s+PATH")


def notary_status(cli: NotaryCLI, gun: str) -> list[tuple[str, str, str, str]]:
    """Rows of ``notary status`` as (action, scope, type, path), by column offsets.

    tabwriter aligns by runes, so slicing the str by the header's offsets is
    exact; lines are split on ``\\n`` only (target names may hold U+2028).
    """
    out = cli.run("status", gun).stdout
    if out.startswith("No unpublished changes"):
        return []
    lines = out.split("\n")
    header = next(i for i, line in enumerate(lines) if _STATUS_HEADER.match(line))
    cols = [lines[header].index(w) for w in ("ACTION", "SCOPE", "TYPE", "PATH")]
    rows = []
    for line in lines[header + 2 :]:
        if not line:
            continue
        cells = [line[a:b].rstrip(" ") for a, b in itertools.pairwise(cols)]
        rows.append((cells[0], cells[1], cells[2], line[cols[3] :].rstrip(" ")))
    return rows


def _rows(changes: Changelist) -> list[tuple[str, str, str, str]]:
    return [(c.action, c.scope, c.type, c.path.rstrip(" ")) for c in changes.list()]


@dataclass
class Staged:
    cli: NotaryCLI
    gun: str
    files: list[tuple[str, bytes]]
    status: list[tuple[str, str, str, str]]
    contents: dict[str, bytes]
    certs: dict[str, bytes]
    changes: Changelist


# What the custom file says, and how notary stores it (compact, <>& escaped, order kept).
MESSY_CUSTOM = b'{ "z": [1, 2],\n  "a": "<&> \xe2\x80\xa8", "n": 1e3 }\n'
MESSY_CUSTOM_STORED = b'{"z":[1,2],"a":"\\u003c\\u0026\\u003e \\u2028","n":1e3}'


@pytest.fixture(scope="module")
def staged_by_notary(
    notary_server: NotaryServer, tmp_path_factory: pytest.TempPathFactory
) -> Staged:
    """A changelist holding every kind of change the notary CLI stages."""
    work = tmp_path_factory.mktemp("changelist-by-notary")
    cli = NotaryCLI(notary_server.url, work / "trust")
    gun = "example.com/vouch/changelist-a"
    cli.run("init", gun)
    custom = work / "custom.json"
    custom.write_bytes(MESSY_CUSTOM)
    contents = {NAME_HTML: b"html <>& target\n", NAME_QUOTE: b"quote\n", "plain": b"plain\n"}
    for i, content in enumerate(contents.values()):
        (work / f"t{i}").write_bytes(content)
    rel = make_delegation_key(work / "keys", "targets/rel", "ecdsa")
    ops = make_delegation_key(work / "keys", "targets/ops", "rsa")
    certs = {k.role: k.cert_path.read_bytes() for k in (rel, ops)}
    rel_id = _canonical_cert_key_id(certs["targets/rel"])
    steps: list[tuple[str, ...]] = [
        ("add", gun, NAME_HTML, str(work / "t0"), "--custom", str(custom)),
        ("add", gun, NAME_QUOTE, str(work / "t1")),
        ("add", gun, "plain", str(work / "t2"), "--roles", "targets", "--roles", "targets/rel"),
        ("addhash", gun, "by-hash", "6", "--sha256", "ab" * 32, "--sha512", "cd" * 64,
         "--custom", str(custom)),
        ("addhash", gun, NAME_SEPARATORS, "6", "--sha512", "ef" * 64),
        ("remove", gun, "plain"),
        ("remove", gun, "rel/x", "--roles", "targets/rel"),
        ("delegation", "add", gun, "targets/rel", str(rel.cert_path),
         "--paths", "rel/", "--paths", "v"),
        ("delegation", "add", gun, "targets/ops", str(ops.cert_path), "--all-paths"),
        ("delegation", "remove", gun, "targets/rel", "--paths", "v"),
        ("delegation", "remove", gun, "targets/ops", "--all-paths", "-y"),
        ("delegation", "remove", gun, "targets/rel", rel_id),
        ("delegation", "remove", gun, "targets/gone", "-y"),
        ("delegation", "purge", gun, "--key", rel_id),
        ("witness", gun, "targets/rel", "targets"),
    ]  # fmt: skip
    for step in steps:
        cli.run(*step)
    changes = Changelist.for_gun(cli.trust_dir, gun)
    files = [(n, (changes.location / n).read_bytes()) for n in changes.names()]
    return Staged(cli, gun, files, notary_status(cli, gun), contents, certs, changes)


def _canonical_cert_key_id(pem: bytes) -> str:
    """The ID notary's ``delegation remove <keyid>`` expects: of the bare public key."""
    cert = x509.load_pem_x509_certificate(pem)
    return tufkeys.public_key_from_crypto(cert.public_key()).keyid  # type: ignore[arg-type]


def _payload_roundtrip(kind: str, data: bytes) -> bytes:
    if kind == "target":
        return TargetData.from_json(data).to_json()
    if kind == "delegation":
        return DelegationData.from_json(data).to_json()
    return RoleData.from_json(data).to_json()


def test_notary_changes_reencode_byte_for_byte(staged_by_notary: Staged) -> None:
    assert len(staged_by_notary.files) == 19
    for name, raw in staged_by_notary.files:
        assert NAME_RE.match(name), name
        change = Change.from_json(raw)
        assert change.to_json() == raw, name
        if change.data is None:
            continue
        assert _payload_roundtrip(change.type, change.data) == change.data, (name, change)


def test_notary_files_are_private(staged_by_notary: Staged) -> None:
    location = staged_by_notary.changes.location
    assert _mode(location) == 0o700
    for name, _ in staged_by_notary.files:
        assert _mode(location / name) == 0o600


def test_vouch_lists_what_notary_status_shows(staged_by_notary: Staged) -> None:
    assert _rows(staged_by_notary.changes) == staged_by_notary.status
    assert [n for n, _ in staged_by_notary.changes.items()] == [
        n for n, _ in staged_by_notary.files
    ]


def test_notary_payloads_mean_what_was_staged(staged_by_notary: Staged) -> None:
    by_path: dict[tuple[str, str, str], list[Change]] = {}
    for change in staged_by_notary.changes.list():
        by_path.setdefault((change.scope, change.type, change.path), []).append(change)
    html = TargetData.from_json(by_path["targets", "target", NAME_HTML][0].data or b"")
    assert html == TargetData.for_bytes(staged_by_notary.contents[NAME_HTML], MESSY_CUSTOM)
    assert html.custom == MESSY_CUSTOM_STORED
    quote = TargetData.from_json(by_path["targets", "target", NAME_QUOTE][0].data or b"")
    assert quote == TargetData.for_bytes(staged_by_notary.contents[NAME_QUOTE])
    by_hash = TargetData.from_json(by_path["targets", "target", "by-hash"][0].data or b"")
    assert by_hash.to_file_meta().sha256_hex() == "ab" * 32
    only512 = TargetData.from_json(by_path["targets", "target", NAME_SEPARATORS][0].data or b"")
    assert list(only512.hashes) == ["sha512"]
    # One change per --roles entry; removals carry no data.
    assert [c.action for c in by_path["targets", "target", "plain"]] == ["create", "delete"]
    assert [c.action for c in by_path["targets/rel", "target", "plain"]] == ["create"]
    assert by_path["targets/rel", "target", "rel/x"][0].data is None

    deleg = [
        (c.action, c.scope, DelegationData.from_json(c.data) if c.data else None)
        for c in staged_by_notary.changes.list()
        if c.type == "delegation"
    ]
    rel_key, ops_key = (deleg[0][2], deleg[2][2])
    assert rel_key is not None and ops_key is not None
    for data, role, keytype in (
        (rel_key, "targets/rel", "ecdsa-x509"),
        (ops_key, "targets/ops", "rsa-x509"),
    ):
        assert data.threshold == 1
        assert [k.keytype for k in data.add_keys] == [keytype]
        assert data.add_keys[0].public_bytes() == staged_by_notary.certs[role]
    rel_id = _canonical_cert_key_id(staged_by_notary.certs["targets/rel"])
    assert [(a, s, d) for a, s, d in deleg[1:2] + deleg[3:]] == [
        ("create", "targets/rel", DelegationData(add_paths=("rel/", "v"))),
        ("create", "targets/ops", DelegationData(add_paths=("",))),
        ("update", "targets/rel", DelegationData(remove_paths=("v",))),
        ("update", "targets/ops", DelegationData(clear_paths=True)),
        ("update", "targets/rel", DelegationData(remove_keys=(rel_id,))),
        ("delete", "targets/gone", None),
        ("update", "targets/*", DelegationData(remove_keys=(rel_id,))),
    ]
    witnesses = [c for c in staged_by_notary.changes.list() if c.type == "witness"]
    assert witnesses == [cl.witness_change("targets/rel"), cl.witness_change("targets")]


@pytest.fixture
def published_repo(notary_server: NotaryServer, tmp_path: Path) -> Iterator[tuple[NotaryCLI, str]]:
    """A fresh GUN, initialised and published by notary, with target ``old``."""
    cli = NotaryCLI(notary_server.url, tmp_path / "trust")
    gun = f"example.com/vouch/changelist-b/{tmp_path.name}".lower()
    cli.run("init", gun)
    (tmp_path / "old").write_bytes(b"old target\n")
    cli.run("add", gun, "old", str(tmp_path / "old"))
    cli.run("publish", gun)
    yield cli, gun


def _list_names(cli: NotaryCLI, gun: str) -> dict[str, tuple[str, str, str]]:
    """``notary list``: name -> (sha256 hex, size, role)."""
    rows = {}
    for line in cli.run("list", gun).stdout.split("\n")[2:]:
        if line.strip():
            *name_parts, digest, size, role = line.split()
            rows[" ".join(name_parts)] = (digest, size, role)
    return rows


def _server_signed(server: NotaryServer, gun: str, role: str) -> dict[str, Any]:
    signed: dict[str, Any] = json.loads(fetch(metadata_url(server.url, gun, f"{role}.json")))
    return signed["signed"]  # type: ignore[no-any-return]


def test_notary_status_and_publish_apply_vouch_changes(
    notary_server: NotaryServer, published_repo: tuple[NotaryCLI, str], tmp_path: Path
) -> None:
    cli, gun = published_repo
    changes = Changelist.for_gun(cli.trust_dir, gun)
    with_custom = TargetData.for_bytes(b"target with custom\n", CUSTOM_JSON)
    plain = TargetData.for_bytes(b"html-escaping <>& target\n")
    rel = make_delegation_key(tmp_path / "keys", "targets/rel", "ecdsa")
    rel_key = Key("ecdsa-x509", base64.b64encode(rel.cert_path.read_bytes()).decode())

    changes.add(cl.target_change("with-custom", with_custom))
    # notary's own changes interleave in the order they were staged.
    (tmp_path / "by-notary").write_bytes(b"staged by notary\n")
    cli.run("add", gun, "by-notary", str(tmp_path / "by-notary"))
    changes.add(cl.target_change(NAME_HTML, plain))
    changes.add(cl.target_removal("old"))
    changes.add(
        cl.delegation_change(
            "create", "targets/rel", DelegationData(threshold=1, add_keys=(rel_key,))
        )
    )
    changes.add(
        cl.delegation_change("create", "targets/rel", DelegationData(add_paths=("rel/", "v")))
    )
    changes.add(cl.delegation_change("update", "targets/rel", DelegationData(remove_paths=("v",))))
    changes.add(cl.witness_change("targets"))

    expected = [
        ("create", "targets", "target", "with-custom"),
        ("create", "targets", "target", "by-notary"),
        ("create", "targets", "target", NAME_HTML),
        ("delete", "targets", "target", "old"),
        ("create", "targets/rel", "delegation", ""),
        ("create", "targets/rel", "delegation", ""),
        ("update", "targets/rel", "delegation", ""),
        ("update", "targets", "witness", ""),
    ]
    assert notary_status(cli, gun) == expected
    assert _rows(changes) == expected

    cli.run("publish", gun)
    assert notary_status(cli, gun) == []
    assert changes.names() == []
    listed = _list_names(cli, gun)
    assert set(listed) == {"with-custom", "by-notary", NAME_HTML}
    sha = hashlib.sha256(b"target with custom\n").hexdigest()
    assert listed["with-custom"] == (sha, str(len(b"target with custom\n")), "targets")
    targets = _server_signed(notary_server, gun, "targets")
    assert targets["targets"]["with-custom"]["custom"] == json.loads(CUSTOM_JSON)
    assert targets["targets"][NAME_HTML] == json.loads(plain.to_json())
    roles = targets["delegations"]["roles"]
    assert [(r["name"], r["paths"], r["keyids"]) for r in roles] == [
        ("targets/rel", ["rel/"], [rel_key.keyid])
    ]


def test_notary_publishes_a_vouch_staged_key_replacement(
    notary_server: NotaryServer, published_repo: tuple[NotaryCLI, str]
) -> None:
    """A ``role`` change (what ``key rotate`` stages in memory) written as a file by
    vouch, with the new key saved by vouch's key store, is applied by notary."""
    cli, gun = published_repo
    new_key = PrivateKey.generate(tufkeys.ECDSA)
    KeyStore(cli.trust_dir).save(new_key, "targets", gun, passphrase=PASSPHRASE)
    changes = Changelist.for_gun(cli.trust_dir, gun)
    changes.add(cl.role_change("targets", [new_key.public]))
    changes.add(cl.target_change("after-rotation", TargetData.for_bytes(b"new key\n")))
    assert notary_status(cli, gun) == [
        ("create", "root", "role", ""),
        ("create", "targets", "target", "after-rotation"),
    ]
    cli.run("publish", gun)
    root = _server_signed(notary_server, gun, "root")
    assert root["roles"]["targets"]["keyids"] == [new_key.keyid]
    assert set(_list_names(cli, gun)) == {"old", "after-rotation"}
    targets = json.loads(fetch(metadata_url(notary_server.url, gun, "targets.json")))
    assert [s["keyid"] for s in targets["signatures"]] == [new_key.keyid]
