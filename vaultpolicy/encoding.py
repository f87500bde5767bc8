"""Decoding of the byte fields in signed and wrapped documents. A leaf module, like `errors`."""

from __future__ import annotations

import base64
import binascii


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
