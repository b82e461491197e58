"""vouch's TUF core against metadata written by the real notary programs.

The corpus comes from Debian's notary 0.7.0 CLI and server (tests/notary_harness.py):
every file must re-encode byte-for-byte from vouch's models, every signature in
it must verify, and a client-side walk through the trusted set must see
exactly the targets the scenario published, with the right signing roles.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

import pytest

from notary_harness import Corpus
from vouch.tuf import canonical, roles
from vouch.tuf.keys import Key, verify
from vouch.tuf.metadata import Metadata, Root, Targets
from vouch.tuf.trusted import TrustedSet

_VERSIONED = re.compile(r"server:(?P<gun>[^:]+):(?P<v>\d+)\.(?P<role>.+)\.json\Z")


def _all_keys(corpus: Corpus) -> dict[str, Key]:
    """Every public key any root or targets file in the corpus declares."""
    keys: dict[str, Key] = {}
    for _, data in corpus.metadata:
        md = Metadata.from_bytes(data)
        if isinstance(md.signed, Root):
            keys.update(md.signed.keys)
        elif isinstance(md.signed, Targets) and md.signed.delegations is not None:
            keys.update(md.signed.delegations.keys)
    return keys


def test_corpus_is_not_empty(notary_corpus: Corpus) -> None:
    assert len(notary_corpus.metadata) > 40
    kinds = {Metadata.from_bytes(d).signed.TYPE for _, d in notary_corpus.metadata}
    assert kinds == {"Root", "Targets", "Snapshot", "Timestamp"}


def test_every_file_reencodes_byte_for_byte(notary_corpus: Corpus) -> None:
    for label, data in notary_corpus.metadata:
        md = Metadata.from_bytes(data)
        assert md.to_bytes() == data, label
        # The signed part alone: canonical form of the parsed object equals the
        # model's canonical form (no member lost or invented).
        assert canonical.encode(md.signed.to_dict()) == md.signed_bytes(), label


def test_every_signature_verifies(notary_corpus: Corpus) -> None:
    keys = _all_keys(notary_corpus)
    checked = 0
    methods: set[str] = set()
    for label, data in notary_corpus.metadata:
        md = Metadata.from_bytes(data)
        message = md.signed_bytes()
        assert md.signatures, label
        for sig in md.signatures:
            key = keys[sig.keyid]
            assert key.keyid == sig.keyid
            assert verify(key, sig.method, sig.signature_bytes, message), (label, sig.keyid)
            # The same signature must not verify over other bytes.
            assert not verify(key, sig.method, sig.signature_bytes, message + b" ")
            checked += 1
            methods.add(sig.method)
    assert checked >= len(notary_corpus.metadata)
    # ECDSA from the CLI, RSA-PSS from the RSA keys, Ed25519 from the server's local signer.
    assert {"ecdsa", "rsapss", "eddsa"} <= methods


def test_key_ids_and_key_types(notary_corpus: Corpus) -> None:
    keys = _all_keys(notary_corpus)
    types = {k.keytype for k in keys.values()}
    assert {"ecdsa", "ed25519", "ecdsa-x509", "rsa-x509"} <= types
    for kid, key in keys.items():
        assert key.keyid == kid
        if key.is_x509:
            bare = key.canonical_keyid()
            assert bare != kid and re.fullmatch(r"[0-9a-f]{64}", bare)


def test_root_key_file_names_are_canonical_ids(notary_corpus: Corpus) -> None:
    """The CLI names root key files by the bare key's ID, not the certificate's."""
    root_ids: set[str] = set()
    for _, data in notary_corpus.metadata:
        md = Metadata.from_bytes(data)
        if isinstance(md.signed, Root):
            for kid in md.signed.roles["root"].keyids:
                root_ids.add(md.signed.keys[kid].canonical_keyid())
    names = {p.stem for p in notary_corpus.key_files}
    assert root_ids & names, "no root key file is named by its canonical key ID"


def test_expiry_offsets_parse(notary_corpus: Corpus) -> None:
    offsets = set()
    for _, data in notary_corpus.metadata:
        md = Metadata.from_bytes(data)
        offsets.add(md.signed.expires[-6:] if "+" in md.signed.expires else "Z")
        assert md.signed.expires_at.tzinfo is UTC
    assert "+05:30" in offsets and "Z" in offsets


def _versions(corpus: Corpus, gun: str, role: str) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for label in corpus.labels(f"server:{gun}:"):
        m = _VERSIONED.match(label)
        if m and m["role"] == role:
            out[int(m["v"])] = corpus.get(label)
    return out


@pytest.mark.parametrize("which", [0, 1])
def test_trusted_set_walks_real_repository(notary_corpus: Corpus, which: int) -> None:
    """Root v1 → every rotation → timestamp → snapshot → targets → delegations."""
    gun = notary_corpus.guns[which]
    roots = _versions(notary_corpus, gun, "root")
    assert 1 in roots
    ts = TrustedSet(gun, roots[1], bootstrap=True)
    for v in range(2, max(roots) + 1):
        ts.update_root(roots[v])
    current = {r: notary_corpus.get(f"server:{gun}:{r}.json") for r in notary_corpus.roles[gun]}
    assert ts.root_bytes == current["root"]
    ts.update_timestamp(current["timestamp"])
    ts.update_snapshot(current["snapshot"])
    ts.update_targets(current["targets"])
    pending = [d.name for d in ts.delegations_of(roles.TARGETS)]
    while pending:
        name = pending.pop(0)
        if ts.snapshot and name in ts.snapshot.signed.meta:
            ts.update_delegated_targets(current[name], name)
            pending.extend(d.name for d in ts.delegations_of(name))
    seen = ts.all_targets()
    assert set(seen) == set(notary_corpus.targets[gun])
    for name, content in notary_corpus.targets[gun].items():
        seen[name].meta.verify(content, name)
        assert seen[name].role == notary_corpus.target_roles[gun][name]
        assert ts.find_target(name) == seen[name]
    for gone in notary_corpus.removed_targets.get(gun, []):
        assert ts.find_target(gone) is None


def test_custom_data_kept_verbatim(notary_corpus: Corpus) -> None:
    gun = notary_corpus.guns[0]
    customs = notary_corpus.target_custom[gun]
    assert customs
    found = 0
    for _, data in notary_corpus.metadata:
        md = Metadata.from_bytes(data)
        if isinstance(md.signed, Targets):
            for name, raw in customs.items():
                meta = md.signed.targets.get(name)
                if meta is not None:
                    assert canonical.encode(meta.custom) == canonical.encode(canonical.loads(raw))
                    found += 1
    assert found


def test_snapshot_hashes_cover_exact_file_bytes(notary_corpus: Corpus) -> None:
    gun = notary_corpus.guns[0]
    snap = Metadata.from_bytes(notary_corpus.get(f"server:{gun}:snapshot.json"))
    for role, meta in snap.signed.meta.items():
        data = notary_corpus.get(f"server:{gun}:{role}.json")
        meta.verify(data, role)
        assert meta.sha256_hex() == hashlib.sha256(data).hexdigest()


def test_html_escaping_in_files_but_not_in_signed_bytes(notary_corpus: Corpus) -> None:
    hits = 0
    for _, data in notary_corpus.metadata:
        if b"\\u003c" in data:
            md = Metadata.from_bytes(data)
            assert b"<" in md.signed_bytes() and b"\\u003c" not in md.signed_bytes()
            hits += 1
    assert hits


def test_trusted_set_bootstraps_at_todays_date(notary_corpus: Corpus) -> None:
    gun = notary_corpus.guns[0]
    root = notary_corpus.get(f"server:{gun}:root.json")
    ts = TrustedSet(gun, root, now=datetime.now(UTC), bootstrap=True)
    assert ts.root.signed.version >= 3
