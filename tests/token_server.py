"""A small but real Docker registry token server, for end-to-end auth tests.

The notary CLI never talks to a token server in the unit tests: there the tests
mint JWTs by hand. This one is what a registry deployment really has in front
of notary-server: an HTTP endpoint (``GET /token?service=…&scope=…&account=…``)
that checks HTTP Basic credentials against a user table and answers with an
ES256 JWT whose ``access`` claim is the *intersection* of what was asked for
and what the user may do, exactly as docker/distribution's reference token
server (and Docker Hub) behave. Asking for more than you may have is not an
error; you just get less, and the notary server then refuses with
``insufficient_scope``. Only bad credentials are an error (401).

The signing key is a leaf certificate under an intermediate under a root CA;
the token names it with ``x5c`` (leaf first), so the trust server needs only
the root in its ``rootcertbundle`` — the usual production set-up.

Deliberately no ``vouch`` imports: the token server is an independent party.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from procs import Managed

ANONYMOUS = ""  # the user table's key for requests without credentials


@dataclass(frozen=True)
class Rule:
    """``actions`` on every resource of ``type`` whose name matches the glob ``pattern``."""

    pattern: str
    actions: frozenset[str]
    type: str = "repository"

    def allows(self, type_: str, name: str) -> bool:
        return type_ == self.type and fnmatch.fnmatchcase(name, self.pattern)


def rule(pattern: str, *actions: str, type: str = "repository") -> Rule:
    return Rule(pattern, frozenset(actions), type)


@dataclass(frozen=True)
class User:
    password: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Scope:
    """One requested ``type:name:actions``; the name may itself contain ``:`` (host:port)."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        type_, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not (sep and sep2 and type_ and name):
            raise ValueError(f"malformed scope {text!r}")
        return cls(type_, name, tuple(a for a in actions.split(",") if a))


@dataclass(frozen=True)
class TokenRequest:
    """What the token server saw, so tests can assert on the client's token flow."""

    account: str | None  # the ``account`` query parameter
    user: str | None  # the HTTP Basic user name (None: no credentials)
    scopes: tuple[str, ...]
    service: str | None
    status: int
    granted: tuple[dict[str, Any], ...] = ()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
) -> x509.Certificate:
    """A certificate valid from an hour ago for a day: long enough for any test run,
    and the hour of slack covers a client clock that is slightly behind."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0].subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@dataclass
class TokenAuthority:
    """The token server's PKI: root CA → intermediate → signing leaf (all P-256)."""

    root: x509.Certificate
    inter: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls) -> TokenAuthority:
        root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in "abc")
        root = _cert("vouch e2e token root CA", root_key, None, ca=True)
        inter = _cert("vouch e2e token intermediate", inter_key, (root, root_key), ca=True)
        leaf = _cert("vouch e2e token signer", leaf_key, (inter, inter_key), ca=False)
        return cls(root, inter, leaf, leaf_key)

    def write_bundle(self, path: Path) -> Path:
        """The trust server's ``rootcertbundle``: the root CA only."""
        path.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))
        return path

    def x5c(self) -> list[str]:
        return [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
            for c in (self.leaf, self.inter)
        ]

    def sign(self, claims: Mapping[str, Any]) -> str:
        """An ES256 JWS (compact form) with the JOSE ``r‖s`` signature encoding."""
        header = {"typ": "JWT", "alg": "ES256", "x5c": self.x5c()}
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        der = self.leaf_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class TokenServer(Managed):
    """The ``/token`` endpoint on 127.0.0.1 (a free port), served from a daemon thread."""

    def __init__(
        self,
        users: Mapping[str, User],
        *,
        service: str = "notary-server",
        issuer: str = "vouch-e2e-token-issuer",
        expires_in: int = 300,
        authority: TokenAuthority | None = None,
    ) -> None:
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.authority = authority or TokenAuthority.create()
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- tokens --------------------------------------------------------------

    def granted(self, user: str, scopes: Iterable[Scope]) -> list[dict[str, Any]]:
        """Requested ∩ allowed, per scope; ``*`` is granted only where ``*`` is allowed
        (it is one more action name to the token server, not a wildcard)."""
        rules = self.users[user].rules
        access: list[dict[str, Any]] = []
        for scope in scopes:
            allowed: set[str] = set()
            for r in rules:
                if r.allows(scope.type, scope.name):
                    allowed |= r.actions
            actions = [a for a in scope.actions if a in allowed]
            if actions:
                access.append({"type": scope.type, "name": scope.name, "actions": actions})
        return access

    def issue(
        self,
        subject: str,
        access: Sequence[Mapping[str, Any]],
        *,
        lifetime: int | None = None,
        now: int | None = None,
        audience: str | None = None,
    ) -> str:
        """A signed token. ``lifetime`` may be negative, for tokens that already expired."""
        now = int(time.time()) if now is None else now
        lifetime = self.expires_in if lifetime is None else lifetime
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service if audience is None else audience,
            "exp": now + lifetime,
            "nbf": min(now, now + lifetime) - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": list(access),
        }
        return self.authority.sign(claims)

    def token_for(self, user: str, *scopes: str) -> str:
        """What ``GET /token`` would issue ``user`` (``ANONYMOUS`` for none), without HTTP."""
        return self.issue(user, self.granted(user, [Scope.parse(s) for s in scopes]))

    # -- HTTP ----------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("token server not started")
        return int(self._httpd.server_address[1])

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = server._handle(self.path, self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="vouch e2e token server"')
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: every request is recorded in ``server.requests`` instead."""

        # Port 0: the kernel picks a free port at bind time, so there is no race.
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="token-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def _credentials(self, authorization: str | None) -> tuple[str, str] | None:
        if not authorization or not authorization.lower().startswith("basic "):
            return None
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ("", "")  # no user name: refused like any bad login
        user, _, password = decoded.partition(":")
        return user, password

    def _handle(self, raw_path: str, authorization: str | None) -> tuple[int, bytes]:
        url = urlsplit(raw_path)
        query = parse_qs(url.query)
        account = query.get("account", [None])[0]
        service = query.get("service", [None])[0]
        # Several ``scope`` parameters, or several scopes separated by spaces (older clients).
        raw_scopes = tuple(s for value in query.get("scope", []) for s in value.split(" ") if s)
        creds = self._credentials(authorization)

        def done(
            status: int, body: Mapping[str, Any], granted: Sequence[Any] = ()
        ) -> tuple[int, bytes]:
            record = TokenRequest(
                account, creds[0] if creds else None, raw_scopes, service, status, tuple(granted)
            )
            with self._lock:
                self.requests.append(record)
            return status, json.dumps(body).encode()

        if url.path != "/token":
            return done(404, {"errors": [{"code": "NOT_FOUND"}]})
        if service != self.service:
            return done(400, {"errors": [{"code": "UNSUPPORTED", "message": "unknown service"}]})
        if creds is None:
            user = ANONYMOUS
        else:
            name, password = creds
            known = self.users.get(name)
            # An empty user name is never a login (it is the anonymous table entry).
            if not name or known is None or not secrets.compare_digest(known.password, password):
                return done(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad login"}]})
            if account is not None and account != name:
                return done(401, {"errors": [{"code": "UNAUTHORIZED", "message": "wrong account"}]})
            user = name
        try:
            scopes = [Scope.parse(s) for s in raw_scopes]
        except ValueError as exc:
            return done(400, {"errors": [{"code": "INVALID_SCOPE", "message": str(exc)}]})
        access = self.granted(user, scopes) if user in self.users else []
        token = self.issue(user, access)
        issued_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        body = {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": issued_at,
        }
        return done(200, body, access)


def notary_auth(user: str, password: str) -> str:
    """The ``NOTARY_AUTH`` value (and HTTP Basic credentials) for a user and password."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


__all__ = [
    "ANONYMOUS",
    "Rule",
    "Scope",
    "TokenAuthority",
    "TokenRequest",
    "TokenServer",
    "User",
    "notary_auth",
    "rule",
]
