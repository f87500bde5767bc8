"""The drift report's condition while an encryption change waits (a locked vault, an unsupported cipher)
or a migration's plaintext waits to be erased: the files as the kernel has them, never the plan's wish.
vault_condition is pure: Observed is data (the erase case is observed on swtpm + ext4)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from enforcer.fscrypt import KeyStatus, policy_for
from enforcer.observe import ObservedSeal, ObservedVault, PathState
from enforcer.report import vault_condition
from vp_helpers import vault

KEY = bytes(range(16))


def encrypted(contents: str = "aes-256-xts") -> ObservedVault:
    """A vault as the enforcer encrypts it: the policy `set_policy` sets (names padded to 32 bytes)."""
    return ObservedVault(name="config", path="/r/persist/vault/config", path_state=PathState.DIRECTORY,
                         policy=policy_for(KEY, contents), key_status=KeyStatus.PRESENT,
                         seal=ObservedSeal(KEY, "sha256", (0, 7), True, ()))


def test_a_pending_encryption_change_is_drift_not_ready():
    assert vault_condition(vault("config"), encrypted(), managed=True)[:2] == ("Ready", "ready")
    for wanted in (vault("config", encryption="none"), vault("config", encryption="adiantum")):
        condition, reason, message = vault_condition(wanted, encrypted(), managed=True)
        assert (condition, reason) == ("Drifted", "encryption-change-pending"), wanted.encryption
        assert "aes-256-xts" in message or "still encrypted" in message


def test_a_policy_that_differs_only_in_its_padding_is_drift():
    """The drift report compares the whole policy, as `status` does: same key and modes, names padded to
    16 bytes (a directory the enforcer did not encrypt) is not the plan's vault."""
    seen = encrypted()
    padded16 = replace(seen, policy=replace(seen.policy, flags=0x02))
    assert vault_condition(vault("config"), padded16, managed=True) == (
        "Drifted", "policy-mismatch", "the directory's encryption policy is aes-256-xts contents, aes-256-cts names "
        "padded to 16 bytes; the plan's is aes-256-xts contents, aes-256-cts names padded to 32 bytes")


def test_an_interrupted_apply_that_left_plaintext_to_erase_says_so(tmp_path):
    """Killed between a migration's copy and its erase: status said only `apply-interrupted`, not that
    plaintext of the vault's files was still on disk."""
    from enforcer.observe import Observed
    from enforcer.state import StateDir, VaultRecord
    from enforcer.unlock import report
    from vp_helpers import make_plan

    plan = make_plan([vault("config")])  # the applied plan; the interrupted one adds `bulk`
    bulk = replace(encrypted(), name="bulk", path="/r/persist/vault/bulk", erasing_plaintext=True)
    record = VaultRecord("bulk", "/persist/vault/bulk", "aes-256-xts", "retain", False, 0)
    observed = Observed(vaults={"config": encrypted(), "bulk": bulk}, records={"bulk": record}, apply_unfinished=True)
    (seen,) = [v for v in report(plan, observed, StateDir(tmp_path)).vaults if v.vault == "bulk"]
    assert seen.state == "apply-interrupted" and not seen.matches
    assert seen.reasons[0].startswith("PLAINTEXT: its files are in the vault, but the plaintext they were copied "
                                      "from is still on disk beside it"), seen.reasons
    condition, reason, message = vault_condition(None, bulk, managed=True, interrupted=True)
    assert (condition, reason) == ("Drifted", "apply-interrupted")
    assert "the plaintext its files were copied from is not erased yet" in message


@pytest.mark.device
def test_migrated_plaintext_not_yet_erased_is_drift_until_apply_erases_it(device):
    """What a crash between a migration's copy and its erase leaves: the files are in the vault and their
    plaintext, renamed `.config.vp-erase`, is still beside it. The report said Ready."""
    import json
    from datetime import datetime, timezone

    from enforcer.observe import observe
    from enforcer.report import build_report
    from enforcer.state import StateDir
    from enforcer.tpm import Tpm
    from vp_helpers import make_plan

    plan = make_plan([vault("config")])
    assert device.apply(plan).returncode == 0
    (device.path("/persist/vault/config") / "secret").write_text("copied in")
    erasing = device.path("/persist/vault/.config.vp-erase")
    erasing.mkdir()
    (erasing / "secret").write_text("copied in")
    state = StateDir(device.state)

    def condition() -> tuple[str, str]:
        with Tpm(device.tcti) as tpm:
            observed = observe(plan, state, device.root, tpm)
        (report,) = build_report("gw-1", plan, None, observed, state, datetime.now(timezone.utc)).vaults
        return report.condition, report.reason

    assert condition() == ("Drifted", "plaintext-erase-pending")
    status = json.loads(device.cli("device", "status", "--json").stdout)
    assert not status["matches"], "status agrees: the erase is still to do"
    assert device.apply(plan).returncode == 0
    assert not erasing.exists() and condition() == ("Ready", "ready")


@pytest.mark.device
def test_a_lowered_limit_the_kernel_does_not_enforce_is_drift_in_the_report_as_in_status(device):
    """An image vault's limit lowered in a new plan (images do not shrink): status said DRIFT, the signed
    report said Ready, "unlocked, encrypted and sealed as the plan says", so the controller never saw it."""
    import json

    from enforcer.report import split_signed_report
    from vp_helpers import app, make_plan

    MiB = 1 << 20
    assert device.apply(make_plan([vault("config", limit=24 * MiB)])).returncode == 0
    (device.path("/persist/vault/config") / "data").write_bytes(b"\x5a" * MiB)
    lowered = device.apply(make_plan([vault("config", limit=16 * MiB)], version=2, apps=[app("agent", "config")]))
    assert "limit-below-size" in lowered.stdout + lowered.stderr, lowered.stdout + lowered.stderr
    assert not json.loads(device.cli("device", "status", "--json").stdout)["matches"]
    report = device.cli("device", "report")
    assert report.returncode == 3, report.stdout + report.stderr
    report_bytes, _ = split_signed_report(report.stdout.encode())
    (config,) = json.loads(report_bytes)["vaults"]
    assert (config["condition"], config["reason"]) == ("Drifted", "limit-below-size"), config
    assert "the limit fell to 16MiB but the vault's filesystem has 24MiB" in config["message"]
    # the gate says the vault differs, not that being unlocked is the reason
    gate = device.cli("device", "gate", "agent")
    assert gate.returncode == 1 and "vault `config` of app `agent` is unlocked but not as the plan says: the limit " \
        "fell to 16MiB" in gate.stderr, gate.stderr


@pytest.mark.device
def test_a_vault_the_plan_moved_is_drift_in_the_report_as_in_status(device):
    """The device does not move a vault (path-change-unsupported): status said DRIFT, the report Ready."""
    import json

    from enforcer.report import split_signed_report
    from vp_helpers import make_plan

    assert device.apply(make_plan([vault("config")])).returncode == 0
    moved = device.apply(make_plan([vault("config", path="/persist/vault/settings")], version=2))
    assert "path-change-unsupported" in moved.stdout + moved.stderr, moved.stdout + moved.stderr
    assert not json.loads(device.cli("device", "status", "--json").stdout)["matches"]
    report = device.cli("device", "report")
    assert report.returncode == 3, report.stdout + report.stderr
    (config,) = json.loads(split_signed_report(report.stdout.encode())[0])["vaults"]
    assert (config["condition"], config["reason"]) == ("Drifted", "path-change-unsupported"), config
