"""An interrupted rotation that cannot be recovered fails its own vault only (real swtpm, loop-mounted
ext4, the real CLI). `Rotator.recover` runs before any vault is handled in `device unlock`, `apply` and
`rotate`; a damaged pending record (`{}`: an internal error, torn JSON: an error) or a new key that no
longer unseals stopped every vault at boot. Now that vault is reported failed, naming the file, its
record and partial copy are kept for a person, and every other vault goes on."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from enforcer import blockdev
from enforcer.tpm import Tpm
from vp_helpers import fill, make_plan, mounts_under, tree, vault

pytestmark = pytest.mark.device

# config is rotated; logs is sealed to other PCRs, so a firmware update measured into PCR 7 spares it
PLAN = make_plan([vault("config", pcrs=(0, 7)), vault("logs", pcrs=(0, 2))])


def by_vault(result, verb: str) -> dict[str, dict]:
    return {r["vault"]: r for r in json.loads(result.stdout)[verb]}


def interrupted(device) -> tuple:
    """`device rotate config` killed with its files copied, not swapped in: (the pending record, the
    partial copy, every vault's files)."""
    assert device.apply(PLAN).returncode == 0
    for name in ("config", "logs"):
        fill(device.path(f"/persist/vault/{name}"))
    files = {name: tree(device.path(f"/persist/vault/{name}")) for name in ("config", "logs")}
    killed = device.cli("device", "rotate", "config", env={"VAULTPOLICY_CRASH_AT": "3"})  # the swap's intent written
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    copy = device.path("/persist/vault/.config.vp-rotate")
    assert copy.is_dir()
    return device.state / "rotating" / "config.json", copy, files


def power_loss(device, firmware_update: bool = False) -> None:
    """Every mount goes (every key with it), the TPM restarts, the boot is measured again."""
    for mountpoint in mounts_under(device.root, device.state):
        subprocess.run(["umount", mountpoint], check=True)
    device.swtpm.restart()
    device.swtpm.measure_boot()
    if firmware_update:
        with Tpm(device.tcti) as tpm:
            tpm.extend_pcr(7, "sha256", b"firmware update")
    blockdev.mount_image(device.work / "persist.img", device.path("/persist"))


def readable(device, name: str) -> bool:
    return (device.path(f"/persist/vault/{name}") / "a.txt").exists()


def entries(copy) -> list[str]:
    """The partial copy's entries; locked, their names are encrypted and their contents unreadable."""
    return sorted(str(path) for path in copy.rglob("*"))


def unlocks_the_others(device, reason: str, record, copy) -> dict:
    """`device unlock` unlocks logs and fails config with `reason`, naming `record`; returns config's result."""
    kept, copied = record.read_bytes(), entries(copy)
    unlocked = device.cli("device", "unlock", "--json")
    assert unlocked.returncode == 1, unlocked.stdout + unlocked.stderr
    results = by_vault(unlocked, "unlock")
    assert {name: r["outcome"] for name, r in results.items()} == {"config": "failed", "logs": "unlocked"}
    assert results["config"]["reason"] == reason and str(record) in results["config"]["message"], results["config"]
    assert readable(device, "logs") and not readable(device, "config")
    assert record.read_bytes() == kept and entries(copy) == copied, "the record and the partial copy are kept"
    return results["config"]


@pytest.mark.parametrize("damage", ["{}", "torn"])
def test_a_damaged_pending_record_fails_only_its_own_vault(device, damage):
    record, copy, files = interrupted(device)
    original = record.read_bytes()
    record.write_bytes(b"{}" if damage == "{}" else original[: len(original) // 2])
    power_loss(device)

    config = unlocks_the_others(device, "state-damaged", record, copy)
    assert config["message"].startswith(f"the interrupted rotation's record {record} is ")
    assert "restore it from a backup" in config["hint"]
    text = device.cli("device", "unlock")
    assert f"vault config: failed (state-damaged, VP1206): the interrupted rotation's record {record}" in text.stdout
    assert "internal error" not in text.stderr

    rotated = device.cli("device", "rotate", "--json")
    assert rotated.returncode == 1, rotated.stdout + rotated.stderr
    results = by_vault(rotated, "rotate")
    assert {name: r["outcome"] for name, r in results.items()} == {"config": "failed", "logs": "rotated"}
    assert results["config"]["reason"] == "state-damaged" and str(record) in results["config"]["message"]
    applied = device.apply(PLAN)
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert f"vault config: not changed (state-damaged, VP1206): the interrupted rotation's record {record}" \
        in applied.stdout, applied.stdout
    assert not readable(device, "config") and copy.is_dir() and record.exists()

    record.write_bytes(original)  # a person restores it: the next boot undoes the rotation
    unlocked = device.cli("device", "unlock", "--json")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert json.loads(unlocked.stdout)["recovery"] == [{"vault": "config", "operation": "rotation", "outcome": "undone"}]
    assert tree(device.path("/persist/vault/config")) == files["config"] and not copy.exists() and not record.exists()


def test_a_pending_key_that_no_longer_unseals_fails_only_its_own_vault(device):
    """The identifier of a pending key is recorded once the key is in the kernel; a crash before that
    leaves only its sealed blob, which the undo unsealed to learn the identifier, after it had removed
    the partial copy. With PCR 7 changed since, the unseal failed and every vault stayed locked."""
    record, copy, files = interrupted(device)
    pending = json.loads(record.read_bytes())
    record.write_text(json.dumps({**pending, "key_identifier": None}))  # as that earlier crash leaves it
    power_loss(device, firmware_update=True)

    config = unlocks_the_others(device, "recovery-failed", record, copy)
    assert f"the interrupted rotation recorded in {record} could be neither finished nor undone: PCR sha256:7 changed" \
        in config["message"]
    text = device.cli("device", "unlock")
    assert "vault config: failed (recovery-failed, VP1207)" in text.stdout, text.stdout

    power_loss(device)  # the boot state the new key was sealed in
    unlocked = device.cli("device", "unlock", "--json")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert json.loads(unlocked.stdout)["recovered"] == ["config"]
    assert tree(device.path("/persist/vault/config")) == files["config"] and not copy.exists() and not record.exists()
