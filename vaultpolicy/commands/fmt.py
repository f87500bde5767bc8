"""`vaultpolicy fmt [--check] FILE...`: rewrite policies in the canonical layout."""

from __future__ import annotations

import os
import sys
import tempfile

from compiler.signing import describe_key_file
from policy_lang import format_text
from policy_lang.diagnostics import DiagnosticsError, render_text
from policy_lang.load import UnreadableInput, decode, read_input_file, unreadable
from vaultpolicy import status_codes


def add_arguments(parser, key) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="policy files (.vpol) to format in place")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; list the files that are not formatted and exit 1 if any")


def _write_atomically(path: str, text: str) -> None:
    """Replace the file `path` names; through a symlink, the file it points to (as black and gofmt
    do): renaming over the link itself would turn it into a copy and leave its target unformatted."""
    path = os.path.realpath(path)
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fmt-", suffix=".vpol")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run(args) -> int:
    failed = unformatted = False
    for path in args.files:
        try:
            data = read_input_file(path)
        except (OSError, UnreadableInput) as exc:  # say so and go on with the other files
            print(render_text([unreadable(path, exc)], {}) + "\n", file=sys.stderr)
            failed = True
            continue
        text, decode_errors = decode(data, path, describe_key_file)
        try:
            if decode_errors:
                raise DiagnosticsError(decode_errors)
            formatted = format_text(text, path)
        except DiagnosticsError as exc:
            print(render_text(exc.diagnostics, {path: text}) + "\n", file=sys.stderr)
            print(f"fmt: `{path}` has errors; left unchanged", file=sys.stderr)
            failed = True
            continue
        if formatted == text:
            continue
        unformatted = True
        if args.check:
            print(f"would reformat {path}")
        else:
            _write_atomically(path, formatted)
            print(f"formatted {path}")
    if failed or (args.check and unformatted):
        return status_codes.ERROR
    return status_codes.SUCCESS
