"""A real SoftHSM2 token per test: its own token directory, config file and PIN.

SoftHSM reads ``SOFTHSM2_CONF`` when the module is initialised, so a test that
uses the module in-process re-initialises it after pointing the variable at its
own directory (:func:`use_in_process`); programs started by a test get the
variable in their environment (:attr:`SoftHSM.env`). A missing SoftHSM2 FAILS
the test: ``.ci/run`` installs Debian's ``softhsm2``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vouch.crypto.pkcs11token import DEFAULT_MODULES, TokenConfig

SOFTHSM_UTIL = "softhsm2-util"


@dataclass
class SoftHSM:
    conf: Path
    module: str
    label: str
    pin: str = field(repr=False)
    so_pin: str = field(repr=False)

    @property
    def env(self) -> dict[str, str]:
        """What a program needs to see this token (add the PIN variable it reads)."""
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def config(self, pin: str | None = None) -> TokenConfig:
        return TokenConfig(self.module, self.label, pin=self.pin if pin is None else pin)

    def init_token(self, label: str) -> None:
        """Another token in the same SoftHSM directory."""
        subprocess.run(
            [
                SOFTHSM_UTIL,
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                self.pin,
                "--so-pin",
                self.so_pin,
            ],
            env=self.env,
            check=True,
            capture_output=True,
        )


def make_softhsm(directory: Path, label: str = "vouch-test") -> SoftHSM:
    module = next((m for m in DEFAULT_MODULES if Path(m).exists()), None)
    if module is None or shutil.which(SOFTHSM_UTIL) is None:
        pytest.fail(
            "SoftHSM2 is needed: install the Debian package 'softhsm2' (.ci/run does)",
            pytrace=False,
        )
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    hsm = SoftHSM(conf, module, label, secrets.token_hex(6), secrets.token_hex(6))
    hsm.init_token(label)
    return hsm


def use_in_process(hsm: SoftHSM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this process's SoftHSM module at ``hsm``'s directory."""
    import pkcs11

    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    pkcs11.lib(hsm.module).reinitialize()
