"""Loading files: includes, cycles, unreadable files and bytes that are not UTF-8."""

from __future__ import annotations

import json
import os

import pytest

from policy_lang import ast, load
from policy_lang.diagnostics import render_text
from policy_lang.load import MAX_INPUT_BYTES


def test_includes_are_merged_in_place_with_their_own_spans(tmp_path):
    (tmp_path / "vaults").mkdir()
    (tmp_path / "vaults" / "scratch.vpol").write_text('include "../apps.vpol"\nvault scratch { limit 1MiB }\n')
    (tmp_path / "apps.vpol").write_text("app cam { vault scratch }\n")
    (tmp_path / "main.vpol").write_text('device { persist "/persist" }\ninclude "vaults/scratch.vpol"\n'
                                        'include "apps.vpol"\n')
    result = load(tmp_path / "main.vpol")
    assert not result.diagnostics
    kinds = [type(i).__name__ for i in result.policy.items]
    assert kinds == ["DeviceDecl", "AppDecl", "VaultDecl"]  # apps.vpol is read once, where first included
    vault = result.policy.of_type(ast.VaultDecl)[0]
    assert vault.span.file.endswith("vaults/scratch.vpol") and vault.span.line == 2
    assert len(result.sources) == 3 and not result.policy.of_type(ast.IncludeDecl)


def test_include_cycle_is_an_error_at_the_closing_include(tmp_path):
    (tmp_path / "a.vpol").write_text('include "b.vpol"\n')
    (tmp_path / "b.vpol").write_text('vault v { }\ninclude "a.vpol"\n')
    result = load(tmp_path / "a.vpol")
    assert result.policy is None
    [d] = result.diagnostics
    assert (d.code, d.span.file, d.span.line, d.span.column) == ("VP0021", str(tmp_path / "b.vpol"), 2, 9)
    assert "a.vpol -> " in d.message and "b.vpol" in d.message


def test_an_include_cycle_hides_no_other_error(lang, tmp_path):
    """Every file of a cycle is read, so what they declare is known: `nosuch` was left unreported, as
    if the include that closes the cycle could have declared it."""
    (tmp_path / "a.vpol").write_text('include "b.vpol"\n')
    (tmp_path / "b.vpol").write_text('include "a.vpol"\napp x { vault nosuch }\n')
    code, out, _ = lang.cli("check", "--format", "json", tmp_path / "a.vpol")
    found = [(d["code"], d["span"]["line"], d["span"]["column"]) for d in json.loads(out)["diagnostics"]]
    assert (code, found) == (1, [("VP0021", 1, 9), ("VP0101", 2, 15)])


def test_missing_include_names_the_include(tmp_path):
    (tmp_path / "a.vpol").write_text('\ninclude "nope.vpol"\n')
    [d] = load(tmp_path / "a.vpol").diagnostics
    assert (d.code, d.span.line, d.span.column) == ("VP0020", 2, 9)
    assert "no such file" in d.message


def test_missing_root_file_is_a_sourceless_diagnostic(tmp_path):
    [d] = load(tmp_path / "absent.vpol").diagnostics
    assert d.code == "VP0020" and d.span is None


def test_invalid_utf8_points_at_the_byte(tmp_path):
    (tmp_path / "a.vpol").write_bytes(b'vault v {\n  path "/p\xe9"\n}\n')
    result = load(tmp_path / "a.vpol")
    codes = [(d.code, d.span.line, d.span.column) for d in result.diagnostics]
    assert codes[0] == ("VP0017", 2, 11)
    assert result.policy is None


def test_errors_in_included_files_are_reported_with_their_file(tmp_path):
    (tmp_path / "a.vpol").write_text('include "b.vpol"\nvault x { limit 1XB }\n')
    (tmp_path / "b.vpol").write_text("vault y { limt 1MiB }\n")
    files = sorted(d.span.file.rsplit("/", 1)[1] for d in load(tmp_path / "a.vpol").diagnostics)
    assert files == ["a.vpol", "b.vpol"]


def test_not_a_regular_file_is_one_error_without_reading_it(tmp_path):
    fifo = tmp_path / "pipe.vpol"
    os.mkfifo(fifo)  # opening a FIFO for reading would wait for a writer forever
    for path in ("/dev/zero", fifo, tmp_path):
        [d] = load(path).diagnostics
        assert d.code == "VP0020" and "not a regular file" in d.message and d.span is None


def test_a_file_over_16_mib_is_one_error(tmp_path):
    big = tmp_path / "big.vpol"
    with open(big, "wb") as handle:
        handle.truncate(MAX_INPUT_BYTES + 1)
    [d] = load(big).diagnostics
    assert d.code == "VP0020" and "larger than 16 MiB" in d.message


@pytest.mark.parametrize("data,line,column,byte", [
    (b"vault v {\n  limit 16MiB\x00\x00\x00 }\n" + b"\x00\xff" * 500, 2, 14, "NUL"),
    (b"\x7fELF\x02\x01\x01\x00\x00" + bytes(range(256)) * 4, 1, 8, "NUL"),
    (b"vault v {\n  path \"/p\xe9\"\n}\n\x00", 2, 11, "0xe9"),
])
def test_a_binary_file_is_one_error_at_the_first_bad_byte(tmp_path, data, line, column, byte):
    (tmp_path / "bin.vpol").write_bytes(data)
    result = load(tmp_path / "bin.vpol")
    [d] = result.diagnostics
    assert (d.code, d.span.line, d.span.column) == ("VP0017", line, column) and byte in d.message
    assert result.policy is None
    render_text(result.diagnostics, result.sources)


def _chain(tmp_path, files: int) -> None:
    """f0.vpol includes f1.vpol, which includes f2.vpol, …; each declares one vault."""
    for n in range(files):
        include = f'include "f{n + 1}.vpol"\n' if n + 1 < files else ""
        (tmp_path / f"f{n}.vpol").write_text(f'{include}vault v{n} {{ path "/persist/v{n}" }}\n')


def test_an_include_chain_too_deep_is_one_error_at_the_include(tmp_path):
    """~1500 files, each including the next, ended in RecursionError (an internal error, exit 70)."""
    from policy_lang.load import MAX_INCLUDE_DEPTH

    _chain(tmp_path, 1500)
    result = load(tmp_path / "f0.vpol")
    [d] = result.diagnostics
    deepest = MAX_INCLUDE_DEPTH + 1
    assert (d.code, d.span.file, d.span.line, d.span.column) == ("VP0024", str(tmp_path / f"f{deepest - 1}.vpol"), 1, 9)
    assert d.message == f"`{tmp_path / f'f{deepest}.vpol'}` is included more than {MAX_INCLUDE_DEPTH} files deep; not read"
    assert len(result.sources) == deepest and result.policy is None
    _chain(tmp_path, deepest)  # the limit itself is fine
    assert not load(tmp_path / "f0.vpol").diagnostics
