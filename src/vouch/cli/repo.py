"""``init``, ``publish`` and ``delete``: the commands that create, push and drop a repository."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from vouch.cli.errors import CLIError
from vouch.cli.options import GlobalOptions, client_command, pass_options, publish_option
from vouch.cli.output import busy

if TYPE_CHECKING:
    from vouch.client.repository import Repository
    from vouch.tuf.keys import Key

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


async def publish_repo(repo: Repository, *, auto: bool = False) -> None:
    """Publish with notary's messages (``-p`` says "Auto-publishing")."""
    click.echo(f"{'Auto-publishing' if auto else 'Pushing'} changes to {repo.gun}")
    with busy(f"Publishing {repo.gun}..."):
        await repo.publish()
    click.echo(f"Successfully published changes for repository {repo.gun}")


def publish_now(options: GlobalOptions, gun: str) -> None:
    """What ``-p`` does after a staging command."""
    options.session().run(gun, lambda repo: publish_repo(repo, auto=True))


def _root_key_choice(
    options: GlobalOptions, gun: str, rootkey: Path | None, rootcert: Path | None, hsm: bool
) -> tuple[str | None, Key | None]:
    """The root key ID to initialise with (``None``: generate one) and the certificate."""
    from vouch.cli.keyio import read_private_key, root_certificate_key

    session = options.session()
    store = session.keystore()
    key_id = None
    if rootkey is not None:
        key = read_private_key(rootkey, "root", session.retriever)
        store.save(key, "root")
        key_id = key.keyid
    cert = root_certificate_key(rootcert, gun) if rootcert is not None else None
    if cert is not None and key_id is None:
        key_id = cert.canonical_keyid()
        if key_id not in store:
            raise CLIError(
                f"no private key in the trust dir matches the root certificate {rootcert}"
            )
    if key_id is None:
        existing = store.list_keys(role="root")
        if hsm:  # only a root key already on a token will do
            existing = [i for i in existing if i.token is not None]
        if existing:
            key_id = existing[0].keyid
            where = " (on a PKCS#11 token)" if existing[0].token is not None else ""
            click.echo(f"Root key found, using: {key_id}{where}")
        elif hsm:
            click.echo("No root keys found. Generating a new root key on the PKCS#11 token...")
        else:
            click.echo("No root keys found. Generating a new root key...")
    return key_id, cert


@client_command(name="init")
@click.argument("gun")
@click.option("--rootkey", type=_FILE, help="Root key to initialize the repository with.")
@click.option(
    "--rootcert",
    type=_FILE,
    help="Root certificate; must match the root key given, or one in the trust dir.",
)
@click.option(
    "--hsm",
    is_flag=True,
    help="Keep the root key on a PKCS#11 token (see --pkcs11-module, VOUCH_PKCS11_*).",
)
@publish_option
@pass_options
def init_cmd(
    options: GlobalOptions,
    gun: str,
    rootkey: Path | None,
    rootcert: Path | None,
    hsm: bool,
    auto_publish: bool,
) -> None:
    """Initializes a local trusted collection."""
    if hsm and rootkey is not None:
        raise CLIError("--hsm generates the root key on the token: it cannot import --rootkey")
    key_id, cert = _root_key_choice(options, gun, rootkey, rootcert, hsm)

    async def go(repo: Repository) -> None:
        await repo.initialize(root_key_id=key_id, root_cert=cert, hsm=hsm)
        if auto_publish:
            await publish_repo(repo, auto=True)

    options.session().run(gun, go)


@client_command(name="publish")
@click.argument("gun")
@pass_options
def publish_cmd(options: GlobalOptions, gun: str) -> None:
    """Publishes the local trusted collection."""
    options.session().run(gun, publish_repo)


@client_command(name="delete")
@click.argument("gun")
@click.option("--remote", is_flag=True, help="Delete remote data for GUN in addition to local.")
@pass_options
def delete_cmd(options: GlobalOptions, gun: str, remote: bool) -> None:
    """Deletes all content for a trusted collection (keys are kept)."""
    import asyncio

    session = options.session()
    click.echo(f"Deleting trust data for repository {gun}")
    if remote:
        session.run(gun, lambda repo: repo.delete(remote=True))
    else:
        asyncio.run(session.offline(gun).delete())
    where = "local and remote" if remote else "local"
    click.echo(f"Successfully deleted {where} trust data for repository {gun}")
