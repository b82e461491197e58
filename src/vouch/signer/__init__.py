"""``vouch signer``: a drop-in for notary-signer.

notary-server keeps no private keys: it asks a signer over gRPC with mutual
TLS to create timestamp/snapshot keys and to sign with them. This package is
that signer (notary-signer's ``proto`` API and health service, its config
file, its ``private_keys`` table and JWE encryption), so either side of the
pair can be vouch or notary. The client half, used by ``vouch server`` with
``keys.type: remote``, is :class:`vouch.keyservice.remote.RemoteKeyService`.

Modules: :mod:`.config` (notary-signer's config), :mod:`.api` (the RPCs),
:mod:`.server` (grpc.aio over TLS), :mod:`.storage` (the key store),
:mod:`.rotate` (passphrase alias rotation), :mod:`.certs` (a private CA for
the server ↔ signer link) and :mod:`.protocol` (names on the wire).
"""

from vouch.signer.config import ConfigError, SignerConfig, config_from_dict, load_config

__all__ = ["ConfigError", "SignerConfig", "config_from_dict", "load_config"]
