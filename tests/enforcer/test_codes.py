"""Every reason the enforcer can record has a `vaultpolicy explain` code."""

from __future__ import annotations

import re
from pathlib import Path

from enforcer.codes import code_for
from policy_lang.codes import all_codes

ENFORCER = Path(__file__).resolve().parents[2] / "enforcer"


def reasons(pattern: str, *files: str) -> set[str]:
    return {m for f in files for m in re.findall(pattern, (ENFORCER / f).read_text())}


def test_every_refusal_and_problem_reason_has_a_code():
    emitted = reasons(r'PlanRejected\(\s*"([a-z-]+)"', "verify.py") | reasons(r'problem\("([a-z-]+)"', "reconcile.py")
    emitted |= {"pcr-mismatch", "unlock-failed", "files-busy"}  # unlock.py's outcomes
    assert {"rollback", "expired", "future-dated", "wrong-target", "unknown-schema", "key-lost"} <= emitted
    missing = sorted(r for r in emitted if code_for(r) is None)
    assert not missing, f"reasons without a code: {missing}"


def test_device_codes_are_in_the_catalogue_with_explanations():
    device = {code: info for code, info in all_codes().items() if code.startswith("VP1")}
    assert len(device) >= 15
    assert all(info.explanation and info.example for info in device.values())
