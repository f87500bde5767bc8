"""fmt: one canonical layout, idempotent, every comment kept in text and order (S17)."""

from __future__ import annotations

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


def test_messy_input_gets_the_canonical_layout():
    assert format_text(MESSY, "t.vpol") == EXPECTED


def test_every_example_is_formatted_idempotent_and_keeps_its_comments(example):
    text = example.read_text()
    once = format_text(text, str(example))
    assert format_text(once, str(example)) == once
    assert comments(once) == comments(text)
    assert parse_text(once, str(example))[0] == parse_text(text, str(example))[0]
    assert once == text, f"{example.name} is not in canonical layout; run `vaultpolicy fmt` on it"


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
