"""Canonical JSON exactly as Notary (docker/go ``canonical/json``) writes it.

Notary has two serialisations and confusing them breaks interop:

* the *canonical* form, which is what gets signed and what key IDs hash:
  no whitespace, object keys sorted by code point, strings raw except for
  ``"`` and ``\\``, integers only;
* the *envelope* form, the bytes of files, uploads and responses, which are
  hashed by snapshot and timestamp: ``{"signed":<S>,"signatures":[...]}``
  where ``<S>`` is the canonical form with Go's HTML-safe escaping applied
  inside strings.

:func:`loads` is the strict parser every metadata byte string goes through.
It only yields values that have a canonical form, so encoding what it
returned never fails.
"""

from __future__ import annotations

import json
import re
from typing import Any

from vouch.tuf.errors import CanonicalError, FormatError

# Go's verifier decodes numbers as float64; integers beyond 2**53 would be
# silently rounded there and verify differently here, so refuse them.
MAX_SAFE_INT = 2**53 - 1

# In the output of json.dumps, a backslash escape other than \" and \\ means
# the value held a control character, which canonical JSON would write raw
# and Notary can never read back.
_BAD_ESCAPE = re.compile(rb'(?<!\\)(?:\\\\)*\\[^"\\]')
# The same test on input bytes: escaped control characters. (Raw control
# characters are already refused by the json module.)
_BAD_INPUT_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\(?:[bfnrt]|u00[01][0-9a-fA-F])")
# Any escaped surrogate; only then is the parsed value searched for lone ones.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

_HTML_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def _parse_int(text: str) -> int:
    if len(text) > 20:  # far beyond 2^53; also keeps int() off huge digit strings
        raise FormatError(f"integer {text[:20]}... is outside the range Notary can verify (2^53)")
    value = int(text)
    if abs(value) > MAX_SAFE_INT:
        raise FormatError(f"integer {text} is outside the range Notary can verify (2^53)")
    return value


def _parse_float(text: str) -> int:
    # Go re-encodes 1.0 or 1e3 as an integer before verifying; do the same so
    # signatures verify here exactly when they verify there.
    try:
        value = float(text)
    except ValueError as exc:  # pragma: no cover - json only passes numbers
        raise FormatError(f"bad number {text}") from exc
    if not value.is_integer():
        raise FormatError(f"non-integral number {text} has no canonical form")
    return _parse_int(str(int(value)))


def _parse_constant(text: str) -> Any:
    raise FormatError(f"{text} is not valid JSON")


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise FormatError(f"duplicate key {key!r} in JSON object")
            seen.add(key)
    return result


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_pairs,
    parse_int=_parse_int,
    parse_float=_parse_float,
    parse_constant=_parse_constant,
    strict=True,
)


def loads(data: bytes | str) -> Any:
    """Parse JSON strictly: UTF-8, no duplicate keys, integers only, no controls.

    Trailing whitespace is allowed (the Notary server accepts and keeps a
    trailing newline); anything else after the value is an error.
    """
    if isinstance(data, bytes):
        raw = data
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"metadata is not valid UTF-8: {exc}") from exc
    else:
        text = data
        raw = data.encode("utf-8", "surrogatepass")
    if b"\\" in raw and _BAD_INPUT_ESCAPE.search(raw):
        raise FormatError("string holds a control character")
    try:
        value, end = _DECODER.raw_decode(text, _skip_ws(text, 0))
    except json.JSONDecodeError as exc:
        raise FormatError(f"invalid JSON: {exc}") from exc
    except RecursionError as exc:
        raise FormatError("JSON nested too deeply") from exc
    if _skip_ws(text, end) != len(text):
        raise FormatError(f"invalid JSON: trailing data at offset {end}")
    if _SURROGATE_ESCAPE.search(raw):
        # Go would turn a lone surrogate into U+FFFD before verifying, so the
        # bytes verified there and here would differ: refuse it outright.
        try:
            encode(value)
        except CanonicalError as exc:
            raise FormatError(str(exc)) from exc
    return value


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def encode(value: Any) -> bytes:
    """Canonical bytes of ``value``: what is signed and what key IDs hash.

    ``value`` must be built from dicts with str keys, lists, str, int, bool and
    None (what :func:`loads` returns). Floats and control characters are
    refused because Notary cannot represent them.
    """
    try:
        text = json.dumps(
            value,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise CanonicalError(f"value has no canonical JSON form: {exc}") from exc
    try:
        out = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError("string holds a lone surrogate") from exc
    if b"\\" in out and _BAD_ESCAPE.search(out):
        raise CanonicalError("string holds a control character")
    return out


def check_value(value: Any, where: str = "value") -> None:
    """Refuse values without a canonical form (floats, bad strings, big ints).

    Used on free-form data handed in by callers (``custom`` fields) before it
    is signed, so a bad value fails at the API boundary instead of producing
    a signature Notary would reject.
    """
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise CanonicalError(f"{where}: integer beyond 2^53")
        return
    if isinstance(value, float):
        raise CanonicalError(f"{where}: floats have no canonical form")
    if isinstance(value, str):
        encode(value)
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_value(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError(f"{where}: object keys must be strings")
            encode(key)
            check_value(item, f"{where}.{key}")
        return
    raise CanonicalError(f"{where}: {type(value).__name__} has no JSON form")


def html_escape(canonical: bytes) -> bytes:
    """Apply Go's HTML-safe escaping, as Notary does in the envelope form.

    The escaped characters can only occur inside strings of canonical JSON,
    so a byte replacement over the whole text is exact.
    """
    for needle, repl in _HTML_ESCAPES:
        if needle in canonical:
            canonical = canonical.replace(needle, repl)
    return canonical


def envelope(signed_canonical: bytes, signatures: list[dict[str, str]]) -> bytes:
    """File/wire bytes of a metadata document, byte-identical to Notary's."""
    parts = [b'{"signed":', html_escape(signed_canonical), b',"signatures":[']
    parts.append(
        b",".join(
            b'{"keyid":'
            + _string(sig["keyid"])
            + b',"method":'
            + _string(sig["method"])
            + b',"sig":'
            + _string(sig["sig"])
            + b"}"
            for sig in signatures
        )
    )
    parts.append(b"]}")
    return b"".join(parts)


def _string(value: str) -> bytes:
    return html_escape(encode(value))
