"""Everything that asks the user: passphrases, registry logins, confirmations.

Prompts go to stderr, so ``--json`` output and ``verify``'s content on stdout
stay clean. Passphrase and login prompts appear only when stdin is a
terminal: a script without ``NOTARY_*_PASSPHRASE`` set must fail with a
message naming the variable, never hang on a prompt nobody sees.
Confirmations ("yes/no") read stdin whatever it is, as notary does, so
``echo yes | vouch key rotate … root`` works.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from vouch.client.auth import Credentials
    from vouch.crypto.keystore import PassphraseRetriever
    from vouch.crypto.pkcs11token import TokenConfig

MIN_PASSPHRASE = 8  # notary refuses shorter new passphrases
MAX_TRIES = 5


def interactive() -> bool:
    """Whether prompting makes sense (tests replace this)."""
    return sys.stdin.isatty()


class PassphrasePrompt:
    """A :data:`~vouch.crypto.keystore.PassphraseRetriever` that asks, in notary's words.

    Answers are remembered per role for the rest of the command, so one
    command that opens several keys of a role asks once; a remembered answer
    that turns out wrong is asked for again.
    """

    def __init__(self) -> None:
        self._given: dict[str, str] = {}

    def __call__(self, key_id: str, alias: str, creating: bool, attempt: int) -> str:
        from vouch.crypto.keystore import PassphraseUnavailableError, short_id

        what = f"{alias or 'the'} key with ID {short_id(key_id)}"
        if creating:
            for _ in range(MAX_TRIES):
                first = click.prompt(
                    f"Enter passphrase for new {what}", hide_input=True, err=True, default=""
                )
                if len(first) < MIN_PASSPHRASE:
                    click.echo(
                        f"Passphrase is too short (at least {MIN_PASSPHRASE} characters). "
                        "Please use a password manager to generate and store a good random "
                        "passphrase.",
                        err=True,
                    )
                    continue
                again = click.prompt(
                    f"Repeat passphrase for new {what}", hide_input=True, err=True, default=""
                )
                if again != first:
                    click.echo("Passphrases do not match. Please retry.", err=True)
                    continue
                self._given[alias] = first
                return str(first)
            raise PassphraseUnavailableError(f"no passphrase chosen for new {what}")
        if attempt == 0 and alias in self._given:
            return self._given[alias]
        if attempt > 0:
            click.echo("Passphrase incorrect. Please retry.", err=True)
        value = str(click.prompt(f"Enter passphrase for {what}", hide_input=True, err=True))
        self._given[alias] = value
        return value


def passphrase_retriever() -> PassphraseRetriever:
    """notary's lookup: ``NOTARY_<ROLE>_PASSPHRASE``, then a prompt if interactive."""
    from vouch.crypto.keystore import EnvPassphraseRetriever

    return EnvPassphraseRetriever(fallback=PassphrasePrompt() if interactive() else None)


async def registry_credentials(server: str) -> Credentials | None:
    """Registry login for ``server``: ``NOTARY_AUTH``, the Docker config and credential
    helpers (as :class:`~vouch.client.auth.TokenAuth` would), then a prompt."""
    import os

    from vouch.client.auth import Credentials, docker_credentials, parse_notary_auth

    value = os.environ.get("NOTARY_AUTH")
    if value:
        return parse_notary_auth(value)
    found = await docker_credentials(server)
    if found is not None or not interactive():
        return found
    click.echo(f"The trust server {server} asks for a login.", err=True)
    user = str(click.prompt("Enter username", err=True))
    password = str(click.prompt("Enter password", hide_input=True, err=True))
    return Credentials(user, password, source="the login prompt")


def confirm(question: str) -> bool:
    """notary's ``askConfirm``: ``question (yes/no)``, true for y/yes on stdin."""
    click.echo(f"{question}  (yes/no)  ", nl=False, err=True)
    answer = sys.stdin.readline()
    if not interactive() or not answer.endswith("\n"):
        click.echo(err=True)  # no echoed Enter to end the prompt's line
    return answer.strip().lower() in ("y", "yes")


def token_pin(config: TokenConfig) -> str:
    """The token's user PIN when ``VOUCH_PKCS11_PIN`` is not set: asked, if interactive."""
    from vouch.crypto.pkcs11token import PIN_VAR
    from vouch.crypto.tokenerrors import TokenPinError

    if not interactive():
        raise TokenPinError(f"no PIN for the {config.describe()}: set {PIN_VAR}")
    return str(click.prompt(f"Enter PIN for the {config.describe()}", hide_input=True, err=True))
