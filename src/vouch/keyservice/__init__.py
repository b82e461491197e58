"""Server-managed signing keys (timestamp, snapshot) behind one async interface.

:class:`KeyService` is the contract notary-server has with notary-signer;
:class:`LocalKeyService` is the embedded default (SQL, encrypted at rest in
notary-signer's own table format) and :class:`MemoryKeyService` the test/dev one.
"""

from vouch.keyservice.base import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    AsyncSigner,
    KeyDecryptionError,
    KeyInfo,
    KeyNotFoundError,
    KeyService,
    KeyServiceError,
    KeyServiceUnavailableError,
    ServiceSigner,
    UnsupportedAlgorithmError,
    sign_metadata,
)
from vouch.keyservice.local import LocalKeyService, passphrases_from_env
from vouch.keyservice.memory import MemoryKeyService

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "AsyncSigner",
    "KeyDecryptionError",
    "KeyInfo",
    "KeyNotFoundError",
    "KeyService",
    "KeyServiceError",
    "KeyServiceUnavailableError",
    "LocalKeyService",
    "MemoryKeyService",
    "ServiceSigner",
    "UnsupportedAlgorithmError",
    "passphrases_from_env",
    "sign_metadata",
]
