"""`vaultpolicy check FILE...`: every syntax and compiler diagnostic of each policy, in one run."""

from __future__ import annotations

import json
import os
import sys

from compiler.signing import describe_key_file
from compiler.source import checked
from policy_lang import load
from policy_lang.diagnostics import Diagnostics, render_text, summary_line, to_json
from vaultpolicy import status_codes


def add_arguments(parser, key) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="policy files (.vpol); includes are followed")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text: rustc-style on stderr (default); json: diagnostics with full ranges on stdout")


def run(args) -> int:
    files = _once(args.files)  # a file named twice is checked once
    found: dict = {}  # a file that two named files include is parsed twice: its diagnostics count once
    sources: dict[str, str] = {}
    for file in files:
        result = load(file, describe_key_file)
        sources.update(result.sources)
        found.update(dict.fromkeys(checked(result)))
    files = _once([*files, *sources])  # and every file they include: what the summary counts
    diagnostics = Diagnostics(found)
    summary = f"{summary_line(diagnostics)} in {len(files)} file{'s' if len(files) != 1 else ''}"
    if args.format == "json":
        report = {"files": files, "errors": len(diagnostics.errors()), "warnings": len(diagnostics.warnings()),
                  "diagnostics": to_json(diagnostics)}
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        if diagnostics:
            print(render_text(diagnostics, sources) + "\n", file=sys.stderr)
        print(f"check: {summary}", file=sys.stderr if diagnostics.has_errors() else sys.stdout)
    return status_codes.ERROR if diagnostics.has_errors() else status_codes.SUCCESS


def _once(files: list[str]) -> list[str]:
    """`files` without a second name for a file already listed (the same path, or one through a
    symlink or `..`), in order: named or not, whether it could be read or not."""
    seen: dict[str, str] = {}
    for file in files:
        seen.setdefault(os.path.realpath(file), file)
    return list(seen.values())
