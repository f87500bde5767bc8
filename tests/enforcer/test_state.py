"""State dir writes are atomic and failures are reported (S19); the journal finds interrupted steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from enforcer.journal import CRASH_ENV, Journal
from enforcer.state import StateDir, StateWriteError, VaultRecord, atomic_write
from vaultpolicy.errors import DeviceError

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.json"
    atomic_write(target, b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.json"]


def test_failed_write_is_reported_with_the_file_and_keeps_the_old_bytes(tmp_path):
    target = tmp_path / "plan.signed"
    target.mkdir()  # a directory where the file belongs: the rename must fail
    with pytest.raises(StateWriteError) as caught:
        atomic_write(target, b"new")
    assert str(target) in caught.value.message
    assert target.is_dir() and os.listdir(tmp_path) == ["plan.signed"]


def test_conditions_are_written_only_when_they_change(tmp_path):
    state = StateDir(tmp_path)
    state.set_condition("plan", False, "expired", "plan expired", NOW)
    mtime = state.conditions_path.stat().st_mtime_ns
    state.set_condition("plan", False, "expired", "plan expired", NOW)
    assert state.conditions_path.stat().st_mtime_ns == mtime
    state.set_condition("vault/config", False, "pcr-mismatch", "PCR 7", NOW)
    assert set(state.conditions()) == {"plan", "vault/config"}
    state.clear_condition("vault/config")
    assert set(state.conditions()) == {"plan"}


def test_records_round_trip_and_names_cannot_escape(tmp_path):
    state = StateDir(tmp_path)
    record = VaultRecord("config", "/persist/vault/config", "aes-256-xts", "retain", True, 0)
    state.save_record(record)
    assert state.records() == {"config": record}
    with pytest.raises(DeviceError):
        state.record_path("../../etc/passwd")


def test_journal_reports_intents_without_done_and_tolerates_a_torn_line(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    with journal.step({"action": "create-key", "vault": "a"}):
        pass
    (tmp_path / "journal.jsonl").open("a").write(json.dumps({"seq": 2, "intent": {"action": "set-policy"}}) + "\n{\"seq\": 3, \"int")
    assert journal.interrupted() == [{"action": "set-policy"}]
    assert Journal(tmp_path / "journal.jsonl").begin() == [{"action": "set-policy"}]
    assert Journal(tmp_path / "journal.jsonl").interrupted() == []


def test_crash_hook_kills_right_after_the_intent(tmp_path):
    script = (
        "import sys; from pathlib import Path; from enforcer.journal import Journal\n"
        "j = Journal(Path(sys.argv[1]))\n"
        "for n in range(1, 4):\n"
        "    with j.step({'action': 'step', 'n': n}):\n"
        "        Path(sys.argv[1] + f'.ran{n}').touch()\n"
    )
    path = tmp_path / "journal.jsonl"
    result = subprocess.run([sys.executable, "-c", script, str(path)], env={**os.environ, CRASH_ENV: "2"})
    assert result.returncode == -signal.SIGKILL
    assert (tmp_path / "journal.jsonl.ran1").exists() and not (tmp_path / "journal.jsonl.ran2").exists()
    assert Journal(path).interrupted() == [{"action": "step", "n": 2}]


def test_one_mutating_command_at_a_time(tmp_path):
    from enforcer.state import StateBusy

    state = StateDir(tmp_path)
    with state.exclusive():
        with pytest.raises(StateBusy):
            with StateDir(tmp_path).exclusive(timeout_s=0.1):
                pass
    with StateDir(tmp_path).exclusive(timeout_s=0.1):
        pass  # released when the holder finished
