"""Admission webhook benchmark (not a test): decisions/s and p50/p99 latency.

A real `vouch server` process (plain HTTP on loopback, SQLite) holds signed
repositories; the webhook's ASGI app answers AdmissionReviews in process, so
the figures are the webhook's own work plus real trust-server round trips.

Scenarios: pods with 1 and with 10 distinct images, warm (trust data cached),
expired (the memory cache's TTL passed, the disk cache is warm) and cold (a
fresh engine and trust cache for every review: first contact with every
repository). Requests to the trust server go through a transport that counts,
per repository, the round trips the engine waited for one after the other
(times it went from no request in flight to one); the goal is one per
repository. ``--rtt MS`` delays every trust-server answer by MS milliseconds,
to show what the round trips cost against a server that is not on loopback.

    .venv/bin/python bench/admission.py [--reviews N] [--rtt MS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from _common import free_port, wait_healthy
from vouch.admission.app import build_admission_app
from vouch.admission.engine import Engine
from vouch.admission.policy import load_policies
from vouch.admission.webhook import Reviewer
from vouch.client.http11 import Http11Transport
from vouch.client.remote import Remote
from vouch.client.repository import Repository
from vouch.crypto.keystore import EnvPassphraseRetriever

PW = {f"NOTARY_{r}_PASSPHRASE": "pw" for r in ("ROOT", "TARGETS", "SNAPSHOT", "DELEGATION")}
REGISTRY = "registry.example.com"


def start_server(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    vouch = str(Path(sys.executable).with_name("vouch"))
    proc = subprocess.Popen(
        [
            vouch,
            "server",
            "--plain-http",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(work / "data"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "VOUCH_LOG_LEVEL": "warning"},
    )
    return proc, wait_healthy(proc, f"http://127.0.0.1:{port}", "vouch server")


async def publish(url: str, trust: Path, repos: int) -> None:
    async with Remote(url, trust_env=False) as remote:
        for i in range(repos):
            repo = Repository(
                f"{REGISTRY}/bench/app{i}",
                remote,
                trust,
                passphrases=EnvPassphraseRetriever(environ=PW),
            )
            await repo.initialize()
            await repo.publish()
            repo.add_target("v1", f"manifest {i}".encode())
            await repo.publish()


class RoundTrips(httpx.AsyncBaseTransport):
    """Real HTTP to the trust server (through the transport ``Remote`` uses by
    default), counting sequential round trips per GUN."""

    def __init__(self, rtt: float) -> None:
        self.inner = Http11Transport()
        self.rtt = rtt
        self.in_flight: dict[str, int] = {}
        self.waves: dict[str, int] = {}
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        gun = path.split("/_trust/", 1)[0].removeprefix("/v2/") if "/_trust/" in path else ""
        if not self.in_flight.get(gun):
            self.waves[gun] = self.waves.get(gun, 0) + 1
        self.in_flight[gun] = self.in_flight.get(gun, 0) + 1
        self.requests += 1
        try:
            if self.rtt:
                await asyncio.sleep(self.rtt)
            return await self.inner.handle_async_request(request)
        finally:
            self.in_flight[gun] -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


def review(images: list[str], uid: str) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "default",
            "operation": "CREATE",
            "object": pod,
        },
    }


async def run(
    url: str, images: list[str], n: int, *, mode: str, cache: Path, rtt: float
) -> tuple[list[float], list[float]]:
    """``warm``: trust data cached in memory. ``expired``: the memory cache has
    expired but the client's disk cache holds the repository, so each review
    re-fetches only the timestamp (one round trip per repository). ``cold``:
    a fresh engine and cache, first contact with every repository.

    Returns the latencies and, per review, the sequential round trips per
    repository (the most any one repository needed)."""
    cold = mode == "cold"
    policies = load_policies(
        json.dumps(
            {
                "apiVersion": "portieris.cloud.ibm.com/v1",
                "kind": "ClusterImagePolicy",
                "metadata": {"name": "bench"},
                "spec": {
                    "repositories": [
                        {
                            "name": f"{REGISTRY}/*",
                            "policy": {"trust": {"enabled": True, "trustServer": url}},
                        }
                    ]
                },
            }
        )
    )

    transports: list[RoundTrips] = []

    def remote(server: str, auth: Any) -> Remote:
        transports.append(RoundTrips(rtt))
        return Remote(server, auth=auth, trust_env=False, transport=transports[-1])

    def make() -> tuple[Engine, httpx.AsyncClient]:
        d = Path(tempfile.mkdtemp(dir=cache))
        engine = Engine(
            policies,
            cache_dir=d,
            remote_factory=lambda s, t, a: remote(s, a),
            cache_ttl=0.0 if mode == "expired" else 30.0,
        )
        app = build_admission_app(Reviewer(engine))
        return engine, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://webhook"
        )

    engine, client = make()
    body = review(images, "warmup")
    await client.post("/admit", json=body)  # warm-up (and first contact)
    times, trips = [], []
    for i in range(n):
        if cold:
            await engine.aclose()
            await client.aclose()
            engine, client = make()
        for t in transports:
            t.waves.clear()
        t0 = time.perf_counter()
        resp = await client.post("/admit", json=review(images, f"u{i}"))
        times.append(time.perf_counter() - t0)
        trips.append(float(max((w for t in transports for w in t.waves.values()), default=0)))
        if not resp.json()["response"]["allowed"]:
            raise SystemExit(f"unexpected denial: {resp.text}")
    if mode == "expired" and engine.cache_misses < n:
        raise SystemExit(f"expired mode hit the cache ({engine.cache_misses} misses for {n})")
    await engine.aclose()
    await client.aclose()
    return times, trips


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reviews", type=int, default=300)
    ap.add_argument("--rtt", type=float, default=0.0, help="added trust-server latency, ms")
    args = ap.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"machine  {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    work = Path(tempfile.mkdtemp(prefix="vouch-bench-adm-"))
    proc, url = start_server(work)
    try:
        asyncio.run(publish(url, work / "publisher", 10))
        if args.rtt:
            print(f"trust-server answers delayed by {args.rtt:g} ms")
        print(
            f"{'scenario':<28}{'reviews':>8}{'decisions/s':>13}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'round trips/repo':>18}"
        )
        for label, images in (
            ("1 image", [f"{REGISTRY}/bench/app0:v1"]),
            ("10 images", [f"{REGISTRY}/bench/app{i}:v1" for i in range(10)]),
        ):
            for mode in ("warm", "expired", "cold"):
                n = args.reviews if mode == "warm" else max(30, args.reviews // 10)
                times, trips = asyncio.run(
                    run(url, images, n, mode=mode, cache=work, rtt=args.rtt / 1000)
                )
                rate = len(times) / sum(times)
                name = f"{label}, {mode}"
                p50, p99 = pct(times, 0.5), pct(times, 0.99)
                most = max(trips)
                print(f"{name:<28}{len(times):>8}{rate:>13.0f}{p50:>9.2f}{p99:>9.2f}{most:>18.0f}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
