"""`vaultpolicy explain`: every code's example, run through `check`, gives that code; device codes
(VP1xxx) describe a device situation and stand for a reason the enforcer records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from policy_lang.codes import all_codes

CATALOGUE = all_codes()
# Examples that cannot be policy text, and why.
NOT_POLICY_TEXT = {
    "VP0017": "the file's bytes are not UTF-8, which an example in text cannot hold",
    "VP0019": "a formatter bug has no example",
    "VP0024": "a chain of 65 files does not fit an example",
    "VP0606": "it compares with a previous plan (`compile --prev`), which `check` has not",
}


def _files(example: str) -> dict[str, str]:
    """The files an example shows: `# a.vpol` lines start a file (as VP0021's two), else one file."""
    parts = re.split(r"^# (\S+\.vpol)\n", example, flags=re.M)
    if len(parts) == 1:
        return {"example.vpol": example + "\n"}
    return {name: text for name, text in zip(parts[1::2], parts[2::2])}


def _checked_codes(cli, tmp_path: Path, code: str, example: str) -> set[str]:
    if example.startswith("vaultpolicy check "):  # a command on a file of another kind (VP0022)
        named = example.split()[2]
        (tmp_path / "p.vpol").write_text("app a { }\n")
        assert cli("compile", tmp_path / "p.vpol", "--plan-version", "1", "-o", tmp_path / named)[0] == 0
        files = [tmp_path / named]
    else:
        written = _files(example)
        for name, text in written.items():
            (tmp_path / name).write_text(text)
        files = [tmp_path / next(iter(written))]
    _, out, _ = cli("check", "--format", "json", *files)
    return {d["code"] for d in json.loads(out)["diagnostics"]}


@pytest.mark.parametrize("code", [c for c in CATALOGUE if c < "VP1000" and c not in NOT_POLICY_TEXT])
def test_each_policy_code_s_example_gives_that_code(cli, tmp_path, monkeypatch, code):
    monkeypatch.chdir(tmp_path)  # files an example names (escrow keys, allowed values) are looked for here
    assert code in _checked_codes(cli, tmp_path, code, CATALOGUE[code].example), CATALOGUE[code].example


def test_only_the_listed_codes_have_no_policy_example():
    for code, why in NOT_POLICY_TEXT.items():
        assert CATALOGUE[code].example.startswith("("), (code, why)


@pytest.mark.parametrize("code", [c for c in CATALOGUE if c >= "VP1000"])
def test_each_device_code_stands_for_a_reason_the_enforcer_records(code):
    from enforcer.codes import _BY_REASON

    assert code.startswith("VP1") and code in _BY_REASON.values()
    assert CATALOGUE[code].example and CATALOGUE[code].explanation


def test_explain_prints_a_compiler_code_with_its_example(cli):
    code, out, _ = cli("explain", "VP0602")
    assert code == 0 and out.startswith("VP0602: `on_remove destroy` on a protected vault\n\n")
    assert "\n\nExample:\n    vault config { protected  on_remove destroy }   # error\n" in out
    assert cli("explain", "513")[1].startswith("VP0513: PCR listed twice\n")


def test_explain_lists_the_compiler_codes_of_a_family(cli):
    code, out, _ = cli("explain", "VP05")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == [
        "VP0503", "VP0504", "VP0505", "VP0506", "VP0507", "VP0508", "VP0510", "VP0511", "VP0513", "VP0514", "VP0515",
        "VP0516", "VP0517", "VP0518", "VP0519"]
    assert "  VP0513  PCR listed twice\n" in out


def test_a_retired_duplicate_of_a_language_code_is_not_explained(cli):
    """VP0501, VP0502, VP0509 and VP0512 could never be reported: the language refuses those values first."""
    for retired in ("VP0501", "VP0502", "VP0509", "VP0512"):
        assert retired not in CATALOGUE


def test_docs_list_every_compiler_code():
    """docs/compiler.md's table of codes left out VP0403."""
    table = (Path(__file__).parents[2] / "docs" / "compiler.md").read_text().split("## Rules and codes")[1].split("\n## ")[0]
    listed = {f"VP{number}" for number in re.findall(r"\b(0[1-6]\d\d)\b", table)}
    assert {c for c in CATALOGUE if "VP0100" < c < "VP0700"} <= listed
