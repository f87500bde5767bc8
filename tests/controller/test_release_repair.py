"""A damaged sealed key record is what a controller release repairs: `device unlock` names the file and
points to `--release`; the released key is checked against the key the vault directory is encrypted
under, added, and sealed anew, so the next boot unlocks locally (real swtpm, loop-mounted ext4)."""

from __future__ import annotations

import json

import pytest

from vaultpolicy import status_codes

pytestmark = pytest.mark.device


def test_a_release_repairs_a_damaged_sealed_record(escrowed_device):
    device = escrowed_device
    cli, state, root = device.cli, device.state, str(device.root)
    secret = device.vault_path("notes") / "notes.txt"
    secret.write_text("meeting at noon")

    identifier = state.sealed("notes")["key_identifier"]
    cli("device", "lock", "--state-dir", str(state.root), "--root", root)
    state.sealed_path("notes").write_text("{")
    refused, _ = cli("device", "unlock", "--root", root, *device.device, code=status_codes.ERROR)
    assert f"vault notes: failed (state-damaged, VP1206): the sealed key record {state.sealed_path('notes')}" in refused
    assert "vault config: unlocked" in refused and "hint: restore it from a backup, or have the controller release" in refused

    released, _ = cli("device", "unlock", "--release", str(device.release("notes")), "--root", root, *device.device)
    assert "vault notes: unlocked" in released
    assert secret.read_text() == "meeting at noon"
    assert state.sealed("notes")["key_identifier"] == identifier, "the record is whole again"

    cli("device", "lock", "--state-dir", str(state.root), "--root", root)
    cli("device", "unlock", "--root", root, *device.device)  # locally, through the TPM
    assert secret.read_text() == "meeting at noon"
    assert json.loads(cli("device", "status", "--root", root, "--json", *device.device)[0])["matches"]


def test_a_release_unlock_accounts_for_every_vault_and_fails_while_one_stays_locked(escrowed_device):
    """`unlock --release` exited 0 while vaults the release did not hold stayed locked (status right after:
    DRIFT). It now unlocks those with their sealed keys, as a plain unlock does, names every vault, and
    exits 1 when one stays locked."""
    device = escrowed_device
    cli, state, root = device.cli, device.state, str(device.root)
    files = {name: device.vault_path(name) / "f" for name in ("config", "notes")}
    for name, path in files.items():
        path.write_text(name)
    cli("device", "lock", "--state-dir", str(state.root), "--root", root)

    out, _ = cli("device", "unlock", "--release", str(device.release("config")), "--root", root, *device.device)
    assert "vault config: unlocked (controller-release): re-sealed to the current PCRs" in out, out
    assert "vault notes: unlocked\n" in out + "\n", "the vault the release does not hold was not unsealed"
    assert {name: path.read_text() for name, path in files.items()} == {"config": "config", "notes": "notes"}
    cli("device", "status", "--root", root, *device.device)  # exit 0: matches

    cli("device", "lock", "--state-dir", str(state.root), "--root", root)
    state.sealed_path("notes").write_text("{")
    out, _ = cli("device", "unlock", "--release", str(device.release("config")), "--root", root, "--json",
                 *device.device, code=status_codes.ERROR)
    outcomes = {r["vault"]: (r["outcome"], r["reason"]) for r in json.loads(out)["unlock"]}
    assert outcomes == {"config": ("unlocked", "controller-release"), "notes": ("failed", "state-damaged")}
    assert files["config"].read_text() == "config"
