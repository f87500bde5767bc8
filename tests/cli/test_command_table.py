"""The command table: every row imports and builds its parser; help and usage errors exit cleanly."""

import os
import subprocess
import sys

import pytest

from vaultpolicy import status_codes
from vaultpolicy.cli import COMMANDS, main


@pytest.mark.parametrize("key", sorted(COMMANDS), ids=" ".join)
def test_every_command_has_help(key, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*key, "--help"])
    assert exit_info.value.code == 0
    assert f"vaultpolicy {' '.join(key)}" in capsys.readouterr().out


@pytest.mark.parametrize("group", ["device", "controller", "trust", "plan"])
def test_group_help_lists_only_its_commands(group, capsys):
    assert main([group, "--help"]) == status_codes.SUCCESS
    out = capsys.readouterr().out
    assert f"usage: vaultpolicy {group} COMMAND" in out
    listed = {line.split()[1] for line in out.splitlines() if line.startswith(f"  {group} ")}
    assert listed == {k[1] for k in COMMANDS if k[0] == group}


def test_bare_group_is_a_usage_error(capsys):
    assert main(["device"]) == status_codes.USAGE
    assert "device apply" in capsys.readouterr().out


def test_unknown_command_and_bad_option_are_usage_errors(capsys):
    assert main(["frobnicate"]) == status_codes.USAGE
    assert "unknown command `frobnicate`" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--no-such-option"])
    assert exit_info.value.code == status_codes.USAGE


def test_version(capsys):
    assert main(["--version"]) == status_codes.SUCCESS
    assert capsys.readouterr().out.startswith("vaultpolicy 0.")


def test_console_script_runs_without_traceback():
    result = subprocess.run([sys.executable, "-m", "vaultpolicy", "explain", "VP9999"], capture_output=True, text=True)
    assert result.returncode == status_codes.ERROR
    assert "Traceback" not in result.stderr


def _into_closed_pipe(argv: list[str], unbuffered: str = "") -> subprocess.CompletedProcess:
    """The console command with stdout a pipe whose reader is gone before the first write: every write is EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "vaultpolicy", *argv], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
    finally:
        os.close(write_end)


def test_a_reader_that_leaves_early_is_not_an_internal_error():
    """`vaultpolicy explain VP0101 | head -1` exited 70 with "internal error: BrokenPipeError"."""
    done = _into_closed_pipe(["explain", "VP0101"])
    assert (done.returncode, done.stderr) == (status_codes.OUTPUT_CLOSED, "")


@pytest.mark.parametrize("unbuffered", ["1", ""])
@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"], ["device"], ["device", "--help"], ["compile", "--help"],
                                  ["controller", "verify-quote", "--help"]], ids=" ".join)
def test_the_command_table_help_and_version_into_a_closed_pipe_exit_141(argv, unbuffered):
    """`vaultpolicy | true`, `vaultpolicy device | true` and `vaultpolicy --version | true` printed a
    BrokenPipeError traceback and exited 120; `vaultpolicy compile --help | true` exited 120 with
    "Exception ignored": their output was printed outside the handler every command's output goes
    through, or flushed only at interpreter exit."""
    done = _into_closed_pipe(argv, unbuffered)
    assert (done.returncode, done.stderr) == (status_codes.OUTPUT_CLOSED, "")


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_reader_that_leaves_mid_output_gives_141_not_0(tmp_path, unbuffered):
    """`plan show many.json | (sleep 1; head -c 10)` exited 0 with its output cut short: under
    PYTHONUNBUFFERED=1 stdout's text layer dropped what a short write(2) left and raised nothing. The
    reader here takes 10 bytes while the command is inside its one large write, then goes away."""
    policy = tmp_path / "many.vpol"
    policy.write_text("".join(f'vault v{n} {{ path "/persist/v{n}" }}\n' for n in range(2000)))
    assert main(["compile", str(policy), "--plan-version", "1", "-o", str(tmp_path / "many.json")]) == 0
    read_end, write_end = os.pipe()
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    command = subprocess.Popen([sys.executable, "-m", "vaultpolicy", "plan", "show", str(tmp_path / "many.json")],
                               stdout=write_end, stderr=subprocess.PIPE, text=True, env=env)
    os.close(write_end)
    try:
        assert len(os.read(read_end, 10)) == 10  # far less than the output, which is several pipe buffers
    finally:
        os.close(read_end)
    _, err = command.communicate(timeout=60)
    assert (command.returncode, err) == (status_codes.OUTPUT_CLOSED, "")


@pytest.mark.parametrize("argv,meant", [
    (["device", "aply", "signed.json"], "device apply"),
    (["devcie", "status"], "device status"),
    (["chek", "p.vpol"], "check"),
    (["controller", "verify-qoute"], "controller verify-quote"),
])
def test_a_misspelt_command_gets_a_did_you_mean(capsys, argv, meant):
    assert main(argv) == status_codes.USAGE
    err = capsys.readouterr().err
    assert f"= help: did you mean `{meant}`?" in err
    assert "device escrow-ack" not in err  # not the whole command table under the suggestion


@pytest.mark.parametrize("argv,meant", [
    (["compile", "p.vpol", "--plan-verison", "1", "-o", "plan.json"], "--plan-version"),
    (["compile", "p.vpol", "--plan-verison=1"], "--plan-version"),  # reported with the missing -o
    (["check", "--formt", "json", "p.vpol"], "--format"),
    (["device", "status", "--state-dri", "/tmp/x"], "--state-dir"),
])
def test_a_misspelt_option_gets_a_did_you_mean(capsys, argv, meant):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == status_codes.USAGE
    assert capsys.readouterr().err.endswith(f"  = help: did you mean `{meant}`?\n")


def test_an_abbreviated_option_is_not_taken_for_a_typo(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "p.vpol", "--plan", "1"])  # -o is missing; `--plan` is --plan-version
    assert "did you mean" not in capsys.readouterr().err


def test_ctrl_c_says_interrupted_and_exits_130(capsys, monkeypatch):
    """SIGINT exited 130 without a word."""
    import signal

    import vaultpolicy.commands.explain

    monkeypatch.setattr(vaultpolicy.commands.explain, "run", lambda args: signal.raise_signal(signal.SIGINT))
    assert main(["explain", "VP0101"]) == status_codes.INTERRUPTED == 130
    assert capsys.readouterr().err == "vaultpolicy: interrupted\n"


@pytest.mark.parametrize("threshold", ["0", "2"])
def test_an_impossible_threshold_is_a_usage_error(capsys, tmp_path, threshold):
    """`trust init --threshold 0` (or above the keys listed) exited 1; README says 64 for such a value."""
    assert main(["keygen", "-o", str(tmp_path / "k")]) == 0
    code = main(["trust", "init", "--key", str(tmp_path / "k.pub"), "--threshold", threshold, "--sign-with",
                 str(tmp_path / "k"), "-o", str(tmp_path / "root.json")])
    assert code == status_codes.USAGE and not (tmp_path / "root.json").exists()
    assert f"error: --threshold: {threshold} must be between 1 and the 1 distinct keys listed" in capsys.readouterr().err


def _options(key: tuple[str, ...]) -> set[str]:
    """The option strings of a command's parser, built as main builds it."""
    import importlib

    from vaultpolicy.cli import _Parser

    parser = _Parser(prog=f"vaultpolicy {' '.join(key)}")
    importlib.import_module(f"vaultpolicy.commands.{COMMANDS[key].module}").add_arguments(parser, key)
    return set(parser._option_string_actions)


def test_a_device_id_is_given_as_device_id_by_every_command():
    """`controller nonce --device ID` where `device apply`, `unlock` and `identity` say `--device-id ID`."""
    takes_device = {key for key in COMMANDS if {"--device", "--device-id"} & _options(key)}
    assert ("controller", "nonce") in takes_device and ("device", "apply") in takes_device
    assert {key for key in takes_device if "--device-id" not in _options(key)} == set()
    assert {key for key in takes_device if "--device" in _options(key)} == set()


def _readme_paragraph(starting: str) -> str:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "README.md").read_text()
    start = text.index(starting)
    return text[start:text.index("\n\n", start)]


def _commands_named(text: str) -> set[tuple[str, ...]]:
    """The commands a README sentence names: `device apply|status` is `device apply` and `device status`."""
    import re

    named = set()
    for words in re.findall(r"`([a-z][a-z |-]*)`", text):
        *group, last = words.split()
        named |= {(*group, choice) for choice in last.split("|") if (*group, choice) in COMMANDS}
    return named


@pytest.mark.parametrize("option,sentence", [("--format", "takes `--format`"), ("--json", "takes `--json`"),
                                             ("-o", "takes it as `-o FILE`")])
def test_readme_says_which_commands_take_format_json_and_o(option, sentence):
    """`--json` and `--format json` both exist (a result vs a report in several formats): README names
    exactly the commands that take each, and those that write a file with -o (escrow-keygen took a
    positional OUT)."""
    paragraph = _readme_paragraph("Output formats and files")
    start = paragraph.index(sentence)
    clause = paragraph[start:paragraph.index(")", start)]
    assert _commands_named(clause) == {key for key in COMMANDS if option in _options(key)}


def test_device_rotate_says_it_rotates_every_vault_given_unless_due_only(capsys):
    """Its summary said "re-key vaults whose rotation period has passed", but without --due-only it
    rotates every vault named, or every encrypted vault."""
    assert main(["device", "--help"]) == status_codes.SUCCESS
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  device rotate "))
    assert "the vaults named, or every encrypted one (--due-only: only those past `rotate every`)" in line
