"""Project-quota vaults on a kernel with quota support. Run inside the guest test_quota_vm.py boots
(the host's kernel has no quota support), as `pytest tests/enforcer/quota_guest.py`; the file name
keeps a plain pytest run on the host from collecting it.

The CLI runs in this process (`cli`, `apply`), but for the applies the crash test kills: under TCG a
new python takes seconds to import tpm2-pytss, which multiplied the guest's run time.

The persist partition is the `device` fixture's `-O encrypt` image given `-O quota,project` with
tune2fs and mounted again with `prjquota`: the same step a kernel upgrade followed by quotas being
turned on is, so the image vault of an apply before it shows that a vault keeps its backing.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
from contextlib import redirect_stderr, redirect_stdout

import pytest

from enforcer import fscrypt, quota
from enforcer.state import StateDir
from vp_helpers import fill, make_plan, mounts_under, tree, vault

pytestmark = pytest.mark.device

MiB = 1 << 20


def enable_quotas(device) -> None:
    """Give the persist filesystem project quotas and mount it again with `prjquota`."""
    persist, image = device.path("/persist"), device.work / "persist.img"
    for mountpoint in mounts_under(persist):
        subprocess.run(["umount", mountpoint], check=True)
    subprocess.run(["tune2fs", "-O", "quota,project", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop,prjquota,nodev,nosuid", str(image), str(persist)], check=True)
    assert quota.enforced(persist)


@pytest.fixture
def quota_device(device):
    enable_quotas(device)
    return device


def app_write(directory, name: str, mib: int) -> subprocess.CompletedProcess:
    """Write `mib` MiB into the vault's `directory` as an app runs: without CAP_SYS_RESOURCE, which the
    kernel exempts from quota limits (root without it here: a uid of its own could not pass the test's
    0700 temporary directories)."""
    directory.mkdir(exist_ok=True)
    return subprocess.run(["setpriv", "--inh-caps=-sys_resource", "--bounding-set=-sys_resource", "dd",
                           "if=/dev/zero", f"of={directory / name}", "bs=1M", f"count={mib}", "conv=fsync"],
                          capture_output=True, text=True)


def cli(device, *args: str) -> subprocess.CompletedProcess:
    """`vaultpolicy ARGS` with the device's options, run in this process (see the module docstring)."""
    from vaultpolicy import cli as entry

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = entry.main([*args, "--state-dir", str(device.state), "--root", str(device.root), "--tpm", device.tcti])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def apply(device, plan, *extra: str) -> subprocess.CompletedProcess:
    return cli(device, "device", "apply", str(device.sign(plan)), "--trust", str(device.trust), *extra)


def status(device) -> dict:
    result = cli(device, "device", "status", "--json")
    return {v["vault"]: v for v in json.loads(result.stdout)["vaults"]} | {"_exit": result.returncode}


def record(device, name: str):
    return StateDir(device.state).records()[name]


def test_a_vault_with_a_limit_is_a_directory_with_a_project_quota(quota_device):
    device = quota_device
    applied = apply(device, make_plan([vault("config", limit=8 * MiB), vault("logs")]))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "vault config: create-project" in applied.stdout
    config = device.path("/persist/vault/config")
    assert not (device.state / "images" / "config.img").exists() and not os.path.ismount(config)
    kept = record(device, "config")
    assert kept.backing == "project-quota" and kept.project_id >= quota.FIRST_PROJECT_ID
    assert record(device, "logs").backing is None and record(device, "logs").project_id is None
    assert quota.project_of(config) == (kept.project_id, True)
    assert quota.get(config, kept.project_id).limit_bytes == 8 * MiB
    assert fscrypt.get_policy(str(config)) is not None, "the directory itself carries the policy"

    written = app_write(config / "app", "fill", 16)
    assert written.returncode != 0 and "Disk quota exceeded" in written.stderr, written.stderr
    used = quota.get(config, kept.project_id).used_bytes
    assert 7 * MiB <= used <= 8 * MiB
    vaults = status(device)
    assert vaults["_exit"] == 0 and vaults["config"]["used_bytes"] == used
    assert vaults["config"]["limit_bytes"] == 8 * MiB and vaults["config"]["state"] == "unlocked"
    human = cli(device, "device", "status")
    assert "of 8MiB used" in human.stdout, human.stdout

    # raising the limit is one quotactl: no unmount, the key stays in, the files stay
    (config / "app" / "fill").unlink()
    (config / "app" / "keep").write_bytes(b"k" * 1000)
    mounts_before = mounts_under(device.root)
    raised = apply(device, make_plan([vault("config", limit=32 * MiB), vault("logs")], version=2), "--json")
    assert [s["action"] for s in json.loads(raised.stdout)["steps"]] == ["set-quota"], raised.stdout
    assert mounts_under(device.root) == mounts_before
    assert app_write(config / "app", "more", 16).returncode == 0
    assert (config / "app" / "keep").read_bytes() == b"k" * 1000
    assert quota.get(config, kept.project_id).limit_bytes == 32 * MiB

    # lowering: allowed above what the vault holds, refused below it (the quota stays)
    lowered = apply(device, make_plan([vault("config", limit=24 * MiB), vault("logs")], version=3))
    assert lowered.returncode == 0, lowered.stdout
    assert quota.get(config, kept.project_id).limit_bytes == 24 * MiB
    refused = apply(device, make_plan([vault("config", limit=8 * MiB), vault("logs")], version=4))
    assert refused.returncode == 1 and "limit-below-usage" in refused.stdout, refused.stdout
    assert quota.get(config, kept.project_id).limit_bytes == 24 * MiB
    assert status(device)["_exit"] == 3


def test_two_vaults_never_share_a_project_and_writes_outside_do_not_count(quota_device):
    device = quota_device
    assert apply(device, make_plan([vault("a", limit=8 * MiB), vault("b", limit=8 * MiB)])).returncode == 0
    a, b = record(device, "a").project_id, record(device, "b").project_id
    assert a != b
    (device.path("/persist/vault/b") / "x").write_bytes(b"x" * MiB)
    (device.path("/persist") / "outside").write_bytes(b"o" * MiB)
    assert quota.get(device.path("/persist"), a).used_bytes <= 8192
    assert quota.get(device.path("/persist"), b).used_bytes >= MiB


def test_lock_shows_encrypted_names_and_unlock_reads_back(quota_device):
    device = quota_device
    assert apply(device, make_plan([vault("config", limit=8 * MiB)])).returncode == 0
    config = device.path("/persist/vault/config")
    (config / "credentials.txt").write_text("s3 credentials")
    mounts = mounts_under(device.root)
    locked = cli(device, "device", "lock")
    assert locked.returncode == 0, locked.stdout + locked.stderr
    assert mounts_under(device.root) == mounts, "no unmount: the vault is a plain directory"
    names = os.listdir(config)
    assert names and "credentials.txt" not in names
    with pytest.raises(OSError) as caught:
        (config / names[0]).read_bytes()
    assert caught.value.errno == errno.ENOKEY
    assert status(device)["config"]["state"] == "locked"
    unlocked = cli(device, "device", "unlock")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert (config / "credentials.txt").read_text() == "s3 credentials"
    assert status(device)["_exit"] == 0


def test_plaintext_migrates_into_a_quota_vault_with_every_file_intact(quota_device):
    device = quota_device
    target = device.path("/persist/vault/config")
    target.mkdir(parents=True)
    fill(target)
    (target / "marker").write_bytes(b"plaintext marker " * 1000)
    os.chmod(target, 0o755)
    expected = tree(target)
    applied = apply(device, make_plan([vault("config", limit=16 * MiB)]))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert tree(target) == expected
    project = record(device, "config").project_id
    assert quota.project_of(target / "nested") == (project, True)
    assert quota.get(target, project).used_bytes >= 300_000, "the migrated files count against the quota"
    assert fscrypt.get_policy(str(target / "a.txt")) is not None
    assert not any(".vp-" in name for name in os.listdir(target.parent))
    assert status(device)["_exit"] == 0


def test_a_migration_that_does_not_fit_the_quota_moves_nothing(quota_device):
    device = quota_device
    target = device.path("/persist/vault/config")
    target.mkdir(parents=True)
    (target / "big").write_bytes(b"\1" * (9 * MiB))
    refused = apply(device, make_plan([vault("config", limit=8 * MiB)]))
    assert refused.returncode == 1 and "nothing was moved" in refused.stdout and "project quota" in refused.stdout
    assert (target / "big").read_bytes() == b"\1" * (9 * MiB) and fscrypt.get_policy(str(target)) is None


def test_rotation_keeps_the_project_and_is_refused_without_room_in_the_quota(quota_device):
    device = quota_device
    assert apply(device, make_plan([vault("config", limit=8 * MiB)])).returncode == 0
    config = device.path("/persist/vault/config")
    fill(config)
    expected = tree(config)
    rotated = cli(device, "device", "rotate", "--json")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert tree(config) == expected
    project = record(device, "config").project_id
    assert quota.project_of(config) == (project, True) and quota.project_of(config / "nested") == (project, True)
    assert quota.get(config, project).used_bytes >= 300_000
    (config / "half").write_bytes(b"h" * (5 * MiB))  # a copy of 5 MiB more does not fit in 8 MiB
    refused = cli(device, "device", "rotate")
    assert refused.returncode == 1 and "no-room" in refused.stdout, refused.stdout
    assert (config / "half").read_bytes() == b"h" * (5 * MiB)


def test_re_encryption_of_a_quota_vault_keeps_its_files_and_its_project(quota_device):
    """`none` -> encrypted and back: the new tree is made in the vault's project, so it is counted and
    keeps the limit once swapped in."""
    device = quota_device
    assert apply(device, make_plan([vault("config", limit=8 * MiB, encryption="none")])).returncode == 0
    config = device.path("/persist/vault/config")
    fill(config)
    expected = tree(config)
    project = record(device, "config").project_id
    encrypted = apply(device, make_plan([vault("config", limit=8 * MiB)], version=2))
    assert encrypted.returncode == 0 and "re-encrypt" in encrypted.stdout, encrypted.stdout + encrypted.stderr
    assert tree(config) == expected and fscrypt.get_policy(str(config / "a.txt")) is not None
    assert quota.project_of(config) == (project, True) and quota.project_of(config / "nested") == (project, True)
    assert 300_000 <= quota.get(config, project).used_bytes <= 8 * MiB
    decrypted = apply(device, make_plan([vault("config", limit=8 * MiB, encryption="none")], version=3))
    assert decrypted.returncode == 0, decrypted.stdout + decrypted.stderr
    assert tree(config) == expected and fscrypt.get_policy(str(config)) is None
    assert quota.project_of(config) == (project, True) and status(device)["_exit"] == 0


def test_destroy_erases_the_vault_and_removes_its_limit(quota_device):
    device = quota_device
    assert apply(device, make_plan([vault("config"), vault("scratch", limit=8 * MiB, on_remove="destroy")])).returncode == 0
    scratch = device.path("/persist/vault/scratch")
    (scratch / "f").write_bytes(b"gone" * 1000)
    project = record(device, "scratch").project_id
    destroyed = apply(device, make_plan([vault("config")], version=2))
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert not scratch.exists() and "scratch" not in StateDir(device.state).records()
    assert StateDir(device.state).sealed("scratch") is None
    assert quota.get(device.path("/persist"), project).unused


def test_an_image_vault_keeps_its_image_when_quotas_become_available(device):
    assert apply(device, make_plan([vault("old", limit=8 * MiB)])).returncode == 0
    old = device.path("/persist/vault/old")
    (old / "kept").write_text("in the image")
    assert record(device, "old").backing == "image"
    assert cli(device, "device", "lock").returncode == 0
    enable_quotas(device)  # a kernel with quota support, the persist partition given quotas
    assert cli(device, "device", "unlock").returncode == 0
    applied = apply(device, make_plan([vault("old", limit=16 * MiB), vault("new", limit=8 * MiB)], version=2))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert record(device, "old").backing == "image" and os.path.ismount(old)
    assert (old / "kept").read_text() == "in the image" and "grow-storage" in applied.stdout
    assert record(device, "new").backing == "project-quota"
    assert not (device.state / "images" / "new.img").exists()
    assert status(device)["_exit"] == 0


MARKER = b"plaintext marker of config " * 1000
CRASH_PLAN = make_plan([vault("config", limit=16 * MiB), vault("logs", limit=8 * MiB, pcrs=(0, 4))])


def _reset(device) -> None:
    state = StateDir(device.state)
    for kept in state.records().values():  # the kernel keeps a project's limit: a new run starts without them
        if kept.project_id is not None:
            quota.set_limit(device.path("/persist"), kept.project_id, 0)
    for mountpoint in mounts_under(device.path("/persist/vault"), device.state):
        subprocess.run(["umount", mountpoint], check=True)
    shutil.rmtree(device.state)
    device.state.mkdir()
    shutil.rmtree(device.path("/persist/vault"), ignore_errors=True)


def _digests(root) -> dict[str, str]:
    return {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(root) for f in files}


def test_kill_at_every_step_of_a_quota_vault_apply_then_rerun_converges(quota_device):
    device = quota_device
    crashed_at = []
    for step in range(1, 30):
        _reset(device)
        config = device.path("/persist/vault/config")
        (config / "nested").mkdir(parents=True)
        (config / "a.txt").write_bytes(b"alpha" * 1000)
        (config / "nested" / "b.bin").write_bytes(bytes(range(256)) * 2000)
        (config / "marker").write_bytes(MARKER)
        expected = _digests(config)
        os.sync()
        killed = device.apply(CRASH_PLAN, env={"VAULTPOLICY_CRASH_AT": str(step)})
        if killed.returncode == 0:
            break
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        crashed_at.append(step)
        rerun = apply(device, CRASH_PLAN)
        assert rerun.returncode == 0, f"step {step}: {rerun.stdout!r}{rerun.stderr!r}"
        assert _digests(config) == expected, f"step {step}: files differ after the rerun"
        records = StateDir(device.state).records()
        for name, limit in (("config", 16 * MiB), ("logs", 8 * MiB)):
            path = device.path(f"/persist/vault/{name}")
            assert records[name].backing == "project-quota", f"step {step}: {name}"
            assert quota.project_of(path) == (records[name].project_id, True), f"step {step}: {name}"
            assert quota.get(path, records[name].project_id).limit_bytes == limit, f"step {step}: {name}"
        assert records["config"].project_id != records["logs"].project_id
        assert os.listdir(device.path("/persist/vault/logs")) == [], f"step {step}: logs is not empty"
        assert [p for p in device.path("/persist/vault").glob("*.vp-*")] == [], f"step {step}: scratch left"
        assert not (device.state / "images").exists() or not list((device.state / "images").iterdir())
        assert status(device)["_exit"] == 0, f"step {step}: not converged"  # no step left, nothing drifts
        os.sync()
        assert MARKER[:2000] not in (device.work / "persist.img").read_bytes(), f"step {step}: plaintext left"
    # config: stage-plaintext, create-project, create-key, its key sealed and not saved, set-policy, its cipher
    # probe, migrate, mid-copy, copied and not erased, between delete and discard; logs: create-project, key,
    # sealed and not saved, policy, probe; the commit and inside it
    assert crashed_at == list(range(1, len(crashed_at) + 1)) and len(crashed_at) == 17, crashed_at
