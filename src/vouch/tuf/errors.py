"""Errors raised by the TUF dialect core.

Each class names the rule that was broken so callers (the server, the client,
the admission controller) can map it to a status code or a message without
parsing strings. All derive from :class:`TrustError`.
"""


class TrustError(Exception):
    """Base class of every verdict the core can refuse with."""


class FormatError(TrustError):
    """Bytes that are not valid Notary metadata (JSON, types, structure)."""


class CanonicalError(FormatError):
    """A value that has no canonical JSON form (floats, control characters...)."""


class SignatureError(TrustError):
    """Signatures missing, invalid, or below the role's threshold."""


class BadKeyIDError(SignatureError):
    """A signature or key whose key ID is not the ID computed from the key.

    Notary treats this as a hard error rather than skipping the signature.
    """


class CertificateError(TrustError):
    """A root certificate that cannot anchor trust (CN, expiry, algorithm...)."""


class ExpiredError(TrustError):
    """Metadata whose ``expires`` is in the past (a freeze attack, or neglect)."""


class RollbackError(TrustError):
    """Metadata older than what is already trusted."""


class HashMismatchError(TrustError):
    """Bytes whose length or hashes differ from what the parent metadata pins."""


class RoleError(TrustError):
    """An unknown, undeclared or invalid role, or metadata of the wrong type."""


class PinningError(TrustError):
    """A root that does not satisfy the configured trust pinning."""
