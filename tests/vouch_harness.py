"""Run ``vouch server`` as a real process, the way an operator would.

Mirrors :class:`notary_harness.NotaryServer` (a ``.url`` and a context
manager) so the same real-notary-CLI scenario can run against either.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from notary_harness import free_port
from procs import Managed, stop_process

VOUCH = str(Path(sys.executable).with_name("vouch"))


class VouchServer(Managed):
    def __init__(
        self,
        workdir: Path,
        *,
        storage: str | None = None,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        self.workdir = workdir
        self.storage = storage
        self.env = env or {}
        self.extra_args = extra_args
        self.startup_timeout = startup_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "vouch-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        args = [
            VOUCH,
            "server",
            "--plain-http",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.workdir / "data"),
            *self.extra_args,
        ]
        if self.storage:
            args += ["--storage", self.storage]
        env = {**os.environ, "VOUCH_LOG_LEVEL": "warning", **self.env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vouch server exited early:\n{self.log()}")
            try:
                with opener.open(f"{self.url}/_notary_server/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"vouch server did not become healthy:\n{self.log()}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
