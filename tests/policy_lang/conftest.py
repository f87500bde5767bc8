"""Helpers for the policy language tests: parse a snippet, run the CLI, find the examples."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from policy_lang import parse_text
from policy_lang.diagnostics import Diagnostics
from vaultpolicy.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.vpol"))


class Lang:
    """Shortcuts the tests share (importlib mode cannot import conftest, so they come as a fixture)."""

    repo = REPO
    examples = EXAMPLES

    @staticmethod
    def parse_ok(text: str):
        policy, diags = parse_text(text, "t.vpol")
        assert policy is not None, diags
        assert not diags, diags
        return policy

    @staticmethod
    def errors(text: str) -> Diagnostics:
        policy, diags = parse_text(text, "t.vpol")
        assert policy is None
        return diags.errors()

    @staticmethod
    def where(d) -> tuple[str, int, int]:
        return d.code, d.span.line, d.span.column

    @staticmethod
    def cli(*argv) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main([str(a) for a in argv])
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def lang() -> type[Lang]:
    return Lang


@pytest.fixture(params=EXAMPLES, ids=lambda p: p.name)
def example(request) -> Path:
    return request.param
