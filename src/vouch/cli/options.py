"""Options shared by many commands, and the global options' holder.

notary (cobra) accepts its global flags anywhere on the command line, before
or after the subcommand (``notary list example.com/app -s https://…``), and
scripts written for it do both. So the global options are declared on the
``vouch`` group (where ``--help`` shows them) and again, hidden, on every
client command; either place fills the same :class:`GlobalOptions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from vouch.cli.session import Session

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class GlobalOptions:
    """The global flags as given (``None``: not given, use the config or default)."""

    server: str | None = None
    trust_dir: str | None = None
    config_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    debug: bool = False
    verbose: bool = False
    pkcs11_module: str | None = None
    pkcs11_token: str | None = None
    _session: Session | None = field(default=None, repr=False)

    def session(self) -> Session:
        """The client session (config, keys, prompts) these options describe, made once."""
        if self._session is None:
            from vouch.cli.session import Session

            self._session = Session(self)
        return self._session


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return
        setattr(ctx.ensure_object(GlobalOptions), name, value)

    return callback


# (param decls, attribute, help, is_flag)
_GLOBALS: tuple[tuple[tuple[str, ...], str, str, bool], ...] = (
    (("-s", "--server"), "server", "Remote trust server location.", False),
    (
        ("-d", "--trustDir", "--trustdir"),
        "trust_dir",
        "Directory where the trust data is persisted to (default ~/.notary).",
        False,
    ),
    (
        ("-c", "--configFile", "--configfile"),
        "config_file",
        "Path to the client configuration file (default ~/.notary/config.json).",
        False,
    ),
    (("--tlscacert",), "tls_ca", "Trust certs signed only by this CA.", False),
    (("--tlscert",), "tls_cert", "Path to TLS certificate file.", False),
    (("--tlskey",), "tls_key", "Path to TLS key file.", False),
    (
        ("--pkcs11-module",),
        "pkcs11_module",
        "PKCS#11 library for keys on a token (default $VOUCH_PKCS11_MODULE, else SoftHSM2's).",
        False,
    ),
    (
        ("--pkcs11-token",),
        "pkcs11_token",
        "Label of the PKCS#11 token to use (default $VOUCH_PKCS11_TOKEN).",
        False,
    ),
    (("-D", "--debug"), "debug", "Debug output (and tracebacks on errors).", True),
    (("-v", "--verbose"), "verbose", "Verbose output.", True),
)


def global_options(*, hidden: bool = True) -> Callable[[F], F]:
    """Add the global options (``hidden`` copies on subcommands)."""

    def decorate(f: F) -> F:
        for decls, name, help_text, is_flag in reversed(_GLOBALS):
            f = click.option(
                *decls,
                name,
                help=help_text,
                is_flag=is_flag,
                default=None if not is_flag else False,
                hidden=hidden,
                expose_value=False,
                callback=_store(name),
            )(f)
        return f

    return decorate


def client_command(
    group: click.Group | None = None, name: str | None = None, **kw: Any
) -> Callable[[Callable[..., Any]], click.Command]:
    """``@click.command`` with the hidden global options and ``-h``; on ``group`` if given."""

    def decorate(f: Callable[..., Any]) -> click.Command:
        kw.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
        make = group.command if group is not None else click.command
        command: click.Command = make(name, **kw)(global_options()(f))
        return command

    return decorate


def json_option(f: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print machine-readable JSON (see docs/client.md for the shapes).",
    )(f)


def publish_option(f: F) -> F:
    return click.option(
        "-p",
        "--publish",
        "auto_publish",
        is_flag=True,
        help="Publish right after staging (also publishes changes staged before).",
    )(f)


def split_list(values: tuple[str, ...]) -> list[str]:
    """A cobra string-slice flag: repeatable, and each value may be comma-separated."""
    out: list[str] = []
    for value in values:
        out.extend(v.strip() for v in value.split(","))
    return [v for v in out if v]


def roles_option(help_text: str) -> Callable[[F], F]:
    return click.option("-r", "--roles", "roles_", multiple=True, help=help_text)


def pass_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the :class:`GlobalOptions` as the first argument."""
    return click.make_pass_decorator(GlobalOptions, ensure=True)(f)
