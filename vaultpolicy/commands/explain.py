"""`vaultpolicy explain VPnnnn`: what a diagnostic code means, with an example."""

from __future__ import annotations

import re
import textwrap

from policy_lang.codes import all_codes
from vaultpolicy import status_codes
from vaultpolicy.errors import InputError

# Codes are `VP` and four digits; a typo is at most this many edits from the code meant.
_MAX_TYPO_EDITS = 2


def add_arguments(parser, key) -> None:
    parser.add_argument("code", metavar="VPnnnn", help="a diagnostic code, e.g. VP0005")


def run(args) -> int:
    codes = all_codes()
    code = args.code.strip().upper()
    if code.isdigit():
        code = f"VP{code.zfill(4)}"
    info = codes.get(code)
    starting = [c for c in codes.values() if c.code.startswith(code)] if re.fullmatch(r"VP\d{0,3}", code) else []
    if info is None and starting:  # a part of a code (`VP05`) is a question too: list the codes it starts
        print(f"codes starting with `{code}`:")
        for each in starting:
            print(f"  {each.code}  {each.title}")
        return status_codes.SUCCESS
    if info is None:
        raise InputError(f"unknown diagnostic code `{args.code}`", _suggestion(code, sorted(codes)))
    example = textwrap.indent(info.example, "    ")
    print(f"{info.code}: {info.title}\n\n{textwrap.fill(info.explanation, 100)}\n\nExample:\n{example}")
    return status_codes.SUCCESS


def _suggestion(code: str, known: list[str]) -> str:
    """The nearest codes to a mistyped one, or the codes that exist. Codes of its own family (`VP01`
    of `VP0110`) come first: any of them within reach is suggested before a closer code of another
    family, as docs/compiler.md says."""
    edits = {k: _edit_distance(code, k) for k in known if len(k) == len(code)}
    within = {k: n for k, n in edits.items() if n <= _MAX_TYPO_EDITS}
    family = {k: n for k, n in within.items() if k[:4] == code[:4]}
    candidates = family or within
    if candidates:
        fewest = min(candidates.values())
        # Among the closest codes: the longest shared prefix, then nearest by number.
        close = sorted(
            (k for k, n in candidates.items() if n == fewest), key=lambda k: (-_shared_prefix(code, k), _number_gap(code, k))
        )
        return "did you mean " + " or ".join(f"`{c}`" for c in close[:3]) + "?"
    return f"known codes: {_as_ranges(known)}"


def _shared_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _number_gap(code: str, known: str) -> int:
    digits = code[2:]
    return abs(int(digits) - int(known[2:])) if digits.isdigit() else 0


def _as_ranges(codes: list[str]) -> str:
    """`VP0001, VP0002, VP0003, VP0010` -> `VP0001-VP0003, VP0010` (runs of consecutive numbers)."""
    runs: list[list[str]] = []
    for code in codes:
        if runs and int(code[2:]) == int(runs[-1][-1][2:]) + 1:
            runs[-1].append(code)
        else:
            runs.append([code])
    return ", ".join(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def _edit_distance(a: str, b: str) -> int:
    """Edits from `a` to `b`: insertions, deletions, substitutions, and swaps of two neighbours (`VP0110`
    for `VP0101` is one slip of the fingers, not two)."""
    rows = [list(range(len(b) + 1))]
    for i, char_a in enumerate(a, 1):
        row = [i]
        for j, char_b in enumerate(b, 1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (char_a != char_b)))
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]
