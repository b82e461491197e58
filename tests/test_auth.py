"""Token auth: notary-compatible challenges, and attacks on JWT verification.

The test plays a token server: it owns a root CA (in the server's root bundle),
an intermediate and leaf signing keys, and builds tokens by hand so that each
attack can bend exactly one thing. Every attack must end in a 401 challenge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from notary_harness import NotaryServer, NotaryUnavailableError, require_notary_binaries
from vouch.server.auth import (
    Access,
    AuthConfigError,
    AuthOK,
    Challenge,
    PathKind,
    TokenAuthConfig,
    TokenAuthorizer,
    libtrust_key_id,
    required_access,
)

NOW = 1_800_000_000  # 2027-01-15, fixed so the tests never depend on the clock
ISSUER = "auth.example.com"
SERVICE = "notary-server"
REALM = "https://auth.example.com/token"
GUN = "example.com/app"

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


# -- a token server -----------------------------------------------------------


def make_cert(
    cn: str,
    key: Key | ed25519.Ed25519PrivateKey,
    issuer: tuple[x509.Certificate, Key] | None = None,
    *,
    ca: bool | None = None,
    days: tuple[int, int] = (-1, 365),
    key_usage: x509.KeyUsage | None = None,
    base: int = NOW,
) -> x509.Certificate:
    """A certificate for ``key``; self-signed unless ``issuer`` (cert, key) is given."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = datetime.fromtimestamp(base, UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start + timedelta(days=days[0]))
        .not_valid_after(start + timedelta(days=days[1]))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    signer = issuer[1] if issuer else key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class TokenServer:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    inter_key: ec.EllipticCurvePrivateKey
    inter: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate
    rsa_root_key: rsa.RSAPrivateKey
    rsa_root: x509.Certificate
    rsa_leaf_key: rsa.RSAPrivateKey
    rsa_leaf: x509.Certificate
    p384_key: ec.EllipticCurvePrivateKey
    p521_key: ec.EllipticCurvePrivateKey
    bundle: list[x509.Certificate]

    @classmethod
    def create(cls, base: int = NOW) -> TokenServer:
        """Keys and certificates valid from a day before ``base`` for a year."""
        root_key, inter_key, leaf_key = ec_key(), ec_key(), ec_key()
        root = make_cert("token root", root_key, ca=True, base=base)
        inter = make_cert("token intermediate", inter_key, (root, root_key), ca=True, base=base)
        leaf = make_cert("token signer", leaf_key, (inter, inter_key), base=base)
        rsa_root_key, rsa_leaf_key = rsa_key(), rsa_key()
        rsa_root = make_cert("rsa token root", rsa_root_key, ca=True, base=base)
        rsa_leaf = make_cert("rsa signer", rsa_leaf_key, (inter, inter_key), ca=False, base=base)
        p384_key, p521_key = ec_key(ec.SECP384R1()), ec_key(ec.SECP521R1())
        bundle = [
            root,
            rsa_root,
            make_cert("p384 root", p384_key, ca=True, base=base),
            make_cert("p521 root", p521_key, ca=True, base=base),
        ]
        return cls(
            root_key,
            root,
            inter_key,
            inter,
            leaf_key,
            leaf,
            rsa_root_key,
            rsa_root,
            rsa_leaf_key,
            rsa_leaf,
            p384_key,
            p521_key,
            bundle,
        )


@pytest.fixture(scope="module")
def ts() -> TokenServer:
    return TokenServer.create()


@pytest.fixture(scope="module")
def authz(ts: TokenServer) -> TokenAuthorizer:
    return TokenAuthorizer(TokenAuthConfig(REALM, SERVICE, ISSUER, ts.bundle))


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


_HASH: dict[str, hashes.HashAlgorithm] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}


def sign(alg: str, key: Key, message: bytes) -> bytes:
    digest = _HASH[alg[2:]]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(digest)))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg.startswith("PS"):
        return key.sign(message, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
    return key.sign(message, padding.PKCS1v15(), digest)


def default_alg(key: Key) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    return {256: "ES256", 384: "ES384", 521: "ES512"}[key.curve.key_size]


def claims(now: int = NOW, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now - 10,
        "jti": "abc",
        "access": [{"type": "repository", "name": GUN, "actions": ["push", "pull"]}],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def grant(
    *actions: str, name: str = GUN, type: str = "repository", now: int = NOW
) -> dict[str, Any]:
    return claims(now, access=[{"type": type, "name": name, "actions": list(actions)}])


def token(
    key: Key,
    *,
    kid: bool = False,
    x5c: list[x509.Certificate] | None = None,
    jwk: dict[str, Any] | None = None,
    alg: str | None = None,
    body: dict[str, Any] | None = None,
    header: dict[str, Any] | None = None,
) -> str:
    """A JWT signed by ``key``; the key is named by x5c, jwk and/or kid as asked."""
    alg = alg or default_alg(key)
    head: dict[str, Any] = {"typ": "JWT", "alg": alg}
    if x5c is not None:
        head["x5c"] = [der64(c) for c in x5c]
    if jwk is not None:
        head["jwk"] = jwk
    if kid:
        head["kid"] = libtrust_key_id(key.public_key())
    head.update(header or {})
    signing_input = (
        f"{b64u(json.dumps(head).encode())}.{b64u(json.dumps(body or claims()).encode())}"
    )
    return f"{signing_input}.{b64u(sign(alg, key, signing_input.encode()))}"


def jwk_of(key: Key, **extra: Any) -> dict[str, Any]:
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        n, e = pub.public_numbers().n, pub.public_numbers().e
        out = {"kty": "RSA", "n": b64u(n.to_bytes((n.bit_length() + 7) // 8, "big")), "e": "AQAB"}
        assert e == 65537
    else:
        size = (pub.curve.key_size + 7) // 8
        crv = {256: "P-256", 384: "P-384", 521: "P-521"}[pub.curve.key_size]
        nums = pub.public_numbers()
        out = {"kty": "EC", "crv": crv}
        out |= {"x": b64u(nums.x.to_bytes(size, "big")), "y": b64u(nums.y.to_bytes(size, "big"))}
    return out | extra


PUSH_PULL = required_access("POST", PathKind.UPDATE, GUN)
PULL = required_access("GET", PathKind.METADATA_GET, GUN)
ADMIN = required_access("DELETE", PathKind.DELETE, GUN)
CATALOG = required_access("GET", PathKind.CATALOG, None)


def check(
    authz: TokenAuthorizer, tok: str, required: list[Access] = PUSH_PULL, **kw: Any
) -> Challenge | AuthOK:
    kw.setdefault("now", NOW)
    return authz.authorize(f"Bearer {tok}", required, **kw)


def assert_ok(result: Challenge | AuthOK, subject: str = "alice") -> None:
    assert result == AuthOK(subject), getattr(result, "reason", result)


def assert_refused(result: Challenge | AuthOK, error: str = "invalid_token") -> Challenge:
    assert isinstance(result, Challenge), result
    assert result.error == error, result.reason
    assert result.www_authenticate.endswith(f',error="{error}"')
    return result


# -- the route table ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "kind", "actions"),
    [
        ("GET", "metadata_get", {"pull"}),
        ("GET", "changefeed_gun", {"pull"}),
        ("POST", "update", {"push", "pull"}),
        ("GET", "key_get", {"push", "pull"}),
        ("POST", "key_rotate", {"*"}),
        ("DELETE", "delete", {"*"}),
    ],
)
def test_required_access_table(method: str, kind: str, actions: set[str]) -> None:
    assert required_access(method, kind, GUN) == [Access("repository", GUN, frozenset(actions))]


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD", "PUT", "DELETE"])
def test_catalog_routes_need_registry_catalog_star(method: str) -> None:
    assert required_access(method, "catalog", None) == [
        Access("registry", "catalog", frozenset({"*"}))
    ]


def test_required_access_refuses_miswired_routes() -> None:
    with pytest.raises(ValueError, match="GET"):
        required_access("POST", "metadata_get", GUN)
    with pytest.raises(ValueError, match="GUN"):
        required_access("POST", "update", None)
    with pytest.raises(ValueError):
        required_access("GET", "nonsense", GUN)


# -- challenge format ---------------------------------------------------------

PUSH_PULL_BODY = (
    b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":['
    b'{"Type":"repository","Class":"","Name":"example.com/app","Action":"push"},'
    b'{"Type":"repository","Class":"","Name":"example.com/app","Action":"pull"}]}]}\n'
)
PUSH_PULL_HEADER = (
    'Bearer realm="https://auth.example.com/token",service="notary-server",'
    'scope="repository:example.com/app:push,pull"'
)


@pytest.mark.parametrize("header", [None, "", "Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer  x"])
def test_no_bearer_token_gets_challenge_without_error(
    authz: TokenAuthorizer, header: str | None
) -> None:
    result = authz.authorize(header, PUSH_PULL, now=NOW)
    assert isinstance(result, Challenge)
    assert result.error is None
    assert result.www_authenticate == PUSH_PULL_HEADER
    assert result.body == PUSH_PULL_BODY
    assert result.status == 401
    assert result.headers == {
        "WWW-Authenticate": PUSH_PULL_HEADER,
        "Content-Type": "application/json; charset=utf-8",
    }


def test_invalid_and_insufficient_challenges_exact(authz: TokenAuthorizer, ts: TokenServer) -> None:
    bad = assert_refused(check(authz, "a.b.c"))
    assert bad.www_authenticate == PUSH_PULL_HEADER + ',error="invalid_token"'
    assert bad.body == PUSH_PULL_BODY
    short = assert_refused(
        check(authz, token(ts.root_key, kid=True, body=grant("pull"))), "insufficient_scope"
    )
    assert short.www_authenticate == PUSH_PULL_HEADER + ',error="insufficient_scope"'
    assert short.body == PUSH_PULL_BODY


def test_pull_and_catalog_challenges_exact(authz: TokenAuthorizer) -> None:
    pull = authz.authorize(None, PULL)
    assert isinstance(pull, Challenge)
    assert pull.www_authenticate.endswith(',scope="repository:example.com/app:pull"')
    assert json.loads(pull.body)["errors"][0]["detail"] == [
        {"Type": "repository", "Class": "", "Name": GUN, "Action": "pull"}
    ]
    cat = authz.authorize(None, CATALOG)
    assert isinstance(cat, Challenge)
    assert cat.www_authenticate == (
        'Bearer realm="https://auth.example.com/token",service="notary-server",'
        'scope="registry:catalog:*"'
    )
    assert cat.body == (
        b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":'
        b'[{"Type":"registry","Class":"","Name":"catalog","Action":"*"}]}]}\n'
    )


def test_challenge_quotes_hostile_gun_like_go(authz: TokenAuthorizer) -> None:
    gun = 'ex"a<m>&p\\le\r\nSet-Cookie: x'
    result = authz.authorize(None, required_access("GET", "metadata_get", gun))
    assert isinstance(result, Challenge)
    assert result.www_authenticate.endswith(
        ',scope="repository:ex\\"a<m>&p\\\\le\\r\\nSet-Cookie: x:pull"'
    )
    assert "\r" not in result.www_authenticate and "\n" not in result.www_authenticate
    assert b'"Name":"ex\\"a\\u003cm\\u003e\\u0026p\\\\le\\r\\nSet-Cookie: x"' in result.body
    assert json.loads(result.body)["errors"][0]["detail"][0]["Name"] == gun


def test_autoredirect_realm_uses_host(ts: TokenServer) -> None:
    cfg = TokenAuthConfig(REALM, SERVICE, ISSUER, ts.bundle, autoredirect=True)
    result = TokenAuthorizer(cfg).authorize(None, PULL, host="notary.example.com:4443")
    assert isinstance(result, Challenge)
    assert result.www_authenticate.startswith(
        'Bearer realm="https://notary.example.com:4443/auth/token",'
    )


# -- accepted tokens: every key resolution path -------------------------------


def test_x5c_chain_es256(authz: TokenAuthorizer, ts: TokenServer) -> None:
    assert_ok(check(authz, token(ts.leaf_key, x5c=[ts.leaf, ts.inter])))


def test_x5c_chain_rs256_and_ps256(authz: TokenAuthorizer, ts: TokenServer) -> None:
    for alg in ("RS256", "RS512", "PS256", "PS384"):
        assert_ok(check(authz, token(ts.rsa_leaf_key, x5c=[ts.rsa_leaf, ts.inter], alg=alg)))


def test_x5c_root_certificate_itself(authz: TokenAuthorizer, ts: TokenServer) -> None:
    assert_ok(check(authz, token(ts.root_key, x5c=[ts.root])))
    assert_ok(check(authz, token(ts.rsa_root_key, x5c=[ts.rsa_root])))


def test_kid_es256_rs256_es384_es512(authz: TokenAuthorizer, ts: TokenServer) -> None:
    for key in (ts.root_key, ts.rsa_root_key, ts.p384_key, ts.p521_key):
        assert_ok(check(authz, token(key, kid=True)))


def test_jwk_of_trusted_key(authz: TokenAuthorizer, ts: TokenServer) -> None:
    assert_ok(check(authz, token(ts.root_key, jwk=jwk_of(ts.root_key))))
    assert_ok(check(authz, token(ts.rsa_root_key, jwk=jwk_of(ts.rsa_root_key))))
    kid = libtrust_key_id(ts.root_key.public_key())
    assert_ok(check(authz, token(ts.root_key, jwk=jwk_of(ts.root_key, kid=kid))))


def test_jwk_with_verifying_x5c(authz: TokenAuthorizer, ts: TokenServer) -> None:
    for key, cert in ((ts.leaf_key, ts.leaf), (ts.rsa_leaf_key, ts.rsa_leaf)):
        jwk = jwk_of(key, x5c=[der64(cert), der64(ts.inter)])
        assert_ok(check(authz, token(key, jwk=jwk)))


def test_x5c_takes_precedence_over_kid(authz: TokenAuthorizer, ts: TokenServer) -> None:
    # distribution uses the first of x5c / jwk / kid that is present, nothing else
    tok = token(ts.leaf_key, x5c=[ts.leaf, ts.inter], header={"kid": "junk"})
    assert_ok(check(authz, tok))
    wrong = token(ts.root_key, x5c=[ts.leaf, ts.inter], kid=True)
    assert_refused(check(authz, wrong))


def test_scheme_is_case_insensitive_and_subject_returned(
    authz: TokenAuthorizer, ts: TokenServer
) -> None:
    tok = token(ts.root_key, kid=True, body=claims(sub="bob"))
    for scheme in ("bearer", "BEARER", "BeArEr"):
        assert_ok(authz.authorize(f"{scheme} {tok}", PUSH_PULL, now=NOW), "bob")
    anon = token(ts.root_key, kid=True, body=claims(sub=None))
    assert_ok(check(authz, anon), "")


def test_audience_list_containing_service(authz: TokenAuthorizer, ts: TokenServer) -> None:
    tok = token(ts.root_key, kid=True, body=claims(aud=["registry", SERVICE]))
    assert_ok(check(authz, tok))


def test_star_grants_everything_for_its_repository(authz: TokenAuthorizer, ts: TokenServer) -> None:
    tok = token(ts.root_key, kid=True, body=grant("*"))
    for required in (PULL, PUSH_PULL, ADMIN, required_access("POST", "key_rotate", GUN)):
        assert_ok(check(authz, tok, required))


def test_catalog_grant(authz: TokenAuthorizer, ts: TokenServer) -> None:
    tok = token(ts.root_key, kid=True, body=grant("*", type="registry", name="catalog"))
    assert_ok(check(authz, tok, CATALOG))


def test_grants_merge_across_entries(authz: TokenAuthorizer, ts: TokenServer) -> None:
    body = claims(
        access=[
            {"type": "repository", "name": GUN, "actions": ["push"]},
            {"type": "repository", "class": "image", "name": GUN, "actions": ["pull"]},
        ]
    )
    assert_ok(check(authz, token(ts.root_key, kid=True, body=body)))


# -- time ---------------------------------------------------------------------


def test_expiry_leeway(authz: TokenAuthorizer, ts: TokenServer) -> None:
    assert_ok(check(authz, token(ts.root_key, kid=True, body=claims(exp=NOW - 30))))
    assert_ok(check(authz, token(ts.root_key, kid=True, body=claims(exp=NOW - 60))))
    assert_refused(check(authz, token(ts.root_key, kid=True, body=claims(exp=NOW - 61))))
    assert_refused(check(authz, token(ts.root_key, kid=True, body=claims(exp=None))))


def test_not_before_leeway(authz: TokenAuthorizer, ts: TokenServer) -> None:
    assert_ok(check(authz, token(ts.root_key, kid=True, body=claims(nbf=NOW + 30))))
    assert_refused(check(authz, token(ts.root_key, kid=True, body=claims(nbf=NOW + 61))))
    assert_ok(check(authz, token(ts.root_key, kid=True, body=claims(nbf=None))))


@pytest.mark.parametrize("exp", [float(NOW + 300), str(NOW + 300), True, 2**63, [NOW + 300]])
def test_exp_must_be_an_int64(authz: TokenAuthorizer, ts: TokenServer, exp: object) -> None:
    assert_refused(check(authz, token(ts.root_key, kid=True, body=claims(exp=exp))))


# -- attacks: signatures and keys ---------------------------------------------


def test_wrong_signature(authz: TokenAuthorizer, ts: TokenServer) -> None:
    tok = token(ts.root_key, kid=True)
    head, body, sig = tok.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[5] ^= 1
    assert_refused(check(authz, f"{head}.{body}.{b64u(bytes(raw))}"))


def test_claims_swapped_under_a_valid_signature(authz: TokenAuthorizer, ts: TokenServer) -> None:
    head, _, sig = token(ts.root_key, kid=True, body=grant("pull")).split(".")
    _, escalated, _ = token(ts.root_key, kid=True, body=grant("*")).split(".")
    assert_refused(check(authz, f"{head}.{escalated}.{sig}", ADMIN))


def test_missing_signature(authz: TokenAuthorizer, ts: TokenServer) -> None:
    head, body, _ = token(ts.root_key, kid=True).split(".")
    assert_refused(check(authz, f"{head}.{body}."))


def test_x5c_chain_not_to_the_root_bundle(authz: TokenAuthorizer) -> None:
    rogue_key, leaf_key = ec_key(), ec_key()
    rogue = make_cert("token root", rogue_key, ca=True)  # same name as the real root
    leaf = make_cert("token signer", leaf_key, (rogue, rogue_key))
    assert_refused(check(authz, token(leaf_key, x5c=[leaf, rogue])))
    assert_refused(check(authz, token(leaf_key, x5c=[leaf])))


def test_self_signed_x5c(authz: TokenAuthorizer) -> None:
    key = ec_key()
    for ca in (True, False, None):
        assert_refused(check(authz, token(key, x5c=[make_cert("token root", key, ca=ca)])))


def test_valid_x5c_but_signed_by_another_key(authz: TokenAuthorizer, ts: TokenServer) -> None:
    attacker = ec_key()
    assert_refused(check(authz, token(attacker, x5c=[ts.leaf, ts.inter])))
    assert_refused(check(authz, token(attacker, x5c=[ts.root])))


def test_x5c_through_a_non_ca_intermediate(authz: TokenAuthorizer, ts: TokenServer) -> None:
    key = ec_key()
    sub = make_cert("sub signer", key, (ts.leaf, ts.leaf_key))
    assert_refused(check(authz, token(key, x5c=[sub, ts.leaf, ts.inter])))
    no_sign = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    inter2_key = ec_key()
    inter2 = make_cert("no-sign CA", inter2_key, (ts.root, ts.root_key), ca=True, key_usage=no_sign)
    leaf2 = make_cert("signer", key, (inter2, inter2_key))
    assert_refused(check(authz, token(key, x5c=[leaf2, inter2])))


def test_x5c_outside_validity(authz: TokenAuthorizer, ts: TokenServer) -> None:
    key = ec_key()
    expired = make_cert("old signer", key, (ts.inter, ts.inter_key), days=(-30, -1))
    future = make_cert("new signer", key, (ts.inter, ts.inter_key), days=(1, 30))
    assert_refused(check(authz, token(key, x5c=[expired, ts.inter])))
    assert_refused(check(authz, token(key, x5c=[future, ts.inter])))
    later = NOW + 400 * 86400  # the root bundle certificate itself has expired
    body = claims(exp=later + 300, nbf=later)
    assert_refused(check(authz, token(ts.root_key, x5c=[ts.root], body=body), now=later))
    assert_ok(check(authz, token(ts.root_key, kid=True, body=body), now=later))  # as Go does


def test_x5c_garbage(authz: TokenAuthorizer, ts: TokenServer) -> None:
    for x5c in (["not base64!"], ["AAAA"], [1], "MIIB", [der64(ts.leaf) + "\n"]):
        assert_refused(check(authz, token(ts.leaf_key, header={"x5c": x5c})))
    many = [der64(ts.leaf)] + [der64(ts.inter)] * 20
    assert_refused(check(authz, token(ts.leaf_key, header={"x5c": many})))


def test_untrusted_jwk(authz: TokenAuthorizer) -> None:
    attacker = ec_key()
    assert_refused(check(authz, token(attacker, jwk=jwk_of(attacker))))
    kid = libtrust_key_id(attacker.public_key())
    assert_refused(check(authz, token(attacker, jwk=jwk_of(attacker, kid=kid))))


def test_jwk_x5c_must_certify_the_jwk_key(authz: TokenAuthorizer, ts: TokenServer) -> None:
    attacker = ec_key()
    jwk = jwk_of(attacker, x5c=[der64(ts.leaf), der64(ts.inter)])
    assert_refused(check(authz, token(attacker, jwk=jwk)))


def test_jwk_kid_must_match_key(authz: TokenAuthorizer, ts: TokenServer) -> None:
    other = libtrust_key_id(ts.rsa_root_key.public_key())
    assert_refused(check(authz, token(ts.root_key, jwk=jwk_of(ts.root_key, kid=other))))


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        {"kty": "EC", "crv": "P-256", "x": b64u(b"\1" * 32), "y": b64u(b"\2" * 32)},  # off-curve
        {"kty": "EC", "crv": ["P-256"], "x": "", "y": ""},
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "OKP", "crv": "Ed25519", "x": b64u(b"\0" * 32)},
        {"kty": "RSA", "n": b64u(b"\xff" * 64), "e": "AQAB"},  # 512-bit
        "not an object",
    ],
)
def test_bad_jwk(authz: TokenAuthorizer, ts: TokenServer, jwk: object) -> None:
    assert_refused(check(authz, token(ts.root_key, header={"jwk": jwk})))


def test_kid_of_unknown_key(authz: TokenAuthorizer, ts: TokenServer) -> None:
    attacker = ec_key()
    assert_refused(check(authz, token(attacker, kid=True)))
    real = libtrust_key_id(ts.root_key.public_key())
    for kid in (real.lower(), real.replace(":", ""), real[:-5], real + ":AAAA"):
        assert_refused(check(authz, token(ts.root_key, header={"kid": kid})))


def test_no_key_named(authz: TokenAuthorizer, ts: TokenServer) -> None:
    assert_refused(check(authz, token(ts.root_key)))
    assert_refused(check(authz, token(ts.root_key, header={"x5c": [], "kid": ""})))


# -- attacks: algorithms ------------------------------------------------------


def _unsigned(head: dict[str, Any], body: dict[str, Any], sig: bytes = b"") -> str:
    return f"{b64u(json.dumps(head).encode())}.{b64u(json.dumps(body).encode())}.{b64u(sig)}"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", None, 256])
def test_alg_none(authz: TokenAuthorizer, ts: TokenServer, alg: object) -> None:
    kid = libtrust_key_id(ts.root_key.public_key())
    head = {"typ": "JWT", "alg": alg, "kid": kid}
    assert_refused(check(authz, _unsigned(head, claims())))
    assert_refused(check(authz, _unsigned(head, claims(), b"x" * 64)))


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_with_public_key_as_secret(authz: TokenAuthorizer, ts: TokenServer, alg: str) -> None:
    pub = ts.root_key.public_key()
    secrets = [
        pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        ts.root.public_bytes(serialization.Encoding.PEM),
    ]
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    for names in ({"kid": libtrust_key_id(pub)}, {"x5c": [der64(ts.root)]}):
        head = {"typ": "JWT", "alg": alg, **names}
        signing_input = f"{b64u(json.dumps(head).encode())}.{b64u(json.dumps(claims()).encode())}"
        for secret in secrets:
            mac = hmac.new(secret, signing_input.encode(), digest).digest()
            assert_refused(check(authz, f"{signing_input}.{b64u(mac)}"))


def test_rs256_header_with_ec_key(authz: TokenAuthorizer, ts: TokenServer) -> None:
    good = token(ts.root_key, kid=True)
    head = {"typ": "JWT", "alg": "RS256", "kid": libtrust_key_id(ts.root_key.public_key())}
    _, body, sig = good.split(".")
    assert_refused(check(authz, f"{b64u(json.dumps(head).encode())}.{body}.{sig}"))
    # and a genuine ES256 signature over the RS256 header
    assert_refused(check(authz, token(ts.root_key, kid=True, header={"alg": "RS256"})))
    assert_refused(check(authz, token(ts.root_key, kid=True, header={"alg": "PS256"})))


def test_es256_header_with_rsa_key(authz: TokenAuthorizer, ts: TokenServer) -> None:
    tok = token(ts.rsa_root_key, kid=True, alg="RS256", header={"alg": "ES256"})
    assert_refused(check(authz, tok))


def test_es_alg_must_match_curve(authz: TokenAuthorizer, ts: TokenServer) -> None:
    # a P-256 signature over SHA-384, labelled ES384, and a P-384 one labelled ES256
    assert_refused(check(authz, token(ts.root_key, kid=True, alg="ES384")))
    assert_refused(check(authz, token(ts.p384_key, kid=True, alg="ES256")))


def test_critical_header_extension(authz: TokenAuthorizer, ts: TokenServer) -> None:
    assert_refused(check(authz, token(ts.root_key, kid=True, header={"crit": ["b64"]})))


# -- attacks: claims ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        claims(iss="evil.example.com"),
        claims(iss=None),
        claims(iss=ISSUER + " "),
        claims(aud="registry"),
        claims(aud=["registry"]),
        claims(aud=None),
        claims(aud=[SERVICE, 1]),
        claims(access="repository:example.com/app:*"),
        claims(access=[["repository", GUN, ["*"]]]),
        claims(access=[{"type": "repository", "name": GUN, "actions": "*"}]),
        claims(sub=7),
    ],
    ids=lambda b: json.dumps(b, sort_keys=True)[:60],
)
def test_bad_claims(authz: TokenAuthorizer, ts: TokenServer, body: dict[str, Any]) -> None:
    assert_refused(check(authz, token(ts.root_key, kid=True, body=body)))


@pytest.mark.parametrize(
    ("body", "required"),
    [
        (grant("pull"), PUSH_PULL),  # pull-only token for a push
        (grant("push"), PULL),  # push does not imply pull
        (grant("push"), PUSH_PULL),
        (grant("push", "pull"), ADMIN),  # delete and key rotation need "*"
        (grant("*", name="example.com/other"), PULL),  # another GUN
        (grant("*", name="example.com/ap"), PULL),  # a prefix of the GUN
        (grant("*", name="example.com/app/x"), PULL),  # the GUN is a prefix of it
        (grant("*", name="example.com/app "), PULL),
        (grant("*", name="a/b"), required_access("GET", "metadata_get", "a/bc")),
        (grant("*", name="a/bc"), required_access("GET", "metadata_get", "a/b")),
        (grant("*", type="registry", name="catalog"), PULL),  # catalog is not a repository
        (grant("*"), CATALOG),  # and a repository is not the catalog
        (grant("*", type="repository", name="catalog"), CATALOG),
        (grant("pull", type="registry", name="catalog"), CATALOG),
        (grant("PULL", "Push"), PUSH_PULL),  # actions are case-sensitive
        (claims(access=None), PULL),
        (claims(access=[]), PULL),
        (claims(access=[{"type": "repository", "name": GUN}]), PULL),
    ],
)
def test_insufficient_scope(
    authz: TokenAuthorizer, ts: TokenServer, body: dict[str, Any], required: list[Access]
) -> None:
    assert_refused(
        check(authz, token(ts.root_key, kid=True, body=body), required), "insufficient_scope"
    )


# -- malformed input ----------------------------------------------------------


def test_huge_token_refused_even_if_valid(authz: TokenAuthorizer, ts: TokenServer) -> None:
    tok = token(ts.root_key, kid=True, body=claims(pad="x" * 70_000))
    assert_refused(check(authz, tok))


def _seg(obj: object) -> str:
    return b64u(obj if isinstance(obj, bytes) else json.dumps(obj).encode())


ES256 = _seg({"alg": "ES256"})
CLAIMS_SEG = _seg(claims())
DUPLICATE_ALG = b'{"alg":"ES256","alg":"none"}'
QUOTED_EXP = b'"exp"'


@pytest.mark.parametrize(
    "tok",
    [
        "",
        ".",
        "..",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJFUzI1NiJ9",
        "!!!.???.***",
        f"{ES256}.{CLAIMS_SEG}.A",  # base64 length 1 mod 4
        f"{ES256}==.{CLAIMS_SEG}.AAAA",  # padding is not base64url
        f"{ES256}.{CLAIMS_SEG}.AA+/",  # standard base64 alphabet
        f"{_seg(b'not json')}.{CLAIMS_SEG}.AAAA",
        f"{_seg(bytes([0xFF, 0xFE]))}.{CLAIMS_SEG}.AAAA",
        f"{_seg([1, 2])}.{CLAIMS_SEG}.AAAA",
        f"{ES256}.{_seg('claims')}.AAAA",
        f"{_seg(DUPLICATE_ALG)}.{CLAIMS_SEG}.AAAA",
        f"{ES256}.{_seg(b'{' + QUOTED_EXP + b':NaN}')}.AAAA",
        f"{ES256}.{_seg(b'{' + QUOTED_EXP + b':' + b'9' * 5000 + b'}')}.AAAA",
        f"{ES256}.{_seg(b'[' * 10_000 + b']' * 10_000)}.AAAA",
    ],
)
def test_malformed_tokens(authz: TokenAuthorizer, tok: str) -> None:
    assert_refused(check(authz, tok))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
HEADER = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["ES256", "RS256", "PS512", "none", "HS256"]) | JSON,
        "kid": st.text(max_size=60) | JSON,
        "x5c": st.lists(st.text(max_size=40) | JSON, max_size=3) | JSON,
        "jwk": st.fixed_dictionaries(
            {"kty": st.sampled_from(["EC", "RSA", "oct"]) | JSON},
            optional={"crv": JSON | st.just("P-256"), "x": JSON, "y": JSON, "n": JSON, "e": JSON},
        )
        | JSON,
    },
)
CLAIMS = st.fixed_dictionaries(
    {},
    optional={
        "iss": st.just(ISSUER) | JSON,
        "aud": st.just(SERVICE) | JSON,
        "exp": st.just(NOW) | JSON,
        "nbf": JSON,
        "access": st.lists(st.dictionaries(st.sampled_from(["type", "name", "actions"]), JSON))
        | JSON,
    },
)


@settings(max_examples=300, deadline=None)
@given(header=st.text(max_size=300))
def test_fuzz_authorization_header(authz: TokenAuthorizer, header: str) -> None:
    assert isinstance(authz.authorize(header, PUSH_PULL, now=NOW), Challenge)
    result = authz.authorize("Bearer " + header, CATALOG, now=NOW)
    assert isinstance(result, Challenge)
    assert result.error in (None, "invalid_token")


@settings(max_examples=300, deadline=None)
@given(header=HEADER, body=CLAIMS, sig=st.binary(max_size=140))
def test_fuzz_structured_tokens(
    authz: TokenAuthorizer, header: dict[str, Any], body: dict[str, Any], sig: bytes
) -> None:
    result = check(authz, _unsigned(header, body, sig))
    assert_refused(result)


@settings(max_examples=200, deadline=None)
@given(
    segments=st.lists(st.from_regex(r"[A-Za-z0-9_-]{0,80}", fullmatch=True), min_size=3, max_size=3)
)
def test_fuzz_base64url_segments(authz: TokenAuthorizer, segments: list[str]) -> None:
    assert_refused(check(authz, ".".join(segments)))


# -- key IDs and configuration ------------------------------------------------


def test_libtrust_key_id_format(ts: TokenServer) -> None:
    pub = ts.root_key.public_key()
    kid = libtrust_key_id(pub)
    groups = kid.split(":")
    assert len(groups) == 12 and all(len(g) == 4 for g in groups)
    spki = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert kid.replace(":", "") == base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode()


def test_config_from_notary_options(tmp_path: Path, ts: TokenServer) -> None:
    (tmp_path / "auth.crt").write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ts.bundle)
    )
    opts = {
        "realm": REALM,
        "service": SERVICE,
        "issuer": ISSUER,
        "rootcertbundle": "./auth.crt",
        "autoredirect": True,
    }
    cfg = TokenAuthConfig.from_options(opts, base_dir=tmp_path)
    assert cfg.root_certs == ts.bundle
    assert (cfg.realm, cfg.service, cfg.issuer, cfg.autoredirect) == (REALM, SERVICE, ISSUER, True)
    assert cfg.leeway_seconds == 60
    authz = TokenAuthorizer(cfg)
    assert_ok(check(authz, token(ts.leaf_key, x5c=[ts.leaf, ts.inter])))


@pytest.mark.parametrize(
    "change",
    [
        {"realm": None},
        {"service": 7},
        {"issuer": ""},
        {"rootcertbundle": None},
        {"rootcertbundle": "./missing.crt"},
        {"rootcertbundle": "./empty.crt"},
        {"rootcertbundle": "./ed25519.crt"},
        {"autoredirect": "true"},
    ],
)
def test_config_errors(tmp_path: Path, ts: TokenServer, change: dict[str, Any]) -> None:
    (tmp_path / "auth.crt").write_bytes(ts.root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "empty.crt").write_bytes(b"no certificates here\n")
    ed = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed25519.crt").write_bytes(
        make_cert("ed", ed, ca=True).public_bytes(serialization.Encoding.PEM)
    )
    opts: dict[str, Any] = {"realm": REALM, "service": SERVICE, "issuer": ISSUER}
    opts |= {"rootcertbundle": "./auth.crt"} | change
    opts = {k: v for k, v in opts.items() if v is not None}
    with pytest.raises(AuthConfigError):
        TokenAuthConfig.from_options(opts, base_dir=tmp_path)


# -- differential test against the real notary-server -------------------------
#
# Every case is sent to Debian's notary-server 0.7.0 (token auth on, our root
# bundle) and to TokenAuthorizer; both must reach the same verdict, and their
# 401s must be byte-identical. Deliberate differences are listed separately.


@dataclass
class Live:
    ts: TokenServer
    url: str
    authz: TokenAuthorizer


ROUTES = {  # name: (method, path, required access)
    "pull": ("GET", f"/v2/{GUN}/_trust/tuf/root.json", PULL),
    "push_pull": ("GET", f"/v2/{GUN}/_trust/tuf/timestamp.key", PUSH_PULL),
    "admin": ("DELETE", f"/v2/{GUN}/_trust/tuf/", ADMIN),
    "catalog": ("GET", "/v2/", CATALOG),
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    try:
        require_notary_binaries()
    except NotaryUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)  # fail, never skip: see conftest
    ts = TokenServer.create(int(time.time()))
    workdir = tmp_path_factory.mktemp("notary-auth")
    bundle = workdir / "auth.crt"
    bundle.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ts.bundle))
    opts = {"realm": REALM, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(bundle)}
    auth = {"auth": {"type": "token", "options": opts}}
    with NotaryServer(workdir / "server", extra_config=auth) as server:
        yield Live(ts, server.url, TokenAuthorizer(TokenAuthConfig.from_options(opts)))


def raw_token(key: Key, head: bytes, body: bytes, alg: str | None = None) -> str:
    signing_input = f"{b64u(head)}.{b64u(body)}"
    return f"{signing_input}.{b64u(sign(alg or default_alg(key), key, signing_input.encode()))}"


def _bearer(tok: str) -> str:
    return f"Bearer {tok}"


def _cases(ts: TokenServer, now: int) -> dict[str, tuple[str | None, str]]:
    """name: (Authorization header, route) — built at request time, so exp/nbf are fresh."""
    c = claims(now)
    kid = token(ts.root_key, kid=True, body=c)
    rogue_key, rogue_leaf_key, attacker = ec_key(), ec_key(), ec_key()
    rogue = make_cert("token root", rogue_key, ca=True, base=now)
    rogue_leaf = make_cert("token signer", rogue_leaf_key, (rogue, rogue_key), base=now)
    head, body, sig = kid.split(".")
    flipped = bytearray(base64.urlsafe_b64decode(sig + "=="))
    flipped[3] ^= 1
    pub_pem = ts.root_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_head = {"typ": "JWT", "alg": "HS256", "kid": libtrust_key_id(ts.root_key.public_key())}
    hs_input = f"{_seg(hs_head)}.{_seg(c)}"
    hs = f"{hs_input}.{b64u(hmac.new(pub_pem, hs_input.encode(), hashlib.sha256).digest())}"
    none_head = {"typ": "JWT", "alg": "none", "kid": hs_head["kid"]}
    return {
        "no header": (None, "pull"),
        "basic": ("Basic YWxpY2U6c2VjcmV0", "pull"),
        "bearer lower case": (f"bearer {kid}", "pull"),
        "bearer two spaces": (f"Bearer  {kid}", "pull"),
        "kid ES256": (_bearer(kid), "push_pull"),
        "kid RS256": (_bearer(token(ts.rsa_root_key, kid=True, body=c)), "pull"),
        "kid ES384": (_bearer(token(ts.p384_key, kid=True, body=c)), "pull"),
        "kid ES512": (_bearer(token(ts.p521_key, kid=True, body=c)), "pull"),
        "x5c chain": (_bearer(token(ts.leaf_key, x5c=[ts.leaf, ts.inter], body=c)), "pull"),
        "x5c RSA chain": (
            _bearer(token(ts.rsa_leaf_key, x5c=[ts.rsa_leaf, ts.inter], alg="RS384", body=c)),
            "pull",
        ),
        "x5c root": (_bearer(token(ts.root_key, x5c=[ts.root], body=c)), "pull"),
        "jwk trusted": (
            _bearer(token(ts.rsa_root_key, jwk=jwk_of(ts.rsa_root_key), body=c)),
            "pull",
        ),
        "jwk x5c": (
            _bearer(
                token(
                    ts.leaf_key,
                    jwk=jwk_of(ts.leaf_key, x5c=[der64(ts.leaf), der64(ts.inter)]),
                    body=c,
                )
            ),
            "pull",
        ),
        "exp -30 s": (
            _bearer(token(ts.root_key, kid=True, body=claims(now, exp=now - 30))),
            "pull",
        ),
        "exp -75 s": (
            _bearer(token(ts.root_key, kid=True, body=claims(now, exp=now - 75))),
            "pull",
        ),
        "nbf +30 s": (
            _bearer(token(ts.root_key, kid=True, body=claims(now, nbf=now + 30))),
            "pull",
        ),
        # Well past the 60 s leeway: ``now`` is truncated to the second, so +61
        # could land inside the leeway on either server.
        "nbf +75 s": (
            _bearer(token(ts.root_key, kid=True, body=claims(now, nbf=now + 75))),
            "pull",
        ),
        "no exp": (_bearer(token(ts.root_key, kid=True, body=claims(now, exp=None))), "pull"),
        "float exp": (
            _bearer(token(ts.root_key, kid=True, body=claims(now, exp=now + 300.5))),
            "pull",
        ),
        "wrong issuer": (_bearer(token(ts.root_key, kid=True, body=claims(now, iss="x"))), "pull"),
        "wrong audience": (
            _bearer(token(ts.root_key, kid=True, body=claims(now, aud="x"))),
            "pull",
        ),
        "alg none": (_bearer(f"{_seg(none_head)}.{_seg(c)}."), "pull"),
        "HS256 with public key": (_bearer(hs), "pull"),
        "RS256 header, EC key": (
            _bearer(token(ts.root_key, kid=True, header={"alg": "RS256"}, body=c)),
            "pull",
        ),
        "ES384 header, P-256 key": (
            _bearer(token(ts.root_key, kid=True, alg="ES384", body=c)),
            "pull",
        ),
        "untrusted kid": (_bearer(token(attacker, kid=True, body=c)), "pull"),
        "untrusted jwk": (_bearer(token(attacker, jwk=jwk_of(attacker), body=c)), "pull"),
        "jwk x5c mismatch": (
            _bearer(
                token(attacker, jwk=jwk_of(attacker, x5c=[der64(ts.leaf), der64(ts.inter)]), body=c)
            ),
            "pull",
        ),
        "rogue chain": (_bearer(token(rogue_leaf_key, x5c=[rogue_leaf, rogue], body=c)), "pull"),
        "self-signed x5c": (_bearer(token(rogue_key, x5c=[rogue], body=c)), "pull"),
        "x5c, other signer": (_bearer(token(attacker, x5c=[ts.leaf, ts.inter], body=c)), "pull"),
        "flipped signature": (_bearer(f"{head}.{body}.{b64u(bytes(flipped))}"), "pull"),
        "malformed": ("Bearer a.b.c", "pull"),
        "two segments": (_bearer(f"{head}.{body}"), "pull"),
        "pull for push": (
            _bearer(token(ts.root_key, kid=True, body=grant("pull", now=now))),
            "push_pull",
        ),
        "push for pull": (
            _bearer(token(ts.root_key, kid=True, body=grant("push", now=now))),
            "pull",
        ),
        "other GUN": (
            _bearer(token(ts.root_key, kid=True, body=grant("*", name=GUN + "x", now=now))),
            "pull",
        ),
        "prefix GUN": (
            _bearer(token(ts.root_key, kid=True, body=grant("*", name=GUN[:-1], now=now))),
            "pull",
        ),
        "catalog for repo": (
            _bearer(
                token(
                    ts.root_key, kid=True, body=grant("*", type="registry", name="catalog", now=now)
                )
            ),
            "pull",
        ),
        "repo for catalog": (
            _bearer(token(ts.root_key, kid=True, body=grant("*", now=now))),
            "catalog",
        ),
        "catalog": (
            _bearer(
                token(
                    ts.root_key, kid=True, body=grant("*", type="registry", name="catalog", now=now)
                )
            ),
            "catalog",
        ),
        "push,pull for delete": (_bearer(kid), "admin"),
        "* for delete": (_bearer(token(ts.root_key, kid=True, body=grant("*", now=now))), "admin"),
    }


def _request(url: str, method: str, authorization: str | None) -> tuple[int, str, bytes]:
    headers = {"Authorization": authorization} if authorization else {}
    resp = httpx.request(method, url, headers=headers, timeout=10)
    return resp.status_code, resp.headers.get("www-authenticate", ""), resp.content


def _error_param(header: str) -> str | None:
    for err in ("invalid_token", "insufficient_scope"):
        if header.endswith(f',error="{err}"'):
            return err
    return None


@pytest.mark.interop
def test_same_verdicts_as_real_notary_server(live: Live) -> None:
    now = int(time.time())
    mismatches, verdicts = [], []
    names: list[tuple[str, tuple[str, str | None], int]] = []
    for name, (authorization, route) in _cases(live.ts, now).items():
        method, path, required = ROUTES[route]
        status, www, body = _request(live.url + path, method, authorization)
        ours = live.authz.authorize(authorization, required)
        theirs = ("401", _error_param(www)) if status == 401 else ("ok", None)
        mine = ("401", ours.error) if isinstance(ours, Challenge) else ("ok", None)
        verdicts.append(theirs)
        names.append((name, theirs, status))
        if theirs != mine:
            mismatches.append(f"{name}: notary {theirs} {status}, vouch {mine} {ours}")
        elif isinstance(ours, Challenge) and route != "push_pull":
            assert (ours.www_authenticate, ours.body) == (www, body), name
        elif isinstance(ours, Challenge):  # notary's action order is random here
            assert ours.www_authenticate.replace("push,pull", "pull,push") in (
                www,
                www.replace("push,pull", "pull,push"),
            )
            assert (
                ours.body == body
                or json.loads(ours.body)["errors"][0]["detail"][::-1]
                == (json.loads(body)["errors"][0]["detail"])
            )
    assert not mismatches, "\n".join(mismatches)
    # the positive cases really were accepted
    assert verdicts.count(("ok", None)) == 14, names


@pytest.mark.interop
def test_deliberate_differences_from_notary(live: Live) -> None:
    """Where vouch decides differently on purpose, shown against the real server."""
    ts, now = live.ts, int(time.time())
    pulls = PULL
    method, path, _ = ROUTES["pull"]
    dup_claims = json.dumps(claims(now))[:-1] + f', "iss": "{ISSUER}"}}'
    looser = {  # notary 0.7.0 refuses, vouch accepts (newer distribution does too)
        "aud list": token(ts.root_key, kid=True, body=claims(now, aud=[SERVICE, "other"])),
        "PS256": token(ts.rsa_root_key, kid=True, alg="PS256", body=claims(now)),
    }
    stricter = {  # notary accepts, vouch refuses
        "duplicate claim": raw_token(
            ts.root_key,
            json.dumps({"alg": "ES256", "kid": libtrust_key_id(ts.root_key.public_key())}).encode(),
            dup_claims.encode(),
        ),
        "crit header": token(ts.root_key, kid=True, header={"crit": ["x"]}, body=claims(now)),
        "token > 64 KiB": token(ts.root_key, kid=True, body=claims(now, pad="x" * 70_000)),
    }
    for name, tok in looser.items():
        assert _request(live.url + path, method, _bearer(tok))[0] == 401, name
        assert_ok(live.authz.authorize(_bearer(tok), pulls))
    for name, tok in stricter.items():
        assert _request(live.url + path, method, _bearer(tok))[0] == 404, name
        assert_refused(live.authz.authorize(_bearer(tok), pulls))
