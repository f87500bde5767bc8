"""The default TPM: with no --tpm and no /dev/tpmrm0, the device commands start one swtpm of their own
under the state dir, keep it running between commands and stop it on `device lock --stop-tpm` (real
swtpm and loop-mounted ext4, through the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from enforcer import tcti
from vp_helpers import REPO, make_plan, vault

pytestmark = pytest.mark.device


def test_apply_status_unlock_lock_on_the_embedded_swtpm(device):
    if os.path.exists(tcti.TPMRM_DEVICE):
        pytest.skip(f"{tcti.TPMRM_DEVICE} exists: without --tpm the device commands use it, not an embedded swtpm")
    options = ["--state-dir", str(device.state), "--root", str(device.root)]  # no --tpm

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vaultpolicy", "device", *args, *options], capture_output=True,
                              text=True, cwd=REPO)

    try:
        # nothing measures a boot into the embedded swtpm: its PCRs are zero, so sealing needs the allowance,
        # and without it nothing is made (it made and mounted both vaults, then failed at create-key)
        refused = cli("apply", str(device.sign(make_plan([vault("config"), vault("img", limit=8 << 20)]))),
                      "--trust", str(device.trust))
        assert refused.returncode == 1 and "(unmeasured-boot, VP1021), nothing was changed" in refused.stderr
        assert "is all zero: the boot was not measured" in refused.stderr and "allow_unmeasured_boot" in refused.stderr
        assert not device.path("/persist/vault").exists() and not (device.state / "images").exists()
        assert not (device.state / "applied").exists(), "the plan was not recorded as applied"
        instance = json.loads((device.state / "swtpm" / "instance.json").read_text())
        plan = make_plan([vault("config"), vault("img", limit=8 << 20)], version=2, allow_unmeasured_boot=True)
        applied = cli("apply", str(device.sign(plan)), "--trust", str(device.trust))
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert json.loads((device.state / "swtpm" / "instance.json").read_text()) == instance, "the same swtpm serves"
        (device.path("/persist/vault/config") / "f").write_text("kept")
        assert cli("status").returncode == 0
        # status through another TPM names the one apply used, which `--tpm embedded` selects by name
        elsewhere = cli("status", "--tpm", device.tcti)
        assert elsewhere.returncode == 3, elsewhere.stdout + elsewhere.stderr
        assert "  hint: use the same TPM as `device apply` did: --tpm embedded" in elsewhere.stdout
        named = cli("status", "--tpm", "embedded")
        assert named.returncode == 0 and "hint" not in named.stdout, named.stdout + named.stderr
        assert cli("lock").returncode == 0
        assert not (device.path("/persist/vault/config") / "f").exists()
        unlocked = cli("unlock", "--json")
        assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
        assert {r["vault"]: r["outcome"] for r in json.loads(unlocked.stdout)["unlock"]} == \
            {"config": "unlocked", "img": "unlocked"}
        assert (device.path("/persist/vault/config") / "f").read_text() == "kept"
        assert os.path.exists(f"/proc/{instance['pid']}"), "it keeps running after the command"
        stopped = cli("lock", "--stop-tpm")
        assert stopped.returncode == 0 and "embedded swtpm stopped" in stopped.stderr
        assert not tcti._running(instance["pid"]) and not (device.state / "swtpm" / "instance.json").exists()
        # a new instance is a reboot: PCRs reset, the sealing seed kept; the keys unseal again
        assert cli("unlock").returncode == 0 and (device.path("/persist/vault/config") / "f").read_text() == "kept"
    finally:
        tcti.stop_embedded(device.state)


def test_a_refused_first_apply_says_why_and_its_embedded_swtpm_can_be_stopped(device):
    """The refused apply left a swtpm running; `lock --stop-tpm` refused to stop it ('no plan has been
    applied'), and `status` said the state dir holds no plan without a word of the refusal."""
    if os.path.exists(tcti.TPMRM_DEVICE):
        pytest.skip(f"{tcti.TPMRM_DEVICE} exists: without --tpm the device commands use it, not an embedded swtpm")
    options = ["--state-dir", str(device.state), "--root", str(device.root)]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vaultpolicy", "device", *args, *options], capture_output=True,
                              text=True, cwd=REPO)

    try:
        refused = cli("apply", str(device.sign(make_plan([vault("config")]))), "--trust", str(device.trust))
        assert refused.returncode == 1 and "(unmeasured-boot, VP1021)" in refused.stderr
        assert "started the embedded swtpm (swtpm:host=127.0.0.1,port=" in refused.stderr
        assert "it keeps running until `vaultpolicy device lock --stop-tpm`" in refused.stderr
        instance = json.loads((device.state / "swtpm" / "instance.json").read_text())
        status = cli("status")
        assert status.returncode == 1, status.stdout + status.stderr
        assert f"the state dir {device.state} holds none; the last apply refused " in status.stderr
        assert "(unmeasured-boot, VP1021)" in status.stderr
        assert cli("lock").returncode == 1, "without --stop-tpm there is nothing to do"
        stopped = cli("lock", "--stop-tpm")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        # said once ("…: there is no vault to lock; nothing to lock" said it twice)
        assert "there is no vault to lock\n" in stopped.stderr and "nothing to lock" not in stopped.stderr
        assert "embedded swtpm stopped" in stopped.stderr
        assert not tcti._running(instance["pid"])
    finally:
        tcti.stop_embedded(device.state)

