"""``vouch delegation …``: who may sign which targets, as ``notary delegation`` manages it.

Key IDs shown and accepted here are *canonical* (the bare public key's),
as notary shows them: the same ID ``key list`` shows for the delegate's
private key, whether the delegation was added from a certificate or a key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vouch.cli.errors import CLIError
from vouch.cli.options import (
    GlobalOptions,
    client_command,
    json_option,
    pass_options,
    publish_option,
    split_list,
)
from vouch.cli.output import emit_json, print_table
from vouch.cli.prompts import confirm
from vouch.cli.repo import publish_now

if TYPE_CHECKING:
    from vouch.client.repository import Repository

ALL_PATHS = '"" <all paths>'


@click.group("delegation", context_settings={"help_option_names": ["-h", "--help"]})
def delegation_group() -> None:
    """Operates on delegations."""


def _pretty_paths(paths: list[str]) -> list[str]:
    return [ALL_PATHS if p == "" else p for p in sorted(paths)]


def _paths_text(paths: list[str]) -> str:
    return "\n".join(_pretty_paths(paths))


@client_command(delegation_group, "add")
@click.argument("gun")
@click.argument("role")
@click.argument(
    "key_files",
    metavar="CERT_OR_PUBKEY...",
    nargs=-1,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--paths", "paths", multiple=True, help="Paths to add (repeatable, or a,b).")
@click.option("--all-paths", is_flag=True, help="Add all paths to this delegation.")
@publish_option
@pass_options
def delegation_add(
    options: GlobalOptions,
    gun: str,
    role: str,
    key_files: tuple[Path, ...],
    paths: tuple[str, ...],
    all_paths: bool,
    auto_publish: bool,
) -> None:
    """Adds keys (X.509 certificates or public keys, PEM) and/or paths to a delegation."""
    from vouch.cli.keyio import load_public_key

    path_list = split_list(paths)
    if not key_files and not path_list and not all_paths:
        raise click.UsageError("give at least one key file, --paths or --all-paths")
    keys = [load_public_key(f) for f in key_files]
    repo = options.session().offline(gun)
    repo.add_delegation(role, keys, paths=path_list, all_paths=all_paths)
    parts = []
    if keys:
        parts.append(f"with keys [{' '.join(k.canonical_keyid() for k in keys)}]")
    if path_list or all_paths:
        parts.append(f"with paths [{_paths_text([''] if all_paths else path_list)}]")
    click.echo(
        f"\nAddition of delegation role {role} {', '.join(parts)}, "
        f'to repository "{gun}" staged for next publish.\n'
    )
    if auto_publish:
        publish_now(options, gun)


@client_command(delegation_group, "remove")
@click.argument("gun")
@click.argument("role")
@click.argument("key_ids", metavar="[KEY_ID]...", nargs=-1)
@click.option("--paths", "paths", multiple=True, help="Paths to remove (repeatable, or a,b).")
@click.option("--all-paths", is_flag=True, help="Remove all paths from this delegation.")
@click.option("-y", "--yes", is_flag=True, help="Remove the whole role without asking.")
@publish_option
@pass_options
def delegation_remove(
    options: GlobalOptions,
    gun: str,
    role: str,
    key_ids: tuple[str, ...],
    paths: tuple[str, ...],
    all_paths: bool,
    yes: bool,
    auto_publish: bool,
) -> None:
    """Removes keys or paths from a delegation, or (with neither) the whole role."""
    from vouch.tuf import roles

    roles.check_delegation_name(role)
    path_list = split_list(paths)
    repo = options.session().offline(gun)
    if not key_ids and not path_list and not all_paths:
        if not yes and not confirm(
            "\nAre you sure you want to remove all data for this delegation?"
        ):
            raise CLIError("Aborting action.")
        repo.remove_delegation(role)
        click.echo(
            f"\nForced removal (including all keys and paths) of delegation role {role} "
            f'to repository "{gun}" staged for next publish.\n'
        )
    else:
        repo.remove_delegation(role, key_ids=list(key_ids), paths=path_list, all_paths=all_paths)
        parts = []
        if key_ids:
            parts.append(f"with keys [{' '.join(key_ids)}]")
        if all_paths:
            parts.append("with all paths")
        elif path_list:
            parts.append(f"with paths [{_paths_text(path_list)}]")
        click.echo(
            f"\nRemoval of delegation role {role} {', '.join(parts)}, "
            f'to repository "{gun}" staged for next publish.\n'
        )
    if auto_publish:
        publish_now(options, gun)


@client_command(delegation_group, "purge")
@click.argument("gun")
@click.option("--key", "key_ids", multiple=True, required=True, help="Key IDs to remove.")
@publish_option
@pass_options
def delegation_purge(
    options: GlobalOptions, gun: str, key_ids: tuple[str, ...], auto_publish: bool
) -> None:
    """Removes key IDs from every delegation role in the GUN."""
    ids = split_list(key_ids)
    options.session().offline(gun).purge_delegation_keys(ids)
    click.echo(
        f"Removal of the following keys from all delegations in {gun} staged for next publish:"
    )
    for key_id in ids:
        click.echo(f"\t- {key_id}")
    if auto_publish:
        publish_now(options, gun)


async def _delegations(repo: Repository) -> list[dict[str, Any]]:
    """Every delegation declared in the trusted metadata, sorted by name."""
    trusted = (await repo.refresh()).trusted
    found: dict[str, dict[str, Any]] = {}
    for role, _chain in trusted.walk():
        delegations = trusted.targets[role].signed.delegations
        if delegations is None:
            continue
        for d in delegations.roles:
            keys = delegations.keys
            ids = [keys[k].canonical_keyid() if k in keys else k for k in d.keyids]
            found.setdefault(
                d.name,
                {
                    "role": d.name,
                    "paths": sorted(d.paths or []),
                    "key_ids": ids,
                    "threshold": d.threshold,
                },
            )
    return [found[name] for name in sorted(found)]


@client_command(delegation_group, "list")
@click.argument("gun")
@json_option
@pass_options
def delegation_list(options: GlobalOptions, gun: str, as_json: bool) -> None:
    """Lists delegations for the Global Unique Name."""
    found = options.session().run(gun, _delegations)
    if as_json:
        emit_json(found)
        return
    click.echo()
    if not found:
        click.echo("No delegations present in this repository.\n")
        return
    rows: list[list[str]] = []
    for d in found:
        paths, ids = _pretty_paths(d["paths"]), d["key_ids"]
        for i in range(max(len(paths), len(ids), 1)):
            rows.append(
                [
                    d["role"] if i == 0 else "",
                    paths[i] if i < len(paths) else "",
                    ids[i] if i < len(ids) else "",
                    str(d["threshold"]) if i == 0 else "",
                ]
            )
    print_table(["ROLE", "PATHS", "KEY IDS", "THRESHOLD"], rows)
    click.echo()
