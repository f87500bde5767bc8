"""Fixtures for compiler tests: parse policy text for real (policy_lang), check it, compile it, run the CLI."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import compiler
import policy_lang
from compiler import BuildOptions
from vaultpolicy.cli import main

FIXED_OPTIONS = BuildOptions(
    plan_version=1, issued_at=datetime(2026, 1, 1, tzinfo=timezone.utc), valid_for_seconds=30 * 86400, source_sha256="0" * 64
)


def _parse(text: str):
    policy, diagnostics = policy_lang.parse_text(text, "t.vpol")
    assert not diagnostics.has_errors(), diagnostics
    return policy


@pytest.fixture
def diagnose():
    """policy text -> list of (code, line, column) of every diagnostic, in source order."""

    def run(text: str) -> list[tuple[str, int, int]]:
        return [(d.code, d.span.line, d.span.column) if d.span else (d.code, 0, 0) for d in compiler.check(_parse(text))]

    return run


@pytest.fixture
def check_text():
    """policy text -> Diagnostics."""
    return lambda text: compiler.check(_parse(text))


@pytest.fixture
def plan_of():
    """policy text -> Plan (asserting it compiles without errors)."""

    def run(text: str, options: BuildOptions = FIXED_OPTIONS, read=None):
        kwargs = {"read": read} if read else {}
        plan, diagnostics = compiler.compile_policy(_parse(text), options, **kwargs)
        assert plan is not None, diagnostics
        return plan

    return run


@pytest.fixture
def cli(capsys):
    """Run `vaultpolicy ARGS...` in-process: (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
