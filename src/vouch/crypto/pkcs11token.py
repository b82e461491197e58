"""Signing keys that live on a PKCS#11 token (an HSM, a YubiKey, SoftHSM, a cloud HSM).

The private key is generated inside the token and never leaves it: the
objects are ``CKA_SENSITIVE`` and not ``CKA_EXTRACTABLE``, so the token
refuses to hand out ``CKA_VALUE`` or to wrap it. What vouch keeps outside is
only the public key, which the token also stores.

Objects are found again by ``CKA_ID``: it is set to the Notary key ID (the
SHA-256 of the key's canonical JSON, 32 bytes), on the private and the public
key object alike, so a restarted process, another machine with the same
token, or ``pkcs11-tool --list-objects`` all see which TUF key an object is.
``CKA_LABEL`` is for people (``vouch <role> <gun>``).

ECDSA P-256 only, as Notary's own YubiKey support: ``CKM_ECDSA`` over a
SHA-256 digest computed here gives exactly Notary's raw ``r||s`` signature.

Thread safety: :class:`Token` holds one logged-in session and serialises every
call with a lock. python-pkcs11 initialises modules without locking callbacks,
so modules may assume a single thread; one session used under a lock is safe
with every module, and a token signs far faster than gRPC delivers requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from vouch.crypto.tokenerrors import TokenError, TokenKeyNotFoundError, TokenPinError
from vouch.tuf import keys as tufkeys
from vouch.tuf.keys import Key
from vouch.tuf.metadata import Signature

#: The environment variables the client reads (the signer has its own, see vouch.signer.config).
MODULE_VAR: Final = "VOUCH_PKCS11_MODULE"
TOKEN_VAR: Final = "VOUCH_PKCS11_TOKEN"  # noqa: S105 - a variable name
SLOT_VAR: Final = "VOUCH_PKCS11_SLOT"
PIN_VAR: Final = "VOUCH_PKCS11_PIN"
#: Where Debian's softhsm2 puts its module: the default when nothing is configured.
DEFAULT_MODULES: Final = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
)
_CURVE: Final = "secp256r1"
_T = TypeVar("_T")


@dataclass(frozen=True)
class TokenConfig:
    """Which module and token, and the user PIN (never shown in a repr)."""

    module: str
    token_label: str | None = None
    slot: int | None = None
    pin: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        which = (
            f"token {self.token_label!r}"
            if self.token_label
            else (f"slot {self.slot}" if self.slot is not None else "the only token")
        )
        return f"{which} of {self.module}"


def default_module() -> str | None:
    """The first installed well-known module (SoftHSM2), for development machines."""
    return next((m for m in DEFAULT_MODULES if Path(m).exists()), None)


def config_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    module: str | None = None,
    token_label: str | None = None,
    slot: int | None = None,
    pin: str | None = None,
) -> TokenConfig:
    """Explicit values first, then ``VOUCH_PKCS11_*``, then the SoftHSM2 module if installed."""
    env = os.environ if environ is None else environ
    module = module or env.get(MODULE_VAR) or default_module()
    if not module:
        raise TokenError(f"no PKCS#11 module configured: pass --pkcs11-module or set {MODULE_VAR}")
    raw_slot = env.get(SLOT_VAR)
    if slot is None and raw_slot:
        if not raw_slot.strip().isdigit():
            raise TokenError(f"{SLOT_VAR}={raw_slot!r} is not a slot number")
        slot = int(raw_slot)
    return TokenConfig(
        module=module,
        token_label=token_label or env.get(TOKEN_VAR) or None,
        slot=slot,
        pin=pin if pin is not None else (env.get(PIN_VAR) or None),
    )


_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


def _load_module(path: str) -> Any:
    """One ``pkcs11.lib`` per module per process (C_Initialize may run only once)."""
    with _LIBS_LOCK:
        lib = _LIBS.get(path)
        if lib is None:
            if not Path(path).is_file():
                raise TokenError(f"PKCS#11 module {path} does not exist")
            try:
                lib = pkcs11.lib(path)
            except (RuntimeError, OSError, p11e.PKCS11Error) as exc:
                raise TokenError(f"cannot load PKCS#11 module {path}: {exc}") from None
            _LIBS[path] = lib
        return lib


def _find_token(lib: Any, config: TokenConfig) -> Any:
    try:
        tokens = list(lib.get_tokens())
    except p11e.PKCS11Error as exc:
        raise TokenError(f"{config.module}: cannot list tokens: {type(exc).__name__}") from None
    labels = [t.label for t in tokens if t.label]
    matches = [
        t
        for t in tokens
        if (config.token_label is None or t.label == config.token_label)
        and (config.slot is None or t.slot.slot_id == config.slot)
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise TokenError(f"no {config.describe()} (tokens present: {', '.join(labels) or 'none'})")
    raise TokenError(
        f"{len(matches)} tokens match in {config.module} ({', '.join(labels)}): "
        "choose one by token label or slot"
    )


def key_id_bytes(key_id: str) -> bytes:
    """A Notary key ID as the token's ``CKA_ID`` (the 32 bytes of the hex digest)."""
    try:
        raw = bytes.fromhex(key_id)
    except ValueError:
        raise TokenKeyNotFoundError(f"{key_id!r} is not a key ID") from None
    if len(raw) != 32:
        raise TokenKeyNotFoundError(f"{key_id!r} is not a key ID")
    return raw


def _public_key(obj: Any) -> Key:
    """Notary's form of a token's EC public key object (SPKI DER → ``ecdsa`` key)."""
    loaded = serialization.load_der_public_key(bytes(encode_ec_public_key(obj)))
    if not isinstance(loaded, ec.EllipticCurvePublicKey):
        raise TokenError("the token returned a public key that is not EC")
    return tufkeys.public_key_from_crypto(loaded)


class Token:
    """A logged-in session on one token; see the module docstring for the object layout."""

    def __init__(self, config: TokenConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._lib = _load_module(config.module)
        self._token = _find_token(self._lib, config)
        self._session: Any = None
        self._keys: dict[str, Any] = {}
        self._open()

    def _open(self) -> None:
        if self.config.pin is None:
            raise TokenPinError(f"no PIN given for {self.config.describe()}")
        try:
            self._session = self._token.open(rw=True, user_pin=self.config.pin)
        except p11e.PinIncorrect:
            raise TokenPinError(f"the PIN for {self.config.describe()} is incorrect") from None
        except (p11e.PinLocked, p11e.PinExpired) as exc:
            raise TokenPinError(
                f"the PIN for {self.config.describe()} is {type(exc).__name__[3:].lower()}"
            ) from None
        except (p11e.PinLenRange, p11e.PinInvalid):
            raise TokenPinError(f"the PIN for {self.config.describe()} is malformed") from None
        except p11e.UserAlreadyLoggedIn:
            self._session = self._token.open(rw=True)
        except p11e.PKCS11Error as exc:
            raise TokenError(
                f"cannot open {self.config.describe()}: {type(exc).__name__}"
            ) from None
        self._keys.clear()

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        """``fn`` under the lock; a session the token dropped is reopened once."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    return fn()
                except (p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.UserNotLoggedIn):
                    if attempt == 2:
                        raise TokenError(f"{what}: the token closed the session") from None
                    self._open()
                except p11e.PKCS11Error as exc:
                    raise TokenError(f"{what} failed on the token: {type(exc).__name__}") from None
        raise AssertionError("unreachable")

    # -- keys ---------------------------------------------------------------------------

    def generate_ecdsa(self, label: str, object_id: bytes | None = None) -> Key:
        """A new P-256 key pair inside the token; returns the public key (Notary's form).

        Without ``object_id`` the objects' ``CKA_ID`` becomes the key ID. Tokens
        whose ``CKA_ID`` means something (ykcs11: the PIV slot) get the ID the
        caller chose; the key is then found by its public key (:meth:`_private`).
        """

        def generate() -> Key:
            session = self._session
            params = session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVE)},
                local=True,
            )
            public, private = params.generate_keypair(
                store=True,
                label=label,
                id=object_id or b"vouch-new-" + secrets.token_bytes(16),
                public_template={Attribute.VERIFY: True, Attribute.PRIVATE: False},
                private_template={
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                    Attribute.PRIVATE: True,
                },
            )
            key = _public_key(public)
            if object_id is None:
                try:
                    raw_id = bytes.fromhex(key.keyid)
                    public[Attribute.ID] = raw_id
                    private[Attribute.ID] = raw_id
                except BaseException as exc:
                    private.destroy()
                    public.destroy()
                    if isinstance(exc, p11e.PKCS11Error):
                        raise TokenError(
                            f"the {self.config.describe()} does not let vouch set CKA_ID "
                            f"({type(exc).__name__}): choose the object ID with --pkcs11-id"
                        ) from None
                    raise
            self._keys[key.keyid] = private
            return key

        return self._call("generating a key", generate)

    def find_key_pair(self, object_id: bytes) -> Key | None:
        """The public key of the ECDSA P-256 key pair whose ``CKA_ID`` is ``object_id``
        (made by another tool: ``ykman``, ``pkcs11-tool``, a cloud console), or None
        when no key has that ``CKA_ID``.

        Other keys under that ``CKA_ID`` (RSA, another curve, a lone half, two
        pairs) are refused: vouch neither uses them nor adds a key beside them
        (on ykcs11 the ``CKA_ID`` is a PIV slot, and a new key would replace the
        one there). Certificates and data objects under it do not matter.
        """

        def look() -> Key | None:
            keys = [
                obj
                for cls in (ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.SECRET_KEY)
                for obj in self._objects({Attribute.CLASS: cls, Attribute.ID: object_id})
            ]
            if not keys:
                return None
            public = [o for o in keys if o[Attribute.CLASS] == ObjectClass.PUBLIC_KEY]
            private = [o for o in keys if o[Attribute.CLASS] == ObjectClass.PRIVATE_KEY]
            if (
                len(keys) == 2
                and len(public) == len(private) == 1
                and all(o[Attribute.KEY_TYPE] == KeyType.EC for o in keys)
                and bytes(public[0][Attribute.EC_PARAMS]) == encode_named_curve_parameters(_CURVE)
            ):
                return _public_key(public[0])
            raise TokenError(
                f"the {self.config.describe()} holds other keys under CKA_ID "
                f"{object_id.hex()} than one ECDSA P-256 key pair: vouch neither uses "
                "them nor adds a key beside them; choose another --pkcs11-id"
            )

        return self._call("looking up a key pair", look)

    def _objects(self, template: dict[Attribute, Any]) -> list[Any]:
        """Every object matching ``template``, the search finished before the caller looks
        (one search at a time per session: a nested search is OperationActive)."""
        return list(self._session.get_objects(template))

    def _private(self, key_id: str) -> Any:
        obj = self._keys.get(key_id)
        if obj is not None:
            return obj
        raw_id = key_id_bytes(key_id)
        found = list(
            self._session.get_objects(
                {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: raw_id}
            )
        )
        if not found:  # a key whose CKA_ID the token chose: find it by its public key
            for public in self._objects(
                {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC}
            ):
                if _public_key(public).keyid == key_id:
                    found = list(
                        self._session.get_objects(
                            {
                                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                Attribute.ID: bytes(public[Attribute.ID]),
                            }
                        )
                    )
                    break
        if not found:
            raise TokenKeyNotFoundError(f"no private key {key_id} on {self.config.describe()}")
        self._keys[key_id] = found[0]
        return found[0]

    def has_key(self, key_id: str) -> bool:
        def look() -> bool:
            try:
                self._private(key_id)
            except TokenKeyNotFoundError:
                return False
            return True

        return self._call(f"looking up key {key_id}", look)

    def public_key(self, key_id: str) -> Key | None:
        """The public key stored with ``CKA_ID`` = ``key_id``, or None."""

        def look() -> Key | None:
            for obj in self._objects(
                {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id_bytes(key_id)}
            ):
                key = _public_key(obj)
                if key.keyid == key_id:
                    return key
            return None

        return self._call(f"reading key {key_id}", look)

    def key_pairs(self) -> list[tuple[Key, str]]:
        """Every vouch-made EC key pair on the token (public key and label)."""

        def scan() -> list[tuple[Key, str]]:
            out: list[tuple[Key, str]] = []
            for obj in self._objects(
                {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC}
            ):
                raw_id = obj[Attribute.ID]
                key = _public_key(obj)
                if bytes(raw_id) == bytes.fromhex(key.keyid):
                    out.append((key, str(obj[Attribute.LABEL])))
            return out

        return self._call("listing keys", scan)

    def sign(self, key_id: str, message: bytes) -> bytes:
        """Notary's ECDSA signature (raw ``r||s``) over SHA-256(``message``), made by the token."""
        digest = hashlib.sha256(message).digest()

        def sign() -> bytes:
            try:
                return bytes(self._private(key_id).sign(digest, mechanism=Mechanism.ECDSA))
            except (p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid):
                # The remembered object is gone (deleted through another session or
                # process): look again; TokenKeyNotFoundError if it really is gone.
                self._keys.pop(key_id, None)
                return bytes(self._private(key_id).sign(digest, mechanism=Mechanism.ECDSA))

        return self._call(f"signing with key {key_id}", sign)

    def destroy(self, key_id: str) -> None:
        """Remove the key pair (and any data object named after it) from the token."""

        def destroy() -> None:
            self._keys.pop(key_id, None)
            raw = key_id_bytes(key_id)
            publics = self._objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: raw})
            if not publics:  # a CKA_ID chosen by the user: find the pair by its public key
                for public in self._objects(
                    {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC}
                ):
                    if _public_key(public).keyid == key_id:
                        raw = bytes(public[Attribute.ID])
                        break
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                for obj in self._objects({Attribute.CLASS: cls, Attribute.ID: raw}):
                    obj.destroy()

        self._call(f"deleting key {key_id}", destroy)

    # -- small data objects (the signer's bookkeeping) -----------------------------------

    def data_objects(self, application: str) -> Iterator[tuple[str, bytes]]:
        """``(label, value)`` of the private data objects of ``application``."""

        def scan() -> list[tuple[str, bytes]]:
            return [
                (str(obj[Attribute.LABEL]), bytes(obj[Attribute.VALUE]))
                for obj in self._objects(
                    {Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: application}
                )
            ]

        return iter(self._call("reading data objects", scan))

    def put_data(self, application: str, label: str, value: bytes) -> None:
        """Create or replace the private data object ``label`` of ``application``."""

        def put() -> None:
            template = {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.APPLICATION: application,
                Attribute.LABEL: label,
            }
            old = self._objects(template)
            self._session.create_object(
                {**template, Attribute.VALUE: value, Attribute.TOKEN: True, Attribute.PRIVATE: True}
            )
            for obj in old:
                obj.destroy()

        self._call("writing a data object", put)

    def delete_data(self, application: str, label: str) -> None:
        def delete() -> None:
            for obj in list(
                self._session.get_objects(
                    {
                        Attribute.CLASS: ObjectClass.DATA,
                        Attribute.APPLICATION: application,
                        Attribute.LABEL: label,
                    }
                )
            ):
                obj.destroy()

        self._call("deleting a data object", delete)

    def check(self) -> None:
        """Raise :class:`TokenError` unless the session still answers."""
        # A search on the session: fails (and reopens it once) if the token dropped it.
        self._call(
            "checking the token",
            lambda: self._objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: "-"}),
        )

    def close(self) -> None:
        with self._lock:
            self._keys.clear()
            if self._session is not None:
                with contextlib.suppress(p11e.PKCS11Error):
                    self._session.close()
                self._session = None


@dataclass(frozen=True, slots=True)
class TokenSigner:
    """A :class:`~vouch.tuf.metadata.Signer` whose key stays on a token.

    ``keyid`` is the ID signatures carry (a root certificate's ID for a root
    key); ``token_keyid`` the bare key's ID, which names the token objects.
    """

    token: Token
    token_keyid: str
    keyid: str

    def sign(self, message: bytes) -> Signature:
        raw = self.token.sign(self.token_keyid, message)
        return Signature(self.keyid, tufkeys.METHOD_ECDSA, tufkeys.b64encode(raw))


__all__ = [
    "DEFAULT_MODULES",
    "MODULE_VAR",
    "PIN_VAR",
    "SLOT_VAR",
    "TOKEN_VAR",
    "Token",
    "TokenConfig",
    "TokenError",
    "TokenKeyNotFoundError",
    "TokenPinError",
    "TokenSigner",
    "config_from_env",
    "default_module",
    "key_id_bytes",
]
