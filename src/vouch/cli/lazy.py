"""The root command group: commands imported on demand, errors as one line.

Importing a command module is deferred until the command runs or ``--help``
lists it, so ``vouch list`` never pays for the server's imports and
``vouch --help`` for nobody's. Errors the user can act on are printed as
``Error: <message>`` on stderr with exit status 1; a traceback is shown only
with ``-D/--debug`` (notary's flag), so scripts see one line they can log.
"""

from __future__ import annotations

import importlib
from typing import Any

import click


class VouchGroup(click.Group):
    """``read_only`` names commands that change nothing on disk but the metadata
    cache (written atomically and unbuffered) and print their result: after
    one of them succeeds, :attr:`finished_read_only` is set, so the console
    script may leave without tearing the interpreter down (see
    :func:`vouch.cli.main.main`)."""

    def __init__(
        self,
        *args: Any,
        lazy_commands: dict[str, str] | None = None,
        read_only: frozenset[str] = frozenset(),
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self.lazy_commands = dict(lazy_commands or {})
        self.read_only = read_only
        self.finished_read_only = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        eager = [n for n in super().list_commands(ctx) if n not in self.lazy_commands]
        return [*self.lazy_commands, *eager]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy_commands.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Commands in the order of ``lazy_commands`` (notary's workflow order)."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            self.finished_read_only = ctx.invoked_subcommand in self.read_only
            return result
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            from vouch.cli.errors import report

            raise report(exc, ctx) from exc
