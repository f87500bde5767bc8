"""Text a user wrote, shown on one line and as it is: every character that does not show as itself
written as the policy language escapes it (`\\n`, `\\t`, `\\u{200b}`), so a message neither breaks
over lines, nor sends a terminal escape, nor hides a character that makes two strings differ. Also
the one rule for what a path or a target may hold: only characters that show. A leaf module, like
`errors`: the language, the compiler and the device all show and check paths and strings."""

from __future__ import annotations

import unicodedata

_ESCAPES = {"\n": "\\n", "\t": "\\t"}


def hidden_character(text: str) -> int | None:
    """The index of the first character of `text` that does not show as itself, or None: Unicode's
    Other categories (Cc control characters, Cf format characters such as U+200B ZERO WIDTH SPACE,
    U+200E LEFT-TO-RIGHT MARK, the bidi controls U+202A-U+202E and U+2066-U+2069, U+2060, U+FEFF;
    private use, unassigned) and its separators but the ASCII space (U+00A0 NO-BREAK SPACE, U+2028).
    No path or target holds one: two that look the same would differ on the device."""
    if text.isprintable():  # `str.isprintable` refuses exactly these
        return None
    return next(i for i, char in enumerate(text) if not char.isprintable())


def escaped(text: str) -> str:
    """`text` with each character that does not show written as the language escapes it."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _ESCAPES.get(char, f"\\u{{{ord(char):x}}}") for char in text)


def code_point(char: str) -> str:
    """A character as a message names it: `U+200B ZERO WIDTH SPACE`, `the control character U+0007`."""
    if name := unicodedata.name(char, ""):
        return f"U+{ord(char):04X} {name}"
    return f"the {_UNNAMED.get(unicodedata.category(char), 'character')} U+{ord(char):04X}"


_UNNAMED = {"Cc": "control character", "Co": "private-use character", "Cn": "unassigned character"}
