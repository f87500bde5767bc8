"""Issue 3, "Must show" 1: random and mutated policies never cause a traceback, and every
error carries a code and a position inside the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_lang import format_text, load, parse_text
from policy_lang.diagnostics import DiagnosticsError, render_text, source_lines
from policy_lang.parse import _lark

EXAMPLE_TEXTS = [p.read_text() for p in sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.vpol"))]
VOCABULARY = ["vault", "app", "{", "}", ";", ",", "=", "|", '"', "\\", "#", "\n", "limit", "seal", "pcrs",
              "24", "512MiB", "90d", "0", "\x00", "\\u{1F512}", '"\\u{110000}"', "include", "99999999999999999999",
              "# note\n", "\n\n", "app a { vault b }", "protection end_to_end",
              # lexical errors that cost only their token, and words the parser's help is about
              "@", "é", "\u200b", "\u00a0", "\u201c", "\u201d", "days", "gib", "bank", "tpm"]
FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THROUGH_FILES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# What the parser calls its tokens (lark's terminal names: `NAME`, `LBRACE`, `__ANON_0`, `$END` and one
# per keyword, `VAULT`, but for `PCR` and `TPM`, which messages say as words) and how `$END` was once
# shown ("write the end of the file before `}`").
INTERNAL_WORDS = sorted({t.name for t in _lark().terminals} - {"PCR", "TPM"} | {"$END", "__ANON", "end of the file", "Token("})
_CODE_POINT = re.compile(r"U\+[0-9A-F]{4,6}(?: [A-Z0-9 \-]+[A-Z0-9])?")  # `U+200B ZERO WIDTH SPACE`


def assert_no_internal_words(source: str, *texts: str) -> None:
    """No message shows an internal name, unless the policy itself holds that word."""
    shown = _CODE_POINT.sub("", " ".join(texts))
    for word in INTERNAL_WORDS:
        if word not in source:
            assert not re.search(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![a-z])", shown), (word, shown)


def assert_well_formed(text: str, diagnostics) -> None:
    for d in diagnostics:
        assert re.fullmatch(r"VP\d{4}", d.code), d
        assert d.span is not None, d
        assert 0 <= d.span.start_pos <= d.span.end_pos <= len(text), d
        assert 1 <= d.span.line <= len(source_lines(text)), d
        assert d.span.column >= 1 and (d.span.end_line, d.span.end_column) >= (d.span.line, d.span.column), d
        assert d.help, d  # every diagnostic says what to do
        assert_no_internal_words(text, d.message, d.help, *d.notes)
    render_text(diagnostics, {"f.vpol": text})


def check_text(text: str) -> None:
    policy, diagnostics = parse_text(text, "f.vpol")
    assert (policy is None) == diagnostics.has_errors()
    assert_well_formed(text, diagnostics)
    if policy is None:
        try:
            format_text(text, "f.vpol")
        except DiagnosticsError as exc:
            assert exc.diagnostics.has_errors()
        else:
            raise AssertionError("fmt accepted a policy with errors")
    else:  # a valid policy always formats (no VP0019), idempotently
        formatted = format_text(text, "f.vpol")
        assert format_text(formatted, "f.vpol") == formatted


@FAST
@given(st.text(max_size=300))
def test_random_text(text):
    check_text(text)


@FAST
@given(st.lists(st.sampled_from(VOCABULARY + ["x", " ", "MiB", "protected"]), max_size=60).map(" ".join))
def test_random_token_soup(text):
    check_text(text)


@st.composite
def mutated_example(draw):
    text = draw(st.sampled_from(EXAMPLE_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 20)))
        action = draw(st.sampled_from(["delete", "insert", "duplicate"]))
        if action == "delete":
            text = text[:i] + text[j:]
        elif action == "insert":
            text = text[:i] + draw(st.sampled_from(VOCABULARY)) + text[i:]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


@FAST
@given(mutated_example())
def test_mutated_examples(text):
    check_text(text)


@THROUGH_FILES
@given(st.binary(max_size=300))
def test_random_bytes_through_load(tmp_path, data):
    path = tmp_path / "f.vpol"
    path.write_bytes(data)
    result = load(path)
    assert (result.policy is None) == result.diagnostics.has_errors()
    for d in result.diagnostics:
        assert re.fullmatch(r"VP\d{4}", d.code) and d.span is not None and d.span.file == str(path)
        assert_no_internal_words(result.sources.get(str(path), ""), d.message, d.help or "", *d.notes)
    render_text(result.diagnostics, result.sources)


def test_pathological_inputs():
    for text in ["{" * 5000, "}" * 5000, "vault v " + "{" * 3000 + "}" * 3000, "vault v { limit " + "9" * 5000 + "MiB }",
                 "attestation a { nonce " + "9" * 5000 + " bytes }", "vault v { seal pcrs " + "7" * 5000 + " }",
                 "\x00" * 100, '"' * 101, "vault v { path \"" + "\\u{" * 100 + "\" }", "#" + "x" * 100000]:
        check_text(text)


@st.composite
def example_with_comments_anywhere(draw):
    """A valid example with comments, blank lines and `;` dropped between any two tokens."""
    text = draw(st.sampled_from(EXAMPLE_TEXTS))
    gaps = [i for i, ch in enumerate(text) if ch in " \n"]
    for i in sorted(draw(st.lists(st.sampled_from(gaps), max_size=8, unique=True)), reverse=True):
        extra = draw(st.sampled_from([" # c\n", "\n# own line\n", "\n\n\n", " ; ", "\n;# after semicolon\n"]))
        text = text[:i] + extra + text[i:]
    return text


@FAST
@given(example_with_comments_anywhere())
def test_comments_anywhere_survive_fmt(text):
    policy, diagnostics = parse_text(text, "f.vpol")
    if policy is None:  # a `;` may land inside a setting, e.g. between a size and its keyword
        return
    formatted = format_text(text, "f.vpol")
    assert [c.strip() for c in re.findall(r"#[^\n]*", formatted)] == [c.strip() for c in re.findall(r"#[^\n]*", text)]
    assert format_text(formatted, "f.vpol") == formatted


@THROUGH_FILES
@given(mutated_example())
def test_check_command_never_fails_internally(lang, tmp_path, text):
    """Compiler rules run on whatever parsed, so their errors too must point inside the file."""
    path = tmp_path / "f.vpol"
    path.write_text(text)
    code, out, err = lang.cli("check", "--format", "json", path)
    assert code in (0, 1), err
    assert "Traceback" not in err and "internal error" not in err
    report = json.loads(out)
    assert (code == 1) == (report["errors"] > 0)
    for d in report["diagnostics"]:
        assert re.fullmatch(r"VP\d{4}", d["code"]), d
        assert d["help"], d
        assert_no_internal_words(text, d["message"], d["help"], *d["notes"])
        if d["severity"] == "error" or d["span"] is not None:
            assert d["span"]["file"] == str(path) and 0 <= d["span"]["start_pos"] <= d["span"]["end_pos"] <= len(text), d
