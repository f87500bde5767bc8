"""The lead's demo path through the real CLI: apply, write, lock, unlock, PCR change refuses unlock."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from vp_helpers import REPO, make_plan, vault

pytestmark = pytest.mark.device


def test_apply_lock_unlock_and_pcr_change(device):
    plan = make_plan([vault("config", limit=16 << 20, pcrs=(0, 7)), vault("img", pcrs=(0, 4))])
    applied = device.apply(plan)
    assert applied.returncode == 0, applied.stderr + applied.stdout

    config = device.path("/persist/vault/config")
    (config / "credentials.txt").write_text("s3 credentials")
    status = device.cli("device", "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert {v["vault"]: v["state"] for v in json.loads(status.stdout)["vaults"]} == {"config": "unlocked", "img": "unlocked"}

    locked = device.cli("device", "lock")
    assert locked.returncode == 0, locked.stdout + locked.stderr
    names = os.listdir(config)
    assert names and "credentials.txt" not in names  # encrypted names while locked
    with pytest.raises(OSError) as caught:
        (config / names[0]).read_bytes()
    assert caught.value.errno == errno.ENOKEY
    assert device.cli("device", "status").returncode == 3

    unlocked = device.cli("device", "unlock")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert os.listdir(config) == ["credentials.txt"]  # the plaintext names again
    assert (config / "credentials.txt").read_text() == "s3 credentials"

    assert device.cli("device", "lock").returncode == 0
    from enforcer.tpm import Tpm

    with Tpm(device.tcti) as tpm:
        tpm.extend_pcr(7, "sha256", b"new firmware")
    refused = device.cli("device", "unlock")
    assert refused.returncode == 1
    assert "config" in refused.stdout and "7" in refused.stdout
    status = device.cli("device", "status", "--json")
    assert status.returncode == 3
    vaults = {v["vault"]: v for v in json.loads(status.stdout)["vaults"]}
    assert vaults["config"]["state"] == "locked" and vaults["config"]["changed_pcrs"] == [7]
    assert any("7" in reason for reason in vaults["config"]["reasons"])
    assert vaults["img"]["state"] == "unlocked"  # sealed to PCRs 0 and 4: not affected


def test_the_policy_reads_back_whole_and_a_padding_that_differs_is_drift(device):
    """The kernel's policy of each vault is the plan's to the last flag: v2, AES-256-XTS contents,
    AES-256-CTS names padded to 32 bytes, the sealed key. Status compared the two modes only, so a vault
    whose names are padded to 16 bytes under the very same key and modes (set here by hand, with the
    kernel's own ioctl, on a fresh directory swapped in for the vault) matched the plan."""
    import fcntl
    import struct

    from enforcer import fscrypt
    from enforcer.state import StateDir

    assert device.apply(make_plan([vault("config"), vault("img", limit=8 << 20)])).returncode == 0
    for name in ("config", "img"):
        identifier = bytes.fromhex(StateDir(device.state).sealed(name)["key_identifier"])
        assert fscrypt.get_policy(str(device.path(f"/persist/vault/{name}"))) == fscrypt.EncryptionPolicy(
            version=2, contents_mode="aes-256-xts", filenames_mode="aes-256-cts", flags=fscrypt.POLICY_FLAG_PAD_32,
            key_identifier=identifier)

    config = device.path("/persist/vault/config")
    identifier = fscrypt.get_policy(str(config)).key_identifier
    padded = config.with_name("padded-16")
    padded.mkdir()
    fd = os.open(padded, os.O_RDONLY | os.O_DIRECTORY)
    try:  # struct fscrypt_policy_v2: version 2, contents 1 (AES-256-XTS), names 4 (AES-256-CTS), flags PAD_16
        fcntl.ioctl(fd, fscrypt.FS_IOC_SET_ENCRYPTION_POLICY, struct.pack("8B16s", 2, 1, 4, 0x02, 0, 0, 0, 0, identifier))
    finally:
        os.close(fd)
    config.rmdir()
    padded.rename(config)

    status = device.cli("device", "status", "--json")
    assert status.returncode == 3, status.stdout + status.stderr
    vaults = {v["vault"]: v for v in json.loads(status.stdout)["vaults"]}
    assert vaults["img"]["matches"] and not vaults["config"]["matches"]
    assert vaults["config"]["reasons"] == [
        "the directory's encryption policy is aes-256-xts contents, aes-256-cts names padded to 16 bytes; the plan's "
        "is aes-256-xts contents, aes-256-cts names padded to 32 bytes"]
    again = device.apply(make_plan([vault("config"), vault("img", limit=8 << 20)]))
    assert again.returncode == 1 and "vault config: not changed (policy-mismatch, VP1105)" in again.stdout
    assert fscrypt.get_policy(str(config)).flags == 0x02, "nothing re-made the directory"


def test_gateway_example_compiled_signed_and_applied_through_the_cli(device):
    def vaultpolicy(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "vaultpolicy", *args], capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    key, plan, signed = device.work / "ctl.key", device.work / "plan.json", device.work / "plan.signed"
    vaultpolicy("keygen", "-o", str(key))
    vaultpolicy("compile", str(REPO / "examples" / "gateway.vpol"), "--plan-version", "1", "-o", str(plan))
    vaultpolicy("sign", str(plan), "--key", str(key), "-o", str(signed))
    applied = device.cli("device", "apply", str(signed), "--trust", f"{key}.pub")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    status = json.loads(device.cli("device", "status", "--json").stdout)
    assert status["matches"] and {v["vault"] for v in status["vaults"]} == {"config", "images"}
    gate = device.cli("device", "gate", "plc-historian")
    assert gate.returncode == 0 and gate.stdout.strip() == str(device.path("/persist/vault/img"))
    again = device.cli("device", "apply", str(signed), "--trust", f"{key}.pub", "--json")
    assert json.loads(again.stdout)["steps"] == []


def test_the_report_says_how_a_vault_was_last_unlocked_also_once_it_is_locked(device):
    from enforcer.report import split_signed_report

    assert device.apply(make_plan([vault("config")])).returncode == 0
    attest = ["--state-dir", str(device.state), "--tpm", device.tcti, "--device-id", "gw-1", "--root", str(device.root)]

    def report_vault() -> dict:
        result = subprocess.run([sys.executable, "-m", "vaultpolicy", "device", "report", *attest], capture_output=True,
                                cwd=REPO)
        (vault_report,) = json.loads(split_signed_report(result.stdout.strip())[0])["vaults"]
        return vault_report

    assert report_vault()["last_unlock"] == {"method": "none", "at": None}, "apply added its new key: no unlock"
    assert device.cli("device", "lock").returncode == 0
    assert device.cli("device", "unlock").returncode == 0
    unlocked = report_vault()
    assert unlocked["condition"] == "Ready" and unlocked["last_unlock"]["method"] == "tpm-sealed"
    assert device.cli("device", "lock").returncode == 0
    locked = report_vault()
    assert locked["condition"] == "Locked" and locked["last_unlock"] == unlocked["last_unlock"]
