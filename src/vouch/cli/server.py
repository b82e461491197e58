"""``vouch server``, ``vouch self-check`` and ``vouch version``: the non-client commands."""

from __future__ import annotations

from pathlib import Path

import click

from vouch import __version__

_CTX = {"help_option_names": ["-h", "--help"]}


@click.command("self-check", context_settings=_CTX)
def self_check_cmd() -> None:
    """Build, sign and verify a repository in memory with every key type."""
    from vouch.selfcheck import run as run_self_check

    ok = run_self_check(click.echo)
    raise SystemExit(0 if ok else 1)


@click.command("server", context_settings=_CTX)
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="vouch's config (JSON/TOML) or notary-server's JSON config as is.",
)
@click.option("--listen", help="host:port to listen on (default 127.0.0.1:4443).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Default .vouch")
@click.option("--storage", "storage_url", help="Storage URL (default: SQLite in the data dir).")
@click.option("--plain-http", is_flag=True, default=None, help="Serve without TLS (dev only).")
def server_cmd(
    config_file: Path | None,
    listen: str | None,
    data_dir: Path | None,
    storage_url: str | None,
    plain_http: bool | None,
) -> None:
    """Run the trust server (a drop-in for notary-server)."""
    from pydantic import ValidationError

    from vouch.server.main import run
    from vouch.server.settings import load_settings

    overrides: dict[str, object] = {
        "listen": listen,
        "data_dir": data_dir,
        "plain_http": plain_http,
    }
    try:
        settings = load_settings(config_file, **overrides)
        if storage_url:
            settings.storage.url = storage_url
    except (ValidationError, ValueError, OSError) as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from exc
    run(settings, click.echo)


@click.command("version", context_settings=_CTX)
def version_cmd() -> None:
    """Print the version number of vouch."""
    click.echo(f"vouch\n Version:    {__version__}")
