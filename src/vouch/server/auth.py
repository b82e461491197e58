"""Docker registry token authentication, as notary-server applies it (spec §7).

Pure functions over header strings: the HTTP layer passes the ``Authorization``
header and the route's required access in, and gets either the token's subject
or the exact 401 challenge (``WWW-Authenticate`` value and JSON body) back.

Every way a token can be wrong ends in a challenge, never in an exception: the
bytes come from the network, so a parser bug must fail closed. The checks are
notary's (docker/distribution ``registry/auth/token`` + libtrust) with a few
deliberate tightenings, each marked *stricter than notary* below.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from os import PathLike
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES: Final = 64 * 1024
MAX_CHAIN_CERTS: Final = 8
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 16384
DEFAULT_LEEWAY: Final = 60  # seconds, docker/distribution's ``Leeway``

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


# -- what a route needs -------------------------------------------------------


class PathKind(StrEnum):
    """notary-server's route classes, as far as authorization tells them apart (§7.3)."""

    METADATA_GET = "metadata_get"
    CHANGEFEED_GUN = "changefeed_gun"
    UPDATE = "update"
    KEY_GET = "key_get"
    KEY_ROTATE = "key_rotate"
    DELETE = "delete"
    CATALOG = "catalog"  # GET /v2/, the global changefeed, and every unknown path


@dataclass(frozen=True)
class Access:
    """Actions needed on (or granted for) one resource, e.g. ``repository:<gun>``."""

    type: str
    name: str
    actions: frozenset[str]


# (required actions, the only method the route exists for). Notary keeps the
# actions in a Go map, so its challenge lists them in random order; we use a
# fixed one (``push,pull``, the order of notary's route table).
_ROUTES: Final[dict[PathKind, tuple[tuple[str, ...], str]]] = {
    PathKind.METADATA_GET: (("pull",), "GET"),
    PathKind.CHANGEFEED_GUN: (("pull",), "GET"),
    PathKind.UPDATE: (("push", "pull"), "POST"),
    PathKind.KEY_GET: (("push", "pull"), "GET"),
    PathKind.KEY_ROTATE: (("*",), "POST"),
    PathKind.DELETE: (("*",), "DELETE"),
}
_ACTION_RANK: Final = {"push": 0, "pull": 1, "*": 2}
CATALOG: Final = Access("registry", "catalog", frozenset({"*"}))


def required_access(method: str, path_kind: PathKind | str, gun: str | None) -> list[Access]:
    """The access a request needs (§7.3); ``ValueError`` for a route notary does not have.

    The method is checked against the route so that a wiring mistake in the
    HTTP layer (say, a POST mapped to a read) fails loudly instead of quietly
    asking for too little.
    """
    kind = PathKind(path_kind)
    if kind is PathKind.CATALOG:
        return [CATALOG]
    actions, route_method = _ROUTES[kind]
    if method.upper() != route_method:
        raise ValueError(f"{kind.value} routes are {route_method} only, not {method}")
    if not gun:
        raise ValueError(f"{kind.value} routes need a GUN")
    return [Access("repository", gun, frozenset(actions))]


def ordered_actions(actions: Iterable[str]) -> list[str]:
    """Deterministic action order: push, pull, ``*``, then anything else sorted."""
    return sorted(set(actions), key=lambda a: (_ACTION_RANK.get(a, 3), a))


def _merged(required: Iterable[Access]) -> dict[tuple[str, str], list[str]]:
    merged: dict[tuple[str, str], set[str]] = {}
    for acc in required:
        merged.setdefault((acc.type, acc.name), set()).update(acc.actions)
    return {res: ordered_actions(acts) for res, acts in merged.items()}


def scope_param(required: Iterable[Access]) -> str:
    """The challenge's ``scope`` value, resources separated by spaces (as distribution)."""
    return " ".join(f"{t}:{n}:{','.join(a)}" for (t, n), a in _merged(required).items())


# -- configuration ------------------------------------------------------------


class AuthConfigError(ValueError):
    """The token auth configuration cannot work; notary refuses to start on these."""


@dataclass(frozen=True)
class TokenAuthConfig:
    """notary-server's ``auth.options`` for ``"type": "token"``, parsed."""

    realm: str
    service: str
    issuer: str
    root_certs: list[x509.Certificate]
    autoredirect: bool = False
    leeway_seconds: int = DEFAULT_LEEWAY

    def __post_init__(self) -> None:
        # Stricter than notary: an empty issuer or service would match tokens
        # that simply omit ``iss`` / ``aud``.
        for name in ("realm", "service", "issuer"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise AuthConfigError(f"token auth requires a non-empty {name!r}")
        if not self.root_certs:
            raise AuthConfigError("token auth requires at least one token signing root certificate")
        for cert in self.root_certs:
            try:
                _check_key_type(cert.public_key())
            except _TokenError as exc:
                name = cert.subject.rfc4514_string()
                raise AuthConfigError(f"root certificate {name}: {exc}") from None
        if self.leeway_seconds < 0:
            raise AuthConfigError("leeway_seconds must not be negative")

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], *, base_dir: str | PathLike[str] | None = None
    ) -> TokenAuthConfig:
        """Load notary's option dict; a relative ``rootcertbundle`` is relative to
        ``base_dir`` (the config file's directory, as viper resolves it)."""
        values: dict[str, str] = {}
        for key in ("realm", "issuer", "service"):
            value = options.get(key)
            if not isinstance(value, str):
                raise AuthConfigError(f"token auth requires a valid option string: {key!r}")
            values[key] = value
        bundle = options.get("rootcertbundle")
        if not isinstance(bundle, str | PathLike) or not str(bundle):
            raise AuthConfigError("token auth requires a valid option string: 'rootcertbundle'")
        autoredirect = options.get("autoredirect", False)
        if not isinstance(autoredirect, bool):
            raise AuthConfigError("token auth requires a valid option bool: autoredirect")
        path = Path(bundle)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        return cls(
            realm=values["realm"],
            service=values["service"],
            issuer=values["issuer"],
            root_certs=load_root_bundle(path),
            autoredirect=autoredirect,
        )


def load_root_bundle(path: str | PathLike[str]) -> list[x509.Certificate]:
    """Every ``CERTIFICATE`` PEM block of the bundle (other blocks are skipped, as in Go)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuthConfigError(f"unable to read token auth root certificate bundle: {exc}") from exc
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise AuthConfigError(
            f"unable to parse token auth root certificates {path}: {exc}"
        ) from exc


# -- results ------------------------------------------------------------------


@dataclass(frozen=True)
class AuthOK:
    """The request may proceed; ``subject`` is the token's ``sub`` (empty if anonymous)."""

    subject: str


@dataclass(frozen=True)
class Challenge:
    """A 401 to send verbatim. ``reason`` is for the server log only, never the client."""

    www_authenticate: str
    body: bytes
    error: str | None  # "invalid_token", "insufficient_scope" or None (no token)
    reason: str = field(default="", compare=False)
    status: int = 401
    content_type: str = "application/json; charset=utf-8"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.www_authenticate, "Content-Type": self.content_type}

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """UTF-8 header bytes, as Go writes them (a GUN may hold non-Latin-1 text)."""
        return [(k.lower().encode(), v.encode("utf-8", "replace")) for k, v in self.headers.items()]


AuthResult = AuthOK | Challenge


def _go_quote(text: str) -> str:
    """Go's ``%q`` (``strconv.Quote``), which distribution uses for challenge parameters.

    It also makes CR/LF in a GUN harmless inside the header.
    """
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in _GO_SHORT_ESCAPES:
            out.append(_GO_SHORT_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a surrogate-escaped raw byte: invalid UTF-8 in Go
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_SHORT_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}
_GO_JSON_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _go_json_string(text: str) -> str:
    """A JSON string as Go's encoder writes it (HTML-safe, ``\\u00XX`` controls)."""
    out = ['"']
    for ch in text:
        if ch in _GO_JSON_ESCAPES:
            out.append(_GO_JSON_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        elif "\ud800" <= ch <= "\udfff":
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def challenge_body(required: Iterable[Access]) -> bytes:
    """notary's 401 body: ``UNAUTHORIZED`` with one access record per (resource, action)."""
    records = [
        "{"
        + f'"Type":{_go_json_string(t)},"Class":"","Name":{_go_json_string(n)},'
        + f'"Action":{_go_json_string(a)}'
        + "}"
        for (t, n), actions in _merged(required).items()
        for a in actions
    ]
    detail = "[" + ",".join(records) + "]"
    envelope = '{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":'
    return (envelope + detail + "}]}\n").encode("utf-8")


# -- keys ---------------------------------------------------------------------

_CURVE_ALG: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_HASHES: Final[dict[str, hashes.HashAlgorithm]] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}
# Everything else (``none``, ``HS*``, ``EdDSA``, typos) is refused before any key is looked at.
ALGORITHMS: Final = frozenset(
    f"{family}{bits}" for family in ("ES", "RS", "PS") for bits in ("256", "384", "512")
)


class _TokenError(Exception):
    """Why a token is refused (logged, never sent)."""


def _check_key_type(key: object) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVE_ALG:
            raise _TokenError(f"unsupported EC curve {key.curve.name}")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        # Stricter than notary: libtrust takes any size.
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise _TokenError(f"RSA key of {key.key_size} bits is not allowed")
        return key
    raise _TokenError(f"unsupported key type {type(key).__name__}")


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def libtrust_key_id(key: PublicKey) -> str:
    """libtrust's key ID: base32 of SHA-256(DER SPKI)[:30], unpadded, in groups of 4."""
    text = base64.b32encode(hashlib.sha256(_spki(key)).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def _verify_signature(alg: str, key: PublicKey, message: bytes, signature: bytes) -> None:
    """Verify a JWS signature; the algorithm must fit the key (no algorithm confusion)."""
    if alg not in ALGORITHMS:
        raise _TokenError(f"unsupported signing algorithm {alg!r}")
    digest = _HASHES[alg[2:]]
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            if _CURVE_ALG.get(key.curve.name) != alg:
                raise _TokenError(f"{alg} cannot be used with an EC {key.curve.name} key")
            size = (key.curve.key_size + 7) // 8
            if len(signature) != 2 * size:  # JOSE: raw r || s, fixed width
                raise _TokenError("ECDSA signature has the wrong length")
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), message, ec.ECDSA(digest))
        elif isinstance(key, rsa.RSAPublicKey):
            if alg.startswith("ES"):
                raise _TokenError(f"{alg} cannot be used with an RSA key")
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if alg.startswith("RS")
                else padding.PSS(padding.MGF1(digest), digest.digest_size)
            )
            key.verify(signature, message, pad, digest)
        else:
            raise _TokenError("unsupported key type")
    except InvalidSignature:
        raise _TokenError("signature does not verify") from None


# -- parsing ------------------------------------------------------------------

_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")


def _b64url(text: str, what: str) -> bytes:
    """JOSE base64url; padding optional (re-added, as distribution does)."""
    if len(text) % 4 == 1 or not _B64URL_RE.fullmatch(text):
        raise _TokenError(f"{what} is not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64std(text: object, what: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise _TokenError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _TokenError(f"{what} is not valid base64") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # stricter than Go (last wins): no parser differentials
        raise _TokenError("duplicate JSON member")
    return out


def _refuse_constant(name: str) -> Any:
    raise _TokenError(f"invalid JSON number {name}")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
        )
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, or an int of > 4300 digits
        raise _TokenError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise _TokenError(f"{what} is not a JSON object")
    return value


def _opt_str(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _TokenError(f"{name} is not a string")
    return value


def _opt_int64(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    # Go decodes these into int64: no floats, no strings, no booleans.
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise _TokenError(f"{name} is not an integer")
    return value


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if aud is None:
        return []
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return aud
    raise _TokenError("aud is neither a string nor a list of strings")


def _grants(claims: Mapping[str, Any]) -> dict[tuple[str, str], set[str]]:
    """The ``access`` claim, merged per (type, name) like distribution's accessSet."""
    access = claims.get("access")
    if access is None:
        return {}
    if not isinstance(access, list):
        raise _TokenError("access is not a list")
    grants: dict[tuple[str, str], set[str]] = {}
    for entry in access:
        if not isinstance(entry, dict):
            raise _TokenError("access entry is not an object")
        actions = entry.get("actions")
        actions = [] if actions is None else actions
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise _TokenError("access actions is not a list of strings")
        _opt_str(entry, "class")
        res = (_opt_str(entry, "type"), _opt_str(entry, "name"))
        grants.setdefault(res, set()).update(actions)
    return grants


def _missing(required: Iterable[Access], grants: Mapping[tuple[str, str], set[str]]) -> list[str]:
    """Required ``type:name:action`` triples the grants lack. ``*`` grants every action;
    ``push`` does not imply ``pull``; names match exactly (no prefixes)."""
    missing: list[str] = []
    for (typ, name), actions in _merged(required).items():
        granted = grants.get((typ, name), set())
        missing.extend(
            f"{typ}:{name}:{a}" for a in actions if "*" not in granted and a not in granted
        )
    return missing


def _bearer_token(authorization: str | None) -> str | None:
    """The token of ``Bearer <token>``; distribution splits on single spaces and wants
    exactly two parts, so anything else (Basic, no header, extra spaces) is "no token"."""
    parts = (authorization or "").split(" ")
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


# -- the authorizer -----------------------------------------------------------


def _ca_extension_policy() -> ExtensionPolicy:
    """Intermediates must be CAs allowed to sign certificates; EKUs are not checked
    (distribution verifies with ``ExtKeyUsageAny``)."""

    def key_cert_sign(_policy: object, _cert: object, ku: x509.KeyUsage | None) -> None:
        if ku is not None and not ku.key_cert_sign:
            raise ValueError("CA key usage lacks keyCertSign")

    return (
        ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
        .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, key_cert_sign)
    )


class TokenAuthorizer:
    """Checks bearer tokens against one :class:`TokenAuthConfig`; safe to share."""

    def __init__(self, config: TokenAuthConfig) -> None:
        self.config = config
        keys = [_check_key_type(c.public_key()) for c in config.root_certs]
        self._trusted_by_kid: dict[str, PublicKey] = {libtrust_key_id(k): k for k in keys}
        self._trusted_spki = frozenset(_spki(k) for k in keys)
        self._root_der = frozenset(
            c.public_bytes(serialization.Encoding.DER) for c in config.root_certs
        )
        self._store = Store(list(config.root_certs))
        self._ca_policy = _ca_extension_policy()

    def authorize(
        self,
        authorization: str | None,
        required: list[Access],
        *,
        host: str | None = None,
        now: float | None = None,
    ) -> AuthResult:
        """Decide a request from its ``Authorization`` header (``host`` feeds autoredirect)."""
        token = _bearer_token(authorization)
        if token is None:
            return self.challenge(required, None, host=host, reason="no bearer token")
        try:
            subject, grants = self._verify(token, time.time() if now is None else now)
        except _TokenError as exc:
            return self.challenge(required, "invalid_token", host=host, reason=str(exc))
        except Exception as exc:  # fail closed on anything unforeseen in hostile input
            log.warning("token verification failed unexpectedly", exc_info=True)
            return self.challenge(required, "invalid_token", host=host, reason=repr(exc))
        missing = _missing(required, grants)
        if missing:
            reason = f"token for {subject!r} lacks {', '.join(missing)}"
            return self.challenge(required, "insufficient_scope", host=host, reason=reason)
        return AuthOK(subject)

    def challenge(
        self, required: list[Access], error: str | None, *, host: str | None, reason: str = ""
    ) -> Challenge:
        """The 401 distribution sends: realm, service, scope and an optional error."""
        cfg = self.config
        realm = f"https://{host}/auth/token" if cfg.autoredirect and host else cfg.realm
        header = f"Bearer realm={_go_quote(realm)},service={_go_quote(cfg.service)}"
        scope = scope_param(required)
        if scope:
            header += f",scope={_go_quote(scope)}"
        if error:
            header += f',error="{error}"'
        return Challenge(header, challenge_body(required), error, reason)

    def _verify(self, token: str, now: float) -> tuple[str, dict[tuple[str, str], set[str]]]:
        if len(token) > MAX_TOKEN_BYTES:
            raise _TokenError("token too large")
        if not _TOKEN_RE.fullmatch(token):
            raise _TokenError("token is not three base64url segments")
        raw_header, raw_claims, raw_sig = token.split(".")
        header = _json_object(_b64url(raw_header, "header"), "header")
        claims = _json_object(_b64url(raw_claims, "claims"), "claims")
        signature = _b64url(raw_sig, "signature")

        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise _TokenError(f"unsupported signing algorithm {alg!r}")
        if "crit" in header:  # RFC 7515: extensions we do not know must not be ignored
            raise _TokenError("token has critical header extensions")
        self._check_claims(claims, now)
        grants = _grants(claims)
        subject = _opt_str(claims, "sub")
        if not signature:
            raise _TokenError("token has no signature")
        key = self._signing_key(header, now)
        _verify_signature(alg, key, f"{raw_header}.{raw_claims}".encode("ascii"), signature)
        return subject, grants

    def _check_claims(self, claims: Mapping[str, Any], now: float) -> None:
        cfg = self.config
        issuer = _opt_str(claims, "iss")
        if issuer != cfg.issuer:
            raise _TokenError(f"token from untrusted issuer {issuer!r}")
        if cfg.service not in _audiences(claims):
            raise _TokenError(f"token intended for another audience {claims.get('aud')!r}")
        # A missing exp counts as 0 in Go, i.e. long expired.
        exp = _opt_int64(claims, "exp") or 0
        if now > exp + cfg.leeway_seconds:
            raise _TokenError(f"token expired at {exp}")
        nbf = _opt_int64(claims, "nbf")
        if nbf is not None and now < nbf - cfg.leeway_seconds:
            raise _TokenError(f"token not valid before {nbf}")

    def _signing_key(self, header: Mapping[str, Any], now: float) -> PublicKey:
        """x5c, else jwk, else kid (distribution's order); the first present one decides."""
        x5c = header.get("x5c")
        if x5c is not None and not isinstance(x5c, list):
            raise _TokenError("x5c is not a list")
        if x5c:
            return self._chain_key(x5c, now)
        jwk = header.get("jwk")
        if jwk is not None:
            return self._jwk_key(jwk, now)
        kid = _opt_str(header, "kid")
        if kid:
            key = self._trusted_by_kid.get(kid)
            if key is None:
                raise _TokenError(f"token signed by untrusted key with ID {kid!r}")
            return key
        raise _TokenError("token names no signing key (x5c, jwk or kid)")

    def _chain_key(self, x5c: list[Any], now: float) -> PublicKey:
        """The leaf key of an x5c chain that verifies up to the root bundle."""
        if len(x5c) > MAX_CHAIN_CERTS:
            raise _TokenError("x5c chain too long")
        try:
            certs = [x509.load_der_x509_certificate(_b64std(c, "x5c entry")) for c in x5c]
        except ValueError:
            raise _TokenError("x5c entry is not a DER certificate") from None
        leaf, when = certs[0], datetime.fromtimestamp(now, UTC)
        if leaf.public_bytes(serialization.Encoding.DER) in self._root_der:
            # Go's Verify accepts a leaf that is itself a root, if it is in its validity period.
            if not leaf.not_valid_before_utc <= when <= leaf.not_valid_after_utc:
                raise _TokenError("x5c root certificate is not valid now")
        else:
            verifier = (
                PolicyBuilder()
                .store(self._store)
                .time(when)
                .max_chain_depth(MAX_CHAIN_CERTS)
                .extension_policies(
                    ca_policy=self._ca_policy, ee_policy=ExtensionPolicy.permit_all()
                )
                .build_client_verifier()
            )
            try:
                verifier.verify(leaf, certs[1:])
            except VerificationError as exc:
                raise _TokenError(f"x5c chain does not verify: {exc}") from None
        return _check_key_type(leaf.public_key())

    def _jwk_key(self, jwk: object, now: float) -> PublicKey:
        """A libtrust JWK: trusted if it is a root-bundle key, or if its own x5c verifies
        and certifies exactly this key."""
        if not isinstance(jwk, dict):
            raise _TokenError("jwk is not an object")
        key = _parse_jwk(jwk)
        chain = jwk.get("x5c")
        if chain is None:
            if _spki(key) not in self._trusted_spki:
                raise _TokenError("untrusted JWK with no certificate chain")
            return key
        if not isinstance(chain, list) or not chain:
            raise _TokenError("jwk x5c is not a certificate chain")
        if _spki(self._chain_key(chain, now)) != _spki(key):
            raise _TokenError("jwk does not match its x5c leaf certificate")
        return key


_JWK_CURVES: Final[dict[str, ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}


def _parse_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """An EC or RSA public JWK; a ``kid`` in it must be the key's libtrust ID."""
    kty = jwk.get("kty")
    key: object
    try:
        if kty == "EC":
            curve = _JWK_CURVES.get(_opt_str(jwk, "crv"))
            if curve is None:
                raise _TokenError("unsupported JWK curve")
            size = (curve.key_size + 7) // 8
            x, y = (_b64url(_opt_str(jwk, n), f"jwk {n}") for n in ("x", "y"))
            if len(x) != size or len(y) != size:
                raise _TokenError("JWK coordinate has the wrong length")
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            )
            key = numbers.public_key()
        elif kty == "RSA":
            n, e = (int.from_bytes(_b64url(_opt_str(jwk, p), f"jwk {p}"), "big") for p in "ne")
            key = rsa.RSAPublicNumbers(e, n).public_key()
        else:
            raise _TokenError(f"unsupported JWK key type {kty!r}")
    except ValueError:  # not on the curve, bad RSA numbers
        raise _TokenError("JWK is not a valid public key") from None
    checked = _check_key_type(key)
    kid = _opt_str(jwk, "kid")
    if kid and kid != libtrust_key_id(checked):
        raise _TokenError("JWK key ID does not match the key")
    return checked


__all__ = [
    "ALGORITHMS",
    "CATALOG",
    "Access",
    "AuthConfigError",
    "AuthOK",
    "AuthResult",
    "Challenge",
    "PathKind",
    "TokenAuthConfig",
    "TokenAuthorizer",
    "challenge_body",
    "libtrust_key_id",
    "load_root_bundle",
    "ordered_actions",
    "required_access",
    "scope_param",
]
