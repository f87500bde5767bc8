"""Every reason the enforcer can record or print has a `vaultpolicy explain` code, found in the source."""

from __future__ import annotations

import re
from pathlib import Path

from enforcer.codes import code_for
from policy_lang.codes import all_codes

REPO = Path(__file__).resolve().parents[2]
# what the device runs: the enforcer, its commands, and the plan signature check it verifies with
SOURCES = [*sorted((REPO / "enforcer").glob("*.py")), *sorted((REPO / "vaultpolicy" / "commands").glob("device*.py")),
           REPO / "compiler" / "signing.py"]
REASON = r'"([a-z][a-z-]*)"'
PATTERNS = [
    rf"PlanRejected\(\s*{REASON}",  # plan refusals
    rf"RotationRefused\(\s*{REASON}",  # rotation and re-encryption refusals
    rf"problem\(\s*{REASON}",  # reconcile problems
    rf"VaultResult\([^,()]+,\s*\"(?!unlocked\")[a-z-]+\",\s*{REASON}",  # unlock and lock outcomes but success
    rf"set_condition\([^,]+,\s*False,\s*{REASON}",  # conditions
    rf"\.reason or {REASON}",  # the fallback reason of an error that has none of its own
]


def emitted_reasons() -> set[str]:
    found = set()
    for source in SOURCES:
        text = source.read_text()
        for pattern in PATTERNS:
            found.update(re.findall(pattern, text))
        for line in re.findall(r"^\s*reason = (.*)$", text, re.MULTILINE):  # reason = "a" if ... else "b"
            found.update(re.findall(REASON, line))
    return found


def test_every_refusal_problem_and_condition_reason_has_a_code():
    emitted = emitted_reasons()
    # each pattern still finds what it is there for (a rename must not make the check vacuous)
    assert {"rollback", "trust-root-changed", "bad-signature", "vault-locked", "no-room", "path-change-unsupported",
            "key-lost", "pcr-mismatch", "unlock-failed", "files-busy", "lock-failed", "step-failed",
            "rotate-failed"} <= emitted
    missing = sorted(r for r in emitted if code_for(r) is None)
    assert not missing, f"reasons without a code in enforcer/codes.py: {missing}"


def test_device_codes_are_in_the_catalogue_with_explanations():
    device = {code: info for code, info in all_codes().items() if code.startswith("VP1")}
    assert len(device) >= 15
    assert all(info.explanation and info.example for info in device.values())
