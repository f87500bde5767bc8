"""Encryption changes a signed plan asks for, carried out on real fscrypt + swtpm: a cipher change, none ->
encrypted and encrypted -> none, for a vault with its own image and a plain one; every file kept with its
metadata, the old key erased, a locked vault refused untouched, a second apply doing nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from enforcer import blockdev, fscrypt
from enforcer.fscrypt import KeyStatus
from enforcer.state import StateDir
from vp_helpers import fill, kernel_has_adiantum, make_plan, mounts_under, tree, vault

pytestmark = pytest.mark.device

MiB = 1 << 20
NAMES = ("config", "logs")
PLAINTEXT = b"alpha" * 200  # in a.txt of vp_helpers.fill  # one vault with its own image, one plain directory on the persist filesystem


def plans(old: str, new: str):
    def plan(encryption: str, version: int):
        return make_plan([vault("config", limit=16 * MiB, encryption=encryption), vault("logs", encryption=encryption)],
                         version=version)
    return plan(old, 1), plan(new, 2)


def key_status(device, name: str, identifier: str) -> KeyStatus:
    return fscrypt.key_status(fscrypt.mountpoint_of(str(device.path(f"/persist/vault/{name}"))), bytes.fromhex(identifier))


def leftovers(device) -> list[str]:
    return [str(p) for base in (device.path("/persist/vault"), device.state) for p in base.rglob("*.vp-*")] + \
        [str(p) for p in (device.state / "rotating").glob("*")]


def filled(device, plan) -> dict[str, dict]:
    applied = device.apply(plan)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    for name in NAMES:
        fill(device.path(f"/persist/vault/{name}"))
    os.sync()  # on disk, as files an app wrote long ago are
    return {name: tree(device.path(f"/persist/vault/{name}")) for name in NAMES}


def assert_applied_once(device, plan, expected: dict, changing=NAMES) -> dict:
    """Apply `plan`, which re-encrypts the `changing` vaults, check every file, then that a second apply
    does nothing; the JSON of the first."""
    result = device.apply(plan, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert [(s["vault"], s["action"], s["done"]) for s in out["steps"]] == [
        (name, "re-encrypt", True) for name in changing]
    for name in NAMES:
        assert tree(device.path(f"/persist/vault/{name}")) == expected[name], name
    assert leftovers(device) == []
    again = device.apply(plan, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["steps"] == [], again.stdout
    status = device.cli("device", "status")
    assert status.returncode == 0, status.stdout
    return out


@pytest.mark.parametrize("old,new", [("aes-256-xts", "adiantum"), ("none", "aes-256-xts")])
def test_cipher_change_and_encrypting_plain_files_re_encrypt_under_a_new_key(device, old, new):
    old_plan, new_plan = plans(old, new)
    expected = filled(device, old_plan)
    state = StateDir(device.state)
    before = {name: state.sealed(name) for name in NAMES}
    if new == "adiantum" and not kernel_has_adiantum(device):
        refused = device.apply(new_plan)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        for name in NAMES:
            assert f"vault {name}: re-encrypt FAILED: vault `{name}`: the kernel cannot encrypt with adiantum" \
                in refused.stdout
            assert state.sealed(name) == before[name] and state.records()[name].encryption == old
            assert tree(device.path(f"/persist/vault/{name}")) == expected[name]
            assert key_status(device, name, before[name]["key_identifier"]) is KeyStatus.PRESENT
        assert leftovers(device) == []
        return

    assert_applied_once(device, new_plan, expected)
    for name in NAMES:
        policy = fscrypt.get_policy(str(device.path(f"/persist/vault/{name}")))
        sealed = state.sealed(name)
        assert (policy.contents_mode, policy.key_identifier.hex()) == (new, sealed["key_identifier"])
        assert key_status(device, name, sealed["key_identifier"]) is KeyStatus.PRESENT
        assert state.records()[name].encryption == new
        if before[name] is not None:
            assert sealed["key_identifier"] != before[name]["key_identifier"]
            assert key_status(device, name, before[name]["key_identifier"]) is KeyStatus.ABSENT

    if old == "none":  # the plaintext's blocks were freed and discarded: no copy of it is left in either image
        os.sync()
        for image in (device.state / "images" / "config.img", device.work / "persist.img"):
            assert PLAINTEXT not in image.read_bytes(), image

    assert device.cli("device", "lock").returncode == 0
    assert not (device.path("/persist/vault/logs") / "a.txt").exists()  # locked: only encrypted names
    assert device.cli("device", "unlock").returncode == 0
    assert {name: tree(device.path(f"/persist/vault/{name}")) for name in NAMES} == expected


def test_decrypting_copies_the_files_out_and_erases_the_key(device):
    old_plan, new_plan = plans("aes-256-xts", "none")
    expected = filled(device, old_plan)
    state = StateDir(device.state)
    keys = {name: state.sealed(name)["key_identifier"] for name in NAMES}

    assert_applied_once(device, new_plan, expected)
    for name in NAMES:
        assert fscrypt.get_policy(str(device.path(f"/persist/vault/{name}"))) is None
        assert state.sealed(name) is None and state.records()[name].encryption == "none"
        assert key_status(device, name, keys[name]) is KeyStatus.ABSENT
    lock = device.cli("device", "lock", "--json")
    assert lock.returncode == 0 and json.loads(lock.stdout)["lock"] == []  # nothing encrypted is left to lock
    assert {name: tree(device.path(f"/persist/vault/{name}")) for name in NAMES} == expected


def test_a_locked_vault_is_not_re_encrypted_until_unlocked(device):
    old_plan, new_plan = plans("aes-256-xts", "none")
    expected = filled(device, old_plan)
    assert device.cli("device", "lock").returncode == 0
    state = StateDir(device.state)
    sealed = {name: state.sealed(name) for name in NAMES}

    refused = device.apply(new_plan)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    for name in NAMES:
        assert f"vault {name}: not changed (vault-locked, VP" in refused.stdout
        assert "unlock it first" in refused.stdout
        assert state.sealed(name) == sealed[name] and state.records()[name].encryption == "aes-256-xts"
    assert leftovers(device) == []

    unlocked = device.cli("device", "unlock")  # the boot service unlocks a vault whose change waits for its key
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert {name: tree(device.path(f"/persist/vault/{name}")) for name in NAMES} == expected
    assert_applied_once(device, new_plan, expected)


def test_a_re_encryption_that_does_not_fit_is_refused_with_nothing_changed(device):
    """S21: a copy of config's files does not fit beside them on its 16 MiB filesystem: its
    re-encryption is refused before anything changes (its key, record, files, no scratch left), and
    the plain vault, which fits, is re-encrypted."""
    old_plan, new_plan = plans("aes-256-xts", "none")
    filled(device, old_plan)
    (device.path("/persist/vault/config") / "big").write_bytes(b"\3" * (9 * MiB))
    os.sync()
    expected = {name: tree(device.path(f"/persist/vault/{name}")) for name in NAMES}
    state = StateDir(device.state)
    before = {name: (state.sealed_path(name).read_bytes(), state.record_path(name).read_bytes()) for name in ("config",)}

    result = device.apply(new_plan, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = json.loads(result.stdout)["failed"]
    assert failed["vault"] == "config" and failed["action"] == "re-encrypt"
    assert "copying the vault needs" in failed["error"] and "Nothing was changed" in failed["error"]
    assert (state.sealed_path("config").read_bytes(), state.record_path("config").read_bytes()) == before["config"]
    assert fscrypt.get_policy(str(device.path("/persist/vault/config"))).contents_mode == "aes-256-xts"
    assert key_status(device, "config", state.sealed("config")["key_identifier"]) is KeyStatus.PRESENT
    assert {name: tree(device.path(f"/persist/vault/{name}")) for name in NAMES} == expected
    assert leftovers(device) == []
    assert fscrypt.get_policy(str(device.path("/persist/vault/logs"))) is None and state.sealed("logs") is None


def test_a_plan_that_moves_a_vault_is_a_problem_and_the_vault_stays_managed_where_its_files_are(device):
    old_plan, _ = plans("aes-256-xts", "aes-256-xts")
    expected = filled(device, old_plan)
    moved = make_plan([vault("config", limit=16 * MiB, path="/persist/moved/config"),
                       vault("logs", path="/persist/moved/logs")], version=2)

    for _ in range(2):  # a second apply of the same plan says the same and changes nothing
        result = device.apply(moved, "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        out = json.loads(result.stdout)
        assert out["steps"] == []
        assert {(p["vault"], p["reason"]) for p in out["problems"]} == {
            ("config", "path-change-unsupported"), ("logs", "path-change-unsupported")}
        assert "its files stay at `/persist/vault/logs`" in out["problems"][1]["message"]
        assert not device.path("/persist/moved").exists()
        assert {n: r.path for n, r in StateDir(device.state).records().items()} == {
            "config": "/persist/vault/config", "logs": "/persist/vault/logs"}
    text = device.apply(moved)
    assert "vault logs: not changed (path-change-unsupported, VP1108): the plan moves the vault" in text.stdout
    status = device.cli("device", "status")
    assert status.returncode == 3 and "the device does not move vaults" in status.stdout

    # the boot unlock still unlocks it where its files are
    assert device.cli("device", "lock").returncode == 0
    unlocked = device.cli("device", "unlock")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert {name: tree(device.path(f"/persist/vault/{name}")) for name in NAMES} == expected


def test_power_loss_mid_decryption_is_finished_by_the_boot_unlock(device):
    old_plan, new_plan = plans("aes-256-xts", "none")
    expected = filled(device, old_plan)
    # steps of config: re-encrypt, its key record, copy, swap, commit: killed with the swap done, not committed
    killed = device.apply(new_plan, env={"VAULTPOLICY_CRASH_AT": "5"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert (device.state / "rotating" / "config.json").exists() and StateDir(device.state).sealed("config")
    assert fscrypt.get_policy(str(device.path("/persist/vault/config"))) is None  # swapped: the plain tree is in
    for mountpoint in mounts_under(device.root, device.state):  # power loss: every key and mount gone
        subprocess.run(["umount", mountpoint], check=True)
    device.swtpm.restart()
    device.swtpm.measure_boot()
    blockdev.mount_image(device.work / "persist.img", device.path("/persist"))

    unlocked = device.cli("device", "unlock", "--json")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    result = json.loads(unlocked.stdout)
    assert result["recovered"] == ["config"]
    # config is decrypted; logs, whose decryption had not started, is unlocked under its key
    assert {r["vault"]: r["outcome"] for r in result["unlock"]} == {"config": "unencrypted", "logs": "unlocked"}
    assert StateDir(device.state).sealed("config") is None
    assert {name: tree(device.path(f"/persist/vault/{name}")) for name in NAMES} == expected
    assert_applied_once(device, new_plan, expected, ["logs"])
