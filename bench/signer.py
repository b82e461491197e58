"""Benchmark of the signer: ``vouch signer`` against Debian's ``notary-signer``.

This is a benchmark, not a test: it prints figures and never asserts on them.

Both signers run side by side as subprocesses on loopback, each with its own key
database of the same kind (``--backend``):

* ``postgres`` (default): a fresh PostgreSQL database each at 127.0.0.1:5432, the table
  created by vouch (it is notary-signer's table), keys JWE-encrypted under one alias;
* ``memory``: notary-signer's and vouch's in-memory key stores.

Both listen with TLS and require client certificates (mTLS) from one CA made for the run;
log level ``error``. Each gets one ECDSA P-256 timestamp key (CreateKey, untimed); then
``Signer/Sign`` requests for that key with a 600-byte body (the size of a timestamp's
canonical ``signed``) are sent for ``--duration`` seconds by ``--procs`` client processes,
each an asyncio program with ``--callers`` concurrent callers on one gRPC channel (Python
grpc.aio, the same client code for both signers). Every signature is counted only when
the call succeeded; the first signature of each run is verified against the public key.

Each signer is measured ``--rounds`` times, alternating which goes first, and the best
round is shown. The machine is shared: before each round the benchmark waits up to
``--quiet-wait`` seconds for the CPUs to go idle, and it reports the CPU other processes
used during the round (``noise``, cores).

Run ``.venv/bin/python bench/signer.py`` (about a minute); ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import free_port
from server import CpuMeter, _die_with_parent, _dist, _dpkg_version, cpu_model, wait_quiet
from vouch.signer.certs import MTLSBundle, issue_mtls_bundle

NOTARY_SIGNER = "/usr/bin/notary-signer"
ALIAS = "benchalias"
BODY_SIZE = 600
PG_HOST = "127.0.0.1:5432"


@dataclass
class Signer:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    stop_signal: int = signal.SIGTERM  # py-spy writes its profile on SIGINT

    def start(self, tls: MTLSBundle) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.log.parent,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 - only a prctl() call
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if asyncio.run(_healthy(tls, self.port)):
                return
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"{self.name} did not start:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def _channel(tls: MTLSBundle, port: int) -> Any:
    from vouch.signer._grpc import grpc

    creds = grpc.ssl_channel_credentials(
        tls.ca_cert.read_bytes(), tls.client_key.read_bytes(), tls.client_cert.read_bytes()
    )
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


async def _healthy(tls: MTLSBundle, port: int) -> bool:
    from vouch.signer.protocol import health_pb

    async with _channel(tls, port) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb.HealthCheckResponse.FromString,
        )
        try:
            reply = await check(health_pb.HealthCheckRequest(), timeout=1)
        except Exception:
            return False
        return bool(reply.status == health_pb.HealthCheckResponse.SERVING)


async def _create_key(tls: MTLSBundle, port: int) -> tuple[str, bytes]:
    from vouch.signer.protocol import pb

    async with _channel(tls, port) as channel:
        create = channel.unary_unary(
            "/proto.KeyManagement/CreateKey",
            request_serializer=pb.CreateKeyRequest.SerializeToString,
            response_deserializer=pb.PublicKey.FromString,
        )
        reply = await create(
            pb.CreateKeyRequest(algorithm="ecdsa", gun="bench.example.com/app", role="timestamp"),
            timeout=30,
        )
        return reply.keyInfo.keyID.ID, bytes(reply.publicKey)


# -- the load (run in client processes) --------------------------------------------------


async def _load(
    tls: MTLSBundle, port: int, key_id: str, callers: int, duration: float
) -> dict[str, Any]:
    from vouch.signer.protocol import pb

    body = secrets.token_bytes(BODY_SIZE)
    request = pb.SignatureRequest(keyID=pb.KeyID(ID=key_id), content=body)
    latencies: list[float] = []
    errors = 0
    first: bytes | None = None
    async with _channel(tls, port) as channel:
        sign = channel.unary_unary(
            "/proto.Signer/Sign",
            request_serializer=pb.SignatureRequest.SerializeToString,
            response_deserializer=pb.Signature.FromString,
        )
        await sign(request, timeout=30)  # connect and warm up outside the clock
        end = time.monotonic() + duration

        async def caller() -> None:
            nonlocal errors, first
            while True:
                t0 = time.monotonic()
                if t0 >= end:
                    return
                try:
                    reply = await sign(request, timeout=30)
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.monotonic() - t0)
                if first is None:
                    first = bytes(reply.content)

        start = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.monotonic() - start
    return {
        "ok": len(latencies),
        "errors": errors,
        "elapsed": elapsed,
        "latencies": sorted(latencies)[:: max(1, len(latencies) // 2000)],
        "body": body.hex(),
        "signature": (first or b"").hex(),
    }


def client_main(args: argparse.Namespace) -> int:
    tls = MTLSBundle(**{k: Path(v) for k, v in json.loads(args.client_tls).items()})
    result = asyncio.run(_load(tls, args.port, args.key_id, args.callers, args.duration))
    print(json.dumps(result))
    return 0


# -- the run -----------------------------------------------------------------------------


@dataclass
class Round:
    rate: float
    errors: int
    p50_ms: float
    p99_ms: float
    noise: float


def measure(
    signer: Signer, tls: MTLSBundle, key_id: str, public: bytes, args: argparse.Namespace
) -> Round:
    from vouch.tuf import keys as tufkeys

    wait_quiet(args.quiet_wait)
    assert signer.proc is not None
    meter = CpuMeter([signer.proc.pid])
    tls_json = json.dumps({k: str(v) for k, v in asdict(tls).items()})
    clients = [
        subprocess.Popen(
            [
                *(sys.executable, __file__, "--client", "--client-tls", tls_json),
                *("--port", str(signer.port), "--key-id", key_id),
                *("--callers", str(args.callers), "--duration", str(args.duration)),
            ],
            stdout=subprocess.PIPE,
        )
        for _ in range(args.procs)
    ]
    results = [json.loads(c.communicate(timeout=args.duration + 120)[0]) for c in clients]
    noise = meter.foreign_cores()
    key = tufkeys.Key(tufkeys.ECDSA, tufkeys.b64encode(public))
    for r in results:
        if r["signature"] and not tufkeys.verify(
            key, "ecdsa", bytes.fromhex(r["signature"]), bytes.fromhex(r["body"])
        ):
            raise SystemExit(f"{signer.name} returned a signature that does not verify")
    ok = sum(r["ok"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    lat = sorted(x for r in results for x in r["latencies"]) or [0.0]
    return Round(
        rate=ok / elapsed,
        errors=sum(r["errors"] for r in results),
        p50_ms=statistics.median(lat) * 1000,
        p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        noise=noise,
    )


def signer_config(path: Path, tls: MTLSBundle, port: int, backend: str, db_url: str | None) -> Path:
    storage: dict[str, str] = {"backend": backend}
    if db_url:
        storage.update(db_url=db_url, default_alias=ALIAS)
    path.write_text(
        json.dumps(
            {
                "server": {
                    "grpc_addr": f"127.0.0.1:{port}",
                    "tls_cert_file": str(tls.signer_cert),
                    "tls_key_file": str(tls.signer_key),
                    "client_ca_file": str(tls.ca_cert),
                },
                "storage": storage,
                "logging": {"level": "error"},
            }
        )
    )
    return path


@contextlib.contextmanager
def databases(backend: str, passphrase: str) -> Iterator[dict[str, str | None]]:
    if backend == "memory":
        yield {"vouch": None, "notary": None}
        return
    from server import pg_databases
    from vouch.keyservice import LocalKeyService

    with pg_databases("vouchsig", "notarysig") as urls:
        for url in urls.values():  # notary-signer needs its table; vouch makes the same one
            name = url.split("/")[-1].split("?")[0]

            async def create(name: str = name) -> None:
                keys = await LocalKeyService.open(
                    f"postgresql+asyncpg://postgres@{PG_HOST}/{name}", {ALIAS: passphrase}, ALIAS
                )
                await keys.close()

            asyncio.run(create())
        yield {"vouch": urls["vouchsig"], "notary": urls["notarysig"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("postgres", "memory"), default="postgres")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--callers", type=int, default=16, help="concurrent callers per process")
    parser.add_argument("--quiet-wait", type=float, default=10.0)
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="run vouch signer under py-spy (pip install py-spy) and write collapsed stacks here",
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client-tls", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--key-id", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args)
    if not os.access(NOTARY_SIGNER, os.X_OK):
        raise SystemExit(f"{NOTARY_SIGNER} is missing: install the Debian package 'notary'")

    passphrase = secrets.token_urlsafe(24)
    with (
        tempfile.TemporaryDirectory(prefix="vouch-bench-signer-") as tmpdir,
        databases(args.backend, passphrase) as dbs,
    ):
        tmp = Path(tmpdir)
        tls = issue_mtls_bundle(tmp / "tls")
        env = {**os.environ, f"NOTARY_SIGNER_{ALIAS.upper()}": passphrase}
        signers = []
        for name, kind in (("vouch signer", "vouch"), ("notary-signer", "notary")):
            port = free_port()
            config = signer_config(tmp / f"{kind}.json", tls, port, args.backend, dbs[kind])
            argv_ = (
                [sys.executable, "-m", "vouch.signer", "--config", str(config)]
                if kind == "vouch"
                else [NOTARY_SIGNER, "-config", str(config)]
            )
            if kind == "vouch" and args.profile:
                # --debug: a hardened (non-dumpable) process cannot be sampled
                spy = [str(Path(sys.executable).with_name("py-spy")), "record", "-r", "250"]
                argv_ = [*spy, "-f", "raw", "-o", args.profile, "--", *argv_, "--debug"]
            signers.append(Signer(name, argv_, env, port, tmp / f"{kind}.log"))
            if kind == "vouch" and args.profile:
                signers[-1].stop_signal = signal.SIGINT
        keys: dict[str, tuple[str, bytes]] = {}
        best: dict[str, Round] = {}
        try:
            for s in signers:
                s.start(tls)
                keys[s.name] = asyncio.run(_create_key(tls, s.port))
            for i in range(args.rounds):
                order = signers if i % 2 == 0 else signers[::-1]
                for s in order:
                    r = measure(s, tls, *keys[s.name], args)
                    print(
                        f"  round {i + 1} {s.name:14} {r.rate:8.0f} sig/s  p50 {r.p50_ms:6.2f} ms"
                        f"  p99 {r.p99_ms:6.2f} ms  errors {r.errors}  noise {r.noise:.2f} cores",
                        flush=True,
                    )
                    if s.name not in best or r.rate > best[s.name].rate:
                        best[s.name] = r
        finally:
            for s in signers:
                s.stop()

    usable = len(os.sched_getaffinity(0))
    print()
    print(f"CPU        {cpu_model()} ({os.cpu_count()} cores, {usable} usable)")
    print(
        f"Python     {sys.version.split()[0]}, grpcio {_dist('grpcio')},"
        f" cryptography {_dist('cryptography')}"
    )
    print(f"notary     notary-signer from Debian package notary {_dpkg_version('notary')}")
    print(
        f"load       {args.procs} processes x {args.callers} callers, Sign of a {BODY_SIZE}-byte"
        f" body, ECDSA P-256, mTLS, {args.duration:g} s x {args.rounds} rounds,"
        f" backend {args.backend}"
    )
    print()
    print(f"{'signer':14} {'sig/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'noise':>6}")
    for name, r in best.items():
        print(
            f"{name:14} {r.rate:8.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.errors:7d} {r.noise:6.2f}"
        )
    ratio = best["vouch signer"].rate / best["notary-signer"].rate
    print(f"\nvouch signer / notary-signer = {ratio:.2f} (goal >= 1.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
