"""Key rotation on real fscrypt + swtpm: new key, every file kept with its metadata, old key erased,
--due-only with an injected clock, a rotation that does not fit refused, SIGKILL at every step converges."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import timedelta

import pytest

from enforcer import blockdev, fscrypt
from enforcer.fscrypt import KeyStatus
from enforcer.state import StateDir
from vp_helpers import NOW, fill, key_leaks, make_plan, mounts_under, tree, vault

pytestmark = pytest.mark.device

MiB = 1 << 20
DAY = 86400


def rotating(v, days: int | None):
    return v.model_copy(update={"rotate_seconds": days * DAY if days else None})


# one vault with its own image (bind-mounted), one plain directory on the persist filesystem
PLAN = make_plan([rotating(vault("config", limit=16 * MiB), 90), rotating(vault("logs"), 30)])


def identifiers(device) -> dict[str, str]:
    state = StateDir(device.state)
    return {name: state.sealed(name)["key_identifier"] for name in ("config", "logs")}


def key_status(device, name: str, identifier: str) -> KeyStatus:
    return fscrypt.key_status(fscrypt.mountpoint_of(str(device.path(f"/persist/vault/{name}"))), bytes.fromhex(identifier))


def leftovers(device) -> list[str]:
    return [str(p) for base in (device.path("/persist/vault"), device.state) for p in base.rglob("*.vp-rotate")] + \
        [str(p) for p in (device.state / "rotating").glob("*")]


def current_keys(device) -> list[bytes]:
    from enforcer.tpm import SealedBlob, Tpm

    state = StateDir(device.state)
    with Tpm(device.tcti) as tpm:
        return [bytes(tpm.unseal(SealedBlob.from_json(json.dumps(state.sealed(n)["blob"])))) for n in ("config", "logs")]


def assert_converged(device, expected: dict, context: str) -> None:
    for name in ("config", "logs"):
        path = device.path(f"/persist/vault/{name}")
        assert tree(path) == expected[name], f"{context}: files of {name} differ"
        assert fscrypt.get_policy(str(path)).key_identifier.hex() == identifiers(device)[name], context
    assert leftovers(device) == [], context
    status = device.cli("device", "status")
    assert status.returncode == 0, f"{context}: {status.stdout}"


@pytest.fixture
def rotated_device(device):
    assert device.apply(PLAN).returncode == 0
    for name in ("config", "logs"):
        fill(device.path(f"/persist/vault/{name}"))
    return device


def test_rotation_rekeys_keeps_every_file_and_erases_the_old_key(rotated_device):
    device = rotated_device
    expected = {n: tree(device.path(f"/persist/vault/{n}")) for n in ("config", "logs")}
    state = StateDir(device.state)
    before = {n: state.sealed(n) for n in ("config", "logs")}

    result = device.cli("device", "rotate", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = {r["vault"]: r for r in json.loads(result.stdout)["rotate"]}
    for name in ("config", "logs"):
        after = state.sealed(name)
        old, new = before[name]["key_identifier"], after["key_identifier"]
        assert outcomes[name]["outcome"] == "rotated" and (outcomes[name]["old_key"], outcomes[name]["new_key"]) == (old, new)
        assert new != old and after["blob"] != before[name]["blob"]
        assert after["rotated_at"] == outcomes[name]["rotated_at"]
        path = device.path(f"/persist/vault/{name}")
        assert fscrypt.get_policy(str(path)).key_identifier.hex() == new
        assert tree(path) == expected[name]
        assert key_status(device, name, old) is KeyStatus.ABSENT
        assert key_status(device, name, new) is KeyStatus.PRESENT
    assert leftovers(device) == []

    assert device.cli("device", "lock").returncode == 0
    assert not (device.path("/persist/vault/logs") / "a.txt").exists()  # locked: only encrypted names
    unlocked = device.cli("device", "unlock")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    for name in ("config", "logs"):
        assert tree(device.path(f"/persist/vault/{name}")) == expected[name]


def test_report_shows_the_new_last_rotation(rotated_device):
    from enforcer.observe import observe
    from enforcer.report import build_report
    from enforcer.tpm import Tpm

    device = rotated_device
    state = StateDir(device.state)
    created = state.sealed("config")["rotated_at"]
    assert device.cli("device", "rotate", "config").returncode == 0
    rotated = state.sealed("config")["rotated_at"]
    assert rotated >= created
    with Tpm(device.tcti) as tpm:
        observed = observe(PLAN, state, device.root, tpm)
        fresh = build_report("dev", PLAN, None, observed, state, NOW + timedelta(days=1))
        late = build_report("dev", PLAN, None, observed, state, NOW + timedelta(days=91))
    config = {v.name: v for v in fresh.vaults}["config"].rotation
    assert (config.last_rotated, config.rotate_seconds, config.overdue) == (rotated, 90 * DAY, False)
    assert {v.name: v for v in late.vaults}["config"].rotation.overdue is True


def test_due_only_rotates_only_overdue_vaults(device):
    from enforcer.rotate import Rotator, rotate_vaults
    from enforcer.tpm import Tpm

    plan = make_plan([rotating(vault("daily"), 1), rotating(vault("quarterly"), 90), rotating(vault("never"), None)])
    assert device.apply(plan).returncode == 0
    state = StateDir(device.state)
    before = {n: state.sealed(n)["key_identifier"] for n in ("daily", "quarterly", "never")}

    with Tpm(device.tcti) as tpm:
        results = rotate_vaults(Rotator(plan, state, device.root, tpm, NOW + timedelta(days=2)), [], due_only=True)
    assert {r.vault: r.outcome for r in results} == {"daily": "rotated", "quarterly": "not-due", "never": "not-due"}
    after = {n: state.sealed(n)["key_identifier"] for n in before}
    assert after["daily"] != before["daily"]
    assert (after["quarterly"], after["never"]) == (before["quarterly"], before["never"])

    # a key sealed before rotation times were recorded has an unknown age: it is due
    legacy = json.loads(state.sealed_path("quarterly").read_bytes())
    del legacy["rotated_at"]
    state.sealed_path("quarterly").write_text(json.dumps(legacy))
    with Tpm(device.tcti) as tpm:
        results = rotate_vaults(Rotator(plan, state, device.root, tpm, NOW + timedelta(days=2)), [], due_only=True)
    assert {r.vault: r.outcome for r in results}["quarterly"] == "rotated"
    assert "rotated_at" in state.sealed("quarterly")


def test_rotation_that_does_not_fit_is_refused_and_changes_nothing(device):
    plan = make_plan([vault("big", limit=8 * MiB)])
    assert device.apply(plan).returncode == 0
    path = device.path("/persist/vault/big")
    fs = os.statvfs(path)
    (path / "blob").write_bytes(os.urandom(fs.f_bavail * fs.f_frsize * 6 // 10))  # a copy would need 60 %
    expected, sealed = tree(path), StateDir(device.state).sealed("big")

    result = device.cli("device", "rotate", "big")
    assert result.returncode == 1
    assert "vault big: failed (no-room, VP1112): copying the vault needs" in result.stdout and "free bytes" in result.stdout
    assert tree(path) == expected and StateDir(device.state).sealed("big") == sealed
    assert [p for p in (device.state / "images").rglob("*.vp-rotate")] == []
    assert key_status(device, "big", sealed["key_identifier"]) is KeyStatus.PRESENT


def test_locked_or_unknown_vault_is_refused(rotated_device):
    device = rotated_device
    before = identifiers(device)
    assert device.cli("device", "lock").returncode == 0
    locked = device.cli("device", "rotate", "logs")
    assert locked.returncode == 1, locked.stdout + locked.stderr
    assert "vault logs: failed (vault-locked, VP1107): the vault is locked: its files must be readable to rotate them; " \
        "run `vaultpolicy device unlock` first" in locked.stdout
    unknown = device.cli("device", "rotate", "confg")
    assert unknown.returncode == 1 and "vault `confg` is not in the applied plan" in unknown.stderr
    assert "did you mean `config`?" in unknown.stderr and "Traceback" not in unknown.stderr
    assert identifiers(device) == before


def test_kill_at_every_step_then_apply_or_rotate_converges(rotated_device):
    device = rotated_device
    expected = {n: tree(device.path(f"/persist/vault/{n}")) for n in ("config", "logs")}
    keys_seen = set(current_keys(device))
    crashed_at = []
    for step in range(1, 30):
        for finish_with in ("apply", "rotate"):
            killed = device.cli("device", "rotate", env={"VAULTPOLICY_CRASH_AT": str(step)})
            if killed.returncode == 0:
                break
            assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
            rerun = device.apply(PLAN) if finish_with == "apply" else device.cli("device", "rotate")
            assert rerun.returncode == 0, f"step {step}, {finish_with}: {rerun.stdout}{rerun.stderr}"
            assert "resumed after an interrupted" in rerun.stdout
            if step % 5 != 1:  # past the intent of its key step, the vault has a pending rotation: which way it went
                outcome = "completed" if step % 5 in (4, 0) else "undone"  # killed at commit or erase: swapped
                assert f"vault {'config' if step <= 5 else 'logs'}: interrupted rotation {outcome}" in rerun.stdout
            assert_converged(device, expected, f"step {step}, {finish_with}")
            keys_seen.update(current_keys(device))
        else:
            crashed_at.append(step)
            continue
        break
    assert len(crashed_at) == 10  # 2 vaults x (key, copy, swap, commit, erase)
    for path in device.state.rglob("*"):
        if path.is_file() and ".img.mnt" not in str(path):
            data = path.read_bytes()
            assert not any(key_leaks(key, data) for key in keys_seen), f"key bytes in {path}"


def test_rotated_key_is_escrowed_like_a_created_one(device):
    from enforcer import escrow
    from enforcer.tpm import SealedBlob, Tpm

    controller = escrow.generate_escrow_key()
    plan = make_plan([vault("config")], escrow_public_key=escrow.escrow_public_text(controller))
    assert device.apply(plan).returncode == 0
    blob_path = escrow.escrow_dir(device.state) / "config.json"
    created = escrow.EscrowBlob.from_bytes(blob_path.read_bytes())

    assert device.cli("device", "rotate").returncode == 0
    state = StateDir(device.state)
    rotated = escrow.EscrowBlob.from_bytes(blob_path.read_bytes())
    assert rotated.key_identifier.hex() == state.sealed("config")["key_identifier"] != created.key_identifier.hex()
    with Tpm(device.tcti) as tpm:
        sealed_key = bytes(tpm.unseal(SealedBlob.from_json(json.dumps(state.sealed("config")["blob"]))))
    assert bytes(escrow.unwrap_key(controller, rotated)) == sealed_key
    assert escrow.escrow_state(device.state, "config") == "pending"  # the controller must acknowledge the new key


def test_open_file_in_an_image_vault_refuses_and_changes_nothing(device):
    plan = make_plan([vault("config", limit=16 * MiB)])
    assert device.apply(plan).returncode == 0
    path = device.path("/persist/vault/config")
    (path / "busy").write_bytes(b"in use")
    before = StateDir(device.state).sealed("config")
    with open(path / "busy", "rb"):
        result = device.cli("device", "rotate", "config")
    assert result.returncode == 1 and "vault config: failed (vault-busy, VP1111): files are open in the vault" in result.stdout
    assert StateDir(device.state).sealed("config") == before
    assert (path / "busy").read_bytes() == b"in use" and leftovers(device) == []
    assert device.cli("device", "status").returncode == 0


def test_crash_after_the_swap_then_keys_dropped_converges_on_apply(device):
    """A reboot after the swap drops both keys from the kernel: apply finishes the rotation, then unlocks."""
    plan = make_plan([vault("logs")])
    assert device.apply(plan).returncode == 0
    path = device.path("/persist/vault/logs")
    fill(path)
    expected = tree(path)
    old = StateDir(device.state).sealed("logs")["key_identifier"]
    killed = device.cli("device", "rotate", env={"VAULTPOLICY_CRASH_AT": "4"})  # intent of rotate-commit written
    assert killed.returncode == -signal.SIGKILL
    new = json.loads((device.state / "rotating" / "logs.json").read_bytes())["key_identifier"]
    assert fscrypt.get_policy(str(path)).key_identifier.hex() == new  # swapped, not committed
    for identifier in (old, new):
        fscrypt.remove_key(fscrypt.mountpoint_of(str(path)), bytes.fromhex(identifier), all_users=True)

    rerun = device.apply(plan)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert StateDir(device.state).sealed("logs")["key_identifier"] == new
    assert tree(path) == expected and leftovers(device) == []
    assert key_status(device, "logs", new) is KeyStatus.PRESENT


@pytest.mark.parametrize("step", [2, 3, 4, 5])  # killed at: copy, swap, commit, erase of the first vault
def test_power_loss_mid_rotation_is_finished_or_undone_by_the_boot_unlock(rotated_device, step):
    device = rotated_device
    expected = {n: tree(device.path(f"/persist/vault/{n}")) for n in ("config", "logs")}
    before = identifiers(device)
    killed = device.cli("device", "rotate", env={"VAULTPOLICY_CRASH_AT": str(step)})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    pending = json.loads((device.state / "rotating" / "config.json").read_bytes())["key_identifier"]
    # power loss: every mount goes (the persist partition too, dropping every key), the TPM restarts
    for mountpoint in mounts_under(device.root, device.state):
        subprocess.run(["umount", mountpoint], check=True)
    device.swtpm.restart()
    device.swtpm.measure_boot()
    blockdev.mount_image(device.work / "persist.img", device.path("/persist"))

    unlocked = device.cli("device", "unlock", "--json")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    result = json.loads(unlocked.stdout)
    assert result["recovered"] == ["config"]
    assert {r["vault"]: r["outcome"] for r in result["unlock"]} == {"config": "unlocked", "logs": "unlocked"}
    swapped = step >= 4
    assert result["recovery"] == [{"vault": "config", "operation": "rotation",
                                   "outcome": "completed" if swapped else "undone"}], "it says which"
    assert identifiers(device) == {**before, "config": pending if swapped else before["config"]}
    assert_converged(device, expected, f"killed at step {step}, then unlocked")


def test_a_step_the_filesystem_refuses_fails_that_vault_only_and_is_finished_later(rotated_device):
    """A mount inside a vault's tree made the erase after the swap fail with EBUSY: an internal error
    (exit 70) that also stopped every vault after it. Now that vault fails naming the path; once the
    mount is gone the next rotate finishes its rotation."""
    device = rotated_device
    expected = {n: tree(device.path(f"/persist/vault/{n}")) for n in ("config", "logs")}
    sub = device.path("/persist/vault/logs/sub")
    sub.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(sub)], check=True)
    moved = None
    try:
        result = device.cli("device", "rotate", "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        outcomes = {r["vault"]: r for r in json.loads(result.stdout)["rotate"]}
        assert outcomes["config"]["outcome"] == "rotated", "the other vault still rotates"
        assert (outcomes["logs"]["outcome"], outcomes["logs"]["reason"]) == ("failed", "rotate-failed")
        assert outcomes["logs"]["message"].startswith("Device or resource busy: ")
        assert "finishes or undoes the rotation" in outcomes["logs"]["message"]
        moved = [m for m in mounts_under(device.root) if m.endswith("/sub")]  # it went with the old tree
    finally:
        for mount in moved or [str(sub)]:
            subprocess.run(["umount", mount], check=False)
    again = device.cli("device", "rotate", "logs")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "vault logs: interrupted rotation completed" in again.stdout
    expected["logs"] = {**expected["logs"], "sub": tree(device.path("/persist/vault/logs"))["sub"]}
    assert_converged(device, expected, "after the mount is gone")
