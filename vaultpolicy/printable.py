"""Text a user wrote, shown on one line: control characters written as the policy language escapes
them (`\\n`, `\\t`, `\\u{1b}`), so a message neither breaks over lines nor sends a terminal escape. A
leaf module, like `errors`: the language, the compiler and the device all show paths and strings."""

from __future__ import annotations

import re

CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode's Cc: no path or target holds one
_ESCAPES = {"\n": "\\n", "\t": "\\t"}


def escaped(text: str) -> str:
    """`text` with control characters written as the language escapes them."""
    return CONTROL_CHARACTER.sub(lambda m: _ESCAPES.get(m[0], f"\\u{{{ord(m[0]):x}}}"), text)
