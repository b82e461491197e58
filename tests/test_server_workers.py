"""``vouch server`` with several worker processes (``VOUCH_WORKERS``), as real processes.

Each request may land on any worker; what one worker stores, every other must
serve on the next request (their read caches validate against the database),
metrics are summed over workers, a killed worker is replaced, and SIGTERM stops
them all.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server_helpers import Publisher
from test_storage import _pg_create, _pg_drop, _pg_url
from vouch.tuf import roles
from vouch_harness import VouchServer


def _workers(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/vouch.db"
        return
    name = f"vouch_workers_{os.getpid()}_{time.monotonic_ns()}"
    _pg_create(name)
    try:
        yield _pg_url(name)
    finally:
        _pg_drop(name)


async def _publish_and_read(url: str, rounds: int) -> None:
    """After every publish, every worker serves the new timestamp (new connection each GET)."""
    pub = Publisher("example.com/workers")
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        await pub.init(client)
        pub.sign_root()
        for n in range(rounds):
            pub.add(f"v{n}", f"content {n}".encode())
            pub.sign_targets(roles.TARGETS)
            names = (roles.ROOT, roles.TARGETS) if n == 0 else (roles.TARGETS,)
            resp = await pub.publish(client, pub.upload(*names))
            assert resp.status_code == 200, resp.text
            versions = set()
            for _ in range(12):  # fresh connections: spread over the workers
                async with httpx.AsyncClient(base_url=url, timeout=10) as fresh:
                    ts = await fresh.get("/v2/example.com/workers/_trust/tuf/timestamp.json")
                    assert ts.status_code == 200
                    versions.add(json.loads(ts.content)["signed"]["version"])
            assert versions == {n + 1}, f"round {n}: some worker served {versions}"


def test_workers_share_one_socket_and_serve_fresh_data(storage: str, tmp_path: Path) -> None:
    # Keys: the local key service on its own SQLite file in the data dir, shared too.
    env = {"VOUCH_WORKERS": "2"}
    with VouchServer(tmp_path / "srv", storage=storage, env=env) as server:
        assert server.proc is not None
        pid = server.proc.pid
        _wait_for(lambda: len(_workers(pid)) == 2)
        asyncio.run(_publish_and_read(server.url, rounds=4))
        metrics = httpx.get(f"{server.url}/metrics").text
        served = sum(
            float(v)
            for v in re.findall(
                r'vouch_server_http_requests_total\{code="200",operation="GetRole"\} (\S+)',
                metrics,
            )
        )
        assert served >= 4 * 12, "every worker's requests are counted in /metrics"


def test_memory_storage_or_keys_refuse_several_workers(tmp_path: Path) -> None:
    env = {"VOUCH_WORKERS": "2"}
    with pytest.raises(RuntimeError, match="memory storage lives inside one process"):
        VouchServer(tmp_path / "a", storage="memory", env=env).start()
    env["VOUCH_KEYS__TYPE"] = "memory"
    with pytest.raises(RuntimeError, match="in-memory keys live inside one"):
        VouchServer(tmp_path / "b", storage=f"sqlite:///{tmp_path}/b.db", env=env).start()


def test_a_killed_worker_is_replaced_and_sigterm_stops_all(tmp_path: Path) -> None:
    env = {"VOUCH_WORKERS": "2"}
    server = VouchServer(tmp_path / "srv", storage=f"sqlite:///{tmp_path}/v.db", env=env)
    with server:
        assert server.proc is not None
        pid = server.proc.pid
        _wait_for(lambda: len(_workers(pid)) == 2)
        first = _workers(pid)
        os.kill(first[0], signal.SIGKILL)
        _wait_for(lambda: len(_workers(pid)) == 2 and first[0] not in _workers(pid))
        for _ in range(10):
            assert httpx.get(f"{server.url}/_notary_server/health").status_code == 200
        survivors = _workers(pid)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=20) == 0
        for child in survivors:
            _wait_for(lambda c=child: not Path(f"/proc/{c}").exists() or _zombie(c))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True
