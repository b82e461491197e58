"""Staging commands: ``add``, ``addhash``, ``remove``, ``witness``, ``status``, ``reset``.

They only write notary's changelist under the trust dir (no server is
contacted unless ``-p`` publishes afterwards), so what ``vouch add`` stages
``notary publish`` pushes, and the other way round.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vouch.cli.errors import CLIError
from vouch.cli.options import (
    GlobalOptions,
    client_command,
    json_option,
    pass_options,
    publish_option,
    roles_option,
    split_list,
)
from vouch.cli.output import emit_json, print_table, progress
from vouch.cli.repo import publish_now

if TYPE_CHECKING:
    from vouch.client.repository import Repository

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
CHUNK = 1 << 20


def target_roles(values: tuple[str, ...]) -> list[str]:
    """``-r/--roles``: ``targets`` or delegations (default ``targets``), checked up front."""
    from vouch.tuf import roles

    names = split_list(values) or [roles.TARGETS]
    for name in names:
        if name != roles.TARGETS:
            roles.check_delegation_name(name)
    return names


def read_custom(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def file_hashes(path: Path) -> tuple[int, dict[str, str]]:
    """Length and base64 sha256/sha512 of a file, read in chunks (images can be big)."""
    sha256, sha512, length = hashlib.sha256(), hashlib.sha512(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            sha256.update(chunk)
            sha512.update(chunk)
            length += len(chunk)
    digests = {"sha256": sha256.digest(), "sha512": sha512.digest()}
    return length, {k: base64.b64encode(v).decode() for k, v in digests.items()}


def read_file_list(path: Path) -> list[tuple[str, Path]]:
    """``--from-file``: one target per line, ``NAME PATH`` or just ``PATH`` (name = path);
    blank lines and ``#`` comments are skipped; relative paths are from the list's folder."""
    out = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(" ")
        file = Path(rest.strip() or name)
        if not file.is_absolute():
            file = path.parent / file
        if not file.is_file():
            raise CLIError(f"{path}:{number}: no such file {file}")
        out.append((name, file))
    return out


@client_command(name="add")
@click.argument("gun")
@click.argument("target", required=False)
@click.argument("file", type=_FILE, required=False)
@roles_option("Delegation roles to add this target to.")
@click.option("--custom", type=_FILE, help="File with custom data (JSON) for the target.")
@click.option(
    "--from-file",
    "from_file",
    type=_FILE,
    help="Add many targets: lines of 'NAME PATH' (or just 'PATH').",
)
@publish_option
@pass_options
def add_cmd(
    options: GlobalOptions,
    gun: str,
    target: str | None,
    file: Path | None,
    roles_: tuple[str, ...],
    custom: Path | None,
    from_file: Path | None,
    auto_publish: bool,
) -> None:
    """Adds the file as a target to the trusted collection."""
    items: list[tuple[str, Path]] = []
    if target is not None and file is not None:
        items.append((target, file))
    elif target is not None or from_file is None:
        raise click.UsageError("Must specify a GUN, target, and path to target data")
    if from_file is not None:
        items.extend(read_file_list(from_file))
    names = target_roles(roles_)
    custom_data = read_custom(custom)
    repo = options.session().offline(gun)
    for name, path in progress(items, "Hashing targets"):
        length, hashes = file_hashes(path)
        repo.add_target(name, length=length, hashes=hashes, custom=custom_data, roles_to=names)
        click.echo(f'Addition of target "{name}" to repository "{gun}" staged for next publish.')
    if auto_publish:
        publish_now(options, gun)


def _hex_digest(value: str | None, algorithm: str, size: int) -> str | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise CLIError(f"invalid {algorithm} hex contents provided")
    return base64.b64encode(raw).decode()


@client_command(name="addhash")
@click.argument("gun")
@click.argument("target")
@click.argument("size")
@click.option("--sha256", help="hex encoded sha256 of the target to add")
@click.option("--sha512", help="hex encoded sha512 of the target to add")
@roles_option("Delegation roles to add this target to.")
@click.option("--custom", type=_FILE, help="File with custom data (JSON) for the target.")
@publish_option
@pass_options
def addhash_cmd(
    options: GlobalOptions,
    gun: str,
    target: str,
    size: str,
    sha256: str | None,
    sha512: str | None,
    roles_: tuple[str, ...],
    custom: Path | None,
    auto_publish: bool,
) -> None:
    """Adds the byte size and hash(es) as a target to the trusted collection."""
    if sha256 is None and sha512 is None:
        raise click.UsageError("Must specify a GUN, target, byte size and at least one hash")
    try:
        length = int(size, 0)
    except ValueError:
        raise CLIError(f"invalid byte size {size!r}") from None
    if length < 0:
        raise CLIError(f"invalid byte size {size!r}")
    hashes = {
        name: digest
        for name, digest in (
            ("sha256", _hex_digest(sha256, "sha256", 32)),
            ("sha512", _hex_digest(sha512, "sha512", 64)),
        )
        if digest is not None
    }
    repo = options.session().offline(gun)
    repo.add_target(
        target,
        length=length,
        hashes=hashes,
        custom=read_custom(custom),
        roles_to=target_roles(roles_),
    )
    click.echo(
        f'Addition of target "{target}" by {", ".join(hashes)} hash to repository "{gun}" '
        "staged for next publish."
    )
    if auto_publish:
        publish_now(options, gun)


@client_command(name="remove")
@click.argument("gun")
@click.argument("target")
@roles_option("Delegation roles to remove this target from.")
@publish_option
@pass_options
def remove_cmd(
    options: GlobalOptions, gun: str, target: str, roles_: tuple[str, ...], auto_publish: bool
) -> None:
    """Removes a target from a trusted collection."""
    options.session().offline(gun).remove_target(target, roles_from=target_roles(roles_))
    click.echo(f"Removal of {target} from {gun} staged for next publish.")
    if auto_publish:
        publish_now(options, gun)


@client_command(name="witness")
@click.argument("gun")
@click.argument("roles_", metavar="ROLE...", nargs=-1, required=True)
@publish_option
@pass_options
def witness_cmd(
    options: GlobalOptions, gun: str, roles_: tuple[str, ...], auto_publish: bool
) -> None:
    """Marks roles to be re-signed the next time they're published."""
    names = target_roles(roles_)
    repo = options.session().offline(gun)
    for name in names:
        repo.witness(name)
    click.echo("The following roles were successfully marked for witnessing on the next publish:")
    for name in names:
        click.echo(f"\t- {name}")
    if auto_publish:
        publish_now(options, gun)


def _numbered(repo: Repository) -> list[tuple[int, str]]:
    return list(enumerate(repo.changelist.names()))


@client_command(name="status")
@click.argument("gun")
@json_option
@pass_options
def status_cmd(options: GlobalOptions, gun: str, as_json: bool) -> None:
    """Displays status of unpublished changes to the local trusted collection."""
    repo = options.session().offline(gun)
    position = {name: i for i, name in _numbered(repo)}
    changes = [(position[n], c) for n, c in repo.changelist.items(skip_invalid=True)]
    if as_json:
        emit_json(
            [
                {"index": i, "action": c.action, "scope": c.scope, "type": c.type, "path": c.path}
                for i, c in changes
            ]
        )
        return
    if not changes:
        click.echo(f"No unpublished changes for {gun}")
        return
    click.echo(f"Unpublished changes for {gun}:\n")
    rows = [[str(i), c.action, c.scope, c.type, c.path] for i, c in changes]
    print_table(["#", "ACTION", "SCOPE", "TYPE", "PATH"], rows)


@client_command(name="reset")
@click.argument("gun")
@click.option("--all", "reset_all", is_flag=True, help="Reset all changes shown in status.")
@click.option(
    "-n",
    "--number",
    "numbers",
    multiple=True,
    help="Numbers of specific changes to reset, as shown by status (repeatable, or 1,2).",
)
@pass_options
def reset_cmd(options: GlobalOptions, gun: str, reset_all: bool, numbers: tuple[str, ...]) -> None:
    """Resets unpublished changes for the local trusted collection."""
    if not reset_all and not numbers:
        raise click.UsageError("Must specify changes to reset with -n or the --all flag")
    repo = options.session().offline(gun)
    if reset_all:
        repo.reset()
    else:
        names = dict(_numbered(repo))
        chosen = []
        for value in split_list(numbers):
            if not value.isdigit() or int(value) not in names:
                raise CLIError(f"no change number {value} (see 'vouch status {gun}')")
            chosen.append(names[int(value)])
        repo.changelist.remove(chosen)
    click.echo(f"Successfully reset specified changes for repository {gun}")
