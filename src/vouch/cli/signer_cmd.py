"""``vouch signer``: run the signer, rotate its passphrase alias, make its certificates.

Registered in :mod:`vouch.cli.main` with ``cli.add_command(signer)``. Heavy
imports (grpc, SQLAlchemy) happen inside the commands so ``vouch --help``
stays fast.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from vouch.signer.config import SignerConfig

_CONFIG = click.Path(exists=True, dir_okay=False, path_type=Path)


def _load(config_file: Path) -> SignerConfig:
    from vouch.signer.config import ConfigError, load_config

    try:
        return load_config(config_file)
    except (ConfigError, OSError) as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from exc


@click.group("signer", invoke_without_command=True)
@click.option(
    "-c",
    "--config",
    "config_file",
    type=_CONFIG,
    help="notary-signer's JSON config as is (server.grpc_addr, server.tls_*, storage.*).",
)
@click.option(
    "--debug",
    is_flag=True,
    help="Allow core dumps and debuggers (off by default: they would expose keys).",
)
@click.pass_context
def signer(ctx: click.Context, config_file: Path | None, debug: bool) -> None:
    """Run the signer (a drop-in for notary-signer): gRPC over mutual TLS.

    Passphrases come from NOTARY_SIGNER_<ALIAS> variables; new keys are
    encrypted under storage.default_alias.
    """
    if ctx.invoked_subcommand is not None:
        return
    if config_file is None:
        raise click.UsageError("vouch signer needs --config FILE (notary-signer's config)")
    from vouch.signer.config import ConfigError
    from vouch.signer.server import run

    config = _load(config_file)
    try:
        run(config, click.echo, debug=debug)
    except (ConfigError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@signer.command("rotate-alias")
@click.option("-c", "--config", "config_file", type=_CONFIG, required=True)
@click.option("--to", "to_alias", required=True, help="Alias to re-encrypt every key under.")
def rotate_alias_cmd(config_file: Path, to_alias: str) -> None:
    """Re-encrypt every stored key under the passphrase of alias TO, while signers run.

    Needs NOTARY_SIGNER_<TO> and the variables of every alias in use. Each key is
    swapped atomically, so running signers with both passphrases keep signing.
    """
    from vouch.keyservice.base import KeyServiceUnavailableError
    from vouch.keyservice.couch import key_target
    from vouch.signer.rotate import rotate_alias, rotate_alias_couch
    from vouch.signer.storage import database_target, make_engine

    config = _load(config_file)
    if config.backend == "memory":
        raise click.ClickException("the memory backend stores nothing to re-encrypt")

    if config.backend == "pkcs11":
        raise click.ClickException("keys on a PKCS#11 token are not passphrase-encrypted")

    async def go() -> None:
        if config.backend == "couchdb":
            assert config.db_url is not None
            report = await rotate_alias_couch(
                key_target(config.db_url), config.passphrases, to_alias
            )
        else:
            engine = make_engine(database_target(config))
            try:
                report = await rotate_alias(engine, config.passphrases, to_alias)
            finally:
                await engine.dispose()
        click.echo(
            f"re-encrypted {len(report.rotated)} keys under {to_alias!r}; "
            f"{report.already} already were"
            + (f"; {len(report.raced)} changed meanwhile (run again)" if report.raced else "")
        )
        for key_id, why in sorted(report.failed.items()):
            click.echo(f"  failed: {key_id}: {why}", err=True)
        if report.failed or report.raced:
            raise SystemExit(1)

    try:
        asyncio.run(go())
    except (KeyServiceUnavailableError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@signer.command("init-tls")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--name",
    "names",
    multiple=True,
    help="Host name or IP the server dials the signer by (repeatable; localhost is included).",
)
def init_tls(directory: Path, names: tuple[str, ...]) -> None:
    """Create a private CA, a signer certificate and a client certificate in DIRECTORY."""
    from vouch.signer.certs import issue_mtls_bundle

    try:
        bundle = issue_mtls_bundle(directory, signer_names=names)
    except (FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"CA:     {bundle.ca_cert} (keep {bundle.ca_key} offline)")
    click.echo(f"signer: {bundle.signer_cert} {bundle.signer_key}")
    click.echo(f"client: {bundle.client_cert} {bundle.client_key}")


__all__ = ["signer"]
