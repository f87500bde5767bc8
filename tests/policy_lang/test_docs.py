"""Issue 3, "Must show" 4: every ```vpol block of docs/language.md and of the README parses, so the
docs follow the grammar; and the reference's blocks, checked together, make one policy that `check`
accepts, so no section teaches what another contradicts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import compiler

from policy_lang import format_text, parse_text
from policy_lang.codes import all_codes

REPO = Path(__file__).resolve().parents[2]


def vpol_blocks(doc: Path, alone: bool | None = None) -> list[str]:
    """The ```vpol blocks of `doc`; `alone`: only those marked ```vpol alone (an alternative, checked
    on its own), or only the others."""
    found = re.findall(r"^```vpol( alone)?\n(.*?)^```$", doc.read_text(), flags=re.M | re.S)
    return [block for marked, block in found if alone is None or bool(marked) == alone]


BLOCKS = vpol_blocks(REPO / "docs" / "language.md")
README_BLOCKS = vpol_blocks(REPO / "README.md")


def test_the_reference_has_examples():
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{n}" for n in range(len(BLOCKS))])
def test_doc_example_parses_cleanly_and_formats(block):
    policy, diagnostics = parse_text(block, "docs/language.md")
    assert not diagnostics, diagnostics
    assert policy.items
    assert parse_text(format_text(block), "docs/language.md")[0] == policy


def test_the_readme_language_screen_parses_checks_cleanly_and_formats():
    assert README_BLOCKS, "README.md's language in one screen is a ```vpol block"
    for block in README_BLOCKS:
        policy, diagnostics = parse_text(block, "README.md")
        assert not diagnostics, diagnostics
        assert not compiler.check(policy).errors()
        assert parse_text(format_text(block), "README.md")[0] == policy


def test_every_keyword_appears_in_a_doc_example():
    from policy_lang.parse import keywords

    words = set(re.findall(r"[a-z_]+", "\n".join(BLOCKS)))
    assert keywords() <= words, sorted(keywords() - words)


def test_the_documented_code_range_matches_the_catalogue():
    syntax_codes = [c for c in all_codes() if c < "VP0100"]
    documented = re.search(r"The language's own codes are (VP\d{4})–(VP\d{4})", (REPO / "docs" / "language.md").read_text())
    assert documented and (syntax_codes[0], syntax_codes[-1]) == documented.groups()


def test_the_reference_examples_together_are_one_policy_check_accepts(lang, tmp_path):
    """Each example parsed alone, but together they failed `check`: domainmgr's sensitive directories
    lay in no vault (VP0301) and the end-to-end app's vault was sealed to bare PCRs (VP0303). The
    files the examples name (the escrow key, the allowed values of PCR 7) are made for the check."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    policy = tmp_path / "language.vpol"
    policy.write_text("\n".join(vpol_blocks(REPO / "docs" / "language.md", alone=False)))
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "escrow.pub").write_bytes(X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "values").mkdir()
    (tmp_path / "values" / "pcr7.txt").write_text("ab" * 32 + "\n")
    code, out, err = lang.cli("check", policy)
    assert (code, err) == (0, ""), err
    assert out == "check: 0 errors, 0 warnings in 1 file\n"


@pytest.mark.parametrize("block", vpol_blocks(REPO / "docs" / "language.md", alone=True))
def test_an_alternative_example_checks_on_its_own(block):
    policy, diagnostics = parse_text(block, "docs/language.md")
    assert not diagnostics and not compiler.check(policy).errors()
