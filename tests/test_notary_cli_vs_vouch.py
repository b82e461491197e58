"""The real notary CLI runs the same scenario against vouch server and against
Debian's notary-server; the observable results must match.

The scenario (tests/notary_harness.py) covers init, add with awkward names and
custom data, addhash, remove, publish, delegations with ECDSA and RSA keys and
a nested delegation, key import, server-managed snapshot (`key rotate snapshot
-r`), `key rotate timestamp -r`, root and targets rotation, witness, list and
lookup, in a second GUN with a +05:30 local time zone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from notary_harness import Corpus, NotaryCLI, build_corpus
from vouch.tuf.metadata import Metadata
from vouch_harness import VouchServer


@pytest.fixture(scope="module")
def vouch_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    work = tmp_path_factory.mktemp("vouch-corpus")
    with VouchServer(work / "server") as server:
        corpus = build_corpus(server, work / "scenario")
        corpus.server_log = server.log()  # type: ignore[attr-defined]
        return corpus


def test_scenario_completes_without_refusals(vouch_corpus: Corpus, notary_corpus: Corpus) -> None:
    assert vouch_corpus.refused == notary_corpus.refused == []

    def shape(c: Corpus) -> list[str]:
        # Steps name temp paths; compare the commands and their arguments' order.
        return [" ".join(w for w in step.split() if not w.startswith("/")) for step in c.steps]

    assert shape(vouch_corpus) == shape(notary_corpus)


def test_notary_list_output_identical(vouch_corpus: Corpus, notary_corpus: Corpus) -> None:
    for gun in notary_corpus.guns:
        assert vouch_corpus.list_output[gun] == notary_corpus.list_output[gun], gun


def test_same_roles_and_targets(vouch_corpus: Corpus, notary_corpus: Corpus) -> None:
    assert vouch_corpus.roles == notary_corpus.roles
    assert vouch_corpus.targets == notary_corpus.targets
    assert vouch_corpus.target_roles == notary_corpus.target_roles


def test_same_version_history(vouch_corpus: Corpus, notary_corpus: Corpus) -> None:
    """Every role reaches the same versions on both servers."""

    def versions(c: Corpus) -> set[str]:
        return {
            label.split(":", 2)[2]
            for label in c.labels("server:")
            if label.split(":", 2)[2][0].isdigit()
        }

    assert versions(vouch_corpus) == versions(notary_corpus)


def test_vouch_server_files_verify(vouch_corpus: Corpus) -> None:
    for label, data in vouch_corpus.metadata:
        md = Metadata.from_bytes(data)
        assert md.to_bytes() == data, label
        assert md.signatures, label


def test_delete_remote_then_gone(
    tmp_path: Path, vouch_corpus: Corpus, notary_corpus: Corpus
) -> None:
    with VouchServer(tmp_path / "server") as server:
        cli = NotaryCLI(server.url, tmp_path / "trust", home=tmp_path / "home")
        gun = "example.com/vouch/deleteme"
        cli.run("init", gun)
        cli.run("publish", gun)
        assert cli.run("list", gun).returncode == 0
        cli.run("delete", gun, "--remote")
        gone = cli.run("list", gun, check=False)
        assert gone.returncode != 0
        assert "does not have trust data" in (gone.stdout + gone.stderr)
