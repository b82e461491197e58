"""Benchmark of the trust server on CouchDB: vouch on CouchDB against vouch and notary-server
on PostgreSQL.

This is a benchmark, not a test: it prints figures and never asserts on them.

Three servers run side by side as subprocesses on loopback, with the loads, repositories,
pre-signed publishes, noise control and load generator of bench/server.py (see its
docstring; ``wrk`` if installed):

* ``vouch/couchdb``: vouch server on a CouchDB-protocol server. By default a PouchDB Server
  the benchmark starts in memory (the one .ci/run installs; ``VOUCH_POUCHDB_SERVER`` or
  ``~/.cache/vouch/pouchdb-server``), or any CouchDB 3 / Cloudant given by ``--couch-url``
  (a fresh database is created there and deleted at the end);
* ``vouch/postgres`` and ``notary/postgres``: vouch server and Debian's notary-server, each
  on a fresh PostgreSQL database at 127.0.0.1:5432, as in bench/server.py.

The table shows each server's best round and the ratios of vouch on CouchDB to vouch on
PostgreSQL and to notary-server on PostgreSQL. PouchDB Server is one Node.js process on
an in-memory LevelDB: it is the CI stand-in, not a production CouchDB, and it competes for
the same cores as the servers and the load generator, so read its figures as "vouch's
CouchDB code path on a small local CouchDB", not as what a CouchDB 3 cluster would give.

Run ``.venv/bin/python bench/couchdb.py`` (about 6 minutes on a quiet 2-core machine);
``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import server as srv
from _common import free_port
from vouch.storage.couchhttp import is_couch_url

_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
POUCHDB_SERVER = Path(
    os.environ.get("VOUCH_POUCHDB_SERVER")
    or _CACHE / "vouch/pouchdb-server/node_modules/.bin/pouchdb-server"
)
KINDS = ("vouch/couchdb", "vouch/postgres", "notary/postgres")

_notary_config = srv.notary_config


def _config(port: int, db_url: str | None) -> dict[str, Any]:
    """bench/server.py's notary-style config, with a CouchDB backend for CouchDB URLs."""
    config = _notary_config(port, db_url)
    if db_url is not None and is_couch_url(db_url):
        config["storage"] = {"backend": "couchdb", "db_url": db_url}
    return config


# Server.start() looks the config function up in its module at call time: this is the
# hook, without changing bench/server.py.
srv.notary_config = _config


@contextlib.contextmanager
def couch_database(
    url: str | None, tmp: Path
) -> Iterator[tuple[str, str, subprocess.Popen[bytes] | None]]:
    """A fresh database URL, a description of the server and its process (if started here).

    Without ``url``, a PouchDB Server in memory on a free port.
    """
    proc: subprocess.Popen[bytes] | None = None
    if url is None:
        if not POUCHDB_SERVER.exists() or shutil.which("node") is None:
            raise SystemExit(f"PouchDB Server is not installed at {POUCHDB_SERVER} (.ci/run)")
        port = free_port()
        log = (tmp / "pouchdb.log").open("wb")
        workdir = tmp / "pouchdb"
        workdir.mkdir()
        proc = subprocess.Popen(
            [
                str(POUCHDB_SERVER),
                *("--in-memory", "--host", "127.0.0.1", "--port", str(port)),
                *("--no-stdout-logs", "--no-color"),
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
    base = url.rstrip("/")
    try:
        with httpx.Client(trust_env=False, timeout=5) as client:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    welcome = client.get(base + "/")
                    if welcome.status_code == 200:
                        break
                if proc is not None and proc.poll() is not None:
                    raise SystemExit("pouchdb-server exited")
                time.sleep(0.1)
            else:
                raise SystemExit(f"no CouchDB-protocol server answers at {base}")
            info = welcome.json()
            vendor = info.get("vendor", {})
            desc = (
                f"{vendor.get('name', 'CouchDB')} {vendor.get('version', info.get('version', ''))}"
            )
            if proc is not None:
                desc += " (pouchdb-server, in memory, started by the bench)"
        name = f"bench_couch_{os.getpid()}_{secrets.token_hex(3)}"
        yield f"{base}/{name}", desc, proc
        with contextlib.suppress(httpx.HTTPError), httpx.Client(trust_env=False) as client:
            client.delete(f"{base}/{name}")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


Row = tuple[str, str, dict[str, list[srv.Result]]]


def run(plan: srv.Plan, tmp: Path, couch_url: str | None) -> tuple[list[Row], str, str]:
    now = datetime.now(UTC)
    get_repos = [
        srv.Repo(f"{srv.GUN_PREFIX}get/repo-{n:02d}", False, now) for n in range(plan.get_repos)
    ]
    pub = {
        f"publish, client snapshot ({plan.publishers} clients)": [
            srv.Repo(f"{srv.GUN_PREFIX}pub-client/repo-{n:02d}", False, now)
            for n in range(plan.publishers)
        ],
        f"publish, server snapshot ({plan.publishers} clients)": [
            srv.Repo(f"{srv.GUN_PREFIX}pub-server/repo-{n:02d}", True, now)
            for n in range(plan.publishers)
        ],
    }
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        pg_version = asyncio.run(srv._pg("postgres"))
        pg = stack.enter_context(srv.pg_databases("vouch", "notary"))
        couch_db, couch_desc, couch_proc = stack.enter_context(couch_database(couch_url, tmp))
        # The database process counts as "ours" in the noise measurement, like PostgreSQL.
        database = srv.Server("pouchdb-server", tmp, None, proc=couch_proc)
        servers = {
            "vouch/couchdb": srv.Server("vouch", tmp / "couch" / "vouch", couch_db, plan.workers),
            "vouch/postgres": srv.Server("vouch", tmp / "pg" / "vouch", pg["vouch"], plan.workers),
            "notary/postgres": srv.Server("notary-server", tmp / "pg" / "notary", pg["notary"]),
        }
        for server in servers.values():
            stack.callback(server.stop)
            server.start()
        print("preparing repositories and pre-signing publishes ...", flush=True)
        loads = {k: srv.prepare(s, plan, get_repos, pub) for k, s in servers.items()}
        for n, load in enumerate(loads["vouch/couchdb"]):
            results: dict[str, list[srv.Result]] = {k: [] for k in KINDS}
            if load.kind == "get" and plan.warmup > 0:
                for k, server in servers.items():
                    srv.run_load(server, loads[k][n], plan.warmup, plan, tmp)
            for r in range(plan.rounds):
                order = list(KINDS[r % 3 :] + KINDS[: r % 3])  # rotate who goes first
                for k in order:
                    try:
                        res = srv.measure(
                            servers[k], loads[k][n], plan, tmp, [*servers.values(), database]
                        )
                    except RuntimeError:
                        for name, server in servers.items():
                            alive = server.proc is not None and server.proc.poll() is None
                            print(f"--- {name} ({'running' if alive else 'EXITED'}) log tail:")
                            print(server.log()[-2000:])
                        if couch_proc is not None:
                            print(f"--- pouchdb-server exit code: {couch_proc.poll()}")
                        raise
                    results[k].append(res)
                    print(
                        f"round {r + 1}  {load.label:<40} {k:<16} {res.rate:>9,.0f}/s  "
                        f"p50 {res.p50_us / 1000:.2f} ms  p99 {res.p99_us / 1000:.2f} ms"
                        + (f"  ERRORS {res.errors}" if res.errors else "")
                        + ("  RAN OUT of pre-signed publishes" if res.exhausted else "")
                        + (f"  noise {res.noise:.2f} cores" if res.noise > plan.max_noise else ""),
                        flush=True,
                    )
            rows.append((load.label, load.kind, results))
    return rows, pg_version, couch_desc


def table(rows: list[Row], max_noise: float) -> list[str]:
    head = (
        f"{'measurement':<38} {'vouch/couch':>11} {'p50 ms':>7} {'p99 ms':>7}"
        f"  {'vouch/pg':>9} {'notary/pg':>9}  {'couch/vouch-pg':>14} {'couch/notary-pg':>15}"
    )
    out = [head, "-" * len(head)]
    for label, _kind, results in rows:
        best = {k: max(results[k], key=lambda r: r.rate) for k in KINDS}
        c, v, n = best["vouch/couchdb"], best["vouch/postgres"], best["notary/postgres"]
        flags = []
        for k in KINDS:
            if errors := sum(r.errors for r in results[k]):
                flags.append(f"{k}: {errors} errors")
            if any(r.exhausted for r in results[k]):
                flags.append(f"{k}: ran out of pre-signed publishes (rate is a floor)")
            if (noise := max(r.noise for r in results[k])) > max_noise:
                flags.append(f"{k}: noisy ({noise:.2f} cores of other work)")
        out.append(
            f"{label:<38} {c.rate:>11,.0f} {c.p50_us / 1000:>7.2f} {c.p99_us / 1000:>7.2f}"
            f"  {v.rate:>9,.0f} {n.rate:>9,.0f}  "
            f"{(c.rate / v.rate if v.rate else math.inf):>13.2f}x "
            f"{(c.rate / n.rate if n.rate else math.inf):>14.2f}x"
            + (f"  [{'; '.join(flags)}]" if flags else "")
        )
    out.append(
        "note: notary-server answers GET by checksum from an unbounded in-memory cache, so "
        "those GETs never reach its database"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--couch-url",
        help="a CouchDB server (http[s]://user:pass@host:port) instead of a PouchDB Server "
        "started by the bench",
    )
    srv.add_load_arguments(parser)
    parser.set_defaults(duration=5.0, publish_rate=300.0, quiet_wait=10.0, max_noise=0.3, retries=1)
    args = parser.parse_args(argv)
    loadgen = srv.checked_loadgen(parser, args)
    if args.couch_url and not is_couch_url(args.couch_url):
        parser.error("--couch-url must be an http(s):// or couchdb(s):// URL")
    plan = srv.plan_from_args(args, loadgen)
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(
            f"warning: load average {load_before:.2f} before the run: other work on this "
            "machine skews the figures",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="vouch-bench-couch-") as tmpdir:
        rows, pg_version, couch_desc = run(plan, Path(tmpdir), args.couch_url)
    loaddesc = (
        f"wrk {srv._dpkg_version('wrk')}, {plan.connections} connections for GETs, "
        f"{plan.publishers} for publishes"
        if loadgen == "wrk"
        else "bench/loadgen.py (asyncio, one process): client-bound lower bounds"
    )
    print()
    print("\n".join(srv.machine_lines(loaddesc, pg_version)))
    print(f"CouchDB    {couch_desc}")
    print(
        f"run        best of {plan.rounds} x {plan.duration:g} s per measurement, "
        f"{plan.get_repos} repositories for GETs, vouch workers: {plan.workers}"
    )
    idle = plan.background or [0.0]
    print(
        f"noise      load average {load_before:.2f} at the start; other processes kept "
        f"{sum(idle) / len(idle):.2f} cores busy on average (at most {max(idle):.2f}) "
        "just before each measurement"
    )
    print()
    print("\n".join(table(rows, plan.max_noise)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
