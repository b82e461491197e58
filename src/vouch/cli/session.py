"""One CLI invocation's view of the client: config, keys, server, repositories.

Built from the global options the first time a command needs it, so the
config file is read (and its errors reported) only by commands that use it.
Network work runs in one ``asyncio.run`` per command, with the
:class:`~vouch.client.remote.Remote` opened and closed inside it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from vouch.cli.errors import CLIError
from vouch.cli.options import GlobalOptions
from vouch.cli.prompts import passphrase_retriever, registry_credentials

if TYPE_CHECKING:
    from vouch.client.config import ClientConfig
    from vouch.client.remote import Remote
    from vouch.client.repository import Repository
    from vouch.crypto.keystore import KeyStore, PassphraseRetriever
    from vouch.crypto.pkcs11token import Token
    from vouch.crypto.tokenkeys import TokenProvider

T = TypeVar("T")


class _EchoHandler(logging.Handler):
    """Log records as ``WARNING: …`` lines on whatever stderr is current (click's echo)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(f"{record.levelname}: {record.getMessage()}", err=True)
        except Exception:  # logging must never break the command
            self.handleError(record)


def _setup_logging(options: GlobalOptions) -> None:
    """Show vouch's (and, with -v/-D, httpx's) log records on stderr.

    Only these loggers are touched, and their levels only when asked to, so
    embedding the CLI (tests run it in process) leaves logging as it was.
    """
    names = ("vouch", "httpx", "httpcore") if options.debug else ("vouch", "httpx")
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
            logger.addHandler(_EchoHandler())
        if options.debug or options.verbose:
            logger.setLevel(logging.DEBUG if options.debug else logging.INFO)


class Session:
    def __init__(self, options: GlobalOptions) -> None:
        self.options = options
        self._config: ClientConfig | None = None
        self._retriever: PassphraseRetriever | None = None
        self._tokens: TokenProvider | None = None
        _setup_logging(options)

    @property
    def config(self) -> ClientConfig:
        if self._config is None:
            from vouch.client.config import load_client_config

            o = self.options
            self._config = load_client_config(
                o.config_file,
                trust_dir=o.trust_dir,
                server=o.server,
                tls_ca=o.tls_ca,
                tls_cert=o.tls_cert,
                tls_key=o.tls_key,
            )
        return self._config

    @property
    def trust_dir(self) -> Path:
        return self.config.trust_dir

    @property
    def retriever(self) -> PassphraseRetriever:
        """One per command, so a passphrase typed once serves every key of that role."""
        if self._retriever is None:
            self._retriever = passphrase_retriever()
        return self._retriever

    @property
    def tokens(self) -> TokenProvider:
        """PKCS#11 tokens from --pkcs11-module/--pkcs11-token, the key's own record, or
        ``VOUCH_PKCS11_*``; each opened (and its PIN asked) once per command."""
        if self._tokens is None:
            from vouch.cli.prompts import token_pin
            from vouch.crypto.tokenkeys import env_token_provider

            self._tokens = env_token_provider(
                module=self.options.pkcs11_module,
                token_label=self.options.pkcs11_token,
                pin=token_pin,
            )
        return self._tokens

    def _passphrase(self, key_id: str, alias: str, creating: bool, attempt: int) -> str:
        """The retriever, built on the first key a command opens: reads need no keys
        and do not pay for importing the key store."""
        return self.retriever(key_id, alias, creating, attempt)

    def _token(self, module_hint: str | None, label_hint: str | None) -> Token:
        """The token provider, built on the first token a command opens (reads open none
        and do not pay for importing the PKCS#11 code)."""
        return self.tokens(module_hint, label_hint)

    def keystore(self) -> KeyStore:
        from vouch.crypto.keystore import KeyStore

        return KeyStore(self.trust_dir, self.retriever, tokens=self.tokens)

    def remote(self) -> Remote:
        """A client for the configured trust server (call inside the event loop)."""
        from vouch.client.auth import TokenAuth
        from vouch.client.remote import Remote, TLSConfig

        cfg = self.config
        tls = TLSConfig(
            ca_file=cfg.root_ca,
            client_cert=cfg.tls_client_cert,
            client_key=cfg.tls_client_key,
            skip_verify=cfg.skip_tls_verify,
        )
        # The callback consults NOTARY_AUTH and the Docker config itself, then
        # prompts; TokenAuth's own lookup of those is switched off.
        auth = TokenAuth(registry_credentials, environ={}, use_docker_config=False)
        return Remote(cfg.server_url, tls=tls, auth=auth)

    def repository(self, gun: str, remote: Remote | None = None) -> Repository:
        from vouch.client.repository import Repository

        return Repository(
            gun,
            remote,
            self.trust_dir,
            pinning=self.config.trust_pinning,
            passphrases=self._passphrase,
            tokens=self._token,
        )

    def offline(self, gun: str) -> Repository:
        """A repository for staging and local queries: no server is contacted."""
        return self.repository(gun)

    def run(self, gun: str, action: Callable[[Repository], Awaitable[T]]) -> T:
        """Run ``action`` on ``gun``'s repository connected to the trust server."""
        from vouch.client.update import RepositoryNotFoundError

        async def go() -> T:
            remote = self.remote()
            try:
                return await action(self.repository(gun, remote))
            finally:
                await remote.aclose()

        try:
            return asyncio.run(go())
        except RepositoryNotFoundError as exc:
            raise CLIError(f"{self.config.server_url} does not have trust data for {gun}") from exc
