"""Users' keys on PKCS#11 tokens: what the trust directory records about them.

A key generated with ``--hsm`` lives on the token; the trust directory keeps
only a small JSON *reference* at ``private/pkcs11/<key id>.json``: the key's
role and GUN, its public key, and which module and token it was made on (as
hints: ``--pkcs11-module``/``VOUCH_PKCS11_MODULE`` and the token variables
win, so the same trust directory works on a machine where the library lives
elsewhere). The notary CLI lists only ``*.key`` files, so it never trips over
these references, and nothing secret is in them.

Root keys need a self-signed certificate (Notary's ``ecdsa-x509`` root key);
:func:`token_root_certificate` builds the same certificate
:func:`vouch.crypto.certs.root_certificate` makes, with the signature made by
the token (``cryptography`` can only sign certificates with keys it holds).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from asn1crypto import keys as asn1keys
from asn1crypto import x509 as asn1x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from vouch.crypto.certs import ROOT_CERT_VALIDITY
from vouch.crypto.tokenerrors import TokenError
from vouch.tuf import keys as tufkeys
from vouch.tuf import timefmt
from vouch.tuf.keys import Key, certificate_key

if TYPE_CHECKING:  # the binding loads only when a token is used
    from vouch.crypto.pkcs11token import Token, TokenConfig

TOKEN_DIR: Final = "pkcs11"  # noqa: S105 - a directory name
REF_EXTENSION: Final = ".json"

#: ``(module hint, token label hint) -> Token``: how a key store reaches a token
#: (the CLI's asks for the PIN when no variable has it).
TokenProvider = Callable[[str | None, str | None], "Token"]


@dataclass(frozen=True, slots=True)
class TokenKeyRef:
    """What the trust directory knows about one key on a token."""

    keyid: str
    role: str
    gun: str
    public: Key
    module: str | None
    token_label: str | None

    def to_json(self) -> bytes:
        return (
            json.dumps(
                {
                    "keyid": self.keyid,
                    "role": self.role,
                    "gun": self.gun,
                    "keytype": self.public.keytype,
                    "public": self.public.public,
                    "pkcs11_module": self.module,
                    "token_label": self.token_label,
                },
                indent=2,
                sort_keys=True,
            ).encode()
            + b"\n"
        )

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> TokenKeyRef:
        try:
            doc = json.loads(data)
            public = Key(str(doc["keytype"]), str(doc["public"]))
            ref = cls(
                keyid=str(doc["keyid"]),
                role=str(doc["role"]),
                gun=str(doc.get("gun") or ""),
                public=public,
                module=doc.get("pkcs11_module") or None,
                token_label=doc.get("token_label") or None,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"{where}: not a token key reference: {exc}") from None
        if ref.public.keyid != ref.keyid:
            raise TokenError(f"{where}: the public key's ID is not {ref.keyid}")
        return ref


def env_token_provider(
    *,
    module: str | None = None,
    token_label: str | None = None,
    pin: Callable[[TokenConfig], str] | None = None,
) -> TokenProvider:
    """Tokens from explicit settings, else the reference's hints, else ``VOUCH_PKCS11_*``.

    ``pin`` is asked for the PIN when ``VOUCH_PKCS11_PIN`` is not set. Tokens
    are opened once per provider (one login per command).
    """
    opened: dict[tuple[str, str | None], Token] = {}

    def provide(module_hint: str | None, label_hint: str | None) -> Token:
        from vouch.crypto.pkcs11token import Token, TokenConfig, config_from_env  # noqa: PLC0415

        config = config_from_env(module=module or module_hint, token_label=token_label)
        if token_label is None and config.token_label is None and label_hint:
            config = TokenConfig(config.module, label_hint, config.slot, config.pin)
        key = (config.module, config.token_label)
        token = opened.get(key)
        if token is None:
            if config.pin is None and pin is not None:
                config = TokenConfig(config.module, config.token_label, config.slot, pin(config))
            token = Token(config)
            opened[key] = token
        return token

    return provide


def _name(gun: str) -> asn1x509.Name:
    return asn1x509.Name.build({"common_name": gun})


def token_root_certificate(
    token: Token, key_id: str, public: Key, gun: str, *, now: datetime | None = None
) -> x509.Certificate:
    """The notary-style self-signed root certificate for ``gun``, signed by the token's key.

    Same fields as :func:`vouch.crypto.certs.root_certificate`: CN=gun, random
    serial, 10 years from now (whole seconds), critical key usage
    digitalSignature + keyEncipherment, extended key usage codeSigning, critical
    basic constraints CA:FALSE, ECDSA with SHA-256.
    """
    start = (now or timefmt.now()).replace(microsecond=0)
    spki = asn1keys.PublicKeyInfo.load(tufkeys.b64decode(public.public, "public key"))
    algorithm = asn1x509.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"})
    tbs = asn1x509.TbsCertificate(
        {
            "version": "v3",
            "serial_number": secrets.randbits(127) | 1,
            "signature": algorithm,
            "issuer": _name(gun),
            "validity": {
                "not_before": asn1x509.Time({"utc_time": start}),
                "not_after": asn1x509.Time({"utc_time": start + ROOT_CERT_VALIDITY}),
            },
            "subject": _name(gun),
            "subject_public_key_info": spki,
            "extensions": [
                {
                    "extn_id": "key_usage",
                    "critical": True,
                    "extn_value": {"digital_signature", "key_encipherment"},
                },
                {
                    "extn_id": "extended_key_usage",
                    "critical": False,
                    "extn_value": ["code_signing"],
                },
                {"extn_id": "basic_constraints", "critical": True, "extn_value": {"ca": False}},
            ],
        }
    )
    raw = token.sign(key_id, tbs.dump())
    half = len(raw) // 2
    signature = encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )
    cert = asn1x509.Certificate(
        {"tbs_certificate": tbs, "signature_algorithm": algorithm, "signature_value": signature}
    )
    loaded = x509.load_der_x509_certificate(cert.dump())
    # The token signed what we asked: check it before the certificate becomes a trust anchor.
    key = loaded.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TokenError("root keys on a token must be ECDSA")
    try:
        key.verify(loaded.signature, loaded.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise TokenError(
            f"the token's signature over the root certificate of {gun} is invalid"
        ) from None
    return loaded


def token_root_key(
    token: Token, key_id: str, public: Key, gun: str, *, now: datetime | None = None
) -> Key:
    """The ``ecdsa-x509`` metadata root key of a fresh certificate over the token's key."""
    return certificate_key([token_root_certificate(token, key_id, public, gun, now=now)])


__all__ = [
    "REF_EXTENSION",
    "TOKEN_DIR",
    "TokenKeyRef",
    "TokenProvider",
    "env_token_provider",
    "token_root_certificate",
    "token_root_key",
]
