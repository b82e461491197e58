"""Errors of PKCS#11 token use, importable without loading the PKCS#11 binding.

The client imports these on every command (its key store knows about token
keys); the binding itself (:mod:`vouch.crypto.pkcs11token`) loads only when a
token is actually used.
"""

from __future__ import annotations


class TokenError(Exception):
    """The token cannot be used as configured; the message says what to fix."""


class TokenPinError(TokenError):
    """The PIN was refused (wrong, locked or missing)."""


class TokenKeyNotFoundError(TokenError):
    """No private key with this key ID on the token."""


__all__ = ["TokenError", "TokenKeyNotFoundError", "TokenPinError"]
