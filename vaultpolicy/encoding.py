"""Decoding of input: JSON documents and the byte fields in signed and wrapped ones. A leaf module,
like `errors`."""

from __future__ import annotations

import base64
import binascii
import json
import re

from vaultpolicy.printable import escaped


def b64decode_exact(text: str | bytes) -> bytes:
    """Standard base64 in which every character counts; raises `binascii.Error` otherwise.

    `base64.b64decode` ignores the unused low bits of a final character, so up to 16 texts decode to
    the same bytes: an altered envelope, quote or blob would still be accepted. Only the one encoding
    of the decoded bytes is taken."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    decoded = base64.b64decode(raw, validate=True)
    if base64.b64encode(decoded) != raw:
        raise binascii.Error("not the canonical base64 of its bytes")
    return decoded


_NOT_HEX_DIGIT = re.compile(r"[^0-9a-fA-F]")


def hex_exact(text: object) -> bytes:
    """Hex digits, two to a byte and nothing else (`bytes.fromhex` also skips spaces); otherwise a
    ValueError whose message says what is wrong, worded to follow the value's name: `abc` "has an odd
    number of hex digits (3): each byte is two", where fromhex said only "not hex"."""
    if not isinstance(text, str):
        raise ValueError("is not a string of hex digits")
    if (wrong := _NOT_HEX_DIGIT.search(text)) is not None:
        raise ValueError(f"has `{escaped(wrong.group())}` at character {wrong.start() + 1}, which is not a hex digit")
    if len(text) % 2:
        raise ValueError(f"has an odd number of hex digits ({len(text)}): each byte is two")
    return bytes.fromhex(text)


# Where a too deeply nested document is reported: the bracket that opens this level. No document
# vaultpolicy reads nests more than a handful of levels.
_DEPTH_SHOWN = 100
_TOO_DEEP = "nested too deeply"
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def load_json(data: str | bytes, **options) -> object:
    """`json.loads` for a document we did not write (a file a user named, a payload, a quote).

    Bytes are UTF-8 (RFC 8259; a leading BOM is dropped): json.loads would take NUL bytes for UTF-16
    or UTF-32 and report a byte of that guess as "not UTF-8". A byte that is not UTF-8 is a
    JSONDecodeError like any other malformed JSON (`not_utf8`). One nested deeper than the interpreter's
    stack raised RecursionError, which the CLI reports as a bug; it is a JSONDecodeError too ("nested
    too deeply"), at the bracket that opens level 100."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise not_utf8(exc) from None
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise json.JSONDecodeError(_TOO_DEEP, text, _deep_position(text)) from None


# where JSON begins and a policy never does: an array, or an object's first key. A lone leading `{`
# proves nothing: a policy with a stray brace starts so.
_JSON_START = re.compile(r'\A\ufeff?\s*(\[|\{\s*")')


def is_json_document(data: str | bytes) -> bool:
    """Whether `data` is JSON: a document (one nested too deeply to read counts), or one that begins
    as only JSON does and breaks further on (a plan cut short in a copy). What tells a plan, a signed
    plan or a trust root from a policy, which never is one."""
    try:
        load_json(data)
    except json.JSONDecodeError as exc:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return exc.msg == _TOO_DEEP or _JSON_START.match(text) is not None
    return True


def not_utf8(exc: UnicodeDecodeError) -> json.JSONDecodeError:
    """The first byte that is not UTF-8, as an error at its line and column (1-based, as an editor and
    every other message count; the 0-based offset of `exc.start` named the byte before it)."""
    before = exc.object[: exc.start].decode("utf-8")
    text = before + exc.object[exc.start :].decode("utf-8", "replace")
    return json.JSONDecodeError(f"byte 0x{exc.object[exc.start]:02x} is not valid UTF-8", text, len(before))


def json_problem(exc: json.JSONDecodeError) -> str:
    """What is wrong and where: `expecting ',' delimiter at line 1 column 812`."""
    return f"{json_message(exc)} at line {exc.lineno} column {exc.colno}"


def json_message(exc: json.JSONDecodeError) -> str:
    """json's message without the position, lower-cased to follow a colon."""
    message = exc.msg.removesuffix(" at")  # "Invalid control character at", which json follows with a position
    return message[:1].lower() + message[1:]


def _deep_position(text: str) -> int:
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth == _DEPTH_SHOWN:
                return match.start()
        elif token in "]}":
            depth -= 1
    return 0
