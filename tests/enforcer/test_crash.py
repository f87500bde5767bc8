"""Issue 5, must show 1: SIGKILL the enforcer at every journaled step of an apply that creates three
vaults and migrates a plaintext directory, and of one that changes the encryption of four vaults; each
time a rerun converges with every file intact, no copy left behind and no key on disk (raw, hex or base64;
looked for right after the kill too, and the keys a kill cut off are learnt from their escrow blobs)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess

import pytest

from enforcer import escrow
from enforcer.observe import Observed, observe_vault
from enforcer.reconcile import Action, reconcile
from enforcer.state import StateDir
from vp_helpers import fill, key_leaks, make_plan, mounts_under, tree, vault

pytestmark = pytest.mark.device

MiB = 1 << 20
# the keys are escrowed too, so the test can learn a key a kill cut off before its sealed record was written
CONTROLLER = escrow.generate_escrow_key()
PLAN = make_plan([vault("config", limit=16 * MiB), vault("img", limit=8 * MiB, pcrs=(0, 4)), vault("logs")],
                 escrow_public_key=escrow.escrow_public_text(CONTROLLER))


MARKER = b"plaintext marker of config " * 1000
PLAINTEXT = {"a.txt": b"alpha" * 1000, "nested/b.bin": bytes(range(256)) * 2000, "nested/empty": b"",
             "marker": MARKER}


def plaintext_files(target) -> dict[str, str]:
    (target / "nested").mkdir(parents=True)
    for name, data in PLAINTEXT.items():
        (target / name).write_bytes(data)
    os.chmod(target, 0o755)
    return {name: hashlib.sha256(data).hexdigest() for name, data in PLAINTEXT.items()}


def digests(root) -> dict[str, str]:
    return {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(root) for f in files}


def reset(device) -> None:
    for mountpoint in mounts_under(device.path("/persist/vault"), device.state):
        subprocess.run(["umount", mountpoint], check=True)
    shutil.rmtree(device.state)
    device.state.mkdir()
    shutil.rmtree(device.path("/persist/vault"), ignore_errors=True)


def current_keys(device, names=("config", "img", "logs")) -> list[bytes]:
    from enforcer.tpm import SealedBlob, Tpm

    state = StateDir(device.state)
    with Tpm(device.tcti) as tpm:
        return [bytes(tpm.unseal(SealedBlob.from_json(json.dumps(state.sealed(n)["blob"])))) for n in names]


def made_keys(device) -> tuple[list[bytes], list[bytes]]:
    """(the keys of the vaults with a sealed record, every key the device escrowed): what a killed apply
    made so far, its key escrowed but not yet sealed on disk too (`Applier._create_key` escrows first)."""
    names = [path.stem for path in sorted((device.state / "sealed").glob("*.json"))]
    escrowed = [bytes(escrow.unwrap_key(CONTROLLER, escrow.EscrowBlob.from_bytes(path.read_bytes())))
                for path in sorted((device.state / "escrow").glob("*.json")) if not path.name.endswith(".ack.json")]
    return (current_keys(device, names) if names else []), escrowed


def images(device) -> list:
    """The persist partition's image and every vault's own image."""
    return [device.work / "persist.img", *sorted((device.state / "images").glob("*.img"))]


def on_disk(device) -> list:
    """What a crash leaves for the next boot to find: every state file (temporary ones too) and every
    filesystem image, synced first with the freed blocks of each discarded."""
    os.sync()
    state_files = [p for p in device.state.rglob("*") if p.is_file() and ".img" not in p.name and ".img.mnt" not in str(p)]
    return state_files + images(device)


def assert_no_key_on_disk(device, keys: list[bytes], when: str) -> None:
    for path in on_disk(device):
        data = path.read_bytes()
        for key in keys:
            found = key_leaks(key, data)
            assert not found, f"{when}: a key ({', '.join(found)}) in {path}"


def leftovers(device) -> list[str]:
    """Scratch names the enforcer makes (`.x.vp-plaintext`, `.x.vp-erase`, `.vp-cipher-probe`, ...), beside
    the vaults and at the top of each vault image's filesystem."""
    places = [device.path("/persist/vault"), *(device.state / "images").glob("*.img.mnt")]
    return [str(p) for place in places for p in place.glob("*.vp-*")]


def test_kill_at_every_step_then_rerun_converges(device):
    crashed_at = []
    for step in range(1, 40):
        reset(device)
        expected = plaintext_files(device.path("/persist/vault/config"))
        os.sync()
        killed = device.apply(PLAN, env={"VAULTPOLICY_CRASH_AT": str(step)})
        if killed.returncode == 0:
            break  # past the last crash point: the whole apply ran
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        crashed_at.append(step)
        killed_sealed, killed_escrowed = made_keys(device)  # before the rerun: what the killed run itself left
        assert set(killed_sealed) <= set(killed_escrowed)
        assert_no_key_on_disk(device, killed_escrowed, f"step {step}, killed")

        rerun = device.apply(PLAN)
        assert rerun.returncode == 0, f"step {step}: {rerun.stdout!r}{rerun.stderr!r}"
        assert "resumed after an interrupted apply" in rerun.stdout
        config = device.path("/persist/vault/config")
        assert digests(config) == expected, f"step {step}: files differ after the rerun"
        assert stat.S_IMODE(os.stat(config).st_mode) == 0o755, f"step {step}: the vault directory's mode changed"
        for empty in ("img", "logs"):  # nothing but what apps put there, e.g. no cipher probe migrated in
            assert os.listdir(device.path(f"/persist/vault/{empty}")) == [], f"step {step}: {empty} is not empty"
        assert leftovers(device) == [], f"step {step}: scratch left"
        status = device.cli("device", "status")
        assert status.returncode == 0, f"step {step}: {status.stdout}"
        again = device.apply(PLAN, "--json")
        assert json.loads(again.stdout)["steps"] == [], f"step {step}: not converged"
        keys = current_keys(device)
        assert set(killed_sealed) <= set(keys), f"step {step}: a key the killed run sealed was replaced"
        assert set(keys) <= set(made_keys(device)[1]), f"step {step}: a key is not escrowed"
        # the keys of this device now, and one the killed run made and lost (sealed, never recorded)
        assert_no_key_on_disk(device, list({*keys, *killed_escrowed}), f"step {step}, rerun")
        for path in on_disk(device):  # every migrated file's plaintext is gone, wherever it was
            data = path.read_bytes()
            for name, content in PLAINTEXT.items():
                if content:
                    assert content[:2048] not in data, f"step {step}: plaintext of {name} in {path}"
    # config: stage-plaintext, its image made, create-storage, create-key, its key sealed and not saved,
    # set-policy, its cipher probe, migrate, mid-copy, copied and not erased, between delete and discard; img
    # and logs: storage or directory, key, sealed and not saved, policy, probe; the commit, and inside it
    # between staging the applied plan and swapping it in
    assert crashed_at == list(range(1, 24)), crashed_at


def test_kill_at_every_step_of_a_limit_rise_then_rerun_grows_the_filesystem(device):
    """The offline resize grows the image file, then its filesystem: a kill between the two left a
    filesystem smaller than its file, which the rerun took for grown (it compared the file's size)."""
    from enforcer import blockdev

    small = make_plan([vault("config", limit=8 * MiB)])
    grown = make_plan([vault("config", limit=16 * MiB)], version=2)
    config, image = device.path("/persist/vault/config"), device.state / "images" / "config.img"
    crashed_at = []
    for step in range(1, 10):
        reset(device)
        assert device.apply(small).returncode == 0
        (config / "kept").write_bytes(MARKER)
        killed = device.apply(grown, env={"VAULTPOLICY_CRASH_AT": str(step)})
        if killed.returncode == 0:
            break
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        crashed_at.append(step)
        if step == 2:  # between the two: what is observed is the filesystem's size, not the file's
            seen = observe_vault(StateDir(device.state), device.root, "config", "/persist/vault/config", None)
            assert (image.stat().st_size, seen.image_bytes) == (16 * MiB, 8 * MiB)
            assert Action.GROW_STORAGE in [s.action for s in reconcile(grown, Observed({"config": seen})).steps]

        rerun = device.apply(grown)
        assert rerun.returncode == 0, f"step {step}: {rerun.stdout!r}{rerun.stderr!r}"
        assert blockdev.superblock(image).size_bytes == 16 * MiB, f"step {step}: the filesystem was not grown"
        assert (config / "kept").read_bytes() == MARKER
        (config / "more").write_bytes(b"m" * (12 * MiB))  # more than the small filesystem could take
        again = device.apply(grown, "--json")
        assert json.loads(again.stdout)["steps"] == [], f"step {step}: not converged"
        assert device.cli("device", "status").returncode == 0
    # grow-storage, between the file's and the filesystem's resize, commit, inside the commit
    assert crashed_at == [1, 2, 3, 4], crashed_at


# Every encryption change at once: none -> encrypted and encrypted -> none, for a vault with its own image and a
# plain one. (A cipher change between encrypted modes is a rotation with another mode: test_rotate.py kills it.)
BEFORE = make_plan([vault("config", limit=16 * MiB, encryption="none"), vault("img", limit=8 * MiB),
                    vault("logs"), vault("scratch", encryption="none")])
AFTER = make_plan([vault("config", limit=16 * MiB), vault("img", limit=8 * MiB, encryption="none"),
                   vault("logs", encryption="none"), vault("scratch")], version=2)
CHANGED = ("config", "img", "logs", "scratch")


def marker(name: str) -> bytes:
    return f"plaintext of {name} ".encode() * 1000


def test_kill_at_every_step_of_a_re_encryption_then_rerun_converges(device):
    from enforcer import fscrypt

    crashed_at, keys_seen = [], set()
    for step in range(1, 60):
        reset(device)
        assert device.apply(BEFORE).returncode == 0
        for name in CHANGED:
            fill(device.path(f"/persist/vault/{name}"))
            (device.path(f"/persist/vault/{name}") / "marker").write_bytes(marker(name))
        os.sync()
        expected = {name: tree(device.path(f"/persist/vault/{name}")) for name in CHANGED}
        keys_seen.update(current_keys(device, ("img", "logs")))
        killed = device.apply(AFTER, env={"VAULTPOLICY_CRASH_AT": str(step)})
        if killed.returncode == 0:
            break  # past the last step: the whole apply ran
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        crashed_at.append(step)

        rerun = device.apply(AFTER)
        assert rerun.returncode == 0, f"step {step}: {rerun.stdout!r}{rerun.stderr!r}"
        assert "resumed after an interrupted apply" in rerun.stdout
        for name in CHANGED:
            path = device.path(f"/persist/vault/{name}")
            assert tree(path) == expected[name], f"step {step}: files of {name} differ after the rerun"
            policy = fscrypt.get_policy(str(path))
            assert (policy is None) == (AFTER.vault(name).encryption == "none"), f"step {step}: {name}"
        leftovers = [str(p) for base in (device.path("/persist/vault"), device.state) for p in base.rglob("*.vp-*")]
        assert leftovers + list((device.state / "rotating").glob("*")) == [], f"step {step}: copies left"
        assert StateDir(device.state).sealed("img") is None and StateDir(device.state).sealed("logs") is None
        os.sync()  # the vaults now encrypted left no plaintext in their filesystems' images
        for name, image in (("config", device.state / "images" / "config.img"), ("scratch", device.work / "persist.img")):
            assert marker(name)[:2000] not in image.read_bytes(), f"step {step}: plaintext of {name} in {image}"
        status = device.cli("device", "status")
        assert status.returncode == 0, f"step {step}: {status.stdout}"
        again = device.apply(AFTER, "--json")
        assert json.loads(again.stdout)["steps"] == [], f"step {step}: not converged"
        keys_seen.update(current_keys(device, ("config", "scratch")))
        for path in [p for p in device.state.rglob("*") if p.is_file() and ".img.mnt" not in str(p)] + images(device):
            data = path.read_bytes()
            assert not any(key in data for key in keys_seen), f"step {step}: key bytes in {path}"
    # 4 vaults x (re-encrypt, its key, copy, swap, commit, erase) + the plan's commit and the point inside it
    assert len(crashed_at) == 26, crashed_at


def test_kill_at_every_step_of_an_apply_that_escrows_existing_keys_then_rerun_converges(device):
    """A plan that adds an escrow key to two existing vaults, killed at each crash point (each escrow-key
    step, inside it with the key unsealed, the commit): the rerun escrows each key once, wrapped for the
    plan's escrow key and pending, no key bytes are on disk, and the next apply has nothing to do."""
    from enforcer import escrow

    controller = escrow.generate_escrow_key()
    names = ("config", "logs")
    without = make_plan([vault(name) for name in names])
    escrowing = make_plan([vault(name) for name in names], version=2,
                          escrow_public_key=escrow.escrow_public_text(controller))
    crashed_at = []
    for step in range(1, 20):
        reset(device)
        assert device.apply(without).returncode == 0
        killed = device.apply(escrowing, env={"VAULTPOLICY_CRASH_AT": str(step)})
        if killed.returncode == 0:
            break
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        crashed_at.append(step)

        rerun = device.apply(escrowing)
        assert rerun.returncode == 0, f"step {step}: {rerun.stdout!r}{rerun.stderr!r}"
        assert "resumed after an interrupted apply" in rerun.stdout
        keys = current_keys(device, names)
        for name, key in zip(names, keys):
            blob = escrow.EscrowBlob.from_bytes((device.state / "escrow" / f"{name}.json").read_bytes())
            assert bytes(escrow.unwrap_key(controller, blob)) == key, f"step {step}: {name}"
            assert escrow.escrow_state(device.state, name) == "pending", f"step {step}: {name}"
        again = device.apply(escrowing, "--json")
        assert json.loads(again.stdout)["steps"] == [], f"step {step}: not converged"
        os.sync()
        for path in [p for p in device.state.rglob("*") if p.is_file()] + images(device):
            data = path.read_bytes()
            assert not [leak for key in keys for leak in key_leaks(key, data)], f"step {step}: key bytes in {path}"
    # per vault the escrow-key step and the point inside it where its key is unsealed; the commit, inside it
    assert crashed_at == list(range(1, 7)), crashed_at
