"""fmt: one canonical layout, idempotent, every comment kept in text and order (S17)."""

from __future__ import annotations

import bisect
import random

import pytest

from policy_lang import format_text, parse_text
from policy_lang.diagnostics import DiagnosticsError
from policy_lang.parse import parse

MESSY = """\
# header comment

vault   config{path "/persist/vault/config";limit 16MiB   # trailing on limit
  # own line before protected
  protected}
app a { vault config }   # after an app
app b {
  vault config
}


# between items, after two blank lines
attestation boot { pcrs 0,4,
   7  # after seven
   allow pcr 0 = "aa"
     # before bb
     | "bb" }
# at the end
"""

EXPECTED = """\
# header comment

vault config {
  path "/persist/vault/config"
  limit 16MiB  # trailing on limit
  # own line before protected
  protected
}

app a { vault config }  # after an app
app b { vault config }

# between items, after two blank lines
attestation boot {
  pcrs 0, 4, 7  # after seven
  allow pcr 0 = "aa"
      # before bb
      | "bb"
}
# at the end
"""


def comments(text: str) -> list[str]:
    return [c.text for c in parse(text, "t.vpol").comments]


def anchored_comments(text: str) -> list[tuple[str, bool, int]]:
    """Each comment, whether it has a line of its own, and the token it belongs to: the next one
    (own line) or the one it ends the line of (counted without `;`, which fmt does not write)."""
    result = parse(text, "t.vpol")
    starts = [t.start_pos for t in result.tokens if t.type != "SEMICOLON"]
    out = []
    for c in result.comments:
        following = bisect.bisect_left(starts, c.span.start_pos)
        out.append((c.text, c.own_line, following if c.own_line else following - 1))
    return out


def scrambled(text: str, seed: int) -> str:
    """The same tokens and comments laid out at random: re-indented, lines joined and split, spacing
    moved. A comment keeps its line of its own, or its place at the end of a line."""
    rng = random.Random(seed)
    result = parse(text, "t.vpol")
    pieces = sorted([(t.start_pos, t.value, None) for t in result.tokens]
                    + [(c.span.start_pos, c.text, c.own_line) for c in result.comments])
    out, after_comment = [], False
    for n, (_, value, own_line) in enumerate(pieces):
        if n == 0:
            gap = ""
        elif own_line is True or after_comment:
            gap = rng.choice(["\n", "\n\n", "\n    ", "\n\t"])
        elif own_line is False:
            gap = rng.choice([" ", "    "])
        else:
            punctuation = value in "{},;=|" or out[-1] in "{},;=|"
            gap = rng.choice(["", " ", "   ", "\n", "\n      ", " \t "] if punctuation else [" ", "   ", "\n", "\n  "])
        out += [gap, value]
        after_comment = own_line is not None
    return "".join(out) + "\n"


def test_messy_input_gets_the_canonical_layout():
    assert format_text(MESSY, "t.vpol") == EXPECTED


def test_every_example_is_formatted_idempotent_and_keeps_its_comments(example):
    text = example.read_text()
    once = format_text(text, str(example))
    assert format_text(once, str(example)) == once
    assert comments(once) == comments(text)
    assert parse_text(once, str(example))[0] == parse_text(text, str(example))[0]
    assert once == text, f"{example.name} is not in canonical layout; run `vaultpolicy fmt` on it"


@pytest.mark.parametrize("seed", range(3))
def test_comments_of_a_scrambled_example_come_back_in_place(example, seed):
    """The examples are canonical already, so formatting them keeps comments trivially: scramble first."""
    text = example.read_text()
    messy = scrambled(text, seed)
    assert messy != text and anchored_comments(messy) == anchored_comments(text)
    formatted = format_text(messy, str(example))
    assert anchored_comments(formatted) == anchored_comments(text)
    assert parse_text(formatted, str(example))[0] == parse_text(text, str(example))[0]


def test_a_crlf_file_is_formatted_with_lf_only(example):
    """The `\r` of each line stayed in its comment: mixed line endings, and `fmt --check` passed."""
    text = example.read_text()
    crlf = text.replace("\n", "\r\n")
    assert comments(crlf) == comments(text)
    assert format_text(crlf, str(example)) == text


def test_a_lone_cr_file_keeps_its_blank_lines(example):
    """A lone CR ends a line for the tokenizer; the blank-line count saw only LF and dropped them."""
    text = example.read_text()
    assert "\n\n" in text
    assert format_text(text.replace("\n", "\r"), str(example)) == text


def test_long_allow_lists_break_before_each_alternative():
    digests = " | ".join(f'"{c * 64}"' for c in "abc")
    out = format_text(f"attestation boot {{ allow pcr 0 = {digests} }}")
    assert out.splitlines()[1:4] == [
        f'  allow pcr 0 = "{"a" * 64}"', f'      | "{"b" * 64}"', f'      | "{"c" * 64}"']
    assert format_text(out) == out


def test_files_with_errors_are_refused():
    with pytest.raises(DiagnosticsError) as raised:
        format_text("vault v { limt 1MiB }")
    assert raised.value.diagnostics[0].code == "VP0005"


def test_only_comments_and_empty_files():
    assert format_text("") == ""
    assert format_text("#a\n\n\n#b") == "#a\n\n#b\n"


def test_comments_after_dropped_semicolons_are_kept():
    text = 'include "a"; # c\nvault v { limit 1MiB; # d\n  path "/p" ;\n  # e\n ; }\n;  # f\n'
    out = format_text(text)
    assert out == 'include "a"  # c\n\nvault v {\n  limit 1MiB  # d\n  path "/p"\n  # e\n}\n# f\n'
    assert comments(out) == comments(text)
