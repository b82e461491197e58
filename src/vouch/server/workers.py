"""Several server processes sharing one listening socket (``workers`` > 1).

One Python process serves on one core. With a database backend every
instance's reads are exactly as fresh as the database (see
:mod:`vouch.storage.readcache`) and publishes serialise in the database, so
processes on one machine are just instances behind the kernel's load balancer:
the supervisor binds the socket, prepares what must happen once (schema
migrations, the key table and its passphrase, the development CA), forks the
workers, restarts any that die, and stops them all on SIGTERM or SIGINT.

The memory backend and in-memory keys cannot be shared between processes,
so they refuse more than one worker. Prometheus metrics are summed over the workers (the client
library's multiprocess mode, in a private directory removed at exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess, values

from vouch.server.main import (
    _redact,
    _run_loop,
    open_local_keys,
    serve,
    split_listen,
    ssl_context,
)
from vouch.server.settings import ServerSettings
from vouch.storage.sql import open_store

log = logging.getLogger("vouch.server")

#: Seconds between restarts of a worker that keeps dying, doubling up to the cap.
_RESTART_FIRST, _RESTART_CAP = 0.5, 30.0
#: A worker that ran this long before dying is restarted at once.
_HEALTHY_AFTER = 10.0
_PR_SET_PDEATHSIG = 1


def run_workers(settings: ServerSettings, echo: Callable[[str], Any]) -> None:
    if settings.storage_url().strip() == "memory":
        raise SystemExit(
            "workers > 1 needs a database: memory storage lives inside one process "
            "(use SQLite, PostgreSQL, MariaDB/MySQL or CouchDB, or one worker)"
        )
    if settings.keys.type == "memory":
        raise SystemExit(
            "workers > 1 needs keys every worker shares: in-memory keys live inside one "
            "process (use keys.type local, in a database, or remote, a signer; notary-server's "
            'trust_service "local" means in-memory keys)'
        )
    _prepare(settings, echo)
    metrics_dir = _multiprocess_metrics()
    sock = _bind(settings.listen)
    scheme = "http" if settings.plain_http else "https"
    host, port = split_listen(settings.listen)
    echo(
        f"vouch server listening on {scheme}://{host}:{port} with {settings.workers} workers "
        f"(storage: {_redact(settings.storage_url())})"
    )
    try:
        _Supervisor(settings, sock).run()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _prepare(settings: ServerSettings, echo: Callable[[str], Any]) -> None:
    """Everything that must happen once, before any worker starts."""

    async def once() -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = await open_store(settings.storage_url())  # migrates
        await store.close()
        if settings.keys.type == "local":  # creates its table and the generated passphrase
            keys = await open_local_keys(settings, echo)
            close = getattr(keys, "close", None)
            if close is not None:
                await close()
        # A remote signer's gRPC channel is not opened here: gRPC must not cross a fork.

    asyncio.run(once())
    ssl_context(settings, echo)  # generates the development CA once and prints the hint


def _multiprocess_metrics() -> Path:
    path = Path(tempfile.mkdtemp(prefix="vouch-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    # The value class is chosen when prometheus_client is imported; choose again now
    # that the directory is set, so the workers' metrics are written there.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def _bind(listen: str) -> socket.socket:
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"cannot listen on {listen}: {exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Supervisor:
    def __init__(self, settings: ServerSettings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (slot, started)
        self.delays = [_RESTART_FIRST] * settings.workers
        self.stopping = False

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in range(self.settings.workers):
                self._spawn(slot)
            while self.children:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                slot, started = self.children.pop(pid, (-1, 0.0))
                _mark_dead(pid)
                if self.stopping or slot < 0:
                    continue
                code = os.waitstatus_to_exitcode(status)
                log.error("worker %d (pid %d) exited with %d; restarting it", slot, pid, code)
                if time.monotonic() - started > _HEALTHY_AFTER:
                    self.delays[slot] = _RESTART_FIRST
                time.sleep(self.delays[slot])
                self.delays[slot] = min(self.delays[slot] * 2, _RESTART_CAP)
                if not self.stopping:
                    self._spawn(slot)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _spawn(self, slot: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)  # uvicorn installs its own
                _die_with(parent)
                _run_loop(serve(self.settings, _quiet, sockets=[self.sock]))
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        self.children[pid] = (slot, time.monotonic())


def _quiet(_message: str) -> None:
    """Workers print nothing the supervisor has not printed already."""


def _die_with(parent: int) -> None:
    """Ask Linux to stop this worker when the supervisor dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(0)


def _mark_dead(pid: int) -> None:
    with contextlib.suppress(Exception):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


__all__ = ["run_workers"]
