"""Benchmark of the trust server: ``vouch server`` against Debian's ``notary-server``.

This is a benchmark, not a test: it prints figures and never asserts on them.

Both servers run side by side as subprocesses on loopback, on the same backend:

* ``memory``: notary-server's memory storage, and vouch's ``memory`` storage;
* ``postgres``: PostgreSQL at 127.0.0.1:5432 (user postgres), a fresh database for each
  server (notary-server's schema is applied from its migrations 0001 and 0002; vouch
  migrates its own), dropped at the end.

Both get the same notary-server JSON config (vouch reads it as is): plain HTTP, the
``local`` trust service (in-memory ed25519 keys for timestamp and server snapshot), log
level ``error``. vouch runs from its console script ``.venv/bin/vouch server``.

Untimed setup, per server: repositories are published with vouch's core (root with an x509
root key, targets with 20 targets, client snapshot) and every publish that the load will
send is signed in advance, with that server's timestamp (and snapshot) key, so client
crypto is not counted. Then each measurement runs for a fixed duration (GETs after a 1 s
warm-up):

* ``GET timestamp.json``: the current timestamp of 16 repositories, round robin, over 64
  connections;
* ``GET targets.<sha256>.json``: the current targets of the same repositories by checksum;
* ``publish, client snapshot``: 8 concurrent clients, each posting successive versions of
  targets plus its own snapshot to its own GUN (the server checks both and signs a
  timestamp); each new version points one of the 20 targets at new content;
* ``publish, server snapshot``: the same with a server-managed snapshot (the client posts
  targets only; the server signs snapshot and timestamp).

The load generator is ``wrk`` (Debian package ``wrk``) with a generated Lua script; without
it, ``bench/loadgen.py`` (asyncio, one process) stands in, with a warning that its figures
are client-bound. Every request stays on 127.0.0.1 and every run stops after its duration.

Each server is measured ``--rounds`` times per load, alternating which goes first, and the
table shows each one's best round. The servers share the machine with the load generator
(and PostgreSQL), so other work skews the figures: before each measurement the benchmark
waits (``--quiet-wait``) for the CPUs to go idle, it measures the CPU that processes other
than its own (servers, wrk, PostgreSQL) use during the measurement, and it measures again
(``--retries``) when that exceeds ``--max-noise`` cores. Results that stayed noisy are
flagged in the table.

Run ``.venv/bin/python bench/server.py`` (about 5 minutes on a quiet 2-core machine);
``--backend``, ``--duration``, ``--connections``, ``--workers`` and ``--quick`` are described
by ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import math
import os
import pickle
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import httpx

from vouch.crypto.certs import root_key
from vouch.crypto.privkey import PrivateKey
from vouch.tuf import build, roles
from vouch.tuf.keys import Key
from vouch.tuf.metadata import FileMeta, Metadata, Root, Snapshot, Targets

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VOUCH_BIN = REPO / ".venv" / "bin" / "vouch"
NOTARY_SERVER_BIN = Path("/usr/bin/notary-server")
WRK_BIN = shutil.which("wrk")
PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
BOUNDARY = "0b5c" * 15  # 60 hex characters, like the Go client's
GUN_PREFIX = "bench.example.com/"
TARGETS_PER_REPO = 20
GOALS = {
    ("memory", "get"): 1.2,
    ("postgres", "get"): 5.0,
    ("memory", "publish"): 1.5,
    ("postgres", "publish"): 1.5,
}


# -- machine and versions ---------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _dpkg_version(package: str) -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "not installed"


def _dist(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "-"


def machine_lines(loadgen: str, postgres: str | None) -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"CPU        {cpu_model()} ({os.cpu_count()} cores, {usable} usable)",
        f"Python     {platform.python_implementation()} {platform.python_version()}"
        f" ({platform.system()} {platform.machine()})",
        f"vouch      {_dist('vouch')} (uvicorn {_dist('uvicorn')}, starlette "
        f"{_dist('starlette')}, uvloop {_dist('uvloop')}, httptools {_dist('httptools')}, "
        f"SQLAlchemy {_dist('sqlalchemy')}, asyncpg {_dist('asyncpg')})",
        f"notary     notary-server from Debian package notary {_dpkg_version('notary')}",
        f"load       {loadgen}",
    ]
    if postgres:
        lines.append(f"PostgreSQL {postgres} on 127.0.0.1:5432")
    return lines


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def background_cores(seconds: float = 0.5) -> float:
    """How many cores other processes keep busy while our servers are idle."""
    try:
        busy0, total0 = _cpu_jiffies()
        time.sleep(seconds)
        busy1, total1 = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        return 0.0
    ncpu = os.cpu_count() or 1
    return (busy1 - busy0) / max(1, total1 - total0) * ncpu


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError, ValueError):
            for task in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo.extend(int(c) for c in children)
    return out


def _proc_jiffies(pid: int) -> tuple[str, int, int]:
    """(name, own CPU, reaped children's CPU) of a process, in jiffies; zeros if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", 0, 0
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    f = stat[stat.rindex(")") + 2 :].split()
    return name, int(f[11]) + int(f[12]), int(f[13]) + int(f[14])


class CpuMeter:
    """CPU used by other processes during a measurement, in cores.

    "Ours" is the benchmark itself with its reaped children (wrk), the servers with their
    workers, and every PostgreSQL process (with the backends that exited meanwhile, counted
    through the postmaster); everything else busy on the machine is noise.
    """

    def __init__(self, server_pids: list[int]) -> None:
        self.server_pids = server_pids
        self.hz = os.sysconf("SC_CLK_TCK")
        self.start = self._sample()

    def _ours(self) -> int:
        t = os.times()
        total = round((t.user + t.system + t.children_user + t.children_system) * self.hz)
        for root in self.server_pids:
            for pid in _descendants(root):
                _, own, reaped = _proc_jiffies(pid)
                total += own + reaped
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                name, own, reaped = _proc_jiffies(int(entry))
                if name == "postgres":
                    total += own + reaped
        return total

    def _sample(self) -> tuple[float, int, int]:
        busy, _ = _cpu_jiffies()
        return time.monotonic(), busy, self._ours()

    def foreign_cores(self) -> float:
        (t0, busy0, ours0), (t1, busy1, ours1) = self.start, self._sample()
        return max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / self.hz / max(1e-3, t1 - t0))


def wait_quiet(limit: float, threshold: float = 0.15) -> float:
    """Wait up to ``limit`` seconds for other processes to leave the CPUs idle; returns the
    cores they kept busy in the last half second."""
    deadline = time.monotonic() + limit
    busy = background_cores()
    while busy > threshold and time.monotonic() < deadline:
        busy = background_cores()
    return busy


# -- processes --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None] | None:
    """``preexec_fn`` making a server die with us (Linux ``PR_SET_PDEATHSIG``)."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


def notary_config(port: int, db_url: str | None) -> dict[str, Any]:
    storage: dict[str, str] = {"backend": "memory"}
    if db_url is not None and db_url.startswith("sqlite:"):
        storage = {"backend": "sqlite3", "db_url": db_url.removeprefix("sqlite:")}
    elif db_url is not None:
        storage = {"backend": "postgres", "db_url": db_url}
    return {
        "server": {"http_addr": f"127.0.0.1:{port}"},
        "trust_service": {"type": "local"},
        "storage": storage,
        "logging": {"level": "error"},
    }


@dataclass
class Server:
    """One server process (vouch or notary-server) on a free loopback port."""

    name: str
    workdir: Path
    db_url: str | None
    workers: int = 1
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def argv(self, config: Path) -> list[str]:
        if self.name == "vouch":
            return [
                str(VOUCH_BIN),
                "server",
                "--config",
                str(config),
                "--plain-http",
                "--data-dir",
                str(self.workdir / "vouch-data"),
            ]
        return [str(NOTARY_SERVER_BIN), "-config", str(config)]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.name == "vouch":
            env["VOUCH_WORKERS"] = str(self.workers)
            if self.workers > 1 and self.db_url:
                # notary's trust_service "local" means in-memory keys, which workers cannot
                # share: keep the keys (ed25519, as notary's) encrypted in the same database.
                # (On SQLite: their own file in the data dir, vouch's default.)
                env["VOUCH_KEYS__TYPE"] = "local"
                env["VOUCH_KEYS__KEY_ALGORITHM"] = "ed25519"
                if not self.db_url.startswith("sqlite:"):
                    env["VOUCH_KEYS__URL"] = self.db_url
        last = ""
        for _attempt in range(5):
            self.port = free_port()
            config = self.workdir / f"{self.name}.json"
            config.write_text(json.dumps(notary_config(self.port, self.db_url), indent=2))
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    self.argv(config),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    env=env,
                    preexec_fn=_die_with_parent(),  # noqa: PLW1509 - only a prctl() call
                )
            try:
                self._wait_healthy()
                return
            except RuntimeError as exc:
                last = str(exc)
                self.stop()
                if "address already in use" not in last.lower():
                    break
        raise RuntimeError(f"{self.name} did not start: {last}")

    def _wait_healthy(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.log()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/_notary_server/health").status_code == 200:
                        return
                time.sleep(0.05)
        raise RuntimeError(f"not healthy after {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def processes(self) -> int:
        """The server's process count (itself and its children)."""
        if self.proc is None:
            return 0
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return 1
        return 1 + len(children.split())

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- PostgreSQL -------------------------------------------------------------------

# notary-server's PostgreSQL migrations 0001 and 0002 (see the wire spec, section 9.1).
NOTARY_PG_SCHEMA = (
    """CREATE TABLE "tuf_files" (
        "id" serial PRIMARY KEY,
        "created_at" timestamp NULL DEFAULT NULL,
        "updated_at" timestamp NULL DEFAULT NULL,
        "deleted_at" timestamp NULL DEFAULT NULL,
        "gun" varchar(255) NOT NULL,
        "role" varchar(255) NOT NULL,
        "version" integer NOT NULL,
        "data" bytea NOT NULL,
        "sha256" char(64) DEFAULT NULL,
        UNIQUE ("gun", "role", "version"))""",
    'CREATE INDEX "tuf_files_sha256_idx" ON "tuf_files" ("sha256")',
    'CREATE TABLE "change_category" ("category" VARCHAR(20) PRIMARY KEY)',
    "INSERT INTO \"change_category\" VALUES ('update'), ('deletion')",
    """CREATE TABLE "changefeed" (
        "id" serial PRIMARY KEY,
        "created_at" timestamp DEFAULT CURRENT_TIMESTAMP,
        "gun" varchar(255) NOT NULL,
        "version" integer NOT NULL,
        "sha256" CHAR(64) DEFAULT NULL,
        "category" VARCHAR(20) NOT NULL DEFAULT 'update',
        FOREIGN KEY ("category") REFERENCES "change_category" ("category"))""",
    'CREATE INDEX "idx_changefeed_gun" ON "changefeed" ("gun")',
)


async def _pg(database: str, *statements: str) -> str:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(database=database, timeout=10, **PG_ADMIN)
    try:
        for sql in statements:
            await conn.execute(sql)
        version: str = await conn.fetchval("SHOW server_version")
        return version
    finally:
        await conn.close()


@contextlib.contextmanager
def pg_databases(*kinds: str) -> Iterator[dict[str, str]]:
    """Fresh databases, one per kind; yields kind → notary-style db_url; drops them after."""
    stamp = f"{os.getpid()}_{int(time.time())}"
    names = {kind: f"bench_{kind}_{stamp}" for kind in kinds}
    try:
        for kind, name in names.items():
            asyncio.run(_pg("postgres", f'CREATE DATABASE "{name}"'))
            if kind == "notary":
                asyncio.run(_pg(name, *NOTARY_PG_SCHEMA))
        yield {
            kind: f"postgres://postgres@{PG_ADMIN['host']}:{PG_ADMIN['port']}/{name}"
            "?sslmode=disable"
            for kind, name in names.items()
        }
    finally:
        for name in names.values():
            with contextlib.suppress(Exception):
                asyncio.run(_pg("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- repositories -----------------------------------------------------------------


def multipart(files: dict[str, bytes]) -> bytes:
    body = b""
    for role, data in files.items():
        body += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="{role}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    return body + f"--{BOUNDARY}--\r\n".encode()


def tuf_path(gun: str, name: str = "") -> str:
    return f"/v2/{gun}/_trust/tuf/{name}"


@dataclass
class Repo:
    """A client that owns a GUN's root and targets keys (and the snapshot key unless the
    server manages it). Keys are generated once and reused for every server."""

    gun: str
    server_snapshot: bool
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.root_priv = PrivateKey.generate("ecdsa")
        self.root_pub = root_key(self.root_priv, self.gun, now=self.now)
        self.targets_priv = PrivateKey.generate("ecdsa")
        self.snapshot_priv = PrivateKey.generate("ecdsa")

    def bind(self, client: httpx.Client) -> RepoOnServer:
        """Build this GUN's root for one server (its timestamp, maybe snapshot, key)."""
        ts_key = server_key(client, self.gun, roles.TIMESTAMP)
        snap_key = (
            server_key(client, self.gun, roles.SNAPSHOT)
            if self.server_snapshot
            else self.snapshot_priv.public
        )
        root = build.root(
            {
                roles.ROOT: [self.root_pub],
                roles.TARGETS: [self.targets_priv.public],
                roles.SNAPSHOT: [snap_key],
                roles.TIMESTAMP: [ts_key],
            },
            self.now,
        )
        md: Metadata[Root] = Metadata(root)
        md.sign(self.root_priv.signer(self.root_pub))
        return RepoOnServer(self, md.to_bytes())


def server_key(client: httpx.Client, gun: str, role: str) -> Key:
    resp = client.get(tuf_path(gun, f"{role}.key"))
    resp.raise_for_status()
    return Key.from_dict(json.loads(resp.content))


@dataclass
class RepoOnServer:
    repo: Repo
    root_bytes: bytes
    version: int = 0
    targets_bytes: bytes = b""
    targets: Targets = field(init=False)

    def __post_init__(self) -> None:
        self.targets = build.targets(self.repo.now)
        for n in range(TARGETS_PER_REPO):
            self.targets.targets[f"tag-{n}"] = FileMeta.for_bytes(f"{self.repo.gun}:{n}".encode())

    def next_upload(self) -> dict[str, bytes]:
        """The next version's upload: targets with one tag moved to new content (so the size
        stays at ``TARGETS_PER_REPO`` targets), plus the client's snapshot unless the server
        manages it; the first upload also carries root."""
        self.version += 1
        v, repo = self.version, self.repo
        if v > 1:
            self.targets.targets[f"tag-{v % TARGETS_PER_REPO}"] = FileMeta.for_bytes(
                f"{repo.gun}:{v}".encode()
            )
        self.targets.version = v
        md: Metadata[Targets] = Metadata(self.targets)
        md.sign(repo.targets_priv.signer())
        self.targets_bytes = md.to_bytes()
        files = {roles.TARGETS: self.targets_bytes}
        if v == 1:
            files = {roles.ROOT: self.root_bytes, **files}
        if not repo.server_snapshot:
            snap: Metadata[Snapshot] = Metadata(
                build.snapshot(
                    {roles.ROOT: self.root_bytes, roles.TARGETS: self.targets_bytes},
                    repo.now,
                    version=v,
                )
            )
            snap.sign(repo.snapshot_priv.signer())
            files[roles.SNAPSHOT] = snap.to_bytes()
        return files


def publish(client: httpx.Client, gun: str, files: dict[str, bytes]) -> None:
    resp = client.post(
        tuf_path(gun),
        content=multipart(files),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    if resp.status_code != 200:
        raise RuntimeError(f"publish to {gun} failed: {resp.status_code} {resp.text[:300]}")


# -- load -------------------------------------------------------------------------

_LUA_COMMON = r"""
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function done(summary, latency, requests)
  local exhausted, used = 0, {}
  for _, t in ipairs(threads) do
    if t:get("exhausted") == 1 then exhausted = 1 end
    used[#used + 1] = tostring(t:get("used") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    '\n@@RESULT {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"exhausted":%d,"used":[%s]}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max, exhausted,
    table.concat(used, ",")))
end
"""

_LUA_GET = r"""
local paths = {%(paths)s}
local i = 0
function init(args)
  i = (tid or 1) * 7
  exhausted = 0
end
function request()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
"""

_LUA_POST = r"""
local guns = {%(paths)s}
local dir = %(dir)s
local reqs = {}
function init(args)
  exhausted = 0
  used = 0
  local path = guns[tid]
  local f = assert(io.open(dir .. "/" .. tid .. ".bin", "rb"))
  local data = f:read("*a")
  f:close()
  local headers = {["Content-Type"] = "multipart/form-data; boundary=%(boundary)s"}
  local pos = 1
  for line in io.lines(dir .. "/" .. tid .. ".idx") do
    local n = tonumber(line)
    reqs[#reqs + 1] = wrk.format("POST", path, headers, data:sub(pos, pos + n - 1))
    pos = pos + n
  end
end
function request()
  if used >= #reqs then
    exhausted = 1
    return reqs[#reqs]
  end
  used = used + 1
  return reqs[used]
end
"""


@dataclass
class Result:
    requests: int
    duration_us: int
    status_errors: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    p50_us: int
    p99_us: int
    mean_us: float
    max_us: int
    exhausted: int = 0
    used: list[int] = field(default_factory=list)  # publish: bodies sent per connection
    noise: float = 0.0  # cores other processes used meanwhile (set by measure())

    @property
    def ok(self) -> int:
        return self.requests - self.status_errors - self.read_errors - self.timeouts

    @property
    def rate(self) -> float:
        return self.ok / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def errors(self) -> int:
        return (
            self.status_errors
            + self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.timeouts
        )


@dataclass
class Load:
    """One measurement's requests: either GET paths (cycled) or per-connection bodies."""

    label: str
    kind: str  # "get" or "publish"
    paths: list[str]  # GET: the paths; publish: one GUN path per connection
    sources: list[RepoOnServer] = field(default_factory=list)  # publish: per connection
    bodies: list[list[bytes]] = field(default_factory=list)  # publish: pre-signed, unsent
    expected_rate: float = 0.0  # publish: publishes/s the next run must have bodies for

    def top_up(self, duration: float) -> None:
        """Pre-sign (untimed) enough versions for ``duration`` s at 1.5x ``expected_rate``."""
        need = math.ceil(1.5 * self.expected_rate * duration / max(1, len(self.sources))) + 8
        if not self.bodies:
            self.bodies = [[] for _ in self.sources]
        for source, bodies in zip(self.sources, self.bodies, strict=True):
            while len(bodies) < need:
                bodies.append(multipart(source.next_upload()))

    def consumed(self, result: Result) -> None:
        """Drop the bodies a run sent; expect a faster next run if this one ran out."""
        self.bodies = [b[u:] for b, u in zip(self.bodies, result.used, strict=True)]
        self.expected_rate = max(self.expected_rate, result.rate) * (4 if result.exhausted else 1)


def _lua_strings(items: list[str]) -> str:
    return ", ".join(json.dumps(s) for s in items)  # JSON strings are valid Lua here


def run_load(server: Server, load: Load, duration: float, plan: Plan, tmp: Path) -> Result:
    """Run one load for ``duration`` seconds; publishes continue where the last run stopped,
    with pre-signed versions topped up first."""
    if load.kind == "publish":
        load.top_up(duration)
    if plan.loadgen == "wrk":
        result = _run_wrk(server, load, duration, plan.connections, tmp)
    else:
        result = _run_python(server, load, duration, plan.connections, tmp)
    if load.kind == "publish":
        load.consumed(result)
    return result


def _run_wrk(server: Server, load: Load, duration: float, connections: int, tmp: Path) -> Result:
    assert WRK_BIN is not None
    script = tmp / f"{load.kind}.lua"
    if load.kind == "get":
        threads = min(2, connections)
        script.write_text(_LUA_COMMON + _LUA_GET % {"paths": _lua_strings(load.paths)})
    else:
        connections = threads = len(load.bodies)
        bodydir = tmp / "bodies"
        shutil.rmtree(bodydir, ignore_errors=True)
        bodydir.mkdir()
        for n, bodies in enumerate(load.bodies, start=1):
            (bodydir / f"{n}.bin").write_bytes(b"".join(bodies))
            (bodydir / f"{n}.idx").write_text("".join(f"{len(b)}\n" for b in bodies))
        script.write_text(
            _LUA_COMMON
            + _LUA_POST
            % {
                "paths": _lua_strings(load.paths),
                "dir": json.dumps(str(bodydir)),
                "boundary": BOUNDARY,
            }
        )
    argv = [
        WRK_BIN,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        server.url,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT "):
            return Result(**json.loads(line.removeprefix("@@RESULT ")))
    raise RuntimeError(
        f"wrk exited with {proc.returncode} and no result:\n{proc.stdout}\n{proc.stderr}"
    )


def _run_python(server: Server, load: Load, duration: float, connections: int, tmp: Path) -> Result:
    host = f"127.0.0.1:{server.port}"
    if load.kind == "get":
        streams = [[f"GET {p} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for p in load.paths]]
        cycle = True
    else:
        connections = len(load.bodies)
        streams = [
            [
                (
                    f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data;"
                    f" boundary={BOUNDARY}\r\nContent-Length: {len(b)}\r\n\r\n"
                ).encode()
                + b
                for b in bodies
            ]
            for path, bodies in zip(load.paths, load.bodies, strict=True)
        ]
        cycle = False
    spec = {
        "host": "127.0.0.1",
        "port": server.port,
        "duration": duration,
        "connections": connections,
        "streams": streams,
        "cycle": cycle,
        "timeout": 10.0,
    }
    spec_path = tmp / "loadgen.pickle"
    spec_path.write_bytes(pickle.dumps(spec))
    out = subprocess.run(
        [sys.executable, str(HERE / "loadgen.py"), str(spec_path)],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    return Result(**json.loads(out.strip().splitlines()[-1]))


# -- one backend ------------------------------------------------------------------


@dataclass
class Plan:
    duration: float
    rounds: int
    warmup: float
    connections: int
    get_repos: int
    publishers: int
    publish_rate: float  # publishes/s the first pre-signed batch is sized for
    workers: int
    loadgen: str
    quiet_wait: float = 30.0
    max_noise: float = 0.2
    retries: int = 2
    background: list[float] = field(default_factory=list)  # busy cores before each run


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that shape the loads (also used by bench/couchdb.py)."""
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="measurements per server, alternating; the table shows the best (default 2)",
    )
    parser.add_argument(
        "--connections", type=int, default=64, help="concurrent connections for the GET loads"
    )
    parser.add_argument("--publishers", type=int, default=8, help="concurrent publishing clients")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="vouch server worker processes (VOUCH_WORKERS); memory storage always uses 1",
    )
    parser.add_argument(
        "--publish-rate",
        type=float,
        default=1500.0,
        help="publishes/s to pre-sign for at first (more are signed between runs as needed)",
    )
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="seconds to wait before each measurement for other processes to go idle",
    )
    parser.add_argument(
        "--max-noise",
        type=float,
        default=0.2,
        help="cores other processes may use during a measurement before it is taken again",
    )
    parser.add_argument("--retries", type=int, default=2, help="re-measurements when noisy")
    parser.add_argument(
        "--quick", action="store_true", help="one 2 s round per measurement, fewer repositories"
    )


def checked_loadgen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The load generator to use; exits with a clear message if a needed program is missing."""
    loadgen: str = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if WRK_BIN else "python"
    if loadgen == "wrk" and not WRK_BIN:
        parser.error("wrk is not installed: apt-get install wrk")
    for binary in (VOUCH_BIN, NOTARY_SERVER_BIN):
        if not os.access(binary, os.X_OK):
            parser.error(f"{binary} is missing (make venv; apt-get install notary)")
    return loadgen


def plan_from_args(args: argparse.Namespace, loadgen: str) -> Plan:
    """The plan the shared command-line options describe (also used by bench/couchdb.py)."""
    return Plan(
        duration=2.0 if args.quick else args.duration,
        rounds=1 if args.quick else max(1, args.rounds),
        warmup=0.0 if args.quick else 1.0,
        connections=args.connections,
        get_repos=4 if args.quick else 16,
        publishers=args.publishers,
        publish_rate=args.publish_rate,
        workers=args.workers,
        loadgen=loadgen,
        quiet_wait=args.quiet_wait,
        max_noise=args.max_noise,
        retries=max(0, args.retries),
    )


def prepare(
    server: Server, plan: Plan, get_repos: list[Repo], pub: dict[str, list[Repo]]
) -> list[Load]:
    """Publish the GET repositories and pre-sign every timed publish (untimed)."""
    loads: list[Load] = []
    with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as client:
        ts_paths, hash_paths = [], []
        for repo in get_repos:
            bound = repo.bind(client)
            publish(client, repo.gun, bound.next_upload())
            digest = hashlib.sha256(bound.targets_bytes).hexdigest()
            ts_paths.append(tuf_path(repo.gun, "timestamp.json"))
            hash_paths.append(tuf_path(repo.gun, f"targets.{digest}.json"))
            got = client.get(hash_paths[-1])
            if got.status_code != 200 or got.content != bound.targets_bytes:
                raise RuntimeError(f"{server.name}: GET by checksum gave {got.status_code}")
            if client.get(ts_paths[-1]).status_code != 200:
                raise RuntimeError(f"{server.name}: GET timestamp.json failed")
        loads.append(Load("GET timestamp.json", "get", ts_paths))
        loads.append(Load("GET targets.<sha256>.json", "get", hash_paths))
        for label, repos in pub.items():
            load = Load(label, "publish", [], expected_rate=plan.publish_rate)
            for repo in repos:
                bound = repo.bind(client)
                publish(client, repo.gun, bound.next_upload())
                load.paths.append(tuf_path(repo.gun))
                load.sources.append(bound)
            load.top_up(plan.duration)
            loads.append(load)
    return loads


def measure(server: Server, load: Load, plan: Plan, tmp: Path, servers: Iterable[Server]) -> Result:
    """One measurement, taken again (up to ``plan.retries`` times) while other processes
    used more than ``plan.max_noise`` cores during it or the pre-signed publishes ran out;
    returns the best attempt (complete, then least noisy)."""
    best: Result | None = None
    for attempt in range(plan.retries + 1):
        plan.background.append(wait_quiet(plan.quiet_wait))
        meter = CpuMeter([s.proc.pid for s in servers if s.proc is not None])
        res = run_load(server, load, plan.duration, plan, tmp)
        res.noise = meter.foreign_cores()
        if best is None or (res.exhausted, res.noise) < (best.exhausted, best.noise):
            best = res
        if res.noise <= plan.max_noise and not res.exhausted:
            break
        if attempt < plan.retries:
            why = (
                "ran out of pre-signed publishes"
                if res.exhausted
                else f"other processes used {res.noise:.2f} cores"
            )
            print(f"  {server.name}: {why} during {load.label}; measuring again", flush=True)
    assert best is not None
    return best


#: label, kind, then the results of every round for vouch and for notary-server
Row = tuple[str, str, list["Result"], list["Result"]]


def run_backend(backend: str, plan: Plan, tmp: Path) -> tuple[list[Row], str | None]:
    """Start both servers on ``backend``, prepare them, run every load; returns rows."""
    now = datetime.now(UTC)
    get_repos = [Repo(f"{GUN_PREFIX}get/repo-{n:02d}", False, now) for n in range(plan.get_repos)]
    pub = {
        f"publish, client snapshot ({plan.publishers} clients)": [
            Repo(f"{GUN_PREFIX}pub-client/repo-{n:02d}", False, now) for n in range(plan.publishers)
        ],
        f"publish, server snapshot ({plan.publishers} clients)": [
            Repo(f"{GUN_PREFIX}pub-server/repo-{n:02d}", True, now) for n in range(plan.publishers)
        ],
    }
    rows: list[Row] = []
    pg_version: str | None = None
    with contextlib.ExitStack() as stack:
        urls: dict[str, str | None] = {"vouch": None, "notary": None}
        if backend == "postgres":
            pg_version = asyncio.run(_pg("postgres"))
            urls.update(stack.enter_context(pg_databases("vouch", "notary")))
        if backend == "sqlite":
            # vouch's embedded default against notary-server's own in-memory storage
            # (notary-server cannot create a SQLite schema itself).
            urls["vouch"] = f"sqlite:{tmp / backend / 'vouch-db' / 'vouch.db'}"
            (tmp / backend / "vouch-db").mkdir(parents=True)
        workers = plan.workers if backend != "memory" else 1
        servers = {
            "vouch": Server("vouch", tmp / backend / "vouch", urls["vouch"], workers),
            "notary": Server("notary-server", tmp / backend / "notary", urls["notary"]),
        }
        for server in servers.values():
            stack.callback(server.stop)
            server.start()
        if workers > 1 and servers["vouch"].processes() < workers:
            raise RuntimeError(f"asked vouch for {workers} workers, it runs fewer processes")
        print(f"[{backend}] preparing repositories and pre-signing publishes ...", flush=True)
        loads = {name: prepare(s, plan, get_repos, pub) for name, s in servers.items()}
        for n, load in enumerate(loads["vouch"]):
            results: dict[str, list[Result]] = {"vouch": [], "notary": []}
            if load.kind == "get" and plan.warmup > 0:
                for name, server in servers.items():
                    run_load(server, loads[name][n], plan.warmup, plan, tmp)
            for r in range(plan.rounds):
                # Alternate who goes first, so background noise hits both alike.
                order = ["vouch", "notary"] if r % 2 == 0 else ["notary", "vouch"]
                for name in order:
                    server = servers[name]
                    res = measure(server, loads[name][n], plan, tmp, servers.values())
                    results[name].append(res)
                    print(
                        f"[{backend}] round {r + 1}  {load.label:<40} {server.name:<13} "
                        f"{res.rate:>9,.0f}/s  p50 {res.p50_us / 1000:.2f} ms  "
                        f"p99 {res.p99_us / 1000:.2f} ms"
                        + (f"  ERRORS {res.errors}" if res.errors else "")
                        + ("  RAN OUT of pre-signed publishes" if res.exhausted else "")
                        + (f"  noise {res.noise:.2f} cores" if res.noise > plan.max_noise else ""),
                        flush=True,
                    )
            rows.append((load.label, load.kind, results["vouch"], results["notary"]))
    return rows, pg_version


# -- report -----------------------------------------------------------------------


def table(all_rows: dict[str, list[Row]], max_noise: float) -> list[str]:
    head = (
        f"{'backend':<9} {'measurement':<38} {'vouch/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
        f"  {'notary/s':>9} {'p50 ms':>7} {'p99 ms':>7}  {'ratio':>6}  goal"
    )
    out = [head, "-" * len(head)]
    for backend, rows in all_rows.items():
        for label, kind, v_runs, n_runs in rows:
            v = max(v_runs, key=lambda r: r.rate)
            n = max(n_runs, key=lambda r: r.rate)
            ratio = v.rate / n.rate if n.rate else math.inf
            goal = GOALS.get((backend, kind))
            verdict = ""
            if goal is not None:
                verdict = f">={goal:g}x {'met' if ratio >= goal else 'MISSED'}"
            flags = []
            for who, runs in (("vouch", v_runs), ("notary", n_runs)):
                if errors := sum(r.errors for r in runs):
                    flags.append(f"{who}: {errors} errors")
                if any(r.exhausted for r in runs):
                    flags.append(f"{who}: ran out of pre-signed publishes (rate is a floor)")
                if (noise := max(r.noise for r in runs)) > max_noise:
                    flags.append(f"{who}: noisy ({noise:.2f} cores of other work)")
            out.append(
                f"{backend:<9} {label:<38} {v.rate:>9,.0f} {v.p50_us / 1000:>7.2f} "
                f"{v.p99_us / 1000:>7.2f}  {n.rate:>9,.0f} {n.p50_us / 1000:>7.2f} "
                f"{n.p99_us / 1000:>7.2f}  {ratio:>5.2f}x  {verdict}"
                + (f"  [{'; '.join(flags)}]" if flags else "")
            )
    if "postgres" in all_rows:
        out.append(
            "note: notary-server answers GET by checksum from an unbounded in-memory cache "
            "on every backend, so on PostgreSQL those GETs never reach its database"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        choices=["memory", "sqlite", "postgres", "all"],
        default="all",
        help="sqlite: vouch on SQLite (its embedded default) against notary-server on memory",
    )
    add_load_arguments(parser)
    args = parser.parse_args(argv)

    loadgen = checked_loadgen(parser, args)
    plan = plan_from_args(args, loadgen)
    backends = ["memory", "sqlite", "postgres"] if args.backend == "all" else [args.backend]
    loaddesc = (
        f"wrk {_dpkg_version('wrk')}, {plan.connections} connections for GETs, "
        f"{plan.publishers} for publishes"
        if loadgen == "wrk"
        else "bench/loadgen.py (asyncio, one process): figures are client-bound lower bounds; "
        "apt-get install wrk"
    )
    if loadgen != "wrk":
        print("warning: wrk not found, using bench/loadgen.py (client-bound)", file=sys.stderr)
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(
            f"warning: load average {load_before:.2f} before the run: other work on this "
            "machine skews the figures (and the ratios, when it comes and goes)",
            file=sys.stderr,
        )
    all_rows: dict[str, list[Row]] = {}
    pg_version = None
    with tempfile.TemporaryDirectory(prefix="vouch-bench-") as tmpdir:
        for backend in backends:
            all_rows[backend], version = run_backend(backend, plan, Path(tmpdir))
            pg_version = pg_version or version
    print()
    print("\n".join(machine_lines(loaddesc, pg_version)))
    print(
        f"run        best of {plan.rounds} x {plan.duration:g} s per measurement"
        + (f" after {plan.warmup:g} s warm-up (GETs)" if plan.warmup else "")
        + f", {plan.get_repos} repositories for GETs, vouch workers: {plan.workers}"
    )
    idle = plan.background or [0.0]
    print(
        f"noise      load average {load_before:.2f} at the start; other processes kept "
        f"{sum(idle) / len(idle):.2f} cores busy on average (at most {max(idle):.2f}) "
        "just before each measurement"
    )
    if max(idle) > 0.15:
        print("warning: the machine was not idle; run again on a quiet machine", file=sys.stderr)
    print()
    print("\n".join(table(all_rows, plan.max_noise)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
