"""What `device unlock --release FILE` refuses, and that a refusal changes nothing (real swtpm,
loop-mounted ext4, the real CLI): an entry whose labels name another vault than the key it carries."""

from __future__ import annotations

import json

import pytest

from enforcer import fscrypt
from enforcer.fscrypt import KeyStatus
from vaultpolicy import status_codes

pytestmark = pytest.mark.device


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
