"""`vaultpolicy device rotate [VAULT...] [--due-only]`: re-key vaults (enforcer/rotate.py does the work).

First finishes or undoes any rotation a crash interrupted, then rotates the chosen vaults: every
encrypted vault of the applied plan, or the named ones; with `--due-only` only those whose key is
older than the plan's `rotate every` period (or whose age is unknown). Exit 0 when every chosen vault
rotated, 1 when one was refused or failed (the others still rotate).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from datetime import datetime, timezone

from vaultpolicy import status_codes
from vaultpolicy.commands import device


def add_arguments(parser: argparse.ArgumentParser, key: tuple[str, ...]) -> None:
    parser.add_argument("vaults", nargs="*", metavar="VAULT", help="vaults to rotate (default: every encrypted vault)")
    parser.add_argument("--due-only", action="store_true",
                        help="only vaults whose key is older than the plan's `rotate every` period")
    device.add_arguments(parser, key)


def run(args: argparse.Namespace) -> int:
    from enforcer.state import StateDir

    state = StateDir(args.state_dir)
    try:
        return _rotate(args, state)
    finally:
        for message in state.warnings:  # what could not be read or recorded (a damaged journal or floor)
            print(f"warning: {message}", file=sys.stderr)


def _rotate(args: argparse.Namespace, state) -> int:
    from enforcer.attest import resolve_device_id
    from enforcer.journal import Journal
    from enforcer.rotate import Rotator, rotate_vaults

    device.check_state_dir(state, args, "rotate")  # before the lock, which would create a missing state dir
    root = device.host_root(args, state)
    with state.exclusive():
        plan = device._applied(args, state)
        device_id = None
        if plan.device.escrow_public_key or args.device_id:
            device_id = resolve_device_id(args.device_id, state.root)
        if plan.device.escrow_public_key:  # the new keys' escrow blobs name the device: its id is recorded
            state.record_device_id(device_id)
        journal = Journal(state.journal_path, state.warnings)
        interrupted = journal.begin()
        with device._tpm(args, state) as tpm:
            tpm.flush_leftovers()  # what a killed command left loaded (we hold the state lock)
            rotator = Rotator(plan, state, root, tpm, datetime.now(timezone.utc), device_id, journal)
            recovered, unrecovered = rotator.recover()
            results = rotate_vaults(rotator, args.vaults, args.due_only, unrecovered)
        journal.finish()

    lines = []
    if interrupted:
        lines.append(f"resumed after an interrupted run (stopped at {interrupted[-1]['action']} "
                     f"{interrupted[-1].get('vault', '')})")
    lines += [f"  vault {r.vault}: {r.describe()}" for r in recovered]
    for result in results:
        if result.outcome == "rotated":
            detail = f"key {result.old_key} -> {result.new_key} at {result.rotated_at}"
            lines.append(f"  vault {result.vault}: rotated, {detail}" + (f" ({result.message})" if result.message else ""))
        elif result.outcome == "failed":
            lines.append(f"  vault {result.vault}: failed ({device._tag(result.reason)}): {result.message}")
        else:
            lines.append(f"  vault {result.vault}: {result.outcome}: {result.message}")
    device._emit(args, {"resumed": interrupted, "recovered": [r.vault for r in recovered],
                        "recovery": [asdict(r) for r in recovered], "rotate": [asdict(r) for r in results]}, lines)
    return status_codes.ERROR if any(r.outcome == "failed" for r in results) else status_codes.SUCCESS
