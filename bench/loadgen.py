"""A small HTTP/1.1 load generator, the fallback of ``bench/server.py`` when ``wrk`` is missing.

Run as its own process (``python bench/loadgen.py SPEC``) so the client does not share an
interpreter with the benchmark driver. ``SPEC`` is a pickle written by ``bench/server.py``::

    {"host": str, "port": int, "duration": float, "connections": int,
     "streams": list[list[bytes]], "cycle": bool, "timeout": float}

Connection ``i`` sends the raw requests of ``streams[i % len(streams)]`` one after another on
one keep-alive connection, waiting for each response (no pipelining). With ``cycle`` a stream
starts again when it ends (GETs); without it the connection stops and the run is marked
``exhausted`` (pre-signed publishes that ran out). It prints one JSON line with the same keys
as the wrk script of ``bench/server.py``, ``used`` being the requests sent per connection.

It is much slower than wrk (one Python process on the same cores as the servers), so its
figures are lower bounds for fast servers; ``bench/server.py`` says so when it uses it.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any


class _Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.status_errors = 0
        self.read_errors = 0
        self.connect_errors = 0
        self.timeouts = 0
        self.exhausted = 0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return its status and whether the server keeps the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() != "close"


async def _connection(
    spec: dict[str, Any], stream: list[bytes], offset: int, deadline: float, stats: _Stats
) -> int:
    """Send requests until the deadline; return how many were sent."""
    timeout = float(spec["timeout"])
    i = offset
    sent = 0
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while time.perf_counter() < deadline:
        if i >= len(stream):
            if not spec["cycle"]:
                stats.exhausted = 1
                break
            i = 0
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(spec["host"], spec["port"])
            except OSError:
                stats.connect_errors += 1
                await asyncio.sleep(0.01)
                continue
        assert reader is not None
        start = time.perf_counter()
        sent += 1
        try:
            writer.write(stream[i])
            status, keep = await asyncio.wait_for(_read_response(reader), timeout)
        except TimeoutError:
            stats.timeouts += 1
            keep = False
        except (OSError, asyncio.IncompleteReadError, ValueError):
            stats.read_errors += 1
            keep = False
        else:
            stats.latencies.append(time.perf_counter() - start)
            if not 200 <= status < 400:
                stats.status_errors += 1
        i += 1
        if not keep:
            writer.close()
            writer = reader = None
    if writer is not None:
        writer.close()
    return sent


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    stats = _Stats()
    streams: list[list[bytes]] = spec["streams"]
    start = time.perf_counter()
    deadline = start + float(spec["duration"])
    used = await asyncio.gather(
        *(
            _connection(spec, streams[n % len(streams)], n // len(streams), deadline, stats)
            for n in range(int(spec["connections"]))
        )
    )
    elapsed = time.perf_counter() - start
    lat = sorted(stats.latencies)

    def pct(q: float) -> int:
        return int(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6) if lat else 0

    return {
        "requests": len(lat) + stats.read_errors + stats.timeouts,
        "duration_us": int(elapsed * 1e6),
        "status_errors": stats.status_errors,
        "connect_errors": stats.connect_errors,
        "read_errors": stats.read_errors,
        "write_errors": 0,
        "timeouts": stats.timeouts,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "mean_us": sum(lat) / len(lat) * 1e6 if lat else 0.0,
        "max_us": int(lat[-1] * 1e6) if lat else 0,
        "exhausted": stats.exhausted,
        "used": list(used),
    }


def main() -> None:
    spec = pickle.loads(Path(sys.argv[1]).read_bytes())
    try:
        import uvloop

        result = uvloop.run(run(spec))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        result = asyncio.run(run(spec))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
