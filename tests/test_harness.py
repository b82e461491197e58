"""The real-Notary harness really produces what the compatibility tests rely on.

If one of these fails, the corpus is missing a feature (or the installed notary behaves
differently from 0.7.0), and tests built on the corpus would pass for the wrong reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest

from notary_harness import (
    BASE_ROLES,
    CORPUS_GUN,
    KOLKATA_GUN,
    NAME_HTML,
    NAME_SEPARATORS,
    Corpus,
    NotaryServer,
    NotaryServerError,
    fetch,
    metadata_url,
)

pytestmark = pytest.mark.interop

EXPIRES = re.compile(rb'"expires":"([^"]+)"')


def _signed(data: bytes) -> Any:
    """The ``signed`` member of an envelope (parsed, so for semantics, not for bytes)."""
    return json.loads(data)["signed"]


def _versions(corpus: Corpus, gun: str, role: str) -> dict[int, bytes]:
    """Server versions of ``role`` in ``gun``, by version number (aliases included)."""
    pattern = re.compile(rf"server:{re.escape(gun)}:(\d+)\.{re.escape(role)}\.json")
    found = {}
    for label in corpus.labels(f"server:{gun}:"):
        m = pattern.fullmatch(label)
        if m:
            found[int(m.group(1))] = corpus.get(label)
    return found


def test_health_endpoint(notary_server: NotaryServer) -> None:
    assert fetch(f"{notary_server.url}/_notary_server/health") == b"{}"


def test_server_start_failure_reports_server_log() -> None:
    server = NotaryServer(extra_config={"storage": {"backend": "no-such-backend"}})
    with pytest.raises(NotaryServerError, match="no-such-backend is not a supported storage"):
        server.start()
    assert not server.is_running()


@pytest.mark.parametrize("gun", [CORPUS_GUN, KOLKATA_GUN])
@pytest.mark.parametrize("role", BASE_ROLES)
def test_base_roles_present_on_server_and_in_cache(
    notary_corpus: Corpus, gun: str, role: str
) -> None:
    assert gun in notary_corpus.guns
    current = notary_corpus.get(f"server:{gun}:{role}.json")
    assert _signed(current)["_type"] == role.capitalize()
    # The client cache is a verbatim copy of what the server served.
    assert notary_corpus.get(f"cache:{gun}:{role}.json") == current


def test_root_was_rotated(notary_corpus: Corpus) -> None:
    roots = _versions(notary_corpus, CORPUS_GUN, "root")
    assert len(roots) >= 3, sorted(roots)
    assert sorted(roots) == list(range(1, max(roots) + 1))
    first, last = _signed(roots[1]), _signed(roots[max(roots)])
    first_root_keys = first["roles"]["root"]["keyids"]
    last_root_keys = last["roles"]["root"]["keyids"]
    assert first_root_keys != last_root_keys
    # The rotation itself is signed by the old and the new root key.
    sig_counts = [len(json.loads(b)["signatures"]) for b in roots.values()]
    assert max(sig_counts) >= 2


def test_kolkata_root_rotated_from_rsa_to_ecdsa(notary_corpus: Corpus) -> None:
    roots = _versions(notary_corpus, KOLKATA_GUN, "root")
    assert len(roots) >= 2
    key_types = {k["keytype"] for k in _signed(roots[1])["keys"].values()}
    assert "rsa-x509" in key_types
    methods = {s["method"] for s in json.loads(roots[max(roots)])["signatures"]}
    assert methods == {"rsapss", "ecdsa"}


def test_delegations_carry_targets(notary_corpus: Corpus) -> None:
    assert "targets/releases" in notary_corpus.roles[CORPUS_GUN]
    delegated = {
        name: role
        for name, role in notary_corpus.target_roles[CORPUS_GUN].items()
        if role != "targets"
    }
    assert delegated, "scenario added no delegated targets"
    for name, role in delegated.items():
        signed = _signed(notary_corpus.get(f"server:{CORPUS_GUN}:{role}.json"))
        assert name in signed["targets"]
    cached = notary_corpus.get(f"cache:{CORPUS_GUN}:targets/releases.json")
    assert _signed(cached)["targets"]


def test_html_escaping_in_file_form(notary_corpus: Corpus) -> None:
    targets = notary_corpus.get(f"server:{CORPUS_GUN}:targets.json")
    assert b"\\u003c" in targets
    assert b"a\\u003cb\\u003e\\u0026c/" in targets
    assert b"ls\\u2028sep\x7fdel" in targets  # U+2028 escaped, DEL raw
    names = _signed(targets)["targets"]
    assert NAME_HTML in names
    assert NAME_SEPARATORS in names


def test_kolkata_expiries_carry_local_offset(notary_corpus: Corpus) -> None:
    for role in ("root", "targets", "snapshot"):
        data = notary_corpus.get(f"server:{KOLKATA_GUN}:{role}.json")
        expires = EXPIRES.search(data)
        assert expires and expires.group(1).endswith(b"+05:30"), (role, expires)
    # The server signs timestamps itself, in its own (UTC) zone.
    ts = EXPIRES.search(notary_corpus.get(f"server:{KOLKATA_GUN}:timestamp.json"))
    assert ts and ts.group(1).endswith(b"Z")
    # The main GUN is signed with TZ=UTC.
    main = EXPIRES.search(notary_corpus.get(f"server:{CORPUS_GUN}:targets.json"))
    assert main and main.group(1).endswith(b"Z")


def test_versioned_urls_serve_corpus_bytes(notary_corpus: Corpus) -> None:
    for label, data in notary_corpus.metadata:
        if not label.startswith("server:"):
            continue
        _, gun, name = label.split(":", 2)
        assert fetch(metadata_url(notary_corpus.server_url, gun, name)) == data, label


@pytest.mark.parametrize("gun", [CORPUS_GUN, KOLKATA_GUN])
def test_notary_list_shows_every_target(notary_corpus: Corpus, gun: str) -> None:
    out = notary_corpus.cli().run("list", gun).stdout
    # Split on "\n" only: one target name contains U+2028, which str.splitlines() splits on.
    lines = out.split("\n")
    expected = notary_corpus.targets[gun]
    assert expected
    for name, content in expected.items():
        rows = [line for line in lines if line.startswith(name + " ")]
        assert len(rows) == 1, (name, out)
        digest, size, role = rows[0][len(name) :].split()
        assert digest == hashlib.sha256(content).hexdigest(), name
        assert int(size) == len(content), name
        assert role == notary_corpus.target_roles[gun][name], name
    for name in notary_corpus.removed_targets.get(gun, []):
        assert not any(line.startswith(name + " ") for line in lines), name


def test_key_files(notary_corpus: Corpus) -> None:
    roles_seen = set()
    for path in notary_corpus.key_files:
        text = path.read_text()
        assert text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"), path
        headers = dict(line.split(": ", 1) for line in text.split("\n\n", 1)[0].splitlines()[1:])
        roles_seen.add(headers["role"])
        # Only per-repository keys carry a gun header.
        assert ("gun" in headers) == (headers["role"] in ("targets", "snapshot")), path
    assert {"root", "targets", "snapshot"} <= roles_seen
    assert set(notary_corpus.delegation_keys) <= roles_seen


def test_scenario_steps_were_not_refused(notary_corpus: Corpus) -> None:
    assert notary_corpus.refused == []
    assert notary_corpus.changelists, "no changelist files captured"
    assert notary_corpus.key_export is not None
    assert "path: " in notary_corpus.key_export.read_text()
