"""Canonical JSON (RFC 8785) known answers: the published vectors, through the one serializer that
writes plans, envelopes, trust roots and JSON diffs, and a whole plan written out by hand."""

from __future__ import annotations

import struct

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.plan import Attestation, Device, Plan, canonical_json, encode_plan

# RFC 8785 section 3.2.2: the sample input and its canonical output.
RFC_3_2_2_INPUT = {
    "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
    "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
    "literals": [None, True, False],
}
RFC_3_2_2_OUTPUT = (b'{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
                    b'"string":"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}')

# RFC 8785 section 3.2.3: property names sorted by their UTF-16 code units (not by code points).
RFC_3_2_3_NAMES = {
    "\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One",
    "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis",
}
RFC_3_2_3_OUTPUT = ('{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis",'
                    '"\u20ac":"Euro Sign","\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}').encode()

# RFC 8785 appendix B: IEEE 754 doubles (as hex) and their serialization.
RFC_APPENDIX_B = [
    ("0000000000000000", b"0"), ("8000000000000000", b"0"), ("0000000000000001", b"5e-324"),
    ("8000000000000001", b"-5e-324"), ("7fefffffffffffff", b"1.7976931348623157e+308"),
    ("ffefffffffffffff", b"-1.7976931348623157e+308"), ("4340000000000000", b"9007199254740992"),
    ("c340000000000000", b"-9007199254740992"), ("4430000000000000", b"295147905179352830000"),
    ("44b52d02c7e14af5", b"9.999999999999997e+22"), ("44b52d02c7e14af6", b"1e+23"),
    ("44b52d02c7e14af7", b"1.0000000000000001e+23"), ("444b1ae4d6e2ef4e", b"999999999999999700000"),
    ("444b1ae4d6e2ef4f", b"999999999999999900000"), ("444b1ae4d6e2ef50", b"1e+21"),
    ("3eb0c6f7a0b5ed8c", b"9.999999999999997e-7"), ("3eb0c6f7a0b5ed8d", b"0.000001"),
    ("41b3de4355555553", b"333333333.3333332"), ("41b3de4355555554", b"333333333.33333325"),
    ("41b3de4355555555", b"333333333.3333333"), ("41b3de4355555556", b"333333333.3333334"),
    ("41b3de4355555557", b"333333333.33333343"), ("becbf647612f3696", b"-0.0000033333333333333333"),
    ("43143ff3c1cb0959", b"1424953923781206.2"),
]


def test_rfc_8785_sample():
    assert canonical_json(RFC_3_2_2_INPUT) == RFC_3_2_2_OUTPUT


def test_rfc_8785_property_sorting():
    assert canonical_json(RFC_3_2_3_NAMES) == RFC_3_2_3_OUTPUT


@pytest.mark.parametrize("bits,expected", RFC_APPENDIX_B)
def test_rfc_8785_number_serialization(bits, expected):
    assert canonical_json(struct.unpack(">d", bytes.fromhex(bits))[0]) == expected


def test_a_plan_is_written_exactly_as_rfc_8785_says():
    """Fields sorted by name at every level, no whitespace, integers as they are (up to 2^53 - 1), the
    RFC's escaping for a string and its ordering for names (here the keys of `allowed`)."""
    plan = Plan(
        plan_version=7, issued_at="2026-01-01T00:00:00Z", expires="2026-01-31T00:00:00Z", source_sha256="ab" * 32,
        targets=(RFC_3_2_2_INPUT["string"],), device=Device(persist="/persist", reserve_bytes=2**53 - 1),
        attestations=(Attestation(name="boot", bank="sha256", pcrs=(0, 7), nonce_bytes=32, nonce_lifetime_seconds=300,
                                  allowed={name: (value,) for name, value in RFC_3_2_3_NAMES.items()}),),
    )
    allowed = ('{"\\r":["Carriage Return"],"1":["One"],"\u0080":["Control"],"\u00f6":["Latin Small Letter O With Diaeresis"],'
               '"\u20ac":["Euro Sign"],"\U0001f600":["Emoji: Grinning Face"],"\ufb33":["Hebrew Letter Dalet With Dagesh"]}')
    expected = (
        '{"apps":[],"attestations":[{"allowed":' + allowed + ',"bank":"sha256","escrow_required":false,"name":"boot",'
        '"nonce_bytes":32,"nonce_lifetime_seconds":300,"on_failure":["keep_locked","deny_release"],"pcrs":[0,7]}],'
        '"components":[],"device":{"allow_unmeasured_boot":false,"bank":"sha256","capacity_bytes":null,'
        '"escrow_public_key":null,"persist":"/persist","reserve_bytes":9007199254740991,"tpm_required":true},'
        '"expires":"2026-01-31T00:00:00Z","issued_at":"2026-01-01T00:00:00Z","plan_version":7,"prev_plan_sha256":null,'
        '"protected":[],"schema_version":"1.0","source_sha256":"' + "ab" * 32 + '",'
        '"targets":["\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"],"vaults":[]}'
    ).encode()
    assert encode_plan(plan) == expected


# What canonical_json must write exactly as rfc8785 does, fast path or not: every kind of JSON value,
# integers on both sides of 2^53, floats, keys in either order, and characters from every range that
# matters (controls, DEL, U+D800 and above, lone surrogates, beyond the BMP).
_TEXT = st.text(st.one_of(st.characters(max_codepoint=0x7F), st.characters(min_codepoint=0xD700, max_codepoint=0xFFFF),
                          st.characters(min_codepoint=0x10000), st.characters()))
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | _TEXT | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**54), max_value=2**54) | st.sampled_from([2**53 - 1, 2**53, -(2**53 - 1), -(2**53)]),
    lambda inner: st.lists(inner) | st.lists(inner).map(tuple) | st.dictionaries(_TEXT, inner),
    max_leaves=30,
)


def _rfc8785_outcome(value):
    try:
        return rfc8785.dumps(value)
    except ValueError as exc:  # CanonicalizationError, or UnicodeEncodeError for a lone surrogate in a key
        return type(exc)


def _outcome(value):
    try:
        return canonical_json(value)
    except ValueError as exc:  # CanonicalizationError, or UnicodeEncodeError for a lone surrogate in a key
        return type(exc)


@settings(max_examples=500, deadline=None)
@given(_JSON_VALUES)
def test_the_same_bytes_and_errors_as_rfc8785(value):
    assert _outcome(value) == _rfc8785_outcome(value)


@pytest.mark.parametrize("code_point", [*range(0x80), 0x2028, 0xD7FF, 0xD800, 0xDFFF, 0xE000, 0xFB33, 0xFFFF, 0x10000, 0x1F600])
def test_each_character_as_rfc8785_writes_it_in_a_value_and_a_key(code_point):
    char = chr(code_point)
    value = {f"k{char}": [char, f"a{char}b"], "k": 1, "\ufb33": True}
    assert _outcome(value) == _rfc8785_outcome(value)
