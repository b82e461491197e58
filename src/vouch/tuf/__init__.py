"""The Notary TUF dialect, sans I/O: bytes in, objects and verdicts out.

Nothing in this package opens a socket, a file or a database, or imports a
web, database or command-line library. The server, the client and the
admission controller all build on it, so each trust rule exists once.
"""

from vouch.tuf.errors import (
    BadKeyIDError,
    CanonicalError,
    CertificateError,
    ExpiredError,
    FormatError,
    HashMismatchError,
    PinningError,
    RoleError,
    RollbackError,
    SignatureError,
    TrustError,
)
from vouch.tuf.keys import Key
from vouch.tuf.metadata import (
    DelegatedRole,
    Delegations,
    FileMeta,
    Metadata,
    RoleKeys,
    Root,
    Signature,
    Signer,
    Snapshot,
    Targets,
    Timestamp,
)
from vouch.tuf.pinning import TrustPinning
from vouch.tuf.trusted import TargetInfo, TrustedSet

__all__ = [
    "BadKeyIDError",
    "CanonicalError",
    "CertificateError",
    "DelegatedRole",
    "Delegations",
    "ExpiredError",
    "FileMeta",
    "FormatError",
    "HashMismatchError",
    "Key",
    "Metadata",
    "PinningError",
    "RoleError",
    "RoleKeys",
    "Root",
    "RollbackError",
    "Signature",
    "SignatureError",
    "Signer",
    "Snapshot",
    "TargetInfo",
    "Targets",
    "Timestamp",
    "TrustError",
    "TrustPinning",
    "TrustedSet",
]
