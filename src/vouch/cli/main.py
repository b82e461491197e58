"""The ``vouch`` command."""

from __future__ import annotations

import click

from vouch import __version__
from vouch.selfcheck import run as run_self_check


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vouch")
def cli() -> None:
    """vouch: content trust for container images (Notary v1 compatible)."""


@cli.command("self-check")
def self_check() -> None:
    """Build, sign and verify a repository in memory with every key type."""
    ok = run_self_check(click.echo)
    raise SystemExit(0 if ok else 1)


def main() -> None:
    cli()
