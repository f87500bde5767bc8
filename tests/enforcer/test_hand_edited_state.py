"""History in the state dir edited by hand: a last-unlock record of the wrong shape was an internal
error (exit 70) in `device report`. It only loses history, so the command goes on with a warning naming
the file (real swtpm, loop-mounted ext4, the real CLI)."""

from __future__ import annotations

import json

import pytest

from enforcer.report import split_signed_report
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

