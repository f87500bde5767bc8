"""Verification rules over the resolved model (sqlglot's optimizer style).

Each module holds one rule family and exports `RULES`, a tuple of plain functions with the `Rule`
signature. Rules are independent: every one runs on every model, so one run reports every error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from policy_lang.diagnostics import Diagnostic

from ..model import Model
from . import capacity, coverage, keys, names, paths, pcrs


class Rule(Protocol):
    def __call__(self, model: Model) -> Iterable[Diagnostic]: ...


RULES: tuple[Rule, ...] = names.RULES + paths.RULES + coverage.RULES + capacity.RULES + pcrs.RULES + keys.RULES
