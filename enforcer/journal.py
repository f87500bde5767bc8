"""The write-ahead journal of an apply: every mutating step is recorded before it runs.

One JSON object per line in STATE/journal.jsonl, each line fsynced before the step it announces:

    {"seq": 3, "intent": {"action": "create-key", "vault": "config", ...}}
    {"seq": 3, "done": true}

Recovery does not replay the journal blindly. Every step is written so that re-observing the kernel,
the TPM and the filesystem and reconciling again finishes it (a staged plaintext copy is visible as a
directory, a committed key as its sealed blob, ...). The journal tells the next run that the previous
one stopped mid-way and at which step (`interrupted()`), so it is reported, and it is where the
crash test hooks in. A completed apply removes the journal, and so does the next run once its checks
pass (`restart`).

Test hook: VAULTPOLICY_CRASH_AT=N makes the process SIGKILL itself at its N-th crash point (1-based).
Crash points are, in one count, right after writing each step's intent (the worst moment between steps)
and the points inside steps a handler names with `checkpoint(label)`: between making a vault's image and
moving its plaintext aside, between sealing a new key (and adding it) and saving its sealed blob, inside
a copy, between renaming copied plaintext for erasure and deleting it, between deleting plaintext and
discarding its blocks, inside a resize, inside the cipher probe, with a key unsealed to be escrowed, and
between staging the applied plan and swapping it in (`StateDir.commit_plan`). VAULTPOLICY_CRASH_AT=LABEL
kills at the first `crash_point(LABEL)` instead, a point outside that count and outside any journal:
`unseal-loaded`, inside every unseal with the sealed object and its policy session loaded
(enforcer/tpm.py), so `device unlock` can be killed mid-operation too. VAULTPOLICY_STOP_AT=LABEL stops
the process there instead (SIGSTOP), so a test can act on the TPM from another process at that very
moment (a measurement between PolicyPCR and Unseal) and let it go on (SIGCONT). Only for tests;
documented in docs/enforcer.md.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from enforcer.state import StateCorrupt, StateWriteError, atomic_remove
from vaultpolicy.encoding import json_problem, not_utf8

CRASH_ENV = "VAULTPOLICY_CRASH_AT"
STOP_ENV = "VAULTPOLICY_STOP_AT"


class Journal:
    def __init__(self, path: Path, warnings: list[str] | None = None):
        """`warnings`: where `begin` reports a damaged journal (the command prints them, `StateDir.warnings`)."""
        self.path = path
        self.warnings = [] if warnings is None else warnings
        self._seq = 0
        self._points = 0
        crash_at = os.environ.get(CRASH_ENV, "")
        self._crash_at = int(crash_at) if crash_at.isdigit() else 0  # a label is `crash_point`'s

    def interrupted(self) -> list[dict]:
        """Intents of a previous run that never reached `done`, oldest first; `StateCorrupt` naming the
        file and line for an entry that is not one this journal writes."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateCorrupt(f"the journal {self.path} is unreadable: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise StateCorrupt(f"the journal {self.path} is unreadable: {json_problem(not_utf8(exc))}") from None
        pending: dict[int, dict] = {}
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except ValueError:
                if number == len(lines):
                    continue  # a torn last line from a crash mid-write: that step never started
                raise StateCorrupt(f"the journal {self.path}:{number} is unreadable: not JSON") from None
            if not _is_entry(entry):
                raise StateCorrupt(f"the journal {self.path}:{number} is unreadable: not a journal entry")
            if "intent" in entry:
                pending[entry["seq"]] = entry["intent"]
            else:
                pending.pop(entry["seq"], None)
            self._seq = max(self._seq, entry["seq"])  # steps written before `restart` follow the old ones
        return [pending[k] for k in sorted(pending)]

    def _append(self, entry: dict) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, json.dumps(entry, sort_keys=True).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StateWriteError(f"cannot write journal {self.path}: {exc.strerror or exc}") from None

    @contextmanager
    def step(self, intent: dict) -> Iterator[None]:
        self._seq += 1
        seq = self._seq
        self._append({"seq": seq, "intent": intent})
        self.checkpoint(intent["action"])
        yield
        self._append({"seq": seq, "done": True})

    def checkpoint(self, label: str) -> None:
        """A crash point (the test hook); `label` says where, for people reading a handler."""
        self._points += 1
        if self._points == self._crash_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def unfinished(self) -> list[dict]:
        """What a previous run left unfinished; the journal stays as it is until `restart`.

        The journal only says where a previous run stopped; recovery reads the kernel, the TPM and the
        filesystem. So a damaged journal stops nothing: it is a warning, and the run goes on."""
        try:
            return self.interrupted()
        except StateCorrupt as exc:
            self.warnings.append(f"{exc.message}; started anew: whether an earlier run was interrupted is not known")
            return []

    def restart(self) -> None:
        """The run is going ahead (its checks passed): the previous run's entries are accounted for."""
        if self.path.exists():
            atomic_remove(self.path)

    def begin(self) -> list[dict]:
        """`unfinished`, then `restart`: for a run that checks nothing before it changes things."""
        unfinished = self.unfinished()
        self.restart()
        return unfinished

    def finish(self) -> None:
        """The apply converged: nothing is pending any more."""
        if self.path.exists():
            atomic_remove(self.path)


def crash_point(label: str) -> None:
    """A named crash point (the test hook, see the module docstring): SIGKILL when VAULTPOLICY_CRASH_AT is
    `label`, SIGSTOP when VAULTPOLICY_STOP_AT is."""
    if os.environ.get(CRASH_ENV) == label:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(STOP_ENV) == label:
        os.kill(os.getpid(), signal.SIGSTOP)


def _is_entry(entry) -> bool:
    """`{"seq": N, "intent": {"action": ...}}` or `{"seq": N, "done": true}`."""
    if not isinstance(entry, dict) or type(entry.get("seq")) is not int:
        return False
    if "intent" in entry:
        return isinstance(entry["intent"], dict) and isinstance(entry["intent"].get("action"), str)
    return entry.get("done") is True
