"""Loading a policy for the compiler's commands, and the digest of its source that a plan records."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import NamedTuple

import policy_lang
from policy_lang import ast
from policy_lang.diagnostics import Diagnostics, render_text, summary_line
from policy_lang.fmt import layout
from policy_lang.parse import ParseResult

from . import check
from .signing import describe_key_file


class LoadedPolicy(NamedTuple):
    policy: ast.Policy | None  # None when any file has an error
    sources: dict[str, str]  # file -> text, for rendering diagnostics
    diagnostics: Diagnostics
    parses: dict[str, ParseResult]  # file -> its one parse, for `source_sha256`


def source_sha256(parses: dict[str, ParseResult], main_file: str) -> str:
    """SHA-256 over the canonical layout (what `vaultpolicy fmt` writes) of every source file, named
    relative to the main file's directory, in name order: reformatting a policy does not change the
    digest its plans record. Laid out from the parse `load_policy` made: no file is parsed again."""
    base = Path(main_file).resolve().parent
    digest = hashlib.sha256()
    for file in sorted(parses, key=lambda f: _relative(f, base)):
        for part in (_relative(file, base), layout(parses[file])):
            encoded = part.encode()
            digest.update(b"%d:" % len(encoded) + encoded)
    return digest.hexdigest()


def _relative(file: str, base: Path) -> str:
    path = Path(file).resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def print_diagnostics(diagnostics: Diagnostics, sources: dict[str, str]) -> None:
    if diagnostics:
        print(render_text(diagnostics, sources), file=sys.stderr)
        print(summary_line(diagnostics), file=sys.stderr)


def checked(result: policy_lang.LoadResult) -> Diagnostics:
    """Every diagnostic `check` reports for a loaded policy, sorted: the language's, and the compiler's
    rules on whatever parsed (what depends on a broken block is left out)."""
    found = Diagnostics(result.diagnostics)
    found.extend(check(result.partial, result.broken_blocks))
    return found.sorted()


def load_policy(path: str) -> LoadedPolicy:
    """The policy for `compile` and `diff`; when it has errors, the diagnostics are `check`'s, so the
    commands report the same errors (without errors, compiling runs the same rules)."""
    result = policy_lang.load(path, describe_key_file)  # a plan or key given as the policy says so
    diagnostics = Diagnostics(result.diagnostics) if result.policy is not None else checked(result)
    return LoadedPolicy(result.policy, result.sources, diagnostics, result.parses)
