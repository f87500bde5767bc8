"""Unlock, lock, reboot, the app gate and TPM handle hygiene, on swtpm and real fscrypt."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from enforcer.state import StateDir
from vp_helpers import REPO, app, make_plan, mounts_under, vault

pytestmark = pytest.mark.device

MiB = 1 << 20


def outcomes(result) -> dict[str, str]:
    data = json.loads(result.stdout)
    verb = "unlock" if "unlock" in data else "lock"
    return {r["vault"]: r["outcome"] for r in data[verb]}


def test_lock_reports_busy_files_as_incompletely_locked(device):
    assert device.apply(make_plan([vault("config", limit=8 * MiB), vault("img")])).returncode == 0
    with open(device.path("/persist/vault/config") / "open.txt", "w") as held:
        held.write("held open")
        result = device.cli("device", "lock", "--json")
        assert result.returncode == 1
        assert outcomes(result) == {"config": "incompletely-locked", "img": "locked"}
    assert outcomes(device.cli("device", "lock", "--json")) == {"config": "locked", "img": "locked"}


def test_reboot_drops_keys_and_unlock_restores_them(device):
    assert device.apply(make_plan([vault("config", limit=8 * MiB), vault("img")])).returncode == 0
    for name in ("config", "img"):
        (device.path(f"/persist/vault/{name}") / "f").write_text(name)
    # A reboot: keys gone from the kernel, the vault images unmounted, the TPM's PCRs reset and re-measured.
    assert device.cli("device", "lock").returncode == 0
    for mountpoint in mounts_under(device.path("/persist/vault"), device.state):
        subprocess.run(["umount", mountpoint], check=True)
    device.swtpm.restart()
    device.swtpm.measure_boot()

    status = json.loads(device.cli("device", "status", "--json").stdout)
    assert {v["vault"]: v["state"] for v in status["vaults"]} == {"config": "locked", "img": "locked"}
    unlocked = device.cli("device", "unlock", "--json")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert outcomes(unlocked) == {"config": "unlocked", "img": "unlocked"}
    for name in ("config", "img"):
        assert (device.path(f"/persist/vault/{name}") / "f").read_text() == name
    assert device.cli("device", "status").returncode == 0
    from enforcer.release import last_unlocks

    assert {v: r["method"] for v, r in last_unlocks(StateDir(device.state)).items()} == \
        {"config": "tpm-sealed", "img": "tpm-sealed"}, "the drift report reads how each vault was last unlocked"


def test_pcr_mismatch_locks_only_that_vault_and_names_the_pcr(device):
    from enforcer.tpm import Tpm

    assert device.apply(make_plan([vault("config", pcrs=(0, 7)), vault("img", pcrs=(0, 4))])).returncode == 0
    (device.path("/persist/vault/img") / "f").write_text("img")
    assert device.cli("device", "lock").returncode == 0
    with Tpm(device.tcti) as tpm:
        tpm.extend_pcr(7, "sha256", b"another boot loader")
    result = device.cli("device", "unlock", "--json")
    assert result.returncode == 1
    records = {r["vault"]: r for r in json.loads(result.stdout)["unlock"]}
    assert records["config"]["outcome"] == "locked" and records["config"]["pcrs"] == [7]
    assert records["config"]["reason"] == "pcr-mismatch"
    assert records["img"]["outcome"] == "unlocked"
    assert (device.path("/persist/vault/img") / "f").read_text() == "img"
    assert StateDir(device.state).conditions()["vault/config"].reason == "pcr-mismatch"


def test_unlock_through_another_tpm_or_a_bogus_tcti_says_what_to_do(device, tmp_path):
    from enforcer.tcti import Swtpm

    assert device.apply(make_plan([vault("config")])).returncode == 0
    assert device.cli("device", "lock").returncode == 0
    other = Swtpm.start(tmp_path / "another-tpm")
    try:
        options = ["--state-dir", str(device.state), "--root", str(device.root), "--tpm", other.tcti]
        result = subprocess.run([sys.executable, "-m", "vaultpolicy", "device", "unlock", *options], capture_output=True,
                                text=True, cwd=REPO)
        assert result.returncode == 1
        assert "vault config: locked (unlock-failed, VP1202): unseal failed: this TPM cannot load the sealed key" in result.stdout
        assert "it was sealed by another TPM, or this TPM was cleared since" in result.stdout
        assert "hint: use the same --tpm as `device apply` did; else recover the key with a controller release" \
            in result.stdout
    finally:
        other.stop()
    bogus = subprocess.run([sys.executable, "-m", "vaultpolicy", "device", "unlock", "--state-dir", str(device.state),
                            "--root", str(device.root), "--tpm", "bogus"], capture_output=True, text=True, cwd=REPO)
    assert bogus.returncode == 1 and "error: cannot open the TPM `bogus`" in bogus.stderr
    assert "`--tpm` takes a TCTI string: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`" in bogus.stderr


def test_gate_releases_an_app_only_with_its_vault_unlocked(device):
    plan = make_plan([vault("img")], apps=[app("historian", "img", end_to_end=True), app("plain", None)])
    assert device.apply(plan).returncode == 0
    opened = device.cli("device", "gate", "historian")
    assert opened.returncode == 0 and opened.stdout.strip() == str(device.path("/persist/vault/img"))
    assert device.cli("device", "gate", "plain").returncode == 0
    assert device.cli("device", "lock").returncode == 0
    closed = device.cli("device", "gate", "historian")
    assert closed.returncode == 1 and closed.stdout == "" and "locked" in closed.stderr
    unknown = device.cli("device", "gate", "nosuch")
    assert unknown.returncode == 1 and "no app `nosuch`" in unknown.stderr


def test_gate_never_releases_an_end_to_end_app_on_an_unencrypted_vault(device):
    # the compiler refuses such a policy (VP0302); a plan made otherwise, and signed, must not pass either
    plan = make_plan([vault("open", encryption="none")], apps=[app("historian", "open", end_to_end=True),
                                                               app("viewer", "open")])
    assert device.apply(plan).returncode == 0
    closed = device.cli("device", "gate", "historian")
    assert closed.returncode == 1 and closed.stdout == ""
    assert "app `historian` needs end-to-end protection, but its vault `open` is not encrypted" in closed.stderr
    opened = device.cli("device", "gate", "viewer")
    assert opened.returncode == 0 and opened.stdout.strip() == str(device.path("/persist/vault/open"))


def test_handles_are_flushed_over_100_cycles_including_failures(device):
    from enforcer.apply import Applier
    from enforcer.observe import observe
    from enforcer.reconcile import reconcile
    from enforcer.tpm import Tpm
    from enforcer.unlock import lock_all, unlock_all

    plan = make_plan([vault("good", pcrs=(0, 4)), vault("moved", pcrs=(0, 7)), vault("corrupt", pcrs=(0, 4))])
    assert device.apply(plan).returncode == 0
    assert device.cli("device", "lock").returncode == 0  # so every cycle's unlock meets the failures
    state = StateDir(device.state)
    sealed = state.sealed("corrupt")
    private = bytearray.fromhex(sealed["blob"]["private"].encode().hex())  # base64 text: flip one character
    private[len(private) // 2] = ord("A") if private[len(private) // 2] != ord("A") else ord("B")
    sealed["blob"]["private"] = private.decode()
    state.sealed_path("corrupt").write_text(json.dumps(sealed))
    with Tpm(device.tcti) as tpm:
        tpm.extend_pcr(7, "sha256", b"changed firmware")
        before = tpm.loaded_handles()
    root, now = device.root, datetime.now(timezone.utc)
    failures = 0
    with Tpm(device.tcti) as tpm:
        for _ in range(100):
            results = {r.vault: r.outcome for r in unlock_all(plan, state, root, tpm, now)}
            assert results["good"] in ("unlocked", "already-unlocked")
            failures += (results["moved"] == "locked") + (results["corrupt"] == "locked")
            Applier(plan, state, root, tpm, now).run(reconcile(plan, observe(plan, state, root, tpm)).steps)
            assert {r.outcome for r in lock_all(state, root)} == {"locked"}
    assert failures == 200
    with Tpm(device.tcti) as tpm:
        assert tpm.loaded_handles() == before


def test_applied_plan_is_reverified_at_boot_and_lock_fails_closed(device):
    from enforcer import blockdev, fscrypt

    assert device.apply(make_plan([vault("config"), vault("img", limit=8 * MiB)])).returncode == 0
    state = StateDir(device.state)
    stored = state.plan_path
    data = bytearray(stored.read_bytes())
    data[data.index(b'"payload":"') + 40] ^= 1
    stored.write_bytes(bytes(data))
    for command in ("unlock", "status", "gate"):
        result = device.cli("device", command, *(["app"] if command == "gate" else []))
        assert result.returncode == 1 and "error:" in result.stderr and "Traceback" not in result.stderr, command
    # Locking is always safe: an applied plan that no longer verifies must not keep keys in the kernel.
    locked = device.cli("device", "lock", "--json")
    assert locked.returncode == 0, locked.stdout + locked.stderr
    assert outcomes(locked) == {"config": "locked", "img": "locked"}
    for name, home in (("config", device.path("/persist")), ("img", blockdev.backing_mountpoint(state.image_path("img")))):
        identifier = bytes.fromhex(state.sealed(name)["key_identifier"])
        assert fscrypt.key_status(str(home), identifier) is fscrypt.KeyStatus.ABSENT, name
