"""Device-side defects a fresh-eyes audit found, each reproduced on swtpm and a loop-mounted ext4 image."""

from __future__ import annotations

import json

import pytest

from enforcer import fscrypt
from enforcer.state import StateDir
from vp_helpers import make_plan, vault

pytestmark = pytest.mark.device


def test_protection_is_sticky_and_a_protected_vault_is_never_destroyed(device):
    """S16: plan 1 protects `hist`; plan 2 drops `protected` and says destroy; plan 3 drops `hist`."""
    hist = device.path("/persist/vault/hist")
    assert device.apply(make_plan([vault("hist", protected=True)])).returncode == 0
    (hist / "record.csv").write_text("kept for ten years")
    state = StateDir(device.state)

    lifted = device.apply(make_plan([vault("hist", on_remove="destroy")], version=2))
    assert lifted.returncode == 1 and "destroys-protected" in lifted.stderr, lifted.stderr
    assert "on_remove destroy on protected vault `hist`" in lifted.stderr
    assert state.conditions()["plan"].reason == "destroys-protected"
    assert state.floor()[0] == 1 and state.records()["hist"].protected

    # a plan that only drops the flag is taken, but the device keeps the protection
    assert device.apply(make_plan([vault("hist")], version=3)).returncode == 0
    assert state.records()["hist"].protected and state.records()["hist"].on_remove == "retain"
    assert device.apply(make_plan([vault("hist", on_remove="destroy")], version=4)).returncode == 1

    removed = device.apply(make_plan([vault("other")], version=5))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "destroy" not in removed.stdout
    assert state.sealed("hist") is not None and state.records()["hist"].orphaned
    assert fscrypt.get_policy(str(hist)) is not None and len(list(hist.iterdir())) == 1  # locked, still there

    # back in the plan it unlocks with its data; changing its encryption is still refused
    assert device.apply(make_plan([vault("hist"), vault("other")], version=6)).returncode == 0
    assert (hist / "record.csv").read_text() == "kept for ten years"
    replaced = device.apply(make_plan([vault("hist", encryption="adiantum"), vault("other")], version=7))
    assert replaced.returncode == 1 and "encryption aes-256-xts -> adiantum" in replaced.stderr
    status = json.loads(device.cli("device", "status", "--json").stdout)
    assert {v["vault"]: v["state"] for v in status["vaults"]} == {"hist": "unlocked", "other": "unlocked"}
