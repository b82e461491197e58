"""``list``, ``lookup`` and ``verify``: reading a repository with full TUF verification."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vouch.cli.errors import CLIError
from vouch.cli.options import (
    GlobalOptions,
    client_command,
    json_option,
    pass_options,
    roles_option,
    split_list,
)
from vouch.cli.output import emit_json, print_table, read_stdin, write_bytes

if TYPE_CHECKING:
    from vouch.client.repository import Target


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause the cyclic garbage collector while a read runs.

    Parsing 10,000 target entries allocates in bursts that set off collections
    scanning everything the imports left behind: about 25 ms of a ``list``.
    A read's working set is bounded by the repository it reads, and the
    collector is switched back on afterwards (in process, for tests and
    embedding; the ``vouch`` process exits right after anyway).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def target_json(t: Target) -> dict[str, Any]:
    """The ``--json`` shape of one target (docs/client.md)."""
    return {
        "name": t.name,
        "digest": t.sha256,
        "size": t.length,
        "role": t.role,
        "custom": t.custom,
    }


@client_command(name="list")
@click.argument("gun")
@roles_option("Delegation roles to list targets for (will shadow targets role).")
@json_option
@pass_options
def list_cmd(options: GlobalOptions, gun: str, roles_: tuple[str, ...], as_json: bool) -> None:
    """Lists targets for a remote trusted collection."""
    with _no_cycle_collection():
        _list(options, gun, split_list(roles_) or None, as_json)


def _list(options: GlobalOptions, gun: str, wanted: list[str] | None, as_json: bool) -> None:
    targets = options.session().run(gun, lambda repo: repo.list_targets(wanted))
    if as_json:
        emit_json([target_json(t) for t in targets])
        return
    if not targets:
        click.echo("\nNo targets present in this repository.\n")
        return
    rows = [[t.name, t.sha256, str(t.length), t.role] for t in targets]
    print_table(["NAME", "DIGEST", "SIZE (BYTES)", "ROLE"], rows)


@client_command(name="lookup")
@click.argument("gun")
@click.argument("target")
@json_option
@pass_options
def lookup_cmd(options: GlobalOptions, gun: str, target: str, as_json: bool) -> None:
    """Looks up a specific target in a remote trusted collection."""
    with _no_cycle_collection():
        found = options.session().run(gun, lambda repo: repo.lookup(target))
    if found is None:
        raise CLIError(f"No valid trust data for {target}")
    if as_json:
        emit_json(target_json(found))
    else:
        click.echo(f"{found.name} sha256:{found.sha256} {found.length}")


@client_command(name="verify")
@click.argument("gun")
@click.argument("target")
@click.option(
    "-i",
    "--input",
    "input_",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read from a file, instead of STDIN.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to a file, instead of STDOUT.",
)
@click.option("-q", "--quiet", is_flag=True, help="No output except for errors.")
@json_option
@pass_options
def verify_cmd(
    options: GlobalOptions,
    gun: str,
    target: str,
    input_: Path | None,
    output: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Verifies the content (stdin or -i) is the target in the trusted collection.

    On success the content is written out again (stdout or -o), so
    ``vouch verify GUN TAG < file | consumer`` passes only trusted bytes.
    """
    from vouch.tuf.errors import HashMismatchError

    content = input_.read_bytes() if input_ is not None else read_stdin()
    try:
        with _no_cycle_collection():
            found = options.session().run(gun, lambda repo: repo.verify(target, content))
    except HashMismatchError as exc:
        raise CLIError(f"data not present in the trusted collection, {exc}") from exc
    if as_json:
        emit_json(target_json(found))
    elif output is not None:
        output.write_bytes(content)
    elif not quiet:
        write_bytes(content)
