"""Vault storage that fails under the enforcer: a full state filesystem, a damaged or missing image
(second-round audit, on swtpm and loop-mounted ext4)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from enforcer import blockdev, fscrypt
from enforcer.fscrypt import KeyStatus
from enforcer.state import StateDir
from vp_helpers import make_plan, mounts_under, reboot, vault

pytestmark = pytest.mark.device

MiB = 1 << 20


def by_vault(result, verb: str) -> dict[str, dict]:
    return {r["vault"]: r for r in json.loads(result.stdout)[verb]}


def statuses(device) -> dict[str, dict]:
    return {v["vault"]: v for v in json.loads(device.cli("device", "status", "--json").stdout)["vaults"]}


def write(path, size: int) -> None:
    with open(path, "wb") as handle:
        for _ in range(size // MiB):
            handle.write(os.urandom(MiB))
        handle.flush()
        os.fsync(handle.fileno())


@pytest.fixture
def small_state(device):
    """The state dir on its own 24 MiB ext4 filesystem: room for one 16 MiB vault image, not two."""
    image = device.work / "state.img"
    blockdev.make_image(image, 24 * MiB, features="^encrypt")
    blockdev.mount_image(image, device.state)
    try:
        yield device
    finally:
        for mountpoint in mounts_under(device.path("/persist/vault"), device.state):
            subprocess.run(["umount", mountpoint], capture_output=True)


def test_images_the_state_filesystem_cannot_hold_are_refused_and_one_it_can_is_allocated(small_state):
    device = small_state
    state = StateDir(device.state)
    refused = device.apply(make_plan([vault("a", limit=16 * MiB), vault("b", limit=16 * MiB)]))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    # refused whole (it made a, then b's create-storage failed): no image, no half-made one, no record
    assert "not applied (storage-no-room, VP1116), nothing was changed: the vault images this plan makes or " \
        "grows need 32.0 MiB" in refused.stderr, refused.stderr
    assert not list((device.state / "images").glob("*.img*")) and state.records() == {}
    assert state.conditions()["plan"].reason == "storage-no-room"
    assert device.apply(make_plan([vault("a", limit=16 * MiB)])).returncode == 0
    a_image = state.image_path("a").stat()
    assert a_image.st_blocks * 512 >= a_image.st_size == blockdev.image_bytes_for(16 * MiB)

    # a takes 14 MiB without the state filesystem running out under it
    write(device.path("/persist/vault/a") / "data", 14 * MiB)
    assert statuses(device)["a"]["matches"]

    # a limit the state filesystem cannot grow to is refused before the vault is touched
    bigger = device.apply(make_plan([vault("a", limit=28 * MiB)], version=2))
    assert bigger.returncode == 1, bigger.stdout + bigger.stderr
    assert "(storage-no-room, VP1116), nothing was changed: the vault images this plan makes or grows need " \
        "12.0 MiB" in bigger.stderr, bigger.stderr
    assert state.image_path("a").stat().st_size == a_image.st_size
    assert blockdev.superblock(state.image_path("a")).size_bytes == a_image.st_size
    assert (device.path("/persist/vault/a") / "data").stat().st_size == 14 * MiB  # mounted, unlocked, intact
    assert device.cli("device", "lock").returncode == 0
    fsck = subprocess.run(["e2fsck", "-fn", str(state.image_path("a"))], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def sealed_identifier(state: StateDir, name: str) -> bytes:
    return bytes.fromhex(state.sealed(name)["key_identifier"])


def test_a_damaged_image_fails_only_its_own_vault(device):
    """a.img's superblock magic zeroed: unlock, status and apply exited 1 ("not an ext4 filesystem") and left
    the healthy vaults b and c locked."""
    plan = make_plan([vault("a", limit=8 * MiB), vault("b", limit=8 * MiB), vault("c")])
    assert device.apply(plan).returncode == 0
    for name in ("a", "b", "c"):
        (device.path(f"/persist/vault/{name}") / "f").write_text(name)
    reboot(device)
    state = StateDir(device.state)
    image = state.image_path("a")
    with open(image, "r+b") as handle:
        handle.seek(1024 + 0x38)
        handle.write(b"\0\0")

    unlocked = device.cli("device", "unlock", "--json")
    assert unlocked.returncode == 1, unlocked.stdout + unlocked.stderr
    results = by_vault(unlocked, "unlock")
    assert {n: r["outcome"] for n, r in results.items()} == {"a": "failed", "b": "unlocked", "c": "unlocked"}
    assert results["a"]["reason"] == "storage-damaged"
    assert f"its image `{image}` cannot be read: the image is not an ext4 filesystem" in results["a"]["message"]
    for name in ("b", "c"):
        assert (device.path(f"/persist/vault/{name}") / "f").read_text() == name
    assert state.conditions()["vault/a"].reason == "storage-damaged"

    status = device.cli("device", "status", "--json")
    assert status.returncode == 3, status.stdout + status.stderr
    vaults = {v["vault"]: v for v in json.loads(status.stdout)["vaults"]}
    assert vaults["a"]["state"] == "storage-damaged" and not vaults["a"]["matches"]
    assert any(f"`e2fsck {image}`" in reason for reason in vaults["a"]["reasons"])
    assert vaults["b"]["matches"] and vaults["c"]["matches"]

    applied = device.apply(plan)
    assert applied.returncode == 1 and "internal error" not in applied.stderr, applied.stdout + applied.stderr
    assert "vault a: not changed (storage-damaged" in applied.stdout and str(image) in applied.stdout
    assert "vault b:" not in applied.stdout and "vault c:" not in applied.stdout  # nothing to do for them

    locked = device.cli("device", "lock", "--json")
    assert locked.returncode == 0, locked.stdout + locked.stderr
    assert {n: r["outcome"] for n, r in by_vault(locked, "lock").items()} == {"a": "locked", "b": "locked", "c": "locked"}


def test_a_missing_image_is_storage_lost_and_never_made_anew(device):
    """images/g.img removed, then a reboot: status and apply planned create-storage (a fresh empty filesystem
    in place of the lost data), the boot unlock added g's key to the persist filesystem's keyring, and
    apply failed at set-policy every run."""
    plan = make_plan([vault("g", limit=8 * MiB), vault("h")])
    assert device.apply(plan).returncode == 0
    (device.path("/persist/vault/g") / "f").write_text("g")
    state = StateDir(device.state)
    g_key, image = sealed_identifier(state, "g"), state.image_path("g")
    reboot(device)
    image.unlink()
    persist = str(device.path("/persist"))

    status = device.cli("device", "status", "--json")
    assert status.returncode == 3
    g = {v["vault"]: v for v in json.loads(status.stdout)["vaults"]}["g"]
    assert g["state"] == "storage-lost" and not g["matches"]
    assert any(f"its image `{image}` is missing" in reason for reason in g["reasons"])
    assert not any("filesystem for its limit" in reason for reason in g["reasons"]), "no create-storage"

    unlocked = device.cli("device", "unlock", "--json")
    assert unlocked.returncode == 1
    results = by_vault(unlocked, "unlock")
    assert (results["g"]["outcome"], results["g"]["reason"]) == ("failed", "storage-lost")
    assert results["h"]["outcome"] == "unlocked"
    assert fscrypt.key_status(persist, g_key) is KeyStatus.ABSENT, "no key for a vault whose image is not mounted"

    for _ in range(2):
        applied = device.apply(plan)
        assert applied.returncode == 1
        assert "vault g: not changed (storage-lost" in applied.stdout, applied.stdout
        assert "create-storage" not in applied.stdout and "set-policy" not in applied.stdout
        assert not image.exists()
    assert fscrypt.key_status(persist, g_key) is KeyStatus.ABSENT

    locked = device.cli("device", "lock", "--json")
    results = by_vault(locked, "lock")
    assert locked.returncode == 0, locked.stdout
    assert (results["g"]["outcome"], results["g"]["reason"]) == ("locked", "storage-lost")


def test_lock_removes_a_vault_key_from_every_keyring_it_finds(device):
    """An older boot unlock put an image vault's key into the keyring of the persist filesystem (its image
    was not mounted); lock looked only in the image's keyring and said locked with the key still in."""
    from enforcer.tpm import SealedBlob, Tpm

    assert device.apply(make_plan([vault("g", limit=8 * MiB)])).returncode == 0
    state = StateDir(device.state)
    g_key, persist = sealed_identifier(state, "g"), str(device.path("/persist"))
    with Tpm(device.tcti) as tpm:
        key = tpm.unseal(SealedBlob.from_json(json.dumps(state.sealed("g")["blob"])))
    try:
        assert fscrypt.add_key(persist, key) == g_key
    finally:
        key[:] = bytes(len(key))
    locked = device.cli("device", "lock", "--json")
    assert locked.returncode == 0 and by_vault(locked, "lock")["g"]["outcome"] == "locked", locked.stdout
    assert fscrypt.key_status(persist, g_key) is KeyStatus.ABSENT
    assert fscrypt.key_status(str(state.image_path("g")) + ".mnt", g_key) is KeyStatus.ABSENT
