"""Client benchmark (not a test): `vouch list` vs `notary list`, side by side.

One repository with 10,000 targets in `targets` and 100 delegations (each
with a few targets) is published to Debian's notary-server (memory storage)
with vouch's client. Each CLI then lists it from its own trust directory,
cold (empty cache: every file downloaded and verified) and warm (cache
filled: only the timestamp is fetched), start-up included. The two CLIs take
turns run by run, so a change in the machine's load hits both alike. Prints
the median wall time of each and the ratio vouch/notary (goal: <= 1.0), and
the median CPU time (user + system) of each process, which other work on a
shared machine disturbs less than wall time.

    .venv/bin/python bench/client.py [--targets 10000] [--delegations 100] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port, wait_healthy
from vouch.client.remote import Remote
from vouch.client.repository import Repository
from vouch.crypto.keystore import EnvPassphraseRetriever
from vouch.crypto.privkey import PrivateKey

PW = "bench-pw"
ENV = {f"NOTARY_{r}_PASSPHRASE": PW for r in ("ROOT", "TARGETS", "SNAPSHOT", "DELEGATION")}
GUN = "example.com/bench/client"


def start_notary_server(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = work / "notary-server.json"
    config.write_text(
        json.dumps(
            {
                "server": {"http_addr": f"127.0.0.1:{port}"},
                "trust_service": {"type": "local"},
                "storage": {"backend": "memory"},
                "logging": {"level": "error"},
            }
        )
    )
    proc = subprocess.Popen(
        ["/usr/bin/notary-server", "-config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, wait_healthy(proc, f"http://127.0.0.1:{port}", "notary-server")


async def publish(url: str, trust: Path, n_targets: int, n_delegations: int) -> None:
    async with Remote(url, trust_env=False) as remote:
        repo = Repository(GUN, remote, trust, passphrases=EnvPassphraseRetriever(environ=ENV))
        await repo.initialize()
        await repo.publish()
        for i in range(n_targets):
            repo.add_target(f"release/v{i // 100}.{i % 100}", f"image {i}".encode())
        for d in range(n_delegations):
            key = PrivateKey.generate("ecdsa")
            repo.keys.save(key, f"targets/team{d:03d}")
            repo.add_delegation(f"targets/team{d:03d}", [key.public], paths=[f"team{d:03d}/"])
        await repo.publish()
        for d in range(n_delegations):
            for j in range(3):
                repo.add_target(
                    f"team{d:03d}/app:{j}",
                    f"team {d} {j}".encode(),
                    roles_to=[f"targets/team{d:03d}"],
                )
        await repo.publish()


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall time, CPU time (user + system, the process and its threads) and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {out.stdout}{out.stderr}")
    return elapsed, cpu, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--targets", type=int, default=10_000)
    ap.add_argument("--delegations", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    vouch = str(Path(sys.executable).with_name("vouch"))
    work = Path(tempfile.mkdtemp(prefix="vouch-bench-client-"))
    home = work / "home"
    (home / ".notary").mkdir(parents=True)
    (home / ".notary" / "config.json").write_text("{}")
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", ""), "TZ": "UTC", **ENV}
    proc, url = start_notary_server(work)
    try:
        t0 = time.perf_counter()
        asyncio.run(publish(url, work / "publisher", args.targets, args.delegations))
        py = platform.python_version()
        print(f"machine    {platform.machine()}, {os.cpu_count()} cores, Python {py}")
        print(
            f"repository {args.targets} targets + {args.delegations} delegations x 3 targets "
            f"(published in {time.perf_counter() - t0:.1f} s, untimed)"
        )
        notary = ["/usr/bin/notary", "-c", str(home / ".notary" / "config.json"), "-s", url]
        clis = {"notary": notary, "vouch": [vouch, "-s", url]}
        wall: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        outputs: dict[str, str] = {}
        for mode in ("cold", "warm"):
            for run in range(args.runs):
                for name, base in clis.items():
                    trust = work / f"{name}-trust-{mode}"
                    if mode == "cold":
                        shutil.rmtree(trust, ignore_errors=True)
                    elif run == 0:
                        timed([*base, "-d", str(trust), "list", GUN], env)  # fill the cache
                    elapsed, used, out = timed([*base, "-d", str(trust), "list", GUN], env)
                    wall.setdefault((name, mode), []).append(elapsed)
                    cpu.setdefault((name, mode), []).append(used)
                    outputs[name] = out
        lines = {
            n: len([ln for ln in o.splitlines() if ln and not ln.startswith(("NAME", "----"))])
            for n, o in outputs.items()
        }
        print(f"listed     notary {lines['notary']} rows, vouch {lines['vouch']} rows")
        print(f"median of {args.runs} runs, the two CLIs taking turns")
        print(
            f"{'':10}{'notary s':>10}{'vouch s':>10}{'vouch/notary':>14}"
            f"{'notary cpu s':>14}{'vouch cpu s':>13}{'cpu ratio':>11}"
        )
        for mode in ("cold", "warm"):
            n, v = (statistics.median(wall[(c, mode)]) for c in ("notary", "vouch"))
            nc, vc = (statistics.median(cpu[(c, mode)]) for c in ("notary", "vouch"))
            print(
                f"{mode:<10}{n:>10.3f}{v:>10.3f}{v / n:>14.2f}"
                f"{nc:>14.3f}{vc:>13.3f}{vc / nc:>11.2f}"
            )
        load = os.getloadavg()[0]
        print(f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} cores")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
