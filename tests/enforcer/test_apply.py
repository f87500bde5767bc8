"""Apply on real fscrypt + swtpm through the CLI: idempotence, no key on disk, migration, limits, removal."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from enforcer import fscrypt
from enforcer.state import StateDir
from vp_helpers import NOW, REPO, fill, kernel_has_adiantum, key_leaks, make_plan, reboot, signed, tree, vault

pytestmark = pytest.mark.device

MiB = 1 << 20


def tree_digests(root) -> dict[str, str]:
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def snapshot(directory, *, skip: tuple[str, ...] = ()) -> dict[str, tuple[bytes, int]]:
    """Every state file's bytes and mtime, but the vault images (their writes are counted on their loop
    devices: the kernel writes an image back when it pleases) and the files named in `skip`."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and ".img" not in path.name and ".img.mnt" not in str(path) and path.name not in skip:
            out[str(path)] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def loop_writes(device) -> dict[str, str]:
    """For the loop device of the persist image and of each vault image: the sectors written to it
    (/sys/block/loopN/stat; a sync's flush counts as a write of no sectors), after a sync."""
    os.sync()
    images = {str(device.work / "persist.img"), *map(str, (device.state / "images").glob("*.img"))}
    counters = {}
    for loop in Path("/sys/block").glob("loop*"):
        backing = loop / "loop" / "backing_file"
        if backing.exists() and backing.read_text().strip() in images:
            counters[backing.read_text().strip()] = (loop / "stat").read_text().split()[6]
    assert len(counters) == len(images), counters
    return counters


def mounts(device) -> list[str]:
    """Mount id, mount point and source of every mount under the device: a remount gets a new id."""
    with open("/proc/self/mountinfo") as table:
        return sorted(" ".join((f[0], f[4], f[f.index("-") + 2])) for f in map(str.split, table)
                      if f[4].startswith((str(device.root), str(device.state))))


def test_second_apply_changes_nothing(device):
    """No filesystem write (the loop devices' write counters after a sync), no state file rewritten, no
    mount made and no key sealed or unsealed: the second apply runs with the crash hook set inside every
    unseal (`unseal-loaded`; a seal test-unseals too), so touching a sealed key would kill it. (The image
    files' mtimes used to be compared: writeback from the first apply changed them now and then.)"""
    plan = make_plan([vault("config", limit=16 * MiB), vault("img")])
    first = device.apply(plan)
    assert first.returncode == 0, first.stdout + first.stderr
    before = (snapshot(device.state), loop_writes(device), mounts(device))
    unsealing_kills = {"VAULTPOLICY_CRASH_AT": "unseal-loaded"}
    second = device.apply(plan, "--json", env=unsealing_kills)
    assert second.returncode == 0, second.stdout + second.stderr  # -SIGKILL had it sealed or unsealed
    assert json.loads(second.stdout)["steps"] == []
    assert (snapshot(device.state), loop_writes(device), mounts(device)) == before
    # the hook does kill an unseal: the check above cannot pass by the hook missing
    assert device.cli("device", "lock").returncode == 0
    assert device.cli("device", "unlock", env=unsealing_kills).returncode == -signal.SIGKILL


def test_raw_key_never_reaches_disk(device):
    from enforcer.tpm import SealedBlob, Tpm

    from enforcer import escrow

    public = escrow.escrow_public_text(escrow.generate_escrow_key())  # the escrow blob is state too
    plan = make_plan([vault("config", limit=16 * MiB), vault("img")], escrow_public_key=public)
    assert device.apply(plan).returncode == 0
    (device.path("/persist/vault/config") / "data").write_bytes(b"x" * 10000)
    os.sync()
    state = StateDir(device.state)
    keys = []
    with Tpm(device.tcti) as tpm:
        for name in ("config", "img"):
            keys.append(bytes(tpm.unseal(SealedBlob.from_json(json.dumps(state.sealed(name)["blob"])))))
    assert all(len(k) == 64 for k in keys)

    def scan(when: str) -> None:
        os.sync()
        scanned = [p for p in list(device.state.rglob("*")) + [device.work / "persist.img"] if p.is_file()]
        assert any(p.suffix == ".img" for p in scanned)
        assert (device.state / "escrow" / "config.json").is_file()
        for path in scanned:
            data = path.read_bytes()
            for key in keys:
                assert key_leaks(key, data) == [], f"{when}: key bytes found in {path}"

    scan("after apply")
    # a reboot's lock and unlock write state too (the unlock records, conditions), and unseal every key
    assert device.cli("device", "lock").returncode == 0
    unlocked = device.cli("device", "unlock")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert (device.state / "attest" / "last-unlock" / "img.json").is_file()
    (device.path("/persist/vault/img") / "data").write_bytes(b"y" * 10000)
    scan("after a lock and an unlock")


@pytest.mark.parametrize("limit", [16 * MiB, 0], ids=["own-image", "plain"])
def test_plaintext_directory_migrates_into_the_vault(device, limit):
    """Every file, directory and symlink keeps its contents, mode, owner and mtime, and so does the vault
    directory itself (a 0755 directory used to come out 0700)."""
    target = device.path("/persist/vault/config")
    target.mkdir(parents=True)
    fill(target)
    (target / "sub").mkdir()
    (target / "sub" / "marked.txt").write_bytes(b"plaintext marker " * 1000)
    os.chmod(target, 0o755)
    os.chown(target, 1234, 4321)
    os.utime(target, ns=(1_200_000_000_000_000_000, 1_200_000_000_000_000_000))
    expected, top = tree(target), os.stat(target)
    os.sync()

    result = device.apply(make_plan([vault("config", limit=limit)]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert tree(target) == expected
    after = os.stat(target)
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_mtime_ns) == \
        (top.st_mode, top.st_uid, top.st_gid, top.st_mtime_ns)
    os.sync()  # the staged plaintext's freed blocks were discarded: the persist image holds no copy of it
    assert b"plaintext marker " * 100 not in (device.work / "persist.img").read_bytes()
    assert fscrypt.get_policy(str(target)) is not None
    assert not any(".vp-" in name for name in os.listdir(target.parent))
    status = device.cli("device", "status")
    assert status.returncode == 0, status.stdout


def test_migration_that_cannot_fit_moves_nothing(device):
    target = device.path("/persist/vault/config")
    target.mkdir(parents=True)
    (target / "big").write_bytes(b"\1" * (9 * MiB))
    result = device.apply(make_plan([vault("config", limit=8 * MiB)]))
    assert result.returncode == 1
    assert "nothing was moved" in result.stdout
    assert (target / "big").read_bytes() == b"\1" * (9 * MiB)
    assert fscrypt.get_policy(str(target)) is None
    status = device.cli("device", "status", "--json")
    assert status.returncode == 3  # S5: drift, reported loudly, with the exact reason
    (config,) = json.loads(status.stdout)["vaults"]
    assert config["state"] == "plaintext" and not config["matches"]
    assert "a non-empty plaintext directory is where the vault belongs" in config["reasons"]
    # and a plan whose vault can hold the files migrates them into it without losing a byte
    migrated = device.apply(make_plan([vault("config", limit=16 * MiB)], version=2))
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "vault config: migrate" in migrated.stdout
    assert fscrypt.get_policy(str(target)) is not None
    assert (target / "big").read_bytes() == b"\1" * (9 * MiB)
    assert device.cli("device", "status").returncode == 0


def test_migration_of_a_vault_without_a_limit_is_space_checked_too(device):
    """S21: a vault without a limit shares the persist filesystem with its staged plaintext, so the
    copy needs as much free space again there: 40 MiB of files on the 64 MiB partition do not fit,
    and nothing is moved. Once room is made they migrate."""
    target = device.path("/persist/vault/config")
    target.mkdir(parents=True)
    (target / "big").write_bytes(b"\2" * (40 * MiB))
    (target / "small").write_bytes(b"kept")
    result = device.apply(make_plan([vault("config")]))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "vault config: stage-plaintext FAILED" in result.stdout and "nothing was moved" in result.stdout
    assert f"free on the filesystem of `{target}`" in result.stdout
    assert sorted(os.listdir(target)) == ["big", "small"] and fscrypt.get_policy(str(target)) is None
    assert os.listdir(target.parent) == ["config"] and StateDir(device.state).sealed("config") is None
    (target / "big").unlink()
    migrated = device.apply(make_plan([vault("config")], version=2))
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert (target / "small").read_bytes() == b"kept" and fscrypt.get_policy(str(target)) is not None


def test_writing_past_the_limit_fails_and_raising_it_helps(device):
    assert device.apply(make_plan([vault("config", limit=8 * MiB)])).returncode == 0
    target = device.path("/persist/vault/config")
    (target / "keep").write_bytes(b"k" * 1000)
    with pytest.raises(OSError) as caught:
        with open(target / "fill", "wb") as handle:
            handle.write(b"\0" * (16 * MiB))
            handle.flush()
            os.fsync(handle.fileno())
    assert caught.value.errno == errno.ENOSPC
    (target / "fill").unlink()

    grown = device.apply(make_plan([vault("config", limit=32 * MiB)], version=2))
    assert grown.returncode == 0, grown.stdout + grown.stderr
    with open(target / "fill", "wb") as handle:
        handle.write(b"\0" * (16 * MiB))
        os.fsync(handle.fileno())
    assert (target / "keep").read_bytes() == b"k" * 1000
    status = json.loads(device.cli("device", "status", "--json").stdout)
    (config,) = status["vaults"]
    assert config["limit_bytes"] == 32 * MiB and config["used_bytes"] >= 16 * MiB


def test_removed_vault_retain_keeps_key_locked_and_orphaned(device):
    assert device.apply(make_plan([vault("config"), vault("img")])).returncode == 0
    (device.path("/persist/vault/img") / "f").write_text("kept")
    assert device.apply(make_plan([vault("config")], version=2)).returncode == 0
    state = StateDir(device.state)
    assert state.sealed("img") is not None and state.records()["img"].orphaned
    status = json.loads(device.cli("device", "status", "--json").stdout)
    img = next(v for v in status["vaults"] if v["vault"] == "img")
    assert img["state"] == "orphaned"
    assert "f" not in os.listdir(device.path("/persist/vault/img"))  # locked: names are encrypted


def test_removed_vault_destroy_crypto_erases(device):
    """Destroy erases every copy of the key: the kernel's, the sealed blob, and the escrow blob (the key
    wrapped for the controller) with its acknowledgement; then the files and the image."""
    from enforcer import escrow

    controller = escrow.generate_escrow_key()
    public = escrow.escrow_public_text(controller)
    plan = make_plan([vault("config"), vault("scratch", limit=8 * MiB, on_remove="destroy"),
                      vault("tmp", on_remove="destroy")], escrow_public_key=public)
    applied = device.apply(plan)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    for name in ("config", "scratch", "tmp"):  # apply says what it did with each key
        assert f"vault {name}: key escrowed: wrapped for the controller's escrow key, pending" in applied.stdout
    state = StateDir(device.state)
    escrowed = device.state / "escrow"
    for name in ("scratch", "tmp"):
        (device.path(f"/persist/vault/{name}") / "f").write_text("gone")
        escrow.record_ack(device.state, escrow.make_ack(escrow.EscrowBlob.from_bytes((escrowed / f"{name}.json").read_bytes())))
        assert escrow.escrow_state(device.state, name) == "acknowledged"
    tmp_key = bytes.fromhex(state.sealed("tmp")["key_identifier"])
    scratch_image = state.image_path("scratch")
    result = device.apply(make_plan([vault("config")], version=2, escrow_public_key=public))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("scratch", "tmp"):
        assert state.sealed(name) is None and name not in state.records()
        assert not (escrowed / f"{name}.json").exists() and not (escrowed / f"{name}.ack.json").exists()
        assert not device.path(f"/persist/vault/{name}").exists()
    assert fscrypt.key_status(str(device.path("/persist")), tmp_key) is fscrypt.KeyStatus.ABSENT
    assert not scratch_image.exists() and subprocess.run(["losetup", "-j", str(scratch_image)], capture_output=True,
                                                         text=True, check=True).stdout == ""  # its keyring went with it
    assert state.sealed("config") is not None and (escrowed / "config.json").exists()


@pytest.mark.parametrize("unmounted", ["everything", "the vault paths"])
def test_destroying_a_locked_vault_after_a_reboot_erases_it(device, unmounted):
    """A key already out of the kernel is what destroy wants: the erase goes on (it failed at every apply
    with `the key is not in the filesystem keyring`). With only the vault paths unmounted, the image's
    filesystem stays mounted in the state dir, unbound (as a rotation cut short leaves it)."""
    from enforcer import escrow
    from vp_helpers import mounts_under

    public = escrow.escrow_public_text(escrow.generate_escrow_key())
    plan = make_plan([vault("config"), vault("scratch", limit=8 * MiB, on_remove="destroy"),
                      vault("tmp", on_remove="destroy")], escrow_public_key=public)
    applied = device.apply(plan)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    for name in ("config", "scratch", "tmp"):  # apply says what it did with each key
        assert f"vault {name}: key escrowed: wrapped for the controller's escrow key, pending" in applied.stdout
    state = StateDir(device.state)
    for name in ("scratch", "tmp"):
        (device.path(f"/persist/vault/{name}") / "f").write_text("gone")
    scratch_image = state.image_path("scratch")
    # a reboot: keys out of the kernel, the vault images unmounted, the TPM restarted and measured again
    assert device.cli("device", "lock").returncode == 0
    for mountpoint in mounts_under(device.path("/persist/vault"), *([device.state] if unmounted == "everything" else [])):
        subprocess.run(["umount", mountpoint], check=True)
    device.swtpm.restart()
    device.swtpm.measure_boot()

    result = device.apply(make_plan([vault("config")], version=2, escrow_public_key=public))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("scratch", "tmp"):
        assert state.sealed(name) is None and name not in state.records()
        assert not (device.state / "escrow" / f"{name}.json").exists()
        assert not device.path(f"/persist/vault/{name}").exists()
    assert not scratch_image.exists() and not scratch_image.with_name("scratch.img.mnt").exists()
    assert device.apply(make_plan([vault("config")], version=2, escrow_public_key=public)).returncode == 0


def test_a_policy_or_an_inconsistent_plan_offered_as_the_signed_plan_is_refused_for_what_it_is(device):
    """`device apply p1.vpol` said `malformed envelope: not JSON`; a signed plan that contradicts itself
    was refused as `unknown-schema` (VP1007, "update the enforcer"). Nothing is made but the recorded refusal."""
    policy = REPO / "examples" / "gateway.vpol"
    offered = device.cli("device", "apply", str(policy), "--trust", str(device.trust))
    assert offered.returncode == 1 and "Traceback" not in offered.stderr
    assert offered.stderr.splitlines()[0] == (f"error: plan {policy} refused (malformed-envelope, VP1011): `{policy}` "
                                              "is a policy (.vpol), not a signed envelope; no plan has been applied")
    twice = device.apply(make_plan([vault("config"), vault("config")]))
    assert twice.returncode == 1
    assert "refused (plan-inconsistent, VP1018): plan is inconsistent: " in twice.stderr and "`config`" in twice.stderr
    assert not device.path("/persist/vault/config").exists()
    assert [p.name for p in device.state.iterdir()] == ["conditions.json"], "only the refusal is recorded"
    assert StateDir(device.state).conditions()["plan"].reason == "plan-inconsistent"


def test_a_stored_plan_this_enforcer_refuses_is_named_not_an_internal_error(device):
    """A plan an older, less strict enforcer applied that `inconsistencies()` now refuses: it verifies at
    boot, and its decoding raised PlanInconsistent out of the command (exit 70)."""
    from compiler.plan import plan_digest
    from compiler.signing import Envelope

    assert device.apply(make_plan([vault("config")])).returncode == 0
    state = StateDir(device.state)
    inconsistent = signed(make_plan([vault("config"), vault("config")], version=2), device.key)
    state.commit_plan(inconsistent, 2, plan_digest(Envelope.from_bytes(inconsistent).payload))
    for command in ("unlock", "status"):
        result = device.cli("device", command)
        assert result.returncode == 1, (command, result.stdout + result.stderr)
        assert result.stderr.startswith(f"error: the stored applied plan {state.plan_path} cannot be enforced: plan is "
                                        "inconsistent: "), result.stderr
        assert "apply the controller's current signed plan again" in result.stderr


def test_refused_plans_leave_the_applied_plan_in_force(device):
    """Each refused plan adds a vault `evil`: nothing of it is made (no directory, no sealed key, no
    record), and the state dir is as it was but for the recorded refusal."""
    good = make_plan([vault("config")], version=3)
    assert device.apply(good).returncode == 0
    state = StateDir(device.state)
    applied = state.applied_envelope()
    before = snapshot(device.state, skip=("conditions.json",))
    identifier = bytes.fromhex(state.sealed("config")["key_identifier"])
    (device.path("/persist/vault/config") / "kept").write_text("kept")
    evil = [vault("config"), vault("evil"), vault("evil-img", limit=8 * MiB)]
    tampered = bytearray(signed(make_plan(evil, version=4), device.key))
    tampered[tampered.index(b'"payload":"') + 30] ^= 1
    bad = {
        "rollback": make_plan(evil, version=2),
        "expired": make_plan(evil, version=4, issued=NOW - timedelta(days=400)),
        "future-dated": make_plan(evil, version=4, issued=NOW + timedelta(days=400)),
        "wrong-target": make_plan(evil, version=4, targets=["other-device"]),
    }

    def nothing_made() -> None:
        for name in ("evil", "evil-img"):
            assert not device.path(f"/persist/vault/{name}").exists()
            assert state.sealed(name) is None and name not in state.records() and not state.image_path(name).exists()
        assert state.applied_envelope() == applied
        assert snapshot(device.state, skip=("conditions.json",)) == before
        # the applied plan stays enforced: its vault's key is still in the kernel, its files readable
        assert fscrypt.key_status(str(device.path("/persist/vault")), identifier) is fscrypt.KeyStatus.PRESENT
        assert (device.path("/persist/vault/config") / "kept").read_text() == "kept"

    for reason, plan in bad.items():
        result = device.apply(plan, "--device-id", "gw-1")
        assert result.returncode == 1 and reason in result.stderr, (reason, result.stderr)
        assert state.conditions()["plan"].reason == reason
        nothing_made()
    from compiler.signing import key_id

    (device.work / "tampered.signed").write_bytes(bytes(tampered))
    result = device.cli("device", "apply", str(device.work / "tampered.signed"), "--trust", str(device.trust))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: plan {device.work / 'tampered.signed'} refused (bad-signature, VP1001): signature by key "
        f"`{key_id(device.key.public_key())}` does not verify: the envelope was altered or signed with another key; "
        "the applied plan stays in force",
        "  = help: see `vaultpolicy explain VP1001`"]
    assert state.conditions()["plan"].reason == "bad-signature"
    nothing_made()
    assert device.cli("device", "status").returncode == 3  # the refusal is reported


def test_a_refused_first_plan_makes_no_state_dir_and_records_its_refusal_in_one_that_exists(device):
    """docs/enforcer.md said a refused first apply "leaves nothing behind"; into a state dir that exists
    it records the refusal (issue 5: the refusal is a condition), so status can say it."""
    plan = device.sign(make_plan([vault("config")], targets=["lab-1"]))
    missing = device.work / "missing-state"
    refused = subprocess.run([sys.executable, "-m", "vaultpolicy", "device", "apply", str(plan), "--trust",
                              str(device.trust), "--state-dir", str(missing), "--root", str(device.root), "--tpm",
                              device.tcti], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 1 and "(wrong-target, VP1006)" in refused.stderr, refused.stderr
    assert "no plan has been applied" in refused.stderr and not missing.exists()

    assert device.cli("device", "apply", str(plan), "--trust", str(device.trust)).returncode == 1
    assert [p.name for p in device.state.iterdir()] == ["conditions.json"]
    assert StateDir(device.state).conditions()["plan"].reason == "wrong-target"
    status = device.cli("device", "status")
    assert status.returncode == 1 and "no plan has been applied" in status.stderr
    assert "the last apply refused" in status.stderr and "(wrong-target, VP1006)" in status.stderr
    assert not device.path("/persist/vault").exists()


def test_symlink_on_the_vault_path_is_refused(device):
    elsewhere = device.root / "elsewhere"
    elsewhere.mkdir()
    (device.root / "persist" / "vault").symlink_to(elsewhere)
    result = device.apply(make_plan([vault("config")]))
    assert result.returncode == 1 and "symlink" in result.stdout
    assert os.listdir(elsewhere) == []


def test_new_key_is_escrowed_when_the_plan_names_an_escrow_key(device):
    from enforcer import escrow
    from enforcer.tpm import SealedBlob, Tpm

    controller = escrow.generate_escrow_key()
    plan = make_plan([vault("config")], escrow_public_key=escrow.escrow_public_text(controller))
    assert device.apply(plan, "--device-id", "gw-1").returncode == 0
    state = StateDir(device.state)
    blob = escrow.EscrowBlob.from_bytes((device.state / "escrow" / "config.json").read_bytes())
    assert escrow.escrow_state(device.state, "config") == "pending"
    with Tpm(device.tcti) as tpm:
        sealed_key = bytes(tpm.unseal(SealedBlob.from_json(json.dumps(state.sealed("config")["blob"]))))
    assert bytes(escrow.unwrap_key(controller, blob)) == sealed_key
    assert blob.key_identifier.hex() == state.sealed("config")["key_identifier"]


def test_a_plan_that_adds_an_escrow_key_after_a_reboot_escrows_every_existing_key_in_one_apply(device):
    """After a reboot a vault's image is not mounted, so its path shows no encryption policy: its key is
    escrowed in the same apply, once mount-storage has mounted it and the step has seen its files under
    that key; the next apply has nothing to do."""
    from enforcer import escrow

    names = ("config", "img")
    vaults = [vault("config"), vault("img", limit=8 * MiB)]
    assert device.apply(make_plan(vaults)).returncode == 0
    reboot(device)
    controller = escrow.generate_escrow_key()
    escrowing = make_plan(vaults, version=2, escrow_public_key=escrow.escrow_public_text(controller))
    result = device.apply(escrowing, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    steps = [(s["vault"], s["action"]) for s in json.loads(result.stdout)["steps"] if s["done"]]
    assert steps == [("config", "unlock"), ("img", "mount-storage"), ("img", "unlock"), ("img", "set-policy"),
                     ("config", "escrow-key"), ("img", "escrow-key")]
    state = StateDir(device.state)
    for name in names:
        blob = escrow.EscrowBlob.from_bytes((device.state / "escrow" / f"{name}.json").read_bytes())
        assert blob.key_identifier.hex() == state.sealed(name)["key_identifier"]
        assert fscrypt.key_identifier(bytes(escrow.unwrap_key(controller, blob))) == blob.key_identifier
    assert json.loads(device.apply(escrowing, "--json").stdout)["steps"] == []


def test_new_pcr_selection_reseals_the_same_key(device):
    assert device.apply(make_plan([vault("config", pcrs=(0, 7))])).returncode == 0
    (device.path("/persist/vault/config") / "f").write_text("kept")
    before = StateDir(device.state).sealed("config")
    assert device.cli("device", "lock").returncode == 0
    result = device.apply(make_plan([vault("config", pcrs=(0, 4, 7))], version=2))
    assert result.returncode == 0, result.stdout + result.stderr
    after = StateDir(device.state).sealed("config")
    assert after["blob"]["pcrs"] == [0, 4, 7] and after["key_identifier"] == before["key_identifier"]
    assert (device.path("/persist/vault/config") / "f").read_text() == "kept"
    assert device.cli("device", "status").returncode == 0


def test_a_filesystem_error_fails_that_vault_only_with_a_clear_message(device):
    frozen = device.path("/persist/frozen")
    frozen.mkdir()
    subprocess.run(["chattr", "+i", str(frozen)], check=True)  # even root cannot create entries in it
    try:
        plan = make_plan([vault("stuck", path="/persist/frozen/stuck"), vault("fine")])
        result = device.apply(plan)
    finally:
        subprocess.run(["chattr", "-i", str(frozen)], check=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "vault stuck: create-directory FAILED" in result.stdout and "frozen/stuck" in result.stdout
    assert StateDir(device.state).sealed("fine") is not None
    assert fscrypt.get_policy(str(device.path("/persist/vault/fine"))) is not None


def test_escrow_blob_of_a_real_apply_is_accepted_by_the_controller(device):
    """The apply names the blob's device as quotes and reports do (here: the id `device identity`
    recorded), so the controller matches it to the enrolled device."""
    from enforcer import escrow

    def cli(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "vaultpolicy", *args], capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0, f"{args[:2]}: {result.stdout}{result.stderr}"
        return result.stdout

    store, acks = str(device.work / "controller.db"), device.work / "acks"
    controller = escrow.generate_escrow_key()
    identity = device.work / "identity.json"
    identity.write_text(cli("device", "identity", "--device-id", "gw-1", "--state-dir", str(device.state),
                            "--tpm", device.tcti))
    cli("controller", "enroll", str(identity), "--store", store)
    plan = make_plan([vault("config")], escrow_public_key=escrow.escrow_public_text(controller))
    assert device.apply(plan).returncode == 0  # no --device-id
    cli("device", "escrow-deposit", "-o", str(device.work / "deposit.json"), "--state-dir", str(device.state),
        "--tpm", device.tcti)
    cli("controller", "escrow", str(device.work / "deposit.json"), "--ack-dir", str(acks), "--store", store)
    cli("device", "escrow-ack", str(acks / "gw-1.config.ack.json"), "--state-dir", str(device.state))
    assert escrow.escrow_state(device.state, "config") == "acknowledged"


def test_a_new_vault_with_a_cipher_the_kernel_lacks_is_refused_not_left_unwritable(device):
    plan = make_plan([vault("inspection", encryption="adiantum"), vault("config")])
    path = device.path("/persist/vault/inspection")
    result = device.apply(plan)
    if kernel_has_adiantum(device):
        assert result.returncode == 0, result.stdout + result.stderr
        (path / "f").write_bytes(b"written")
        assert fscrypt.get_policy(str(path)).contents_mode == "adiantum"
        return
    assert result.returncode == 1, result.stdout + result.stderr
    assert "vault inspection: set-policy FAILED" in result.stdout and "cannot encrypt with adiantum" in result.stdout
    assert fscrypt.get_policy(str(path)) is None and list(path.iterdir()) == []  # no policy, no probe left
    condition = StateDir(device.state).conditions()["vault/inspection"]
    assert condition.reason == "cipher-unsupported" and "set-policy failed" in condition.message
    assert (device.path("/persist/vault/config") / "ok").write_bytes(b"x")  # the other vault went on
