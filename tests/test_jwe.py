"""notary-signer's private-key JWE (PBES2-HS256+A128KW / A256GCM).

Known answers come from outside vouch's code: a row written by the real
notary-signer 0.7.0 (jose2go), jose2go's own PBES2 test vector, RFC 3394's
key-wrap vector, and a second construction of the whole format written here
with different primitives (hashlib's PBKDF2, a hand-written RFC 3394 over
AES-ECB).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct

import pytest
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vouch.crypto import jwe
from vouch.tuf.keys import Key

# A throw-away timestamp key created by the real notary-signer 0.7.0 (Debian) through
# notary-server's GET timestamp.key, with NOTARY_SIGNER_ALIAS1=pw1: the row's `private`.
NOTARY_SIGNER_TOKEN = (
    "eyJhbGciOiJQQkVTMi1IUzI1NitBMTI4S1ciLCJlbmMiOiJBMjU2R0NNIiwicDJjIjo4MTkyLCJwMnMiOiJLZ0N6N1ZL"
    "OFJ5ZEQzU3M5In0.1IGxzucKQBkQPwgSy-9rr1SeRCPheBp6NuoMkzP78zeok7sJdUqE8A.plvMbE1L5gQ4T9Tm.tcSWfw"
    "JmnWC8PgA63qW3w9YiggOxBrKQI8Vr2D4xTkFQftugldzXzPNFXRAbzY5aQcFTCLaKpFepainTT9QIwcxUDo1hsdQJQ_63"
    "gok9-HeuNzLT63G6zAaNKt0sMt0x2hqT6Rq63Iv3pc6lakBqzPf6ZnqtRhv3dQ.a3A8cmy9b2eQy3c9xovbEA"
)
NOTARY_SIGNER_PUBLIC = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEWbt9I2IkcOia1YtcVhxxdcn0WIDnvRMrKE1jUj3JET9NEqiTEIkIetJ4"
    "clSyc9GN/YeDR9M44/sdkLOY667ynw=="
)
NOTARY_SIGNER_KEY_ID = "6027a07315fa5dc72974ffe6a4954a5f9c198798bc87eaa1810bf302a26b980f"

# jose2go's TestDecrypt_PBSE2_HS256_A128KW_A128CBC_HS256: same key management as
# notary-signer (p2c 8192, 12-byte salt), content encrypted with A128CBC-HS256 instead.
JOSE2GO_TOKEN = (
    "eyJhbGciOiJQQkVTMi1IUzI1NitBMTI4S1ciLCJlbmMiOiJBMTI4Q0JDLUhTMjU2IiwicDJjIjo4MTkyLCJwMnMiOiJi"
    "MFlFVmxMemtaNW9UUjBMIn0.dhPAhJ9kmaEbP-02VtEoPOF2QSEYM5085V6zYt1U1qIlVNRcHTGDgQ.4QAAq0dVQT41dQK"
    "DG7dhRA.H9MgJmesbU1ow6GCa0lEMwv8A_sHvgaWKkaMcdoj_z6O8LaMSgquxA-G85R_5hEILnHUnFllNJ48oJY7VmAJw"
    "0BQW73dMnn58u161S6Ftq7Mjxxq7bcksWvFTVtG5RsqqYSol5BZz5xm8Fcj-y5BMYMvrsCyQhYdeGEHkAvwzRdvZ8pGMs"
    "U2XPzl6GqxGjjuRh2vApAeNrj6MwKuD-k6AR0MH46EiNkVCmMkd2w8CNAXjJe9z97zky93xbxlOLozaC3NBRO2Q4bmdGd"
    "Rg5y4Ew.xNqRi0ouQd7uo5UrPraedg"
)
JOSE2GO_PAYLOAD = (
    b'{"exp":1392553211,"sub":"alice","nbf":1392552611,"aud":["https:\\/\\/app-one.com",'
    b'"https:\\/\\/app-two.com"],"iss":"https:\\/\\/openid.net",'
    b'"jti":"586dd129-a29f-49c8-9de7-454af1155e27","iat":1392552611}'
)


# -- an independent construction ---------------------------------------------------------


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _aes_ecb(key: bytes, block: bytes, *, decrypt: bool = False) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.ECB())  # RFC 3394 is built on raw AES
    op = cipher.decryptor() if decrypt else cipher.encryptor()
    return op.update(block) + op.finalize()


def rfc3394_wrap(kek: bytes, key: bytes) -> bytes:
    """RFC 3394 §2.2.1, written out (not the library's keywrap)."""
    a, r = b"\xa6" * 8, [key[i : i + 8] for i in range(0, len(key), 8)]
    n = len(r)
    for j in range(6):
        for i in range(n):
            b = _aes_ecb(kek, a + r[i])
            t = n * j + i + 1
            a = struct.pack(">Q", struct.unpack(">Q", b[:8])[0] ^ t)
            r[i] = b[8:]
    return a + b"".join(r)


def rfc3394_unwrap(kek: bytes, wrapped: bytes) -> bytes:
    a, r = wrapped[:8], [wrapped[i : i + 8] for i in range(8, len(wrapped), 8)]
    n = len(r)
    for j in reversed(range(6)):
        for i in reversed(range(n)):
            t = n * j + i + 1
            a = struct.pack(">Q", struct.unpack(">Q", a)[0] ^ t)
            b = _aes_ecb(kek, a + r[i], decrypt=True)
            a, r[i] = b[:8], b[8:]
    assert a == b"\xa6" * 8, "RFC 3394 integrity check failed"
    return b"".join(r)


def reference_kek(passphrase: str, salt: bytes, p2c: int) -> bytes:
    salt_input = b"PBES2-HS256+A128KW\x00" + salt
    return hashlib.pbkdf2_hmac("sha256", passphrase.encode(), salt_input, p2c, 16)


def reference_encrypt(
    plaintext: bytes, passphrase: str, *, salt: bytes, cek: bytes, iv: bytes, p2c: int = 8192
) -> str:
    header = f'{{"alg":"PBES2-HS256+A128KW","enc":"A256GCM","p2c":{p2c},"p2s":"{_b64u(salt)}"}}'
    protected = _b64u(header.encode())
    wrapped = rfc3394_wrap(reference_kek(passphrase, salt, p2c), cek)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode())
    parts = [protected, _b64u(wrapped), _b64u(iv), _b64u(sealed[:-16]), _b64u(sealed[-16:])]
    return ".".join(parts)


def test_reference_key_wrap_matches_rfc3394_vector() -> None:
    """RFC 3394 §4.1: the test's own key wrap is right before it judges anything."""
    kek = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
    key = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
    wrapped = bytes.fromhex("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5")
    assert rfc3394_wrap(kek, key) == wrapped
    assert rfc3394_unwrap(kek, wrapped) == key


# -- known answers -----------------------------------------------------------------------


def test_decrypts_a_real_notary_signer_row() -> None:
    plaintext = jwe.decrypt(NOTARY_SIGNER_TOKEN, "pw1")
    # SEC1 ECPrivateKey DER (121 bytes for P-256), whose public key is the row's.
    assert len(plaintext) == 121
    key = serialization.load_der_private_key(plaintext, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert base64.b64encode(spki).decode() == NOTARY_SIGNER_PUBLIC
    assert Key("ecdsa", NOTARY_SIGNER_PUBLIC).keyid == NOTARY_SIGNER_KEY_ID
    # The reference construction reads it too.
    parts = NOTARY_SIGNER_TOKEN.split(".")
    header = json.loads(_unb64u(parts[0]))
    kek = reference_kek("pw1", _unb64u(header["p2s"]), header["p2c"])
    cek = rfc3394_unwrap(kek, _unb64u(parts[1]))
    aad = parts[0].encode()
    sealed = _unb64u(parts[3]) + _unb64u(parts[4])
    assert AESGCM(cek).decrypt(_unb64u(parts[2]), sealed, aad) == plaintext


def test_real_notary_signer_row_rejects_wrong_passphrase() -> None:
    with pytest.raises(jwe.WrongPassphraseError, match="wrong passphrase"):
        jwe.decrypt(NOTARY_SIGNER_TOKEN, "pw2")


def test_key_derivation_matches_jose2go_vector() -> None:
    """jose2go's PBES2 vector unwraps with vouch's KEK; the test decrypts the CBC part."""
    parts = JOSE2GO_TOKEN.split(".")
    header = json.loads(_unb64u(parts[0]))
    assert (header["alg"], header["p2c"]) == ("PBES2-HS256+A128KW", 8192)
    kek = jwe.derive_kek("top secret", _unb64u(header["p2s"]), header["p2c"])
    cek = rfc3394_unwrap(kek, _unb64u(parts[1]))
    mac_key, enc_key = cek[:16], cek[16:]
    iv, ciphertext, tag = (_unb64u(p) for p in parts[2:])
    aad = parts[0].encode()
    mac_input = aad + iv + ciphertext + struct.pack(">Q", len(aad) * 8)
    assert hmac.compare_digest(hmac.new(mac_key, mac_input, "sha256").digest()[:16], tag)
    dec = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).decryptor()
    unpad = padding.PKCS7(128).unpadder()
    padded = dec.update(ciphertext) + dec.finalize()
    assert unpad.update(padded) + unpad.finalize() == JOSE2GO_PAYLOAD


def test_jose2go_vector_is_refused_for_its_enc() -> None:
    """A256GCM is the only content encryption notary-signer writes; nothing else is read."""
    with pytest.raises(jwe.JWEError, match="unsupported JWE enc"):
        jwe.decrypt(JOSE2GO_TOKEN, "top secret")


@pytest.mark.parametrize("plaintext", [b"", b"x", bytes(range(256)) * 3])
def test_encrypt_matches_independent_construction(plaintext: bytes) -> None:
    salt, cek, iv = bytes(range(12)), bytes(range(100, 132)), bytes(range(200, 212))
    ours = jwe.encrypt(plaintext, "pässwörd", salt=salt, cek=cek, iv=iv)
    assert ours == reference_encrypt(plaintext, "pässwörd", salt=salt, cek=cek, iv=iv)
    assert jwe.decrypt(ours, "pässwörd") == plaintext


def test_decrypts_independent_construction_with_other_p2c() -> None:
    token = reference_encrypt(
        b"secret", "pw", salt=b"s" * 16, cek=b"c" * 32, iv=b"i" * 12, p2c=1000
    )
    assert jwe.decrypt(token, "pw") == b"secret"


# -- the format notary-signer writes ------------------------------------------------------


def test_header_and_part_sizes_are_notary_signers() -> None:
    token = jwe.encrypt(b"k" * 121, "pw")
    parts = token.split(".")
    header = _unb64u(parts[0])
    salt = _unb64u(json.loads(header)["p2s"])
    expected = '{"alg":"PBES2-HS256+A128KW","enc":"A256GCM","p2c":8192,"p2s":"%s"}'
    assert header == (expected % _b64u(salt)).encode()
    assert len(salt) == 12
    assert [len(_unb64u(p)) for p in parts[1:]] == [40, 12, 121, 16]
    assert all("=" not in p for p in parts)
    assert token.isascii()


def test_random_salt_cek_and_iv_each_time() -> None:
    one, two = jwe.encrypt(b"same", "pw"), jwe.encrypt(b"same", "pw")
    assert {p for p in one.split(".")[:4]}.isdisjoint(two.split(".")[:4])


def test_accepts_bytes() -> None:
    assert jwe.decrypt(jwe.encrypt(b"abc", "pw").encode(), "pw") == b"abc"


# -- refusals ------------------------------------------------------------------------------


def _with_header(header: dict[str, object]) -> str:
    """A sound token whose protected header is replaced: header checks come first."""
    parts = jwe.encrypt(b"plain", "pw").split(".")
    parts[0] = _b64u(json.dumps(header, separators=(",", ":")).encode())
    return ".".join(parts)


GOOD_HEADER = {"alg": jwe.ALG, "enc": jwe.ENC, "p2c": 8192, "p2s": _b64u(b"s" * 12)}


def test_only_the_header_is_wrong_in_refusal_cases() -> None:
    """With a good header the replaced token fails on the tag, not on a header check."""
    with pytest.raises(jwe.JWEError, match="wrong passphrase"):
        jwe.decrypt(_with_header(GOOD_HEADER), "pw")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"alg": "PBES2-HS512+A256KW"}, "unsupported JWE alg"),
        ({"alg": "dir"}, "unsupported JWE alg"),
        ({"alg": None}, "unsupported JWE alg"),
        ({"enc": "A128GCM"}, "unsupported JWE enc"),
        ({"p2c": 2**31}, "p2c"),
        ({"p2c": 1_000_001}, "p2c"),
        ({"p2c": 999}, "p2c"),
        ({"p2c": 8192.0}, "p2c"),
        ({"p2c": True}, "p2c"),
        ({"p2c": "8192"}, "p2c"),
        ({"p2s": _b64u(b"short")}, "p2s"),
        ({"p2s": 5}, "p2s"),
        ({"p2s": "a+b/"}, "p2s"),
        ({"zip": "DEF"}, "zip or crit"),
        ({"crit": ["p2c"]}, "zip or crit"),
    ],
)
def test_refuses_headers_outside_notarys_profile(change: dict[str, object], message: str) -> None:
    with pytest.raises(jwe.JWEError, match=message):
        jwe.decrypt(_with_header({**GOOD_HEADER, **change}), "pw")


def test_max_p2c_is_configurable() -> None:
    token = jwe.encrypt(b"x", "pw")
    with pytest.raises(jwe.JWEError, match="p2c"):
        jwe.decrypt(token, "pw", max_p2c=5000)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: p[:4],  # too few parts
        lambda p: [*p, "x"],  # too many
        lambda p: ["!!", *p[1:]],  # header not base64url
        lambda p: [_b64u(b"[1,2]"), *p[1:]],  # header not an object
        lambda p: [_b64u(b"{nope"), *p[1:]],  # header not JSON
        lambda p: [p[0], p[1][:-2], *p[2:]],  # wrapped key wrong size
        lambda p: [*p[:2], _b64u(b"i" * 16), *p[3:]],  # IV wrong size
        lambda p: [*p[:4], _b64u(b"t" * 8)],  # truncated tag
        lambda p: [p[0], p[1], p[2], p[3] + "A=", p[4]],  # padding
    ],
)
def test_refuses_malformed_compact_serialisation(mangle: object) -> None:
    parts = jwe.encrypt(b"secret", "pw").split(".")
    assert callable(mangle)
    with pytest.raises(jwe.JWEError):
        jwe.decrypt(".".join(mangle(parts)), "pw")


def test_tampering_is_not_reported_as_wrong_passphrase() -> None:
    parts = jwe.encrypt(b"secret key", "pw").split(".")
    ciphertext = bytearray(_unb64u(parts[3]))
    ciphertext[0] ^= 1
    parts[3] = _b64u(bytes(ciphertext))
    with pytest.raises(jwe.JWEError, match="tampered") as info:
        jwe.decrypt(".".join(parts), "pw")
    assert not isinstance(info.value, jwe.WrongPassphraseError)


def test_header_is_authenticated() -> None:
    """Re-encoding the header (same members, other order) breaks the GCM tag: AAD is the
    ASCII header exactly as stored."""
    parts = jwe.encrypt(b"secret", "pw").split(".")
    members = json.loads(_unb64u(parts[0]))
    parts[0] = _b64u(json.dumps(dict(reversed(members.items())), separators=(",", ":")).encode())
    with pytest.raises(jwe.JWEError, match="tampered"):
        jwe.decrypt(".".join(parts), "pw")


def test_wrong_passphrase_message_carries_no_secret() -> None:
    token = jwe.encrypt(b"TOPSECRETKEY", "right-passphrase")
    with pytest.raises(jwe.WrongPassphraseError) as info:
        jwe.decrypt(token, "wrong-passphrase")
    text = str(info.value)
    assert "passphrase" in text
    assert "right-passphrase" not in text and "wrong-passphrase" not in text


def test_refuses_absurd_sizes_and_non_ascii() -> None:
    with pytest.raises(jwe.JWEError, match="too long"):
        jwe.decrypt("a" * (jwe.MAX_TOKEN + 1), "pw")
    with pytest.raises(jwe.JWEError, match="ASCII"):
        jwe.decrypt("é".encode(), "pw")


def test_encrypt_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError, match="p2c"):
        jwe.encrypt(b"x", "pw", p2c=10)
    with pytest.raises(ValueError, match="size"):
        jwe.encrypt(b"x", "pw", iv=b"short")
