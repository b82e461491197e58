"""Turning any failure into the one line the user sees.

The library's exceptions already carry notary's wording (see
:mod:`vouch.client.errors`); here they only get a prefix where the bare
message would not say what failed (offline, a wrong passphrase, a file).
Anything unexpected is still one line, naming the exception type, with a
hint that ``-D`` shows the traceback.
"""

from __future__ import annotations

import sys
import traceback

import click

from vouch.cli.options import GlobalOptions


class CLIError(click.ClickException):
    """A failure the command itself diagnosed; printed as ``Error: <message>``."""


def describe(exc: BaseException) -> str:
    """The user-facing message for ``exc`` (without the ``Error:`` prefix)."""
    from vouch.client.changelist import ChangelistError
    from vouch.client.config import ConfigError
    from vouch.client.errors import Offline, RemoteError
    from vouch.client.update import MetadataNotFoundError, MetadataUnavailableError
    from vouch.crypto.keyfile import KeyFileError
    from vouch.crypto.keystore import KeyStoreError
    from vouch.crypto.tokenerrors import TokenError
    from vouch.tuf.errors import TrustError

    if isinstance(exc, Offline):
        return f"client is offline: {exc}"
    if isinstance(exc, MetadataUnavailableError):
        # The updater wraps every "cannot ask the server" error; only a
        # network failure means offline (a 401 or a 503 says so itself).
        cause = exc.__cause__
        if isinstance(cause, RemoteError) and not isinstance(cause, Offline):
            return str(exc)
        return f"client is offline: {exc}"
    if isinstance(exc, MetadataNotFoundError):
        return f"trust data unavailable: {exc}"
    if isinstance(exc, KeyFileError | KeyStoreError | TokenError):
        return str(exc)
    if isinstance(exc, RemoteError | TrustError | ConfigError | ChangelistError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc} (run with -D for details)"


def report(exc: BaseException, ctx: click.Context) -> click.ClickException:
    """The exception click prints for ``exc``; with ``-D`` the traceback goes first."""
    options = ctx.find_object(GlobalOptions)
    if options is not None and options.debug:
        traceback.print_exception(exc, file=sys.stderr)
    message = describe(exc) or type(exc).__name__
    for note in getattr(exc, "__notes__", ()):  # what to do next, added where it was known
        message += f" {note}"
    return CLIError(" ".join(message.split("\n")))
