"""Shared fixtures: a real notary-server and a corpus of real Notary metadata.

Both are session-scoped because starting the server and running the scripted CLI scenario
is the slow part of the interop tests.  Under pytest-xdist every worker builds its own
(on its own free port, in its own temp dir), which is fine: nothing is shared.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# grpcio's fork support can abort children spawned with preexec_fn (grpc#43055),
# which is how the harnesses start notary-server and notary-signer.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from notary_harness import (
    Corpus,
    NotaryServer,
    NotaryUnavailableError,
    build_corpus,
    require_notary_binaries,
)

#: Fixtures that run the real Notary programs; tests using them get the ``interop`` marker.
INTEROP_FIXTURES = frozenset({"notary_server", "notary_corpus"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real-Notary fixture as ``interop`` (for ``-m``)."""
    for item in items:
        if INTEROP_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.interop)


def _require_notary() -> None:
    # Fail, never skip: a skipped compatibility suite is indistinguishable from a green one.
    try:
        require_notary_binaries()
    except NotaryUnavailableError as e:
        message = str(e)
    else:
        return
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def notary_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotaryServer]:
    """A running real ``notary-server`` (memory storage, local signer) for the session."""
    _require_notary()
    with NotaryServer(tmp_path_factory.mktemp("notary-server")) as server:
        yield server


@pytest.fixture(scope="session")
def notary_corpus(notary_server: NotaryServer, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Metadata, key files and bookkeeping from the scripted real-CLI scenario (built once)."""
    _require_notary()
    return build_corpus(notary_server, tmp_path_factory.mktemp("notary-corpus"))
