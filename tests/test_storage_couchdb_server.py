"""The real notary CLI scenario against ``vouch server --storage couchdb://…``.

``vouch server`` runs as a process on a new database of the CouchDB-protocol test
server (PouchDB Server; tests/couchdb_harness.py). The scenario of
tests/notary_harness.py (init, delegations, key rotations, server-managed snapshot,
witness, list, lookup, in two GUNs) must give what it gives on Debian's
notary-server. Then the server is replaced by a new process configured by a
notary-server style config (``"storage": {"backend": "couchdb", "db_url": …}``)
on the same database: it serves the same data, takes a further publish (which needs
the server-held snapshot and timestamp keys) and reports it in the changefeed. The
metadata must be in CouchDB, and so must the server-managed keys (no ``keys.url``:
the key database beside the metadata database, ``<database>_keys``), not in files
in the data dir.

A CouchDB-protocol server that cannot be reached FAILS these tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

import couchdb_harness as ch
from notary_harness import CORPUS_GUN, KOLKATA_GUN, Corpus, NotaryCLI, build_corpus, fetch
from vouch.tuf.metadata import Metadata
from vouch_harness import VouchServer


def _versions(c: Corpus) -> set[str]:
    return {
        label.split(":", 2)[2]
        for label in c.labels("server:")
        if label.split(":", 2)[2][0].isdigit()
    }


def test_notary_scenario_on_couchdb(
    notary_corpus: Corpus, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ch.require_couch()
    name = ch.new_db_name("vouch_srv")
    request.addfinalizer(lambda: ch.drop_db(name))
    request.addfinalizer(lambda: ch.drop_db(f"{name}_keys"))
    # The couchdb:// form on the command line (credentials, if any, as the test server's).
    couch = httpx.URL(ch.COUCH_URL)
    userinfo = f"{couch.userinfo.decode()}@" if couch.userinfo else ""
    url = f"couchdb://{userinfo}{couch.host}:{couch.port}/{name}"
    server = VouchServer(tmp_path / "server", storage=url)
    try:
        server.start()
        corpus = build_corpus(server, tmp_path / "scenario")  # type: ignore[arg-type]

        # The same results as notary-server gave for the same scenario.
        assert corpus.refused == notary_corpus.refused == []
        for gun in notary_corpus.guns:
            assert corpus.list_output[gun] == notary_corpus.list_output[gun], gun
        assert corpus.roles == notary_corpus.roles
        assert corpus.targets == notary_corpus.targets
        assert corpus.target_roles == notary_corpus.target_roles
        assert _versions(corpus) == _versions(notary_corpus)
        for label, data in corpus.metadata:
            md = Metadata.from_bytes(data)
            assert md.to_bytes() == data, label

        # Stored in CouchDB: one batch per accepted update, and no SQLite metadata file.
        docs = ch.all_docs(name)
        for gun in (CORPUS_GUN, KOLKATA_GUN):
            batches = [d for d in docs if d.get("kind") == "batch" and d["gun"] == gun]
            assert batches, f"nothing of {gun} in {name}"
            assert sorted(b["seq"] for b in batches) == list(range(1, len(batches) + 1))
        assert not (server.workdir / "data" / "vouch.db").exists()
        # The server-managed keys too: JWE-encrypted documents in <database>_keys.
        assert not (server.workdir / "data" / "keys.db").exists()
        key_docs = [d for d in ch.all_docs(f"{name}_keys") if d.get("type") == "private_key"]
        held = {(d["gun"], d["role"]) for d in key_docs}
        assert {(CORPUS_GUN, "timestamp"), (CORPUS_GUN, "snapshot")} <= held, held
        assert all(d["private"].count(".") == 4 for d in key_docs)  # JWEs, not keys in clear
        assert any(d["last_used"] for d in key_docs if d["role"] == "snapshot")
        server.stop()

        # A new process from a notary-server config naming the same database.
        config = tmp_path / "notary-server.json"
        config.write_text(
            json.dumps(
                {
                    "server": {"http_addr": ":4443"},
                    "storage": {"backend": "couchdb", "db_url": ch.store_url(name)},
                }
            )
        )
        server = VouchServer(tmp_path / "server", extra_args=("--config", str(config)))
        server.start()
        cli = NotaryCLI(server.url, corpus.trust_dir, home=corpus.cli_home)
        for gun in (CORPUS_GUN, KOLKATA_GUN):
            assert cli.run("list", gun).stdout == corpus.list_output[gun], gun
        content = tmp_path / "after-restart.bin"
        content.write_bytes(b"published through the CouchDB store\n")
        cli.run("add", CORPUS_GUN, "after-restart", content)
        cli.run("publish", CORPUS_GUN)
        assert "after-restart" in cli.run("list", CORPUS_GUN).stdout
        fresh = NotaryCLI(server.url, tmp_path / "fresh-trust", home=tmp_path / "fresh-home")
        assert "after-restart" in fresh.run("list", CORPUS_GUN).stdout

        # The changefeed: every timestamp version of the GUN, oldest first, the last one
        # being the current timestamp.
        feed = json.loads(
            fetch(f"{server.url}/v2/{CORPUS_GUN}/_trust/changefeed?change_id=0&records=1000")
        )
        current = Metadata.from_bytes(
            fetch(f"{server.url}/v2/{CORPUS_GUN}/_trust/tuf/timestamp.json")
        )
        versions = [int(c["Version"]) for c in feed["records"]]
        assert versions == list(range(1, current.signed.version + 1))
        assert all(c["Category"] == "update" for c in feed["records"])
    except BaseException:
        print(server.log())
        raise
    finally:
        server.stop()
