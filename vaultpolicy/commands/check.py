"""`vaultpolicy check FILE...`: every syntax and compiler diagnostic of each policy, in one run."""

from __future__ import annotations

import json
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
    found = Diagnostics()
    sources: dict[str, str] = {}
    for file in args.files:
        result = load(file, describe_key_file)
        sources.update(result.sources)
        found.extend(checked(result))
    read = len(sources)  # every file read, included ones too
    summary = f"{summary_line(found)} in {read} file{'s' if read != 1 else ''}"
    if args.format == "json":
        report = {"files": args.files, "errors": len(found.errors()), "warnings": len(found.warnings()),
                  "diagnostics": to_json(found)}
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        if found:
            print(render_text(found, sources) + "\n", file=sys.stderr)
        print(f"check: {summary}", file=sys.stderr if found.has_errors() else sys.stdout)
    return status_codes.ERROR if found.has_errors() else status_codes.SUCCESS
