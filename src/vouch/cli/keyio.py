"""Key material in and out of the trust dir, the way notary's CLI moves it.

* import: every PEM block of a file becomes a key file; ``role``/``gun``
  headers win over ``--role``/``--gun`` (default role ``delegation``),
  targets/snapshot/timestamp keys need a GUN, and unencrypted keys are
  encrypted on the way in. Unlike notary, an encrypted block without a
  ``path`` header is not skipped: it is decrypted (with the role's
  passphrase) to learn its key ID.
* export: the stored blocks as they are (still encrypted), each with the
  ``path: <key id>`` header notary's import uses.
* public keys for delegations: X.509 certificates (checked for validity) or
  ``PUBLIC KEY`` blocks, as ``notary delegation add`` takes them.

Only imported by the commands that need it; it pulls in ``cryptography``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vouch.crypto.keyfile import (
    GUN_ROLES,
    PEM_PLAIN,
    KeyFileError,
    WrongPassphraseError,
    decode_key_file,
    decode_pem,
    encode_pem,
    peek_key_file,
)
from vouch.crypto.keystore import KeyInfo, KeyStore, PassphraseRetriever
from vouch.crypto.privkey import PrivateKey
from vouch.tuf import keys as tufkeys
from vouch.tuf.keys import Key, certificate_key, public_key_from_crypto
from vouch.tuf.timefmt import now as utc_now

DEFAULT_IMPORT_ROLE = "delegation"  # notary.DefaultImportRole
LEGACY_NONROOT_DIR = "tuf_keys"
_BLOCK = re.compile(rb"-----BEGIN ([^\n-]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


class KeyIOError(ValueError):
    """Key material that cannot be imported or used."""


def pem_blocks(data: bytes) -> list[bytes]:
    """Every PEM block in ``data``, in order."""
    return [m.group(0) for m in _BLOCK.finditer(data)]


@dataclass(frozen=True)
class Imported:
    keyid: str
    role: str
    gun: str


def _decrypt(
    data: bytes, label: str, role: str, retriever: PassphraseRetriever
) -> tuple[PrivateKey, str]:
    """The key in an encrypted block and the passphrase that opened it."""
    last: Exception | None = None
    for attempt in range(3):
        passphrase = retriever(label, role, False, attempt)
        try:
            return decode_key_file(data, passphrase).key, passphrase
        except WrongPassphraseError as exc:
            last = exc
    raise KeyIOError(f"wrong passphrase for {role} key {label[:7] or '(no ID)'}: {last}")


def import_block(block: bytes, store: KeyStore, *, role: str = "", gun: str = "") -> Imported:
    """Store one PEM private key block; see the module docstring for the rules."""
    info = peek_key_file(block)
    headers = dict(info.headers)
    path = headers.get("path", "")
    if "/" in path:  # a pre-0.4 bundle: private/tuf_keys/<gun>/<id>_<role>
        directory, _, path = path.rpartition("/")
        if directory.startswith(LEGACY_NONROOT_DIR) and not headers.get("gun"):
            headers["gun"] = directory[len(LEGACY_NONROOT_DIR) :].strip("/")
        path = path.split("_", 1)[0]
    key_role = headers.get("role") or role or DEFAULT_IMPORT_ROLE
    key_gun = headers.get("gun") or gun
    if key_role in GUN_ROLES and not key_gun:
        raise KeyIOError(
            f"a {key_role} key needs a GUN (none in the PEM headers; give --gun) "
            f"[{path or 'no path'}]"
        )
    if key_role not in GUN_ROLES:
        key_gun = ""
    if info.encrypted:
        key, passphrase = _decrypt(block, path, key_role, store.retriever)
        store.save(key, key_role, key_gun, passphrase=passphrase)
    else:
        key = decode_key_file(block).key
        store.save(key, key_role, key_gun)  # asks for a passphrase to encrypt it with
    return Imported(key.keyid, key_role, key_gun)


def read_private_key(path: Path, role: str, retriever: PassphraseRetriever) -> PrivateKey:
    """The key in a key file (``init --rootkey``, ``key rotate -k``)."""
    data = path.read_bytes()
    try:
        info = peek_key_file(data)
    except KeyFileError as exc:
        raise KeyIOError(f"{path}: {exc}") from exc
    if not info.encrypted:
        return decode_key_file(data).key
    return _decrypt(data, info.path, role, retriever)[0]


def export_keys(store: KeyStore, key_ids: list[str], guns: list[str]) -> bytes:
    """The selected stored keys as one PEM bundle (all keys if nothing is selected)."""
    infos = store.list_keys()
    if key_ids:
        known = {i.keyid for i in infos}
        missing = [k for k in key_ids if k not in known]
        if missing:
            raise KeyIOError(f"no key with ID {', '.join(missing)} in {store.private_dir}")
        infos = [i for i in infos if i.keyid in key_ids]
    if guns:
        infos = [i for i in infos if i.gun in guns]
    return b"".join(export_block(i) for i in infos)


def export_block(info: KeyInfo) -> bytes:
    block = decode_pem(info.path.read_bytes())
    return encode_pem(block.type, block.body, {**block.headers, "path": info.keyid})


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (key material)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)  # also when the file was already there
        fh.write(data)


def public_pem(key: PrivateKey, role: str) -> bytes:
    """notary's ``key generate -o`` public half: ``PUBLIC KEY`` with a ``role`` header."""
    return public_pem_of(key.public, role)


def public_pem_of(key: Key, role: str) -> bytes:
    """:func:`public_pem` for a bare public key (one whose private half is on a token)."""
    return encode_pem("PUBLIC KEY", key.public_bytes(), {"role": role})


def load_public_key(path: Path) -> Key:
    """A delegation key from a certificate or public key PEM file."""
    data = path.read_bytes()
    try:
        block = decode_pem(data)
    except KeyFileError as exc:
        raise KeyIOError(f"{path}: no PEM public key or certificate") from exc
    if block.type == "CERTIFICATE":
        cert = x509.load_der_x509_certificate(block.body)
        _check_validity(cert, path)
        return certificate_key([cert])
    if block.type == "PUBLIC KEY":
        if len(block.body) == 32:  # notary writes ed25519 public keys raw
            return Key(tufkeys.ED25519, tufkeys.b64encode(block.body))
        try:
            loaded = serialization.load_der_public_key(block.body)
        except ValueError as exc:
            raise KeyIOError(f"{path}: unreadable public key: {exc}") from exc
        if not isinstance(loaded, tufkeys.PublicKeyObject):
            raise KeyIOError(f"{path}: unsupported public key type")
        return public_key_from_crypto(loaded)
    if block.type in (PEM_PLAIN, "ENCRYPTED PRIVATE KEY"):
        raise KeyIOError(f"{path} holds a private key: give the public key or certificate")
    raise KeyIOError(f"{path}: a {block.type} is not a public key or certificate")


def load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as exc:
        raise KeyIOError(f"{path}: no PEM certificate: {exc}") from exc
    for cert in certs:
        _check_validity(cert, path)
    return certs


def root_certificate_key(path: Path, gun: str) -> Key:
    """``init --rootcert``: the certificate (bundle, leaf first) as a root key for ``gun``."""
    certs = load_certificates(path)
    names = certs[0].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    if cn != gun and not (cn.endswith("*") and gun.startswith(cn[:-1])):
        raise KeyIOError(f"{path}: certificate CN {cn!r} does not match GUN {gun!r}")
    return certificate_key(certs)


def _check_validity(cert: x509.Certificate, path: Path) -> None:
    now = utc_now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise KeyIOError(
            f"{path}: certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d})"
        )
