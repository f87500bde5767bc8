"""History in the state dir edited by hand: a last-unlock record of the wrong shape and a sealed
record's `rotated_at` that is no time were internal errors (exit 70) in `device report` and `device
rotate --due-only`. Each only loses history, so the command goes on with a warning naming the file
(real swtpm, loop-mounted ext4, the real CLI)."""

from __future__ import annotations

import json

import pytest

from enforcer.report import split_signed_report
from enforcer.state import StateDir
from vp_helpers import make_plan, vault

pytestmark = pytest.mark.device

PLAN = make_plan([vault("config").model_copy(update={"rotate_seconds": 90 * 86400}), vault("notes")])


def report(device) -> tuple[dict[str, dict], str]:
    """(vault -> its entry in `device report`, stderr)."""
    made = device.cli("device", "report", "-o", str(device.work / "report.json"))
    assert made.returncode == 0, made.stdout + made.stderr
    assert "internal error" not in made.stderr
    report_bytes, _ = split_signed_report((device.work / "report.json").read_bytes())
    return {v["name"]: v for v in json.loads(report_bytes)["vaults"]}, made.stderr


def test_a_last_unlock_record_of_another_shape_is_a_warning(device):
    assert device.apply(PLAN).returncode == 0
    assert device.cli("device", "lock").returncode == 0 and device.cli("device", "unlock").returncode == 0
    record = device.state / "attest" / "last-unlock" / "config.json"
    for content in ('["tpm-sealed"]', '{"method": "by hand", "at": "2026-01-01T00:00:00Z"}', '{"method": "tpm-sealed"}'):
        record.write_text(content)
        vaults, err = report(device)
        assert f"warning: state file {record} is not a record of how the vault was last unlocked" in err, content
        assert vaults["config"]["last_unlock"] == {"method": "none", "at": None}
        assert vaults["notes"]["last_unlock"]["method"] == "tpm-sealed", "the other record is read"


def test_a_rotated_at_that_is_no_time_is_a_warning_and_the_key_counts_as_due(device):
    assert device.apply(PLAN).returncode == 0
    state = StateDir(device.state)
    path = state.sealed_path("config")
    sealed = json.loads(path.read_bytes())
    warning = f"warning: the sealed key record {path} has a `rotated_at` that is not an RFC 3339 UTC time"
    for rotated_at in ("yesterday", 5):
        path.write_text(json.dumps({**sealed, "rotated_at": rotated_at}))
        vaults, err = report(device)
        assert warning in err, err
        assert vaults["config"]["rotation"] == {"last_rotated": None, "rotate_seconds": 90 * 86400, "overdue": None}

    rotated = device.cli("device", "rotate", "--due-only")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert warning in rotated.stderr and "vault config: rotated" in rotated.stdout, rotated.stdout
    assert "vault notes: not-due" in rotated.stdout
    assert "rotated_at" in state.sealed("config") and not state.warnings, "the new key's time is recorded"
