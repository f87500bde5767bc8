"""Loading a policy for the compiler's commands, and the digest of its source that a plan records."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import policy_lang
from policy_lang import ast
from policy_lang.diagnostics import Diagnostics, render_text, summary_line


def source_sha256(sources: dict[str, str], main_file: str) -> str:
    """SHA-256 over the formatted text of every source file, named relative to the main file's
    directory, in name order: reformatting a policy does not change the digest its plans record."""
    base = Path(main_file).resolve().parent
    digest = hashlib.sha256()
    for file in sorted(sources, key=lambda f: _relative(f, base)):
        for part in (_relative(file, base), policy_lang.format_text(sources[file], file)):
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


def load_policy(path: str) -> tuple[ast.Policy | None, dict[str, str], Diagnostics]:
    result = policy_lang.load(path)
    return result.policy, result.sources, Diagnostics(result.diagnostics)
