"""A vault that left the plan with `retain` is what the plan asked for: `device status`, `device report`
and `controller drift` agree that the device does not drift, and list it as retained (real swtpm and
loop-mounted ext4, through the CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from enforcer import fscrypt
from enforcer.report import split_signed_report
from enforcer.state import StateDir
from enforcer.tpm import SealedBlob, Tpm
from vp_helpers import REPO, make_plan, vault

pytestmark = pytest.mark.device


def vaultpolicy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaultpolicy", *args], capture_output=True, text=True, cwd=REPO)


def test_a_retained_vault_is_not_drift_in_status_report_or_the_fleet(device):
    assert device.apply(make_plan([vault("config"), vault("old")])).returncode == 0
    (device.path("/persist/vault/old") / "kept.txt").write_text("kept")
    assert device.apply(make_plan([vault("config")], version=2)).returncode == 0

    status = device.cli("device", "status", "--json")
    assert status.returncode == 0, status.stdout
    assert {v["vault"]: (v["state"], v["matches"]) for v in json.loads(status.stdout)["vaults"]} == \
        {"config": ("unlocked", True), "old": ("orphaned", True)}

    store = ["--store", str(device.work / "controller.db")]
    attest = ["--state-dir", str(device.state), "--tpm", device.tcti, "--device-id", "gw-1"]
    identity = vaultpolicy("device", "identity", *attest, "-o", str(device.work / "identity.json"))
    assert identity.returncode == 0, identity.stderr
    assert vaultpolicy("controller", "enroll", str(device.work / "identity.json"), *store).returncode == 0
    report = vaultpolicy("device", "report", "--root", str(device.root), *attest, "-o", str(device.work / "report.json"))
    assert report.returncode == 0, report.stderr
    signed = (device.work / "report.json").read_bytes()
    vaults = {v["name"]: v["condition"] for v in json.loads(split_signed_report(signed)[0])["vaults"]}
    assert vaults == {"config": "Ready", "old": "Orphaned"}
    fleet = vaultpolicy("controller", "drift", str(device.work / "report.json"), *store)
    assert fleet.returncode == 0, fleet.stdout + fleet.stderr
    assert "1 device(s) verified, 0 drifting" in fleet.stdout and "old: retained, not drift" in fleet.stdout

    # its key back in the kernel is not what `retain` asked: both say drift
    sealed = StateDir(device.state).sealed("old")
    with Tpm(device.tcti) as tpm:
        key = tpm.unseal(SealedBlob.from_json(json.dumps(sealed["blob"])))
    fscrypt.add_key(str(device.path("/persist")), key)
    assert device.cli("device", "status").returncode == 3
    assert vaultpolicy("device", "report", "--root", str(device.root), *attest).returncode == 3


def test_what_an_interrupted_migration_left_beside_a_removed_vault_is_erased_or_reported_never_lost(device):
    """A migration into a vault killed (test_crash kills at every point), then a plan without that vault:
    the plaintext it had copied in, renamed `.old.vp-erase`, stayed on disk forever, and files still
    staged in `.old.vp-plaintext` too, while status said the device matches the plan."""
    # `staged` says destroy: its staged files are still never removed with it (S20, nothing destroyed as a fallback)
    assert device.apply(make_plan([vault("config"), vault("old"), vault("staged", on_remove="destroy")])).returncode == 0
    erasing = device.path("/persist/vault/.old.vp-erase")  # copied into the vault, not yet erased
    erasing.mkdir()
    (erasing / "secret.txt").write_text("copied in already")
    staged = device.path("/persist/vault/.staged.vp-plaintext")  # waiting to be copied: the one whole copy
    staged.mkdir()
    (staged / "only-copy.txt").write_text("not in the vault yet")

    applied = device.apply(make_plan([vault("config")], version=2))
    assert applied.returncode == 1, applied.stdout + applied.stderr  # a problem: the staged files
    assert not erasing.exists(), "the copied plaintext is erased before the vault is retained"
    assert (staged / "only-copy.txt").read_text() == "not in the vault yet", "the staged files are never removed"
    assert StateDir(device.state).records().keys() == {"config", "old", "staged"}
    assert StateDir(device.state).sealed("staged") is not None, "its key is not erased either"

    status = device.cli("device", "status", "--json")
    assert status.returncode == 3, status.stdout
    vaults = {v["vault"]: v for v in json.loads(status.stdout)["vaults"]}
    assert vaults["old"]["matches"] and not vaults["staged"]["matches"]
    assert any("(plaintext-staged" in r or "wait, unencrypted, in" in r for r in vaults["staged"]["reasons"])
    report = device.cli("device", "report")
    assert report.returncode == 3, report.stdout + report.stderr
    conditions = {v["name"]: (v["condition"], v["reason"])
                  for v in json.loads(split_signed_report(report.stdout.encode())[0])["vaults"]}
    assert conditions["staged"] == ("Disabled", "plaintext-staged") and conditions["old"] == ("Orphaned", "removed-from-plan")
