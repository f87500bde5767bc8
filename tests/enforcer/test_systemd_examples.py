"""The shipped systemd units are valid units and call commands and apps that exist."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from vaultpolicy.cli import COMMANDS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def exec_lines(unit: Path) -> list[list[str]]:
    return [shlex.split(line.split("=", 1)[1]) for line in unit.read_text().splitlines() if line.startswith("Exec")]


def test_units_call_existing_vaultpolicy_commands():
    calls = [argv for unit in (EXAMPLES / "systemd").glob("*.service") for argv in exec_lines(unit)
             if argv[0].endswith("/vaultpolicy")]
    assert {tuple(argv[1:3]) for argv in calls} == {("device", "unlock"), ("device", "lock"), ("device", "gate")}
    assert all(tuple(argv[1:3]) in COMMANDS for argv in calls)


def test_gated_app_is_an_app_of_the_gateway_example():
    (gate,) = [argv for argv in exec_lines(EXAMPLES / "systemd" / "plc-historian.service") if "gate" in argv]
    app = gate[gate.index("gate") + 1]
    assert f"app {app} " in (EXAMPLES / "gateway.vpol").read_text()


def test_every_vaultpolicy_command_line_of_the_units_parses():
    """An option misspelt in a unit would only show at boot, as a failed unlock."""
    import importlib

    from vaultpolicy import cli

    for unit in (EXAMPLES / "systemd").glob("*.service"):
        for argv in exec_lines(unit):
            if not argv[0].endswith("/vaultpolicy"):
                continue
            key, rest = cli._find_command(argv[1:])
            parser = cli._Parser(prog="vaultpolicy")
            importlib.import_module(f"vaultpolicy.commands.{COMMANDS[key].module}").add_arguments(parser, key)
            parser.parse_args(rest)  # a usage error exits 64


def test_systemd_analyze_verifies_the_units(tmp_path):
    """systemd's own offline check: sections, keys, dependencies and that each ExecStart is executable.
    The units go into a root of their own, with systemd's targets and a stand-in for each program."""
    system = tmp_path / "etc" / "systemd" / "system"
    targets = tmp_path / "usr" / "lib" / "systemd" / "system"
    system.mkdir(parents=True)
    targets.mkdir(parents=True)
    for target in Path("/usr/lib/systemd/system").glob("*.target"):
        shutil.copy(target, targets)
    for unit in (EXAMPLES / "systemd").iterdir():
        shutil.copy(unit, system)
        for argv in exec_lines(unit):
            program = tmp_path / argv[0].lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    for unit in sorted(system.glob("*.service")):
        result = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={tmp_path}", str(unit)],
                                capture_output=True, text=True)
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), unit.name
