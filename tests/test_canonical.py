"""Canonical JSON and the envelope form: the exact bytes Notary signs and stores."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vouch.tuf import canonical
from vouch.tuf.errors import CanonicalError, FormatError


def test_keys_sorted_by_code_point_recursively() -> None:
    value = {"b": 1, "_type": "x", "a": {"z": 1, "é": 2, "Z": 3, "😀": 4, "\uffff": 5}}
    out = canonical.encode(value)
    assert out == '{"_type":"x","a":{"Z":3,"z":1,"é":2,"\uffff":5,"😀":4},"b":1}'.encode()


def test_arrays_keep_order_and_no_whitespace() -> None:
    assert canonical.encode({"k": [3, 1, 2], "e": [], "o": {}}) == b'{"e":[],"k":[3,1,2],"o":{}}'


def test_strings_raw_except_quote_and_backslash() -> None:
    s = 'q"uote\\back<>&é€\u2028\u2029\x7f😀'
    assert canonical.encode(s) == ('"q\\"uote\\\\back<>&é€\u2028\u2029\x7f😀"').encode()


def test_envelope_applies_html_escaping_only_in_file_form() -> None:
    signed = canonical.encode({"name": "a<b>&c\u2028\u2029"})
    env = canonical.envelope(signed, [{"keyid": "ab", "method": "ecdsa", "sig": "AA=="}])
    assert env == (
        b'{"signed":{"name":"a\\u003cb\\u003e\\u0026c\\u2028\\u2029"},'
        b'"signatures":[{"keyid":"ab","method":"ecdsa","sig":"AA=="}]}'
    )
    assert canonical.loads(env)["signed"]["name"] == "a<b>&c\u2028\u2029"


def test_integers_and_literals() -> None:
    assert canonical.encode([0, -5, 2**53 - 1, True, False, None]) == (
        b"[0,-5,9007199254740991,true,false,null]"
    )


@pytest.mark.parametrize(
    "text", ["1.5", "1e400", "NaN", "Infinity", "-Infinity", "9007199254740993"]
)
def test_numbers_without_canonical_form_refused(text: str) -> None:
    with pytest.raises(FormatError):
        canonical.loads(f'{{"n":{text}}}'.encode())


def test_integral_floats_become_integers_like_go() -> None:
    assert (
        canonical.encode(canonical.loads(b'{"n":1.0,"m":1e3,"z":-0}')) == b'{"m":1000,"n":1,"z":0}'
    )


def test_floats_refused_when_encoding_caller_values() -> None:
    with pytest.raises(CanonicalError):
        canonical.check_value({"x": [1.5]})
    with pytest.raises(CanonicalError):
        canonical.check_value({"x": 2**60})


@pytest.mark.parametrize(
    "raw",
    [
        b'{"s":"a\\nb"}',
        b'{"s":"a\\tb"}',
        b'{"s":"\\u0000"}',
        b'{"s":"\\u001F"}',
        b'{"s\\b":1}',
        b'{"s":"\\ud800"}',
        b'{"s":"x\\udc00"}',
        b'{"s":"a\tb"}',
    ],
)
def test_control_characters_and_lone_surrogates_refused(raw: bytes) -> None:
    with pytest.raises(FormatError):
        canonical.loads(raw)


def test_escaped_backslash_before_letter_is_fine() -> None:
    assert canonical.loads(b'{"s":"a\\\\nb"}') == {"s": "a\\nb"}
    assert canonical.loads(b'{"s":"\\ud83d\\ude00"}') == {"s": "😀"}


def test_control_characters_refused_on_encode() -> None:
    with pytest.raises(CanonicalError):
        canonical.encode({"s": "line\nbreak"})
    with pytest.raises(CanonicalError):
        canonical.encode({"s": "\ud800"})


@pytest.mark.parametrize(
    "raw",
    [b'{"a":1,"a":2}', b'{"a":1} x', b"\xff\xfe", b'{"a":', b"", b'{"a":1}{"b":2}'],
)
def test_malformed_json_refused(raw: bytes) -> None:
    with pytest.raises(FormatError):
        canonical.loads(raw)


def test_trailing_whitespace_allowed_like_notary_server() -> None:
    assert canonical.loads(b'{"a":1}\n') == {"a": 1}


def test_deep_nesting_is_a_format_error() -> None:
    with pytest.raises(FormatError):
        canonical.loads(b"[" * 100_000 + b"]" * 100_000)


_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",), blacklist_characters=[chr(i) for i in range(32)]
    )
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=20,
)


@given(_json)
def test_canonical_is_stable_and_parses_back(value: object) -> None:
    out = canonical.encode(value)
    assert canonical.loads(out) == value
    assert canonical.encode(canonical.loads(out)) == out
    # Envelope escaping never changes the parsed value.
    assert canonical.loads(canonical.html_escape(out)) == value
    # json.loads agrees with our reading of the bytes.
    assert json.loads(out) == value
