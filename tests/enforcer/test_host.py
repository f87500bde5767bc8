"""Where a device's vaults and keys are: the --root and the TPM the first `device apply` used are recorded,
and a command given another root, or defaulting to another TPM, is refused before it touches anything;
a plan the host cannot carry out (no persist partition, no fscrypt, an unmeasured boot) is refused whole
before any change (real swtpm, loop-mounted ext4, the CLI in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from enforcer.state import HostRecord, StateDir
from vp_helpers import REPO, make_plan, mounts_under, vault

pytestmark = pytest.mark.device

MiB = 1 << 20
PLAN = make_plan([vault("config"), vault("img", limit=8 * MiB)])


def vaultpolicy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaultpolicy", *args], capture_output=True, text=True, cwd=REPO)


def test_a_command_under_another_root_is_refused_naming_both(device):
    """`device unlock` without --root made /persist/vault/{config,img} on the host, bound the vault images
    there and said "unlocked"; an apply under a wrong --root mounted the image vaults a second time."""
    assert device.apply(PLAN).returncode == 0
    files = {name: device.path(f"/persist/vault/{name}") / "f" for name in ("config", "img")}
    for name, path in files.items():
        path.write_text(name)
    assert device.cli("device", "lock").returncode == 0
    elsewhere = device.work / "elsewhere"
    (elsewhere / "persist").mkdir(parents=True)
    state, tpm = ["--state-dir", str(device.state)], ["--tpm", device.tcti]
    recorded = f"`{device.root}` (recorded in {device.state}/host.json)"
    for command in (["unlock", *tpm], ["lock"], ["status", *tpm], ["gate", "app", *tpm], ["rotate", *tpm],
                    ["report", *tpm], ["apply", str(device.sign(PLAN)), *tpm]):
        wrong = vaultpolicy("device", *command, *state, "--root", str(elsewhere))
        assert wrong.returncode == 1, (command, wrong.stdout + wrong.stderr)
        assert wrong.stderr.startswith(f"error: --root `{elsewhere}` ({elsewhere}) is not the root this device's "
                                       f"vaults were applied under: {recorded}"), (command, wrong.stderr)
        assert f"= help: pass --root {device.root}" in wrong.stderr
    assert list(elsewhere.rglob("*")) == [elsewhere / "persist"] and mounts_under(elsewhere) == []
    for command in ("status", "report"):  # no --root: the host's own paths
        missing = vaultpolicy("device", command, *state, *tpm, *(["-o", str(device.work / "r.json")]
                                                                  if command == "report" else []))
        assert missing.returncode == 1 and f"error: without --root the root is `/`, not the root this device's " \
            f"vaults were applied under: {recorded}" in missing.stderr, (command, missing.stderr)
    # report signed every vault `Drifted (path-missing)` there, and the controller took it
    assert not (device.work / "r.json").exists()

    unlocked = device.cli("device", "unlock")  # the recorded root itself
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert all(path.read_text() == name for name, path in files.items())


def test_a_first_apply_without_root_records_the_hosts_root(device):
    """The plan's persist path is the device's loop-mounted partition itself, so no --root is needed."""
    persist = str(device.path("/persist"))
    plan = make_plan([vault("config", path=f"{persist}/vault/config")])
    plan = plan.model_copy(update={"device": plan.device.model_copy(update={"persist": persist})})
    state = device.work / "fresh"
    options = ["--state-dir", str(state), "--tpm", device.tcti]
    applied = vaultpolicy("device", "apply", str(device.sign(plan)), "--trust", str(device.trust), *options)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert StateDir(state).host().root == "/"
    refused = vaultpolicy("device", "status", *options, "--root", str(device.root))
    assert refused.returncode == 1 and "is not the root this device's vaults were applied under: `/`" in refused.stderr
    assert "= help: omit --root" in refused.stderr
    assert vaultpolicy("device", "status", *options).returncode == 0


def test_a_damaged_host_record_stops_no_boot_command_and_apply_refuses_on_it(device):
    """A torn host.json made every device command fail (`device lock` exit 1) with json's own text; the
    boot commands now go on with a warning naming it, as for a damaged version floor."""
    assert device.apply(PLAN).returncode == 0
    (device.state / "host.json").write_text("{\n")
    damaged = f"the host record {device.state}/host.json is unreadable: expecting property name enclosed in " \
              "double quotes at line 2 column 1"
    for command in (["lock"], ["unlock"], ["status"], ["gate", "app"]):
        result = device.cli("device", *command)
        assert f"warning: {damaged}; --root and --tpm were not checked against it" in result.stderr, (command, result.stderr)
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert device.cli("device", "unlock").returncode == 0 and device.cli("device", "status").returncode == 0
    refused = device.apply(PLAN)
    assert refused.returncode == 1 and f"error: {damaged}" in refused.stderr, refused.stderr
    assert "= help: remove it: the next `device apply` records its --root and --tpm again" in refused.stderr
    (device.state / "host.json").unlink()
    assert device.apply(PLAN).returncode == 0 and StateDir(device.state).host() is not None


def assert_nothing_changed(state: Path, context: str) -> None:
    assert not (state / "applied").exists(), f"{context}: the plan was recorded as applied"
    assert not (state / "images").exists() and not (state / "sealed").exists(), context
    assert not (state / "vaults").exists() and StateDir(state).host() is None, context
    assert mounts_under(state) == [], context


def test_apply_without_a_persist_partition_is_refused_before_any_change(device):
    """With no /persist, apply made /persist, made and mounted an image, failed at create-key and
    recorded the plan as applied."""
    bare = device.work / "bare-root"  # under work: the fixture unmounts whatever a regression mounts there
    bare.mkdir()
    state = device.work / "fresh"
    refused = vaultpolicy("device", "apply", str(device.sign(PLAN)), "--trust", str(device.trust), "--state-dir",
                          str(state), "--root", str(bare), "--tpm", device.tcti)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith(f"error: plan {device.work}/plan.signed not applied (persist-missing, VP1019), "
                                     f"nothing was changed: the persist partition `/persist` is not there: "
                                     f"`{bare}/persist` does not exist; no plan has been applied"), refused.stderr
    assert "= help: mount the persist partition there, or pass the --root that holds it" in refused.stderr
    assert list(bare.iterdir()) == []
    assert_nothing_changed(state, "no persist")
    assert StateDir(state).conditions()["plan"].reason == "persist-missing"


def test_apply_on_a_filesystem_without_fscrypt_is_refused_before_any_change(device):
    plain_root = device.work / "plain-root"  # under work: the fixture unmounts it and what a regression mounts
    persist = plain_root / "persist"
    persist.mkdir(parents=True)
    image = device.work / "plain.img"
    with open(image, "wb") as handle:
        handle.truncate(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)  # no `-O encrypt`
    subprocess.run(["mount", "-o", "loop", str(image), str(persist)], check=True)
    state = device.work / "fresh"
    refused = vaultpolicy("device", "apply", str(device.sign(PLAN)), "--trust", str(device.trust), "--state-dir",
                          str(state), "--root", str(plain_root), "--tpm", device.tcti)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "not applied (no-fscrypt, VP1020), nothing was changed: vault `config` cannot be encrypted at " \
        f"`/persist/vault/config`: {persist}: get encryption policy: the filesystem does not support fscrypt" \
        in refused.stderr, refused.stderr
    assert "or give the vault a limit" in refused.stderr
    assert sorted(p.name for p in persist.iterdir()) == ["lost+found"]
    assert_nothing_changed(state, "no fscrypt")
    assert mounts_under(plain_root) == [str(persist)]


def test_apply_on_an_unmeasured_boot_is_refused_before_any_change(device):
    """With PCRs 0 and 4 zero and no allow_unmeasured_boot, apply made and mounted the image, then
    create-key failed without a word about allow_unmeasured_boot, and the plan was recorded applied."""
    device.swtpm.restart()  # a reboot that measured nothing
    refused = device.apply(PLAN)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "not applied (unmeasured-boot, VP1021), nothing was changed: the key of vault `config` cannot be sealed: " \
        "PCR sha256:0,4 is all zero" in refused.stderr, refused.stderr
    assert "allow it in the policy's `device` block (`allow_unmeasured_boot`; never in production)" in refused.stderr
    assert not device.path("/persist/vault").exists()
    assert_nothing_changed(device.state, "unmeasured boot")
    status = device.cli("device", "status")
    assert status.returncode == 1 and "no plan has been applied" in status.stderr

    device.swtpm.measure_boot()
    assert device.apply(PLAN).returncode == 0
    assert StateDir(device.state).host() == HostRecord(str(device.root), device.tcti)


def test_images_the_state_filesystem_cannot_hold_are_refused_whole_before_any_change(device):
    """With the state dir on a 64 MiB persist partition and `images { limit 200MiB }`, apply made, sealed and
    mounted `config`, then `images: create-storage FAILED`, exit 1, and recorded the plan as applied: each
    image's room was checked only as its step ran. The images a plan makes or grows are now summed against
    their filesystem's free space after reconcile, and such a plan is refused whole."""
    import os

    state = device.path("/persist/state")  # the state dir, and so the images, on the small partition
    options = ["--trust", str(device.trust), "--state-dir", str(state), "--root", str(device.root), "--tpm", device.tcti]

    def apply(plan, name: str) -> subprocess.CompletedProcess:
        return vaultpolicy("device", "apply", str(device.sign(plan, name)), *options)

    stats = os.statvfs(device.path("/persist"))
    half = (stats.f_bavail * stats.f_frsize // 2 // MiB + 2) * MiB  # one fits, two do not
    for name, plan in {
        "too-large": make_plan([vault("config"), vault("images", limit=200 * MiB)]),
        "two-too-many": make_plan([vault("config"), vault("a", limit=half), vault("b", limit=half)]),
    }.items():
        refused = apply(plan, f"{name}.signed")
        assert refused.returncode == 1, (name, refused.stdout + refused.stderr)
        assert refused.stderr.startswith(f"error: plan {device.work}/{name}.signed not applied (storage-no-room, "
                                         "VP1116), nothing was changed: the vault images this plan makes or grows "
                                         f"need "), refused.stderr
        assert f"on the filesystem of `{state}`, which has " in refused.stderr
        each = "`images` 200.0 MiB (limit 200MiB)" if name == "too-large" else \
            f"`a` {half // MiB}.0 MiB (limit {half // MiB}MiB), `b` {half // MiB}.0 MiB (limit {half // MiB}MiB)"
        assert f"free and keeps 1.0 MiB for the state files: {each}; no plan has been applied" in refused.stderr
        assert "= help: images are allocated in full: free space there (or move the state dir to a larger " \
            "filesystem), or lower the vaults' limits" in refused.stderr
        assert not device.path("/persist/vault").exists(), name
        assert_nothing_changed(state, name)
        assert StateDir(state).conditions()["plan"].reason == "storage-no-room"

    assert apply(make_plan([vault("config"), vault("images", limit=16 * MiB)]), "fits.signed").returncode == 0
    applied = StateDir(state).applied_envelope()
    image_size = StateDir(state).image_path("images").stat().st_size
    grown = make_plan([vault("config"), vault("logs"), vault("images", limit=200 * MiB)], version=2)
    refused = apply(grown, "grown.signed")
    assert refused.returncode == 1 and "(storage-no-room, VP1116), nothing was changed" in refused.stderr, refused.stderr
    assert "`images` 184.0 MiB (limit 200MiB); the applied plan stays in force" in refused.stderr, refused.stderr
    assert not device.path("/persist/vault/logs").exists() and StateDir(state).applied_envelope() == applied
    assert StateDir(state).image_path("images").stat().st_size == image_size
    status = vaultpolicy("device", "status", *options[2:])
    assert status.returncode == 3 and "the last plan offered was REFUSED" in status.stdout, status.stdout


def test_status_without_the_tpm_apply_used_says_so_and_starts_no_swtpm(device, tmp_path):
    """status without --tpm on a device applied with an external swtpm started an embedded one and said
    the sealed keys do not load and the PCRs differ."""
    from enforcer.tcti import Swtpm, stop_embedded

    assert device.apply(PLAN).returncode == 0
    options = ["--state-dir", str(device.state), "--root", str(device.root)]
    try:
        for command in (["status"], ["unlock"], ["gate", "app"], ["rotate"], ["apply", str(device.sign(PLAN))],
                        ["report"], ["quote", "--nonce", "00" * 16], ["identity"]):
            rooted = command[0] not in ("quote", "identity")  # they read no vault
            result = vaultpolicy("device", *command, *(options if rooted else options[:2]))
            assert result.returncode == 1, (command, result.stdout + result.stderr)
            assert f"error: this device's keys are sealed in the TPM `{device.tcti}` (recorded by `device apply` in " \
                f"{device.state}/host.json); without --tpm this command would use" in result.stderr, result.stderr
            assert f"= help: use the same --tpm as `device apply` did: --tpm {device.tcti}" in result.stderr
            assert not (device.state / "swtpm").exists(), f"{command} started an embedded swtpm"
    finally:
        stop_embedded(device.state)

    other = Swtpm.start(tmp_path / "another-tpm")
    try:
        status = vaultpolicy("device", "status", *options, "--tpm", other.tcti)
        assert status.returncode == 3, status.stdout + status.stderr
        assert f"  hint: use the same TPM as `device apply` did: --tpm {device.tcti}" in status.stdout
    finally:
        other.stop()
    assert "hint" not in device.cli("device", "status").stdout
