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
from enforcer.state import StateCorrupt, StateDir, StateWriteError, VaultRecord, atomic_write
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


def test_a_journal_that_is_not_utf8_is_named_at_the_bad_bytes_line_and_column(tmp_path):
    """Said Python's "can't decode byte 0xff in position 4", counting from 0."""
    (tmp_path / "journal.jsonl").write_bytes(b'{"seq": 1}\n{"s\xff')
    with pytest.raises(StateCorrupt, match=r"is unreadable: byte 0xff is not valid UTF-8 at line 2 column 4$"):
        Journal(tmp_path / "journal.jsonl").interrupted()


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


def test_the_plan_its_floor_and_trust_root_are_committed_as_one(tmp_path):
    state = StateDir(tmp_path)
    (tmp_path / "trust").write_bytes(b"root 1")  # where enforcers before the joint commit kept it
    assert state.trust_bytes() == b"root 1"
    state.commit_plan(b"plan 1", 1, "1" * 64)
    assert (state.applied_envelope(), state.floor(), state.trust_bytes()) == (b"plan 1", (1, "1" * 64), b"root 1")
    assert not (tmp_path / "trust").exists() and sorted(os.listdir(tmp_path)) == ["applied"]

    def killed(label: str) -> None:
        raise KeyboardInterrupt(label)  # stands in for the SIGKILL at this crash point (test_commit.py kills)

    with pytest.raises(KeyboardInterrupt):
        state.commit_plan(b"plan 2", 2, "2" * 64, b"root 2", killed)
    assert (state.applied_envelope(), state.floor(), state.trust_bytes()) == (b"plan 1", (1, "1" * 64), b"root 1")
    state.commit_plan(b"plan 2", 2, "2" * 64, b"root 2")  # the unfinished commit's leftover is replaced
    assert (state.applied_envelope(), state.floor(), state.trust_bytes()) == (b"plan 2", (2, "2" * 64), b"root 2")
    assert sorted(os.listdir(tmp_path)) == ["applied"]


@pytest.mark.parametrize("content", [b"{}", b"[]", b"7", b'{"plan_version": "1", "plan_sha256": "' + b"a" * 64 + b'"}',
                                     b'{"plan_version": true, "plan_sha256": "' + b"a" * 64 + b'"}',
                                     b'{"plan_version": 1, "plan_sha256": "abc"}', b"{"])
def test_a_damaged_floor_is_named_by_apply_and_a_warning_at_boot(tmp_path, content):
    from enforcer.state import StateCorrupt

    state = StateDir(tmp_path)
    state.commit_plan(b"plan", 1, "a" * 64, b"root")
    state.floor_path.write_bytes(content)
    with pytest.raises(StateCorrupt) as caught:
        state.checked_floor()
    assert caught.value.message.startswith(f"the version floor {state.floor_path} is unreadable")
    assert state.floor() is None and state.warnings == [
        f"{caught.value.message}; the stored applied plan was checked against the trust root only"]


@pytest.mark.parametrize("content", ["1\n", "null\n", "[1]\n", '{"intent": {"action": "x"}}\n', '{"seq": 1}\n',
                                     '{"seq": 1, "intent": {}}\n', 'torn\n{"seq": 1, "done": true}\n'])
def test_a_damaged_journal_is_named_and_begin_starts_anew(tmp_path, content):
    from enforcer.state import StateCorrupt

    path = tmp_path / "journal.jsonl"
    path.write_text(content)
    with pytest.raises(StateCorrupt) as caught:
        Journal(path).interrupted()
    assert caught.value.message == f"the journal {path}:1 is unreadable: " + (
        "not JSON" if content.startswith("torn") else "not a journal entry")
    warnings: list[str] = []
    assert Journal(path, warnings).begin() == [] and not path.exists()
    assert warnings == [f"{caught.value.message}; started anew: whether an earlier run was interrupted is not known"]


def test_the_writable_check_writes_nothing(tmp_path):
    state = StateDir(tmp_path)
    before = os.stat(tmp_path).st_mtime_ns, os.stat(tmp_path).st_ctime_ns
    state.check_writable()
    assert (os.stat(tmp_path).st_mtime_ns, os.stat(tmp_path).st_ctime_ns) == before
