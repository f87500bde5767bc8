"""Issue 3, "Must show" 2: each mistake gives one precise error; independent errors are all reported."""

from __future__ import annotations

import json

import pytest

import compiler
from policy_lang import parse_text
from policy_lang.diagnostics import render_text
from policy_lang.load import parse_partial

GOLDEN = __import__("pathlib").Path(__file__).parent / "golden"

# (name, source, code, line, column, end_column, words the message or help must contain)
ONE_ERROR = [
    ("unknown keyword", "vault config {\n  path \"/persist/vault/config\"\n  limt 16MiB\n}\n",
     "VP0005", 3, 3, 7, "did you mean `limit`?"),
    ("unknown top-level keyword", "vualt config { limit 16MiB }\n", "VP0005", 1, 1, 6, "did you mean `vault`?"),
    ("missing brace", "vault config {\n  limit 16MiB\n\nvault images { limit 64MiB }\n",
     "VP0006", 1, 14, 15, "add `}`"),
    ("missing brace before a block on the same line",
     'vault a { path "/persist/a" limit 16MiB vault b { path "/persist/b" }\n', "VP0006", 1, 9, 10, "add `}`"),
    ("bad size unit", "vault images {\n  limit 64Mib\n}\n", "VP0010", 2, 11, 14, "did you mean `MiB`?"),
    ("size in bytes", "vault v { limit 16777216 }\n", "VP0010", 1, 17, 25, "16777216 bytes is `16MiB`"),
    ("small size without a unit", "vault v { limit 512 }\n", "VP0010", 1, 17, 20, "write `512B` for bytes"),
    ("space before a size unit", "vault v { limit 8 MiB }\n", "VP0010", 1, 17, 22, "write `8MiB`, without a space"),
    ("space before a duration unit", "defaults { rotate every 90 d }\n", "VP0011", 1, 25, 29, "write `90d`"),
    ("empty path", 'vault v { path "" }\n', "VP0023", 1, 16, 18, "or leave `path` out"),
    ("quoted size", 'vault v { limit "16MiB" }\n', "VP0004", 1, 17, 24, "remove the quotes: `16MiB`"),
    ("unquoted path", "vault v { path persist }\n", "VP0004", 1, 16, 23, 'put it in double quotes: `"persist"`'),
    ("zero duration", "defaults { rotate every 0d }\n", "VP0011", 1, 25, 27, "above zero"),
    ("huge number", "vault v { limit 99999999999999999MiB }\n", "VP0010", 1, 17, 37, "below 8PiB"),
    ("bad duration", "defaults {\n  rotate every 90days\n}\n", "VP0011", 2, 18, 22, "write `90d`"),
    ("PCR index 24", "vault config {\n  seal pcrs 0, 7, 24\n}\n", "VP0012", 2, 19, 21, "0 to 23"),
    ("nonce too small", "attestation boot { nonce 8 bytes }\n", "VP0013", 1, 26, 27, "between 12 and 32"),
    ("unknown encryption", "vault v { encryption aes-256-xtz }\n", "VP0014", 1, 22, 33, "did you mean `aes-256-xts`?"),
    ("value of the wrong kind", "vault v { limit \"16MiB\" }\n", "VP0004", 1, 17, 24, "expected a size"),
    ("unterminated string", "vault v { path \"/persist }\n", "VP0002", 1, 16, 25, "close the string"),
    ("bad escape", "vault v { path \"/a\\qb\" }\n", "VP0003", 1, 19, 21, "valid escapes"),
    ("stray character", "vault v { limit 1MiB }\n@\n", "VP0001", 2, 1, 2, "policies contain"),
    ("a letter that is not ASCII", "vault données { limit 16MiB }\n", "VP0001", 1, 11, 12,
     "names are ASCII: letters `a`-`z` and `A`-`Z`, digits, `_` and `-`, starting with a letter or `_`"),
    ("a name in another script", "app 应用 { }\n", "VP0001", 1, 5, 7, "names are ASCII"),
    ("end of file", "vault v { }\ninclude", "VP0007", 2, 1, 8, "missing a string after `include`"),
    ("setting given twice", "vault v {\n  limit 1MiB\n  limit 2MiB\n}\n", "VP0016", 3, 3, 13, "keep one"),
]


@pytest.mark.parametrize("name,source,code,line,column,end_column,hint", ONE_ERROR, ids=[c[0] for c in ONE_ERROR])
def test_one_precise_error(lang, name, source, code, line, column, end_column, hint):
    errors = lang.errors(source)
    assert [lang.where(d) for d in errors] == [(code, line, column)]
    assert errors[0].span.end_column == end_column
    assert hint in (errors[0].help or "") + errors[0].message
    assert errors[0].help, "every error says what to do"


def test_a_block_after_a_missing_brace_on_the_same_line_still_parses(lang):
    """`vault b {` ends the unclosed `vault a` block wherever it stands: it is not read as a second
    `path` of `a` (VP0016) after a stray `vault` (VP0005), and `a` keeps the settings before it."""
    policy, diags, _ = parse_partial('vault a { path "/persist/a" limit 16MiB vault b { path "/persist/b" }\n', "t.vpol")
    assert [d.code for d in diags] == ["VP0006"]
    assert [(v.name.value, v.path.value) for v in policy.items] == [("a", "/persist/a"), ("b", "/persist/b")]


MISSPELT_AFTER_AN_UNCLOSED_BLOCK = {
    "after a missing `}`": ("vault a {\n  limit 16MiB\nap b { vault a }\n",
                            [("VP0006", 1, 9, "add `}` after line 2 to close this block"),
                             ("VP0005", 3, 1, "did you mean `app`?")]),
    "after an include": ('include "x.vpol"\nap b { vault a }\n', [("VP0005", 2, 1, "did you mean `app`?")]),
    "a misspelt unnamed block": ("vault a {\n  limit 16MiB\ndefautls { rotate every 90d }\n",
                                 [("VP0006", 1, 9, "add `}` after line 2 to close this block"),
                                  ("VP0005", 3, 1, "did you mean `defaults`?")]),
}


@pytest.mark.parametrize("source,expected", MISSPELT_AFTER_AN_UNCLOSED_BLOCK.values(),
                         ids=MISSPELT_AFTER_AN_UNCLOSED_BLOCK.keys())
def test_a_misspelt_block_keyword_starts_a_block_of_its_own(lang, source, expected):
    """`ap b {` was read as a setting of the block before it: VP0006 said to close that block after
    `ap b`'s line, and VP0005 listed the vault's settings. A header, misspelt or not, starts an item."""
    assert [(*lang.where(d), d.help) for d in lang.errors(source)] == expected


UNCLOSED_THEN = {
    "a malformed header at column 1": ("vault a {\n  limit 16MiB\napp x y {\n  vault a\n}\n",
                                       [("VP0006", 1, 9, "add `}` after line 2 to close this block"),
                                        ("VP0004", 3, 7, "write `{` before `y`")]),
    "a malformed header at the block's indentation": (
        "  vault a {\n    limit 16MiB\n  vault \"b\" {\n    limit 1MiB\n  }\n",
        [("VP0006", 1, 11, "add `}` after line 2 to close this block"), ("VP0004", 3, 9, "remove the quotes: `b`")]),
    "a list cut short by the end of the block": ("vault a {\n  seal pcrs 0,\napp k { vault a }\n",
                                                 [("VP0006", 1, 9, "add `}` after line 2 to close this block"),
                                                  ("VP0004", 2, 15, "remove the `,` before the end of the block: "
                                                                    "a list does not end with one")]),
}


@pytest.mark.parametrize("source,expected", UNCLOSED_THEN.values(), ids=UNCLOSED_THEN.keys())
def test_an_unclosed_block_ends_at_the_line_where_the_next_item_starts(lang, source, expected):
    """`app x y {` after a missing `}` was read as part of the open block; now a line that starts
    with a top-level keyword and holds a `{`, no further right than the block, starts an item. The
    block is closed after its last token: the `}` that is not there is `the end of the block`."""
    assert [(*lang.where(d), d.help) for d in lang.errors(source)] == expected


def test_a_setting_that_starts_like_a_header_stays_in_its_block(lang):
    """An app's `vault` setting at column 1 has no `{`: it is no header."""
    policy = lang.parse_ok("app k {\nvault a\n}\nvault a { limit 8MiB }\n")
    assert [item.name.value for item in policy.items] == ["k", "a"]


def test_a_vault_named_like_a_misspelt_keyword_is_still_a_vault(lang):
    policy = lang.parse_ok("vault devce { limit 16MiB }\napp ap { vault devce }\n")
    assert [item.name.value for item in policy.items] == ["devce", "ap"]


def _compile_errors(lang, source: str):
    policy = lang.parse_ok(source)
    return compiler.check(policy).errors()


def test_duplicate_vault_is_reported_by_check_at_the_second_name(lang):
    errors = _compile_errors(lang, "vault scratch { limit 16MiB }\nvault scratch { limit 32MiB }\n")
    assert [lang.where(d) for d in errors] == [("VP0102", 2, 7)]


def test_unknown_vault_in_an_app_suggests_the_closest(lang):
    errors = _compile_errors(lang, "vault scratch { limit 16MiB }\napp cam {\n  vault scrach\n}\n")
    assert [lang.where(d) for d in errors] == [("VP0101", 3, 9)]
    assert "scratch" in errors[0].help


FIVE_ERRORS = """\
vault config {
  limt 16MiB
}
vault images { limit 64XiB }
defaults { rotate every 90y }
attestation boot {
  pcrs 0, 24
}
app cam { vault images protection end_to_ned }
"""


FIVE_AT = [("VP0005", 2, 3), ("VP0010", 4, 24), ("VP0011", 5, 27), ("VP0012", 7, 11), ("VP0014", 9, 35)]


def test_five_independent_errors_are_all_reported(lang):
    assert [lang.where(d) for d in lang.errors(FIVE_ERRORS)] == FIVE_AT


def test_check_reports_the_five_errors_and_nothing_else(lang, tmp_path):
    """Through the command a user runs: the compiler's rules run on what parsed and must add nothing."""
    policy = tmp_path / "five.vpol"
    policy.write_text(FIVE_ERRORS)
    code, out, _ = lang.cli("check", "--format", "json", policy)
    found = [(d["code"], d["span"]["line"], d["span"]["column"]) for d in json.loads(out)["diagnostics"]]
    assert (code, found) == (1, FIVE_AT)
    code, _, err = lang.cli("check", policy)
    assert code == 1 and err.count("error[") == 5 and err.endswith("check: 5 errors, 0 warnings in 1 file\n")


def test_several_broken_settings_in_one_block_each_report_once(lang):
    errors = lang.errors("vault v {\n  limt 1MiB\n  path 5\n  encription none\n  protected\n}\n")
    assert [lang.where(d) for d in errors] == [("VP0005", 2, 3), ("VP0004", 3, 8), ("VP0005", 4, 3)]


NAMED_MESSAGES = [
    ("vault config {\n  limit 16MiB\n", "VP0006", 1, 14, "unclosed `{` in `vault config`"),
    ("device {\n  persist \"/persist\"\n", "VP0006", 1, 8, "unclosed `{` in `device`"),
    ("vault v {\n  limit 1MiB\n  limit 2MiB\n}\n", "VP0016", 3, 3, "`limit` is set twice in `vault v`"),
    ("defaults { rotate every 1d rotate every 2d }\n", "VP0016", 1, 28, "`rotate` is set twice in `defaults`"),
    ("vault images {\n  limit 64Mib\n}\n", "VP0010", 2, 11, "unknown size unit `Mib` of `limit` in `vault images`"),
    ("vault v { limit 16777216 }\n", "VP0010", 1, 17, "size `16777216` of `limit` in `vault v` has no unit"),
    ("device { capacity 0B }\n", "VP0010", 1, 19, "size `0B` of `capacity` in `device` is zero"),
    ("device { reserve 99999999999999999MiB }\n", "VP0010", 1, 18,
     "size `99999999999999999MiB` of `reserve` in `device` is too large"),
    ("vault config {\n  seal pcrs 0, 7, 24\n}\n", "VP0012", 2, 19,
     "PCR index `24` of `seal pcrs` in `vault config` is out of range"),
    ("attestation boot { pcrs 0, 24 }\n", "VP0012", 1, 28, "PCR index `24` of `pcrs` in `attestation boot` is out of range"),
    ('attestation boot { pcrs 0  allow pcr 99 = "ab" }\n', "VP0012", 1, 38,
     "PCR index `99` of `allow pcr` in `attestation boot` is out of range"),
    ("defaults { rotate every 90days }\n", "VP0011", 1, 27, "unknown duration unit `days` of `rotate every` in `defaults`"),
    ("attestation boot { nonce 32 bytes, valid 0m }\n", "VP0011", 1, 42, "duration `0m` of `valid` in `attestation boot` is zero"),
    ("attestation boot { nonce 8 bytes }\n", "VP0013", 1, 26, "nonce size 8 bytes in `attestation boot` is outside 12–32"),
    ("attestation boot { nonce 32KiB bytes }\n", "VP0015", 1, 26,
     "nonce size `32KiB` in `attestation boot` is not a number of bytes"),
    ("vault v { encryption aes-256-xtz }\n", "VP0014", 1, 22, "unknown value `aes-256-xtz` of `encryption` in `vault v`"),
    ('vault images { disabled "  " }\n', "VP0018", 1, 25, "the reason for disabling `vault images` is empty"),
    ('vault v { path "" }\n', "VP0023", 1, 16, "empty path in `vault v`"),
    ('include ""\n', "VP0023", 1, 9, "empty path in `include`"),
]


@pytest.mark.parametrize("source,code,line,column,message", NAMED_MESSAGES, ids=[c[4] for c in NAMED_MESSAGES])
def test_messages_name_the_setting_and_the_block(lang, source, code, line, column, message):
    """`unclosed `{` in `vault` block`, `` `limit` is set twice in this block ``, `unknown size unit `Mib``:
    which vault, which block, which setting was left to the source line."""
    [d] = lang.errors(source)
    assert (*lang.where(d), d.message) == (code, line, column, message)


def test_a_broken_block_does_not_hide_the_next_one(lang):
    errors = lang.errors("vault a { limit }\nvault b { limit 5 }\napp c { vault }\n")
    assert [d.span.line for d in errors] == [1, 2, 3]


def test_messages_never_name_internal_tokens(lang):
    texts = [d.message + (d.help or "") for d in lang.errors("vault { limit 5MiB }\nvault v { path }\ninclude\n")]
    for text in texts:
        for internal in ("NAME", "STRING", "NUMBER", "LBRACE", "RBRACE", "$END", "Token"):
            assert internal not in text, text


# (source, line, column, end column, message, help after "paths hold only characters that show: remove ")
HIDDEN_IN_A_PATH = {
    "a raw zero-width space": ('vault data { path "/persist/me\u200bdia" }\n', 1, 31, 32,
                               "path `/persist/me\\u{200b}dia` in `vault data` contains U+200B ZERO WIDTH SPACE",
                               "the raw U+200B character in the string"),
    "an escaped zero-width space": ('vault data { path "/persist/me\\u{200b}dia" }\n', 1, 31, 39,
                                    "path `/persist/me\\u{200b}dia` in `vault data` contains U+200B ZERO WIDTH SPACE",
                                    "the `\\u{200b}` escape"),
    "a right-to-left override in `holds`": (
        'vault v {\n  path "/persist/v"\n  holds "/persist/v/\u202egpj.exe"\n}\n', 3, 21, 22,
        "`holds` directory `/persist/v/\\u{202e}gpj.exe` in `vault v` contains U+202E RIGHT-TO-LEFT OVERRIDE",
        "the raw U+202E character in the string"),
    "a left-to-right mark in a stored directory": (
        'component c { stores "/persist/x\u200e" }\n', 1, 33, 34,
        "`stores` directory `/persist/x\\u{200e}` in `component c` contains U+200E LEFT-TO-RIGHT MARK",
        "the raw U+200E character in the string"),
    "a byte order mark in the persist root": (
        'device { persist "\ufeff/persist" }\n', 1, 19, 20,
        "persist root `\\u{feff}/persist` in `device` contains U+FEFF ZERO WIDTH NO-BREAK SPACE",
        "the raw U+FEFF character in the string"),
    "a word joiner in an include": ('include "other\u2060.vpol"\n', 1, 15, 16,
                                    "path `other\\u{2060}.vpol` in `include` contains U+2060 WORD JOINER",
                                    "the raw U+2060 character in the string"),
    "a no-break space": ('vault data { path "/persist/my\u00a0data" }\n', 1, 31, 32,
                         "path `/persist/my\\u{a0}data` in `vault data` contains U+00A0 NO-BREAK SPACE",
                         "the raw U+00A0 character in the string"),
    "an escaped newline": ('vault data { path "/persist/da\\nta" }\n', 1, 31, 33,
                           "path `/persist/da\\nta` in `vault data` contains the control character U+000A",
                           "the `\\n` escape"),
    "a raw tab": ('vault data { path "/persist/a\tb" }\n', 1, 30, 31,
                  "path `/persist/a\\tb` in `vault data` contains the control character U+0009", "the raw tab in the string"),
    "a raw tab after escapes": ('vault data { path "/persist/\\"a\\\\\tb" }\n', 1, 34, 35,
                                'path `/persist/"a\\\\tb` in `vault data` contains the control character U+0009',
                                "the raw tab in the string"),
    "a control character escaped": ('component c { stores "/persist/a\\u{7}" }\n', 1, 33, 38,
                                    "`stores` directory `/persist/a\\u{7}` in `component c` contains the control character U+0007",
                                    "the `\\u{7}` escape"),
}


@pytest.mark.parametrize("source,line,column,end_column,message,help", HIDDEN_IN_A_PATH.values(),
                         ids=HIDDEN_IN_A_PATH.keys())
def test_a_character_that_does_not_show_in_a_path_is_an_error_at_it(lang, source, line, column, end_column, message, help):
    """A zero-width space, a bidi control or another character that does not show passed `check`, so
    two paths that look the same differed on the device; VP0207 took only control characters, and
    pointed at the whole string. Now any of them is VP0207 at the character, named by its code point,
    with the path in the message escaped, and the help says how it is written."""
    [d] = lang.errors(source)
    assert (*lang.where(d), d.span.end_column, d.message, d.help) == (
        "VP0207", line, column, end_column, message, f"paths hold only characters that show: remove {help}")


def test_a_path_that_only_looks_like_another_is_one_error_not_an_overlap(lang, tmp_path):
    """`/persist/me\u200bdia` looks like `/persist/media`: it is refused where it is written; its
    vault is not blamed for lying where the default path would put it, and no raw U+200B reaches the
    terminal (the source line shows it as a space, under its caret)."""
    policy = tmp_path / "p.vpol"
    policy.write_text('vault media { path "/persist/media" limit 8MiB }\n'
                      'vault cache { path "/persist/me\u200bdia" limit 8MiB }\n')
    code, _, err = lang.cli("check", policy)
    assert code == 1 and "\u200b" not in err
    assert err.count("error[") == 1 and "error[VP0207]: path `/persist/me\\u{200b}dia` in `vault cache`" in err
    assert '2 | vault cache { path "/persist/me dia" limit 8MiB }\n  |                                ^\n' in err


def test_carets_line_up_after_wide_characters(lang):
    """After `应用应用` (two columns each in a terminal) the caret landed four columns left of `limt`.
    The caret line is padded by display width; the reported column stays the character's."""
    source = 'vault a { path "/persist/应用应用"; limt 16MiB }\n'
    [d] = lang.errors(source)
    assert lang.where(d) == ("VP0005", 1, 33)
    shown, carets = render_text([d], {"t.vpol": source}).splitlines()[3:5]
    assert shown == '1 | vault a { path "/persist/应用应用"; limt 16MiB }'
    assert carets == "  | " + " " * 36 + "^^^^"


def test_a_wide_character_gets_two_carets(lang):
    [d] = lang.errors("app 应 { }\n")
    assert render_text([d], {"t.vpol": "app 应 { }\n"}).splitlines()[4] == "  |     ^^"


@pytest.mark.parametrize("case", ["unknown_keyword", "missing_brace", "bad_size"])
def test_golden_rendering(case):
    source = (GOLDEN / f"{case}.vpol").read_text()
    _, diags = parse_text(source, f"{case}.vpol")
    rendered = render_text(diags, {f"{case}.vpol": source}) + "\n"
    assert rendered == (GOLDEN / f"{case}.txt").read_text()


LITERAL_ERRORS = [
    ('vault v { path "/a\\u{0}" }', "VP0003", 19),
    ('vault v { path "/a\\u{110000}" }', "VP0003", 19),
    ('vault v { path "/a\x00" }', "VP0003", 19),
    ('vault images { disabled "  " }', "VP0018", 25),
    ("device { tpm maybe }", "VP0014", 14),
    ("device { bank sha257 }", "VP0014", 15),
    ("attestation a { on_failure keep_locked, keep_lock }", "VP0014", 41),
    ("app a { protection e2e }", "VP0014", 20),
    ("vault v { limit 0MiB }", "VP0010", 17),
    ("vault v { limit 9000000TiB }", "VP0010", 17),
    ("vault v { limit 512 }", "VP0010", 17),
    ("defaults { rotate every 0d }", "VP0011", 25),
    ("defaults { rotate every 90 }", "VP0011", 25),
    ("attestation a { nonce 32KiB bytes }", "VP0015", 23),
    ("attestation a { pcrs 7a }", "VP0012", 22),
    ("attestation a { nonce 33 bytes }", "VP0013", 23),
]


@pytest.mark.parametrize("source,code,column", LITERAL_ERRORS, ids=[c[0] for c in LITERAL_ERRORS])
def test_literal_errors_point_at_the_literal(lang, source, code, column):
    errors = lang.errors(source)
    assert [lang.where(d) for d in errors] == [(code, 1, column)]
    assert errors[0].help


def test_a_lexical_error_hides_nothing_else_in_its_block(lang):
    """A block holding a bad character was skipped whole: of these four errors only the `@` was
    reported. A bad character costs only itself, so the unit, the duration and PCR 24 are found too."""
    source = 'vault v {\n  path "/persist/v" @\n  limit 64Mib\n  rotate every 90days\n  seal pcrs 0, 24\n}\n'
    assert [(*lang.where(d), d.message) for d in lang.errors(source)] == [
        ("VP0001", 2, 21, "unexpected `@` in the policy"),
        ("VP0010", 3, 11, "unknown size unit `Mib` of `limit` in `vault v`"),
        ("VP0011", 4, 18, "unknown duration unit `days` of `rotate every` in `vault v`"),
        ("VP0012", 5, 16, "PCR index `24` of `seal pcrs` in `vault v` is out of range"),
    ]


LEXICAL_ERROR_COSTS_ONLY_ITS_TOKEN = {
    # a name holding a letter that no name may hold is still the vault's name
    "a letter in a name": ("vault données { limit 64Mib }\n", [("VP0001", 1, 11), ("VP0010", 1, 25)]),
    # and the literal holding it gets no second error (no "unknown unit `Mié`")
    "a letter in a size": ("vault v { limit 16Mié }\n", [("VP0001", 1, 21)]),
    "a superscript in a PCR index": ("vault v { seal pcrs 1², 7 }\n", [("VP0001", 1, 22)]),
    # an unterminated string ends at the line's end, before a closing `}`: no unclosed block
    "an unterminated string": ('vault v {\n  path "/persist/v\n  limit 64Mib\n}\n', [("VP0002", 2, 8), ("VP0010", 3, 11)]),
    "an unterminated string before `}`": ('vault v { path "/persist/v }\nvault w { limit 1Mib }\n',
                                           [("VP0002", 1, 16), ("VP0010", 2, 18)]),
    # what a skipped character stood for is unknown: the error it leaves after it is not reported
    "a bad character for a value": ('vault v { path @ }\n', [("VP0001", 1, 16)]),
}


@pytest.mark.parametrize("source,expected", LEXICAL_ERROR_COSTS_ONLY_ITS_TOKEN.values(),
                         ids=LEXICAL_ERROR_COSTS_ONLY_ITS_TOKEN.keys())
def test_a_lexical_error_costs_only_its_token(lang, source, expected):
    assert [lang.where(d) for d in lang.errors(source)] == expected


def test_check_runs_the_compiler_on_a_block_with_a_bad_character(lang, tmp_path):
    """The block was left out of the compiler's checks too: its 1MiB limit went unreported."""
    policy = tmp_path / "t.vpol"
    policy.write_text('vault v { path "/persist/v" @ limit 1MiB }\n')
    code, out, _ = lang.cli("check", "--format", "json", policy)
    found = [(d["code"], d["span"]["line"], d["span"]["column"]) for d in json.loads(out)["diagnostics"]]
    assert (code, found) == (1, [("VP0001", 1, 29), ("VP0403", 1, 37)])


SYNTAX_MESSAGES = {
    # LALR merges the states after a PCR list of `seal pcrs` and of `pcrs`: the help listed
    # `nonce`, `allow` and `escrow` in a vault, `holds` and `limit` in an attestation
    "a missing `,` between PCRs in a vault": (
        "vault v { seal pcrs 0 4 7 }", "VP0004", 1, 23, "missing `,` between PCR indexes `0` and `4`", "write `0, 4`"),
    "a missing `,` between PCRs in an attestation": (
        "attestation a { pcrs 0 4 }", "VP0004", 1, 24, "missing `,` between PCR indexes `0` and `4`", "write `0, 4`"),
    "a missing `,` between words": (
        "attestation a { on_failure keep_locked deny_release }", "VP0004", 1, 40,
        "missing `,` between `keep_locked` and `deny_release`", "write `keep_locked, deny_release`"),
    # the help said "write the end of the file before `}`", and the inner `}` was a second error
    "a block in a block": ("vault v { { limit 8MiB } }", "VP0004", 1, 11, "unexpected `{` inside `vault v`",
                           "remove it and its `}`: blocks do not nest"),
    "blocks in a block": ("vault v { {{ limit 8MiB }} }", "VP0004", 1, 11, "unexpected `{` inside `vault v`",
                          "remove it and its `}`: blocks do not nest"),
    "a `}` that closes nothing": ("vault v { } }", "VP0004", 1, 13, "unexpected `}`: no block is open here", "remove it"),
    "a quoted name": ('vault "v" { limit 8MiB }', "VP0004", 1, 7, 'expected a vault name, found string `"v"`',
                      "remove the quotes: `v`"),
    "a quoted choice": ('device { tpm "required" }', "VP0004", 1, 14,
                        'expected `required` or `optional`, found string `"required"`', "remove the quotes: `required`"),
    "an `=` before a value": ("vault v { limit = 8MiB }", "VP0004", 1, 17, "expected a size such as `512MiB`, found `=`",
                              "remove the `=`: `limit 8MiB`"),
    "a trailing `,` before a keyword": (
        "vault v { seal pcrs 0, 4, 7, bank sha256 }", "VP0004", 1, 30,
        "expected a PCR index such as `7`, found keyword `bank`",
        "remove the `,` before keyword `bank`: a list does not end with one"),
    "a trailing `,` before `}`": ('vault v { holds "/persist/v/a",\n}', "VP0004", 2, 1, "expected a string, found `}`",
                                  "remove the `,` before `}`: a list does not end with one"),
    # a missing value was reported at the token after it, on the next line
    "a size missing at the end of a line": (
        'vault v {\n  path "/persist/v"\n  limit\n}', "VP0004", 3, 3, "missing a size such as `512MiB` after `limit`",
        "for example `limit 512MiB`"),
    "a size missing before the next setting": (
        'vault v { limit path "/persist/v" }', "VP0004", 1, 11, "missing a size such as `512MiB` after `limit`",
        "for example `limit 512MiB`"),
    # and the choices were "`required` or a name"
    "a choice missing": ("device {\n tpm\n}", "VP0004", 2, 2, "missing `required` or `optional` after `tpm`",
                         "for example `tpm required`"),
    # the example was `pcrs 7`, a binding that leaves the firmware out (VP0507)
    "the PCRs of a seal missing": ("vault v { seal pcrs }", "VP0004", 1, 16, "missing a PCR index such as `7` after `pcrs`",
                                   "for example `pcrs 0, 4, 7`"),
    "an attestation missing": ("vault v { seal }", "VP0004", 1, 11,
                               "missing `pcrs` or the name of an attestation such as `boot` after `seal`",
                               "for example `seal boot`"),
    # a number, a space and a unit word gave "has no unit" and "unknown keyword `days`"
    "a duration with a space and a word": ("vault v { rotate every 90 days }", "VP0011", 1, 24,
                                           "`90 days` is not a duration",
                                           "write `90d`: the number and its unit, without a space"),
    "a size with a space and its unit in lower case": ("vault v { limit 8 gib }", "VP0010", 1, 17, "`8 gib` is not a size",
                                                      "write `8GiB`: the number and its unit, without a space"),
    "a nonce lifetime with a space": ("attestation a { nonce 32 bytes, valid 5 min }", "VP0011", 1, 39,
                                      "`5 min` is not a duration", "write `5m`: the number and its unit, without a space"),
    # months gave "has no unit" and "unknown keyword `months`"
    "months with a space": ("vault v { rotate every 4 months }", "VP0011", 1, 24, "`4 months` is not a duration",
                            "months and years are not duration units (their length varies): write days or weeks, "
                            "for example `120d`"),
    "ISO's M with a space": ("vault v { rotate every 6 M }", "VP0011", 1, 24, "`6 M` is not a duration",
                             "months and years are not duration units (their length varies): write days or weeks, "
                             "for example `180d`"),
}


# `mo` got "did you mean `m`?" and `M` "write `6m`": minutes, for a key meant to rotate every few months
CALENDAR_UNITS = {"4mo": ("mo", "120d"), "6M": ("M", "180d"), "1y": ("y", "365d"), "2years": ("years", "730d"),
                  "3Months": ("Months", "90d")}


@pytest.mark.parametrize("written,unit,days", [(w, u, d) for w, (u, d) in CALENDAR_UNITS.items()], ids=CALENDAR_UNITS.keys())
def test_a_calendar_unit_is_never_taken_for_minutes(lang, written, unit, days):
    [d] = lang.errors(f"vault v {{ rotate every {written} }}\n")
    assert (*lang.where(d), d.message) == ("VP0011", 1, 24 + len(written) - len(unit),
                                           f"unknown duration unit `{unit}` of `rotate every` in `vault v`")
    assert d.help == f"months and years are not duration units (their length varies): write days or weeks, " \
        f"for example `{days}`"


@pytest.mark.parametrize("source,code,line,column,message,help", SYNTAX_MESSAGES.values(), ids=SYNTAX_MESSAGES.keys())
def test_syntax_errors_say_what_is_wrong_and_the_fix(lang, source, code, line, column, message, help):
    [d] = lang.errors(source + "\n")
    assert (*lang.where(d), d.message, d.help) == (code, line, column, message, help)


def test_the_help_lists_only_what_the_block_takes(lang):
    """After `seal pcrs 0` in a vault, the help listed the attestation's settings too."""
    [d] = lang.errors("vault v { seal pcrs 0 nonce }\n")
    assert d.help.startswith("expected `,`, `bank`, ") and "`nonce`" not in d.help and "`allow`" not in d.help


INVISIBLE_AND_LOOK_ALIKE_CHARACTERS = {
    # each gave "unexpected characters in the policy" with a caret under a blank
    "a no-break space": ("vault v {\u00a0limit 8MiB }", 1, 10, "unexpected U+00A0 NO-BREAK SPACE in the policy",
                         "replace it with a plain space"),
    "a thin space": ("vault v { limit\u2009 8MiB }", 1, 16, "unexpected U+2009 THIN SPACE in the policy",
                     "replace it with a plain space"),
    "a zero width space": ("vault v { limit 8MiB\u200b }", 1, 21, "unexpected U+200B ZERO WIDTH SPACE in the policy",
                           "remove it: it does not show in most editors, and no policy needs it"),
    "a right-to-left override": ('vault v { path "/persist/v" \u202e}', 1, 29,
                                 "unexpected U+202E RIGHT-TO-LEFT OVERRIDE in the policy",
                                 "remove it: it does not show in most editors, and no policy needs it"),
    # gave three errors: `“/`, `/` and `”`
    "a string in curly quotes": ("vault v { path \u201c/persist/v\u201d }", 1, 16,
                                 "string in curly quotes `\u201c/persist/v\u201d`",
                                 'write it in straight double quotes: `"/persist/v"`'),
    "an unterminated string in curly quotes": ("vault v { path \u2018/persist/v }", 1, 16,
                                               "unterminated string in curly quotes `\u2018/persist/v`",
                                               'write it in straight double quotes: `"/persist/v"`'),
}


@pytest.mark.parametrize("source,line,column,message,help", INVISIBLE_AND_LOOK_ALIKE_CHARACTERS.values(),
                         ids=INVISIBLE_AND_LOOK_ALIKE_CHARACTERS.keys())
def test_invisible_and_look_alike_characters_are_named(lang, source, line, column, message, help):
    [d] = lang.errors(source + "\n")
    assert (*lang.where(d), d.message, d.help) == ("VP0001", line, column, message, help)


def test_a_string_in_curly_quotes_is_still_checked_as_the_string_it_means(lang):
    """Its meaning is plain, so the compiler and the literal checks judge it as written straight."""
    errors = lang.errors("vault v { path \u201c\u201d }\n")
    assert [d.code for d in errors] == ["VP0001", "VP0023"]


def test_the_help_lines_up_after_a_two_digit_line_number(lang):
    """`= help` stayed two columns in while the `|` moved right for line 10 and beyond."""
    source = "\n" * 10 + "vault v {\n  limt 8MiB\n}\n"
    [d] = lang.errors(source)
    assert render_text([d], {"t.vpol": source}).splitlines()[1:] == [
        "   --> t.vpol:12:3",
        "   |",
        "12 |   limt 8MiB",
        "   |   ^^^^",
        "   = help: did you mean `limit`?",
    ]
