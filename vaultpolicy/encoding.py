"""Decoding of input: JSON documents and the byte fields in signed and wrapped ones. A leaf module,
like `errors`."""

from __future__ import annotations

import base64
import binascii
import json
import re


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


# Where a too deeply nested document is reported: the bracket that opens this level. No document
# vaultpolicy reads nests more than a handful of levels.
_DEPTH_SHOWN = 100
_TOO_DEEP = "nested too deeply"
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def load_json(data: str | bytes, **options) -> object:
    """`json.loads` for a document we did not write (a file a user named, a payload, a quote).

    One nested deeper than the interpreter's stack raised RecursionError, which the CLI reports as a
    bug; it is the JSONDecodeError of any other malformed JSON here ("nested too deeply"), at the
    bracket that opens level 100."""
    try:
        return json.loads(data, **options)
    except RecursionError:
        text = data.decode("utf-8-sig", "replace") if isinstance(data, bytes) else data
        raise json.JSONDecodeError(_TOO_DEEP, text, _deep_position(text)) from None


def is_json_document(data: str | bytes) -> bool:
    """Whether `data` is a JSON document (one nested too deeply to read counts): what tells a plan, a
    signed plan or a trust root from a policy, which never is one. A leading `{` proves nothing: a
    policy with a stray brace starts so."""
    try:
        load_json(data)
    except json.JSONDecodeError as exc:
        return exc.msg == _TOO_DEEP
    except UnicodeDecodeError:
        return False
    return True


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
