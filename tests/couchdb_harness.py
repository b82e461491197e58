"""The CouchDB-protocol server the storage tests use, and helpers around it.

.ci/run starts PouchDB Server (npm ``pouchdb-server``, CouchDB's HTTP API, in
memory) on 127.0.0.1:5984. ``VOUCH_TEST_COUCHDB_URL`` points the tests at
another server instead, e.g. Apache CouchDB 3 as
``http://admin:secret@127.0.0.1:5984``. Each test gets its own uniquely named
database (per pytest-xdist worker too) and drops it afterwards. A server that
cannot be reached FAILS the tests: a skipped backend suite would look green.

Tests that need a server of their own (an admin user for the auth tests) start
one with :class:`PouchDBServer`, from ``VOUCH_POUCHDB_SERVER`` (exported by
.ci/run) or the place .ci/run installs it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from notary_harness import free_port
from procs import Managed, stop_process

COUCH_URL = os.environ.get("VOUCH_TEST_COUCHDB_URL", "http://127.0.0.1:5984").rstrip("/")
_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
POUCHDB_SERVER = Path(
    os.environ.get("VOUCH_POUCHDB_SERVER")
    or _CACHE / "vouch/pouchdb-server/node_modules/.bin/pouchdb-server"
)


def _client(base: str = COUCH_URL) -> httpx.Client:
    parts = urlsplit(base)
    auth = (parts.username or "", parts.password or "") if parts.username else None
    plain = base.replace(f"{parts.username}:{parts.password}@", "") if auth else base
    return httpx.Client(base_url=plain, auth=auth, timeout=30, trust_env=False)


def couch(method: str, path: str, body: Any = None, *, base: str = COUCH_URL) -> httpx.Response:
    """One request to the test server (synchronous; for fixtures and checks)."""
    with _client(base) as c:
        return c.request(method, path, json=body)


def require_couch() -> None:
    """Fail (not skip) the test if the CouchDB-protocol server does not answer."""
    try:
        resp = couch("GET", "/")
        resp.raise_for_status()
    except httpx.HTTPError as e:
        pytest.fail(
            f"the CouchDB-protocol server at {urlsplit(COUCH_URL).hostname}:"
            f"{urlsplit(COUCH_URL).port} is not reachable ({type(e).__name__}: {e}). The "
            "CouchDB storage tests need it (.ci/run starts PouchDB Server on 127.0.0.1:5984, "
            "or set VOUCH_TEST_COUCHDB_URL); they fail rather than skip.",
            pytrace=False,
        )


def new_db_name(tag: str = "vouch_test") -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{tag}_{worker}_{secrets.token_hex(4)}"


def store_url(name: str) -> str:
    """The storage URL of database ``name`` on the test server (an ``http(s)://`` URL)."""
    return f"{COUCH_URL}/{name}"


def drop_db(name: str) -> None:
    couch("DELETE", f"/{name}")


def all_docs(name: str) -> list[dict[str, Any]]:
    """Every document of a database (with design docs), for checks on what is stored."""
    resp = couch("GET", f"/{name}/_all_docs?include_docs=true")
    resp.raise_for_status()
    return [r["doc"] for r in resp.json()["rows"]]


class PouchDBServer(Managed):
    """A PouchDB Server process of the test's own, in memory, on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if not POUCHDB_SERVER.exists() or shutil.which("node") is None:
            pytest.fail(
                f"PouchDB Server is not installed at {POUCHDB_SERVER} (.ci/run installs it; "
                "or set VOUCH_POUCHDB_SERVER)",
                pytrace=False,
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = (self.workdir / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(POUCHDB_SERVER),
                *("--in-memory", "--host", "127.0.0.1", "--port", str(self.port)),
                *("--no-stdout-logs", "--no-color"),
            ],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pouchdb-server exited: {self.workdir / 'stdout.log'}")
            try:
                if couch("GET", "/", base=self.url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("pouchdb-server did not start within 30 s")

    def add_admin(self, name: str, password: str) -> None:
        """Leave "admin party": from now on only ``name`` may do anything."""
        resp = couch("PUT", f"/_config/admins/{name}", password, base=self.url)
        resp.raise_for_status()

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
