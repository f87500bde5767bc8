"""Every option of every author/controller command, given absurd values: a clear error (or a sane
result), never exit 70 (internal error) and never a traceback."""

from __future__ import annotations

import os
import stat

import pytest

from vaultpolicy import status_codes

POLICY = "app historian { vault images }\n"


@pytest.fixture
def files(cli, tmp_path):
    """Real, valid inputs for every command: a policy, a plan, a signed plan, keys and a trust root."""
    paths = {name: tmp_path / name for name in ("p.vpol", "plan.json", "signed.json", "k", "root.json")}
    paths["p.vpol"].write_text(POLICY)
    assert cli("keygen", "-o", paths["k"])[0] == 0
    assert cli("compile", paths["p.vpol"], "--plan-version", "1", "-o", paths["plan.json"])[0] == 0
    assert cli("sign", paths["plan.json"], "--key", paths["k"], "-o", paths["signed.json"])[0] == 0
    assert cli("trust", "init", "--key", f"{paths['k']}.pub", "--threshold", "1", "--sign-with", paths["k"],
               "-o", paths["root.json"])[0] == 0
    paths["out"] = tmp_path / "out"
    paths["dir"] = tmp_path
    return paths


def _commands(f) -> dict[str, list[str]]:
    """A valid command line per command; each argument is replaced in turn by an absurd value."""
    return {
        "check": ["check", f["p.vpol"]],
        "check json": ["check", "--format", "json", f["p.vpol"]],
        "fmt": ["fmt", "--check", f["p.vpol"]],
        "explain": ["explain", "VP0101"],
        "compile": ["compile", f["p.vpol"], "--plan-version", "2", "-o", f["out"], "--prev", f["plan.json"],
                    "--target", "gw-1", "--valid-for", "30d", "--issued-at", "2026-01-01T00:00:00Z"],
        "keygen": ["keygen", "-o", f["out"], "--force"],
        "sign": ["sign", f["plan.json"], "--key", f["k"], "-o", f["out"]],
        "verify": ["verify", f["signed.json"], "--trust", f["root.json"]],
        "trust init": ["trust", "init", "--key", f"{f['k']}.pub", "--threshold", "1", "--sign-with", f["k"], "-o", f["out"]],
        "trust rotate": ["trust", "rotate", "--current", f["root.json"], "--key", f"{f['k']}.pub", "--threshold", "1",
                         "--sign-with", f["k"], "-o", f["out"]],
        "plan show": ["plan", "show", f["signed.json"]],
        "diff": ["diff", f["plan.json"], f["p.vpol"], "--exit-code"],
    }


def _absurd(f) -> list[str]:
    return [
        "", " ", "-1", "0", "99999999999999999999999999", "99999999d", "0s", "9999-12-31T23:59:59Z",
        "0000-00-00T00:00:00Z", "x" * 5000, "/", str(f["dir"]), "/nonexistent/nowhere", "/dev/null", "/dev/zero",
        "VP", "class:", "%s%n{}", "\N{SNOWMAN}",
    ]


def test_no_option_value_gives_an_internal_error(cli, files, monkeypatch):
    # an absurd value in place of an option name becomes a positional output path: keep it in tmp_path
    monkeypatch.chdir(files["dir"])
    for name, argv in _commands(files).items():
        # the command name words stay; every later argument (option names included) gets each value
        first = 2 if argv[0] in ("trust", "plan") else 1
        for index in range(first, len(argv)):
            for value in _absurd(files):
                line = [str(a) for a in argv]
                line[index] = value
                try:
                    code, out, err = cli(*line)
                except SystemExit as exc:  # argparse refusing the line: a usage error, already printed
                    code, out, err = exc.code, "", "usage"
                assert code != status_codes.INTERNAL, (name, line, err)
                assert "Traceback" not in out + err and "internal error" not in err, (name, line, err)
                assert code == status_codes.SUCCESS or (err + out).strip(), (name, line, "failed without saying why")
    # `-o /dev/zero` once renamed a trust root over the device node, leaving /dev/zero a regular file
    for device in ("/dev/null", "/dev/zero"):
        assert stat.S_ISCHR(os.stat(device).st_mode), device


@pytest.mark.parametrize("option,value", [
    ("--plan-version", "99999999999999999999999999"),
    ("--valid-for", "99999999d"),
    ("--valid-for", "0s"),
    ("--issued-at", "9999-12-31T23:59:59Z"),
    ("--target", ""),
    ("--target", "gw\x01"),
    ("--target", "class:edge\n"),
])
def test_compile_names_the_option_it_refuses(cli, files, option, value):
    line = ["compile", files["p.vpol"], "-o", files["out"], option, value]
    if option != "--plan-version":
        line += ["--plan-version", "1"]
    code, _, err = cli(*line)
    assert code == status_codes.USAGE and err.startswith("error: --") and option.split("-")[-1] in err
    assert not files["out"].exists()


@pytest.mark.parametrize("target, shown", [("gw-é\u200b", "gw-é\\u{200b}"), ("gw\x01", "gw\\u{1}"),
                                           ("class:edge\n", "class:edge\\n")])
def test_a_refused_target_is_shown_as_the_language_escapes_it(cli, files, target, shown):
    """A refused `--target` was shown as Python escapes it (`gw-\\xe9\\u200b`, é included); now as
    every message shows a character that does not show, and é as itself (`vaultpolicy.printable`)."""
    code, _, err = cli("compile", files["p.vpol"], "-o", files["out"], "--plan-version", "1", "--target", target)
    assert code == status_codes.USAGE and err.startswith(f"error: --target: `{shown}` is not a device id or `class:NAME`")
