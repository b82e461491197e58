"""The ``vouch`` command: a drop-in for the notary CLI, plus ``vouch server``.

Start-up time matters (every ``docker trust``-style script pays it per call),
so this module imports nothing but click: commands live in their own modules
and are imported when they run (or when ``--help`` lists them; those modules
keep their heavy imports inside the command bodies too).
"""

from __future__ import annotations

import os
import sys

import click

from vouch import __version__
from vouch.cli.lazy import VouchGroup
from vouch.cli.options import GlobalOptions, global_options

#: name -> "module:attribute", in the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "init": "vouch.cli.repo:init_cmd",
    "add": "vouch.cli.stage:add_cmd",
    "addhash": "vouch.cli.stage:addhash_cmd",
    "remove": "vouch.cli.stage:remove_cmd",
    "publish": "vouch.cli.repo:publish_cmd",
    "status": "vouch.cli.stage:status_cmd",
    "reset": "vouch.cli.stage:reset_cmd",
    "witness": "vouch.cli.stage:witness_cmd",
    "list": "vouch.cli.read:list_cmd",
    "lookup": "vouch.cli.read:lookup_cmd",
    "verify": "vouch.cli.read:verify_cmd",
    "delete": "vouch.cli.repo:delete_cmd",
    "key": "vouch.cli.keys:key_group",
    "delegation": "vouch.cli.delegations:delegation_group",
    "cert": "vouch.cli.certs:cert_group",
    "version": "vouch.cli.server:version_cmd",
    "server": "vouch.cli.server:server_cmd",
    "self-check": "vouch.cli.server:self_check_cmd",
    "policy": "vouch.cli.policy_cmd:policy",
    "admission": "vouch.cli.admission_cmd:admission",
    "signer": "vouch.cli.signer_cmd:signer",
}


#: Commands after which the process may exit at once (see :func:`main`).
READ_ONLY = frozenset({"list", "lookup", "verify"})


@click.group(
    cls=VouchGroup,
    lazy_commands=COMMANDS,
    read_only=READ_ONLY,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="vouch")
@global_options(hidden=False)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """vouch: content trust for container images (Notary v1 compatible).

    The client commands take notary's names, flags and trust directory
    (~/.notary by default), so vouch and notary can share one.
    """
    ctx.ensure_object(GlobalOptions)


def _without_httpx_cli() -> None:
    """Keep httpx from importing its own command line tool (``httpx._main``).

    ``import httpx`` tries ``from ._main import main``, which pulls in rich and
    pygments: about 30 ms of every ``vouch`` call that talks to a server, for
    a tool vouch never runs. A ``None`` entry in :data:`sys.modules` makes that
    one import fail, and httpx then defines a stand-in ``httpx.main``. httpx
    itself is still imported only by the commands that need it. This is done
    for the ``vouch`` process alone, never when vouch is used as a library.
    """
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def _exit_now() -> None:
    """Leave the process without the interpreter's teardown.

    Freeing every object and module of a ``list`` of 10,000 targets at exit
    took about 30 ms of CPU, 10% of the command. After a read-only command
    there is nothing left to do but flush stdout and stderr: the metadata
    cache is written with unbuffered, closed file descriptors, and no other
    file is open for writing. If flushing fails (a closed pipe), the normal
    exit runs and reports it as Python does.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(0)


def main() -> None:
    """The ``vouch`` console script."""
    _without_httpx_cli()
    try:
        cli.main()
    except SystemExit as exc:
        if exc.code in (None, 0) and isinstance(cli, VouchGroup) and cli.finished_read_only:
            _exit_now()
        raise
