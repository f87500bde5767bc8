"""`vaultpolicy explain VPnnnn`: what a diagnostic code means, with an example."""

from __future__ import annotations

import textwrap

from policy_lang.codes import all_codes
from policy_lang.diagnostics import did_you_mean
from vaultpolicy import status_codes
from vaultpolicy.errors import InputError


def add_arguments(parser, key) -> None:
    parser.add_argument("code", metavar="VPnnnn", help="a diagnostic code, e.g. VP0005")


def run(args) -> int:
    codes = all_codes()
    code = args.code.strip().upper()
    if code.isdigit():
        code = f"VP{code.zfill(4)}"
    info = codes.get(code)
    if info is None:
        raise InputError(f"unknown diagnostic code `{args.code}`",
                         did_you_mean(code, codes) or f"known codes run from {min(codes)} to {max(codes)}")
    example = textwrap.indent(info.example, "    ")
    print(f"{info.code}: {info.title}\n\n{textwrap.fill(info.explanation, 100)}\n\nExample:\n{example}")
    return status_codes.SUCCESS
