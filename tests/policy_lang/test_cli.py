"""The check, fmt and explain commands through the real CLI entry point."""

from __future__ import annotations

import json
import os

import pytest

from policy_lang.codes import all_codes


def test_check_clean_examples_exit_zero(lang, example):
    code, out, err = lang.cli("check", example)
    assert (code, err) == (0, "")
    assert "0 errors" in out


def test_check_renders_every_error_and_a_summary(lang, tmp_path):
    bad = tmp_path / "bad.vpol"
    bad.write_text("vault v {\n  limt 1MiB\n}\napp a { vault nowhere }\nvault w { limit 3XB }\n")
    code, out, err = lang.cli("check", bad)
    assert code == 1
    assert f"error[VP0005]: unknown keyword `limt`\n  --> {bad}:2:3" in err
    assert f"{bad}:5:18" in err
    assert f"error[VP0101]: app `a` uses unknown vault `nowhere`\n  --> {bad}:4:15" in err  # independent of both
    assert "check: 3 errors, 0 warnings in 1 file" in err


def test_check_runs_the_compiler_rules_after_parsing(lang, tmp_path):
    bad = tmp_path / "bad.vpol"
    bad.write_text("app a { vault nowhere }\n")
    code, _, err = lang.cli("check", bad)
    assert code == 1 and "error[VP0101]" in err and f"{bad}:1:15" in err


def test_check_json_has_ranges(lang, tmp_path):
    bad = tmp_path / "bad.vpol"
    bad.write_text("vault v { limit 5Mb }\n")
    code, out, _ = lang.cli("check", "--format", "json", bad)
    report = json.loads(out)
    assert code == 1 and report["errors"] == 1
    [d] = report["diagnostics"]
    assert d["code"] == "VP0010" and d["help"] == "did you mean `MB`?"
    assert {k: d["span"][k] for k in ("line", "column", "end_line", "end_column")} == {
        "line": 1, "column": 18, "end_line": 1, "end_column": 20}


def test_fmt_check_names_unformatted_files_and_writes_nothing(lang, tmp_path):
    messy = tmp_path / "messy.vpol"
    messy.write_text("vault v{limit 1MiB;path \"/p\"}  # keep me\n")
    before = messy.read_text()
    code, out, _ = lang.cli("fmt", "--check", messy)
    assert (code, out.strip(), messy.read_text()) == (1, f"would reformat {messy}", before)
    code, out, _ = lang.cli("fmt", messy)
    assert code == 0 and messy.read_text() == 'vault v {\n  limit 1MiB\n  path "/p"\n}  # keep me\n'
    assert lang.cli("fmt", "--check", messy)[0] == 0


def test_fmt_through_a_symlink_formats_the_target_and_keeps_the_link(lang, tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "policy.vpol"
    target.write_text("vault v{limit 16MiB}  # keep me\n")
    os.chmod(target, 0o640)
    link = tmp_path / "link.vpol"
    link.symlink_to(os.path.join("real", "policy.vpol"))
    code, out, _ = lang.cli("fmt", link)
    assert (code, out.strip()) == (0, f"formatted {link}")
    assert link.is_symlink() and os.readlink(link) == os.path.join("real", "policy.vpol")
    assert target.read_text() == "vault v { limit 16MiB }  # keep me\n" and (target.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["policy.vpol"]  # no temporary file left


def test_fmt_refuses_a_file_with_errors(lang, tmp_path):
    bad = tmp_path / "bad.vpol"
    bad.write_text("vault v { limt 1MiB }\n")
    code, _, err = lang.cli("fmt", bad)
    assert code == 1 and "VP0005" in err and "left unchanged" in err
    assert bad.read_text() == "vault v { limt 1MiB }\n"


def test_explain_prints_title_paragraph_and_example(lang):
    code, out, _ = lang.cli("explain", "VP0012")
    assert code == 0 and out.startswith("VP0012: PCR index out of range\n")
    assert "Example:\n    vault config { seal pcrs 0, 24 }" in out


@pytest.mark.parametrize("code", [f"VP00{n:02d}" for n in (1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23)])
def test_every_syntax_code_is_explained(lang, code):
    status, out, _ = lang.cli("explain", code.lower())
    assert status == 0 and out.startswith(f"{code}: ") and "Example:" in out


def test_explain_unknown_code_suggests_a_close_one(lang):
    code, _, err = lang.cli("explain", "VP0055")
    assert code == 1 and "unknown diagnostic code `VP0055`" in err
    assert "= help: did you mean `VP0015` or `VP0005`?\n" in err  # one edit away, same family first


@pytest.mark.parametrize("prefix", ["VP05", "vp0", "VP"])
def test_explain_of_a_part_of_a_code_lists_the_codes_it_starts(lang, prefix):
    """A prefix is a question, not a mistake: it said "unknown diagnostic code" and exited 1."""
    code, out, err = lang.cli("explain", prefix)
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert (code, err) == (0, "") and out.startswith(f"codes starting with `{prefix.upper()}`:\n")
    assert listed == sorted(c for c in all_codes() if c.startswith(prefix.upper())) and listed
    assert f"  {listed[0]}  {all_codes()[listed[0]].title}\n" in out


@pytest.mark.parametrize(
    "typed,help_text",
    [
        ("VP0305", "did you mean `VP0304` or `VP0303` or `VP0302`?"),  # ties: the same family, nearest number
        ("VP0O01", "did you mean `VP0001`"),  # letter O for zero
        # its own family first: VP0110 got VP0010, VP0510, VP1110, one edit away in other families
        ("VP0110", "did you mean `VP0101`?\n"),  # two digits swapped: one slip, not two edits
        ("VP0315", "did you mean `VP0304` or `VP0303` or `VP0302`?"),  # not VP0015 or VP0515, one edit away
        ("VP9999", "known codes: VP0001-VP0007, VP0010-VP0024, "),  # nothing close: what exists
    ],
)
def test_explain_suggestions_are_sane(lang, typed, help_text):
    code, _, err = lang.cli("explain", typed)
    assert code == 1 and f"= help: {help_text}" in err, err
    assert "VP1203" not in err or typed == "VP9999"  # `VP0` once suggested VP1203


def test_fmt_reports_an_unreadable_file_and_formats_the_others(lang, tmp_path):
    first, second = tmp_path / "a.vpol", tmp_path / "b.vpol"
    first.write_text("app a{vault images}\n")
    second.write_text("app b{vault images}\n")
    code, out, err = lang.cli("fmt", first, tmp_path / "missing.vpol", tmp_path, second)
    assert code == 1
    assert f"error[VP0020]: cannot read `{tmp_path / 'missing.vpol'}`: no such file or directory" in err
    assert f"error[VP0020]: cannot read `{tmp_path}`: is a directory" in err
    assert out == f"formatted {first}\nformatted {second}\n"
    assert (first.read_text(), second.read_text()) == ("app a { vault images }\n", "app b { vault images }\n")


@pytest.mark.parametrize("bug", [
    lambda text: text.replace("16MiB", "32MiB"),  # a size changed
    lambda text: text.replace("  # keep me", ""),  # a comment dropped
], ids=["changes a size", "drops a comment"])
def test_fmt_refuses_to_write_what_changes_the_policy(lang, tmp_path, monkeypatch, bug):
    """VP0019: fmt re-parses its own output; a layout bug (simulated here) leaves the file as it was."""
    import policy_lang.fmt

    layout = policy_lang.fmt.layout
    monkeypatch.setattr(policy_lang.fmt, "layout", lambda result: bug(layout(result)))
    messy = tmp_path / "messy.vpol"
    messy.write_bytes(b'vault v{limit 16MiB;path "/persist/v"}  # keep me\n')
    code, _, err = lang.cli("fmt", messy)
    assert code == 1 and f"error[VP0019]: formatting `{messy}` would change its meaning" in err
    assert messy.read_bytes() == b'vault v{limit 16MiB;path "/persist/v"}  # keep me\n'
    assert lang.cli("fmt", "--check", messy)[0] == 1


def test_fmt_check_finds_a_crlf_file(lang, tmp_path):
    crlf = tmp_path / "crlf.vpol"
    crlf.write_bytes(b"# one\r\napp a { vault images }  # two\r\n")
    assert lang.cli("fmt", "--check", crlf)[:2] == (1, f"would reformat {crlf}\n")
    assert lang.cli("fmt", crlf)[0] == 0
    assert crlf.read_bytes() == b"# one\napp a { vault images }  # two\n"


def test_a_lone_carriage_return_ends_a_line(lang, tmp_path):
    """Editors (and LSP) break lines at a lone CR: the caret was placed past the end of the line shown."""
    bad = tmp_path / "cr.vpol"
    bad.write_bytes(b"vault a {\r  limt 1MiB\r}\r")
    code, _, err = lang.cli("check", bad)
    assert code == 1 and f"--> {bad}:2:3\n  |\n2 |   limt 1MiB\n  |   ^^^^\n" in err


def test_a_missing_allow_file_says_the_file_is_missing(lang, tmp_path):
    policy = tmp_path / "p.vpol"
    policy.write_text('attestation a { pcrs 0, 4, 7  allow pcr 0 from "nope.txt" }\n')
    code, _, err = lang.cli("check", policy)
    assert code == 1 and f"from `{tmp_path / 'nope.txt'}`: no such file or directory" in err
    assert "= help: check the file name: it is relative to the policy file that names it" in err


def test_a_file_named_twice_is_checked_once(lang, tmp_path, monkeypatch):
    """`check kw.vpol kw.vpol` printed the error twice and ended "2 errors, 0 warnings in 1 file"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kw.vpol").write_text("vault a { limt 16MiB }\n")
    code, _, err = lang.cli("check", "kw.vpol", "kw.vpol", "./kw.vpol", tmp_path / "kw.vpol")
    assert code == 1 and err.count("error[VP0005]") == 1
    assert err.endswith("check: 1 error, 0 warnings in 1 file\n")
    code, out, _ = lang.cli("check", "--format", "json", "kw.vpol", "./kw.vpol")
    report = json.loads(out)
    assert (report["files"], report["errors"], len(report["diagnostics"])) == (["kw.vpol"], 1, 1)


def test_an_error_in_a_file_two_named_files_include_is_reported_once(lang, tmp_path):
    (tmp_path / "apps.vpol").write_text("app a { vault nosuch }\n")
    (tmp_path / "main.vpol").write_text('include "apps.vpol"\n')
    (tmp_path / "other.vpol").write_text('include "apps.vpol"\n')
    code, _, err = lang.cli("check", tmp_path / "main.vpol", tmp_path / "other.vpol")
    assert code == 1 and err.count("error[VP0101]") == 1 and err.endswith("check: 1 error, 0 warnings in 3 files\n")


def test_check_counts_an_unreadable_file_it_names_as_in_its_json(lang, tmp_path, monkeypatch):
    """The text summary said "in 0 files" where the JSON listed the file."""
    monkeypatch.chdir(tmp_path)
    code, _, err = lang.cli("check", "nonexist.vpol")
    assert code == 1 and err.endswith("check: 1 error, 0 warnings in 1 file\n")
    code, out, _ = lang.cli("check", "--format", "json", "nonexist.vpol")
    assert (code, json.loads(out)["files"]) == (1, ["nonexist.vpol"])


def test_check_counts_the_files_it_read(lang, tmp_path):
    """An 800-file include chain was checked "in 1 file"."""
    (tmp_path / "apps.vpol").write_text("app a { vault images }\n")
    (tmp_path / "main.vpol").write_text('include "apps.vpol"\n')
    (tmp_path / "other.vpol").write_text('include "apps.vpol"\n')
    code, out, _ = lang.cli("check", tmp_path / "main.vpol", tmp_path / "other.vpol")
    assert code == 0 and out == "check: 0 errors, 0 warnings in 3 files\n"
    code, out, _ = lang.cli("check", "--format", "json", tmp_path / "main.vpol", tmp_path / "other.vpol")
    assert json.loads(out)["files"] == [str(tmp_path / name) for name in ("main.vpol", "other.vpol", "apps.vpol")]


def test_messages_show_control_characters_as_escapes(lang, tmp_path):
    """`include "a\\nb"` split its message over two lines, and `include "x\\u{1b}[31mred"` put a raw
    ESC on stderr. Every message shows a control character (or another that does not show) as the
    language's escape, and so does the `-->` line of a file whose name holds one."""
    odd = tmp_path / "odd\nname.vpol"
    odd.write_text('vault v { limit "a\x1bb" }\n')
    main = tmp_path / "main.vpol"
    main.write_text('include "a\\nb"\ninclude "x\\u{1b}[31mred"\ninclude "z\u200bw"\n')
    missing = tmp_path / "x\x1b[31mred\u202e.vpol"
    code, _, err = lang.cli("check", main, odd, missing)
    assert code == 1 and "\x1b" not in err and "\u200b" not in err and "\u202e" not in err
    assert "error[VP0207]: path `a\\nb` in `include` contains the control character U+000A\n" in err
    assert "error[VP0207]: path `x\\u{1b}[31mred` in `include` contains the control character U+001B\n" in err
    assert "error[VP0207]: path `z\\u{200b}w` in `include` contains U+200B ZERO WIDTH SPACE\n" in err
    assert f'found string `"a\\u{{1b}}b"`\n  --> {tmp_path}/odd\\nname.vpol:1:17\n' in err
    assert f"error[VP0020]: cannot read `{tmp_path}/x\\u{{1b}}[31mred\\u{{202e}}.vpol`: no such file or directory\n" in err
    code, out, _ = lang.cli("check", "--format", "json", main, odd, missing)
    for d in json.loads(out)["diagnostics"]:
        assert all(text.isprintable() for text in (d["message"], d["help"], *d["notes"])), d


def test_an_included_text_file_that_is_no_policy_is_one_error(lang, tmp_path):
    """`include "/etc/passwd"` gave an error for every stray word and character, echoing every line
    of the file. A text whose first lines hold only errors is named once as no policy, and what it
    declares is unknown, so the app using a vault it might declare is not reported."""
    passwd = tmp_path / "passwd"
    passwd.write_text("".join(f"user{n}:x:{1000 + n}:{1000 + n}:User {n}:/home/user{n}:/bin/sh\n" for n in range(20)))
    main = tmp_path / "main.vpol"
    main.write_text(f'include "{passwd}"\napp a {{ vault data }}\n')
    code, out, _ = lang.cli("check", "--format", "json", main)
    assert code == 1
    [d] = json.loads(out)["diagnostics"]
    assert (d["code"], d["span"]["file"], d["span"]["line"], d["span"]["column"]) == ("VP0022", str(passwd), 1, 1)
    assert d["message"] == f"`{passwd}` does not look like a policy: its first lines hold only errors"
    assert "user1" not in d["message"] + d["help"] + "".join(d["notes"])


def test_a_policy_with_a_few_stray_lines_is_still_a_policy(lang, tmp_path):
    policy = tmp_path / "p.vpol"
    policy.write_text("notes: keep\nowner: ops\nvault v { limit 8Mib }\n")
    code, out, _ = lang.cli("check", "--format", "json", policy)
    assert code == 1
    assert [d["code"] for d in json.loads(out)["diagnostics"]] == ["VP0005", "VP0001", "VP0001", "VP0010"]


def test_check_renders_a_warning_and_exits_zero_on_warnings_alone(lang, tmp_path):
    policy = tmp_path / "w.vpol"
    policy.write_text("vault v {\n  seal pcrs 0, 4, 7, 7\n}\n")
    code, out, err = lang.cli("check", policy)
    assert code == 0
    assert err == (
        "warning[VP0513]: vault `v` lists PCR 7 twice\n"
        f"  --> {policy}:2:22\n"
        "  |\n"
        "2 |   seal pcrs 0, 4, 7, 7\n"
        "  |                      ^\n"
        "  = help: remove the second 7: the plan seals to each PCR once\n\n"
    )
    assert out == "check: 0 errors, 1 warning in 1 file\n"
    code, out, _ = lang.cli("check", "--format", "json", policy)
    report = json.loads(out)
    assert (code, report["errors"], report["warnings"]) == (0, 0, 1)
    [d] = report["diagnostics"]
    assert (d["severity"], d["code"], d["span"]["line"], d["span"]["column"]) == ("warning", "VP0513", 2, 22)
