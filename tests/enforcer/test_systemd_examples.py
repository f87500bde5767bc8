"""The shipped systemd units call commands and apps that exist."""

from __future__ import annotations

import shlex
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
