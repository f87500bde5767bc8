"""The `vaultpolicy` console command: a lazy command table and one place that maps errors to exit codes.

Each command lives in `vaultpolicy.commands.<module>` and exposes `add_arguments(parser)` and
`run(args) -> int`. Only the chosen command's module is imported (pip's `commands_dict`), so `--help`
and `check` never load the TPM stack.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import io
import os
import sys
import traceback
from dataclasses import dataclass

from vaultpolicy import status_codes
from vaultpolicy.errors import VaultpolicyError
from vaultpolicy.process import keep_memory_off_disk
from vaultpolicy.suggest import closest


@dataclass(frozen=True)
class CommandInfo:
    module: str
    summary: str


COMMANDS: dict[tuple[str, ...], CommandInfo] = {
    ("check",): CommandInfo("check", "check policy files and report every error"),
    ("fmt",): CommandInfo("fmt", "format policy files in the one canonical layout"),
    ("explain",): CommandInfo("explain", "explain a diagnostic code such as VP0101"),
    ("compile",): CommandInfo("compile", "compile a policy into a verified plan"),
    ("keygen",): CommandInfo("keygen", "generate an Ed25519 signing key (KEY and KEY.pub)"),
    ("sign",): CommandInfo("sign", "sign a plan (or add a signature to a signed plan)"),
    ("verify",): CommandInfo("verify", "verify a signed plan against a trust root and say why it is refused"),
    ("trust", "init"): CommandInfo("trust", "create a trust root: public keys and an M-of-N threshold"),
    ("trust", "rotate"): CommandInfo("trust", "sign the next trust root with the current one"),
    ("plan", "show"): CommandInfo("plan_show", "print a readable summary of a plan"),
    ("diff",): CommandInfo("diff", "show what changes between two policies or plans, and its data impact"),
    ("device", "apply"): CommandInfo("device", "verify a signed plan and enforce it on this device"),
    ("device", "status"): CommandInfo("device", "compare the plan with what the kernel and TPM say"),
    ("device", "unlock"): CommandInfo("device", "unseal vault keys and add them to the kernel (boot)"),
    ("device", "lock"): CommandInfo("device", "remove vault keys from the kernel"),
    ("device", "gate"): CommandInfo("device", "exit 0 and print the vault path only when an app may start"),
    ("device", "rotate"): CommandInfo("device_rotate", "re-key the vaults named, or every encrypted one "
                                                 "(--due-only: only those past `rotate every`)"),
    ("device", "identity"): CommandInfo("device_attest", "print this device's attestation key for enrolment"),
    ("device", "quote"): CommandInfo("device_attest", "produce a TPM quote over the attestation PCRs"),
    ("device", "report"): CommandInfo("device_attest", "produce a signed drift report"),
    ("device", "escrow-deposit"): CommandInfo("device_attest", "sign this device's escrow blobs for the controller"),
    ("device", "escrow-ack"): CommandInfo("device_attest", "record the controller's acknowledgement of an escrowed key"),
    ("controller", "nonce"): CommandInfo("controller", "issue a single-use attestation nonce"),
    ("controller", "enroll"): CommandInfo("controller", "enrol a device's attestation key"),
    ("controller", "verify-quote"): CommandInfo("controller", "verify a device quote against the policy"),
    ("controller", "release"): CommandInfo("controller", "release an escrowed vault key to a verified device"),
    ("controller", "escrow-keygen"): CommandInfo("controller", "generate the controller's escrow key pair"),
    ("controller", "escrow"): CommandInfo("controller", "store devices' escrowed keys and write acknowledgements"),
    ("controller", "drift"): CommandInfo("controller", "verify drift reports and summarise the fleet"),
}


class _Parser(argparse.ArgumentParser):
    """Every usage error of a command goes through `error`: its usage, the message, a did-you-mean
    for a misspelt option (Python 3.11's argparse has no `suggest_on_error`), exit 64."""

    _argv: tuple[str, ...] = ()

    def parse_args(self, args=None, namespace=None):
        self._argv = tuple(sys.argv[1:] if args is None else args)
        return super().parse_args(args, namespace)

    def exit(self, status=0, message=None):
        # `--help` and `--version` have printed to stdout and exit here: flush it inside main's handlers,
        # so that a closed pipe is exit 141 as for any command's output, not a traceback at interpreter exit
        sys.stdout.flush()
        super().exit(status, message)

    def error(self, message: str):  # argparse's default exit code 2 would collide with CHANGES
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        if (hint := self._misspelt_option()) is not None:
            print(f"  = help: {hint}", file=sys.stderr)
        raise SystemExit(status_codes.USAGE)

    def _misspelt_option(self) -> str | None:
        """A did-you-mean for the first `--option` on the command line that this parser does not know."""
        known = [option for option in self._option_string_actions if option.startswith("--")]
        for arg in self._argv:
            if arg == "--":
                break
            option = arg.split("=", 1)[0]
            # argparse also takes an unambiguous prefix (`--plan` for `--plan-version`)
            if option.startswith("--") and not any(k.startswith(option) for k in known):
                meant = closest(option, known)
                return f"did you mean `{meant}`?" if meant else None
        return None


def _misspelt_command(argv: list[str]) -> str | None:
    """The command meant by `device aply` (`device apply`), `devcie status` or `chek`."""
    first, second = argv[0], argv[1] if len(argv) > 1 else None
    if first in _groups():
        meant = closest(second, [k[1] for k in COMMANDS if k[0] == first]) if second else None
        return f"{first} {meant}" if meant else None
    meant = closest(first, {k[0] for k in COMMANDS})
    if meant in _groups() and (meant, second) in COMMANDS:
        return f"{meant} {second}"
    return meant


def _usage(group: str | None = None) -> str:
    rows = {k: info for k, info in COMMANDS.items() if group is None or k[0] == group}
    width = max(len(" ".join(k)) for k in rows)
    table = "\n".join(f"  {' '.join(k):<{width}}  {info.summary}" for k, info in rows.items())
    command = f"{group} COMMAND" if group else "COMMAND"
    return (
        f"usage: vaultpolicy {command} [options]\n\ncommands:\n{table}\n\n"
        f"Run `vaultpolicy {command} --help` for a command's options."
    )


def _find_command(argv: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    for length in (2, 1):
        key = tuple(argv[:length])
        if key in COMMANDS:
            return key, argv[length:]
    return None


def _groups() -> set[str]:
    return {k[0] for k in COMMANDS if len(k) > 1}


def _version() -> str:
    try:
        return importlib.metadata.version("vaultpolicy")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def tune_gc() -> None:
    """Collect cycles far less often than CPython's default (700 new objects): the compiler builds
    hundreds of thousands of live objects (tokens, trees, AST, model) and almost no cyclic garbage,
    so default collections keep rescanning the growing heap: 30% of compile's CPU time on the
    2,000-vault benchmark, for the same peak memory. A command lives seconds at most. mypy uses the
    same thresholds; bench/compile.py measures with this setting."""
    gc.set_threshold(200_000, 30, 30)


def complete_stdout_writes() -> None:
    """Put a buffer back under sys.stdout when PYTHONUNBUFFERED=1 (usual in containers and service
    units) has left its text layer on the raw file. That layer ignores a short write: when the reader
    of a pipe leaves mid-write, write(2) returns what the pipe took, the rest is dropped without an
    error, and the command exits 0 with its output cut short. A BufferedWriter writes everything or
    raises BrokenPipeError (exit 141); line buffering keeps the output as prompt for a reader."""
    if isinstance(getattr(sys.stdout, "buffer", None), io.RawIOBase):
        sys.stdout = open(sys.stdout.fileno(), "w", buffering=1, encoding=sys.stdout.encoding,  # 1: by line
                          errors=sys.stdout.errors, closefd=False)


def main(argv: list[str] | None = None) -> int:
    keep_memory_off_disk()
    tune_gc()
    complete_stdout_writes()
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe surfaces here, inside the handlers, not at interpreter exit
        return code
    except BrokenPipeError:
        # `vaultpolicy explain VP0101 | head -1`, `vaultpolicy --help | true`: the reader left; say nothing
        # more and exit as a program killed by SIGPIPE would. stdout goes to /dev/null so the exit-time
        # flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return status_codes.OUTPUT_CLOSED
    except VaultpolicyError as exc:
        print(f"error: {exc.shown}", file=sys.stderr)
        if exc.hint:
            print(f"  = help: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # Ctrl-C: one line, no traceback. Outputs are written whole or not at all (write_output renames
        # a finished file) and the device keeps its journal, so the next run takes up where this stopped.
        print("vaultpolicy: interrupted", file=sys.stderr)
        return status_codes.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into an exit code
        if os.environ.get("VAULTPOLICY_DEBUG"):
            traceback.print_exc()
        print(f"internal error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        print("  = help: this is a bug in vaultpolicy; rerun with VAULTPOLICY_DEBUG=1 and report it", file=sys.stderr)
        return status_codes.INTERNAL


def _run(argv: list[str]) -> int:
    """The command line's answer: the command table (bare, `--help`, a group's), `--version`, a
    usage error, or the command's own exit code. Everything it prints is inside main's handlers."""
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return status_codes.SUCCESS if argv else status_codes.USAGE
    if argv[0] == "--version":
        print(f"vaultpolicy {_version()}")
        return status_codes.SUCCESS
    found = _find_command(argv)
    if found is None:
        if argv[0] in _groups() and (len(argv) == 1 or argv[1] in ("-h", "--help")):
            print(_usage(argv[0]))
            return status_codes.SUCCESS if len(argv) > 1 else status_codes.USAGE
        typed = " ".join(argv[:2] if argv[0] in _groups() else argv[:1])
        meant = _misspelt_command(argv)
        if meant is None:
            print(f"vaultpolicy: unknown command `{typed}`\n\n{_usage()}", file=sys.stderr)
        else:
            print(f"vaultpolicy: unknown command `{typed}`\n  = help: did you mean `{meant}`? "
                  "(`vaultpolicy --help` lists every command)", file=sys.stderr)
        return status_codes.USAGE
    key, rest = found
    info = COMMANDS[key]
    parser = _Parser(prog=f"vaultpolicy {' '.join(key)}", description=info.summary)
    module = importlib.import_module(f"vaultpolicy.commands.{info.module}")
    module.add_arguments(parser, key)
    args = parser.parse_args(rest)
    args.command = key
    return module.run(args)


if __name__ == "__main__":
    sys.exit(main())
