"""The compiler's public facade: `check` a parsed policy, `compile_policy` it into a `Plan` (imported
as `compiler.check`, ...: compiler/__init__.py loads this module on first use).

Pure data in, data out: policy AST -> resolved model -> diagnostics -> plan. The only files read are
the ones the policy names (escrow key, allowed PCR values), through an injectable reader.
"""

from __future__ import annotations

from collections.abc import Iterable

from policy_lang import ast
from policy_lang.diagnostics import Diagnostics
from policy_lang import Block
from policy_lang.load import read_input_file

from .build import BuildOptions, FileReader, build, read_named_files
from .model import Model
from .partial import independent
from .plan import Plan
from .resolve import resolve
from .rules import RULES

__all__ = ["BuildOptions", "analyze", "check", "compile_policy"]


def analyze(policy: ast.Policy) -> tuple[Model, Diagnostics]:
    model = resolve(policy)
    found: dict = {}  # a diagnostic reached from two settings is reported once, in order
    for rule in RULES:
        for diagnostic in rule(model):
            found.setdefault(diagnostic, None)
    return model, Diagnostics(found).sorted()


def check(policy: ast.Policy, broken: Iterable[Block] = (), read: FileReader = read_input_file) -> Diagnostics:
    """Every independent error and warning in one run, sorted by position, including a named file
    (escrow key, allowed PCR values) that compile could not use.

    `broken`: blocks that an error left out of `policy` or cut short (`LoadResult.broken_blocks`);
    diagnostics that could stem from what they would have said are left out.
    """
    model, diagnostics = analyze(policy)
    if broken:
        diagnostics = independent(diagnostics, policy, broken)
    diagnostics.extend(read_named_files(model, read)[1])
    return diagnostics.sorted()


def compile_policy(policy: ast.Policy, options: BuildOptions, read: FileReader = read_input_file) -> tuple[Plan | None, Diagnostics]:
    """The plan and every diagnostic; no plan when there is any error."""
    model, diagnostics = analyze(policy)
    if diagnostics.has_errors():
        return None, diagnostics
    plan, build_diagnostics = build(model, options, read)
    diagnostics.extend(build_diagnostics)
    return plan, diagnostics
