"""What `device unlock --release FILE` refuses, and that a refusal changes nothing (real swtpm,
loop-mounted ext4, the real CLI): an entry whose labels name another vault than the key it carries,
fields no TPM has (bank, PCRs), and a key that is no fscrypt key."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from enforcer import fscrypt
from enforcer.fscrypt import KeyStatus
from vaultpolicy import status_codes

pytestmark = pytest.mark.device
REPO = Path(__file__).resolve().parents[2]


def sealed_records(device) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (device.state.root / "sealed").iterdir()}


def test_a_key_labelled_for_another_vault_is_refused_before_it_reaches_the_kernel(escrowed_device):
    """The TPM import covers the key, not the entry's `vault` and `key_identifier`: an entry labelled
    `notes` carrying config's key was added, found to be another key, and removed again, and that
    removal locked config, which was unlocked."""
    device = escrowed_device
    files = {name: device.vault_path(name) / "f" for name in ("config", "notes")}
    for name, path in files.items():
        path.write_text(name)
    release = json.loads(device.release("config").read_bytes())
    release["keys"][0].update(vault="notes", key_identifier=device.state.sealed("notes")["key_identifier"])
    relabelled = device.work / "relabelled.json"
    relabelled.write_text(json.dumps(release))
    config_key = bytes.fromhex(device.state.sealed("config")["key_identifier"])
    home = fscrypt.mountpoint_of(str(files["config"]))
    before = sealed_records(device)

    def refused() -> str:
        _, err = device.cli("device", "unlock", "--release", str(relabelled), "--root", str(device.root),
                            *device.device, code=status_codes.ERROR)
        assert f"error: {relabelled}: the key released for vault `notes` is not the key its entry names" in err, err
        assert "internal error" not in err
        return err

    refused()
    assert {name: path.read_text() for name, path in files.items()} == {"config": "config", "notes": "notes"}, \
        "config's key is still in the kernel"
    device.cli("device", "lock", "--state-dir", str(device.state.root), "--root", str(device.root))
    refused()
    assert fscrypt.key_status(home, config_key) is KeyStatus.ABSENT, "nothing was added to the kernel"
    assert sealed_records(device) == before, "nothing was sealed"


def state_files(device) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in device.state.root.rglob("*") if path.is_file()}


def interrupted_rotation(device) -> Path:
    """`device rotate notes` killed once its new key is in: the pending record the next unlock recovers."""
    killed = subprocess.run([sys.executable, "-m", "vaultpolicy", "device", "rotate", "notes", "--root", str(device.root),
                             *device.device], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "VAULTPOLICY_CRASH_AT": "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    return device.state.root / "rotating" / "notes.json"


def wrapped_short_key(device, release: dict) -> dict:
    """config's entry with the controller's own wrapping (for this TPM, under the verified PCRs) around a
    32-byte key: an escrow blob or a controller that is wrong, which only the TPM can open."""
    from controller.release import _duplicate
    from enforcer.attest import require_storage_parent
    from enforcer.tpm import policy_digest

    identity = json.loads((device.work / "identity.json").read_bytes())
    parent = require_storage_parent(base64.b64decode(identity["storage_public"]), "the storage key")
    pcrs = {int(i): bytes.fromhex(v) for i, v in release["pcrs"].items()}
    public, duplicate, seed = _duplicate(parent, bytearray(os.urandom(32)), policy_digest(release["bank"], tuple(pcrs), pcrs))
    return {**release["keys"][0], **{name: base64.b64encode(value).decode() for name, value in
                                     (("public", public), ("duplicate", duplicate), ("seed", seed))}}


def test_a_bad_release_file_is_named_and_changes_nothing(escrowed_device):
    """Bank `md5`, PCR 99 and a 32-byte key ended in internal errors (exit 70), and the file was read
    only after the interrupted rotations were recovered and the TPM opened."""
    device = escrowed_device
    good = json.loads(device.release("config").read_bytes())
    entry = good["keys"][0]
    pending = interrupted_rotation(device)
    before = state_files(device)
    bad = device.work / "bad.json"
    for why, content in {
        "field `bank` is `md5`, not a PCR bank (sha1, sha256, sha384, sha512)": {**good, "bank": "md5"},
        "field `pcrs` names PCR `99`; PCRs are 0 to 23": {**good, "pcrs": {**good["pcrs"], "99": "00" * 32}},
        "field `pcrs` names PCR `07`": {**good, "pcrs": {**good["pcrs"], "07": good["pcrs"]["7"]}},
        "PCR 7 of field `pcrs` has 20 bytes; a sha256 value has 32": {**good, "pcrs": {**good["pcrs"], "7": "00" * 20}},
        "the `key_identifier` of vault `config` has 32 bytes; a key identifier has 16":
            {**good, "keys": [{**entry, "key_identifier": "ab" * 32}]},
        "vault `config` is released twice": {**good, "keys": [entry, entry]},
        "field `keys` must be a non-empty list of objects": {**good, "keys": []},
        "is for device `gw-2`, this is `gw-1`": {**good, "device_id": "gw-2"},
    }.items():
        bad.write_text(json.dumps(content))
        _, err = device.cli("device", "unlock", "--release", str(bad), "--root", str(device.root), *device.device,
                            code=status_codes.ERROR)
        assert err.startswith(f"error: {bad}") and why in err, err
        assert "internal error" not in err and "Traceback" not in err
        assert state_files(device) == before, f"{why}: the state dir changed"
    assert pending.exists(), "the interrupted rotation waits for a command that runs"

    # a 32-byte key is only seen once the TPM has unsealed it: after the recovery, before the kernel
    config = device.state.sealed_path("config").read_bytes()
    bad.write_text(json.dumps({**good, "keys": [wrapped_short_key(device, good)]}))
    _, err = device.cli("device", "unlock", "--release", str(bad), "--root", str(device.root), *device.device,
                        code=status_codes.ERROR)
    assert f"error: {bad}: the key released for vault `config` has 32 bytes, an fscrypt key has 64: nothing was " \
        "unlocked" in err, err
    assert device.state.sealed_path("config").read_bytes() == config
