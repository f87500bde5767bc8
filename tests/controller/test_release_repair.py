"""A damaged sealed key record is what a controller release repairs: `device unlock` names the file and
points to `--release`; the released key is checked against the key the vault directory is encrypted
under, added, and sealed anew, so the next boot unlocks locally (real swtpm, loop-mounted ext4)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from compiler.plan import Attestation, Device, Plan, Seal, Vault, encode_plan, format_time
from compiler.signing import PLAN_PAYLOAD_TYPE, generate_key, public_key_pem, sign
from enforcer.attest import AttestationTpm
from enforcer.state import StateDir
from vaultpolicy import status_codes
from vaultpolicy.cli import main

pytestmark = pytest.mark.device
PCRS = (0, 2, 4, 7)


def escrowed_plan(allowed: dict[int, str], escrow_public: str, persist: str) -> Plan:
    now = datetime.now(timezone.utc)
    return Plan(
        plan_version=1, issued_at=format_time(now - timedelta(minutes=1)), expires=format_time(now + timedelta(days=1)),
        source_sha256="00" * 32, device=Device(persist=persist, escrow_public_key=escrow_public),
        vaults=tuple(Vault(name=name, path=f"{persist}/vault/{name}", encryption="aes-256-xts", limit_bytes=0,
                           seal=Seal(bank="sha256", pcrs=PCRS, attestation="boot"), on_remove="retain")
                     for name in ("config", "notes")),
        attestations=(Attestation(name="boot", bank="sha256", pcrs=PCRS, allowed={str(i): (v,) for i, v in allowed.items()},
                                  nonce_bytes=32, nonce_lifetime_seconds=300, escrow_required=True),),
    )


def test_a_release_repairs_a_damaged_sealed_record(swtpm, ext4_image, tmp_path, capsys):
    def cli(*argv: str, code: int = status_codes.SUCCESS) -> str:
        capsys.readouterr()
        result = main(list(argv))
        out, err = capsys.readouterr()
        assert result == code, f"{argv[:2]} -> {result}\n{out}\n{err}"
        return out

    root = Path(ext4_image).parent
    persist = "/" + Path(ext4_image).name
    state = StateDir(tmp_path / "state")
    device = ["--state-dir", str(state.root), "--tpm", swtpm.tcti]
    store = ["--store", str(tmp_path / "controller.db")]
    key = generate_key()
    (tmp_path / "plan.pub").write_bytes(public_key_pem(key.public_key()))
    cli("controller", "escrow-keygen", str(tmp_path / "escrow.key"))
    swtpm.measure_boot()
    with AttestationTpm(swtpm.tcti) as tpm:
        values = {i: v.hex() for i, v in tpm.read_pcrs("sha256", PCRS)[1].items()}
    payload = encode_plan(escrowed_plan(values, (tmp_path / "escrow.key.pub").read_text().strip(), persist))
    (tmp_path / "plan.json").write_bytes(payload)
    (tmp_path / "plan.signed").write_bytes(sign(PLAN_PAYLOAD_TYPE, payload, [key]).to_bytes())
    cli("device", "apply", str(tmp_path / "plan.signed"), "--trust", str(tmp_path / "plan.pub"), "--root", str(root),
        "--device-id", "gw-1", *device)
    secret = root / persist.lstrip("/") / "vault" / "notes" / "notes.txt"
    secret.write_text("meeting at noon")
    (tmp_path / "identity.json").write_text(cli("device", "identity", "--device-id", "gw-1", *device))
    cli("controller", "enroll", str(tmp_path / "identity.json"), *store)
    cli("device", "escrow-deposit", "-o", str(tmp_path / "deposit.json"), *device)
    cli("controller", "escrow", str(tmp_path / "deposit.json"), "--ack-dir", str(tmp_path / "acks"), *store)

    identifier = state.sealed("notes")["key_identifier"]
    cli("device", "lock", "--state-dir", str(state.root), "--root", str(root))
    state.sealed_path("notes").write_text("{")
    refused = cli("device", "unlock", "--root", str(root), *device, code=status_codes.ERROR)
    assert f"vault notes: failed (state-damaged, VP1206): the sealed key record {state.sealed_path('notes')}" in refused
    assert "vault config: unlocked" in refused and "hint: restore it from a backup, or have the controller release" in refused

    nonce = cli("controller", "nonce", "--device", "gw-1", "--plan", str(tmp_path / "plan.json"), *store).strip()
    cli("device", "quote", "--nonce", nonce, "-o", str(tmp_path / "quote.json"), *device)
    cli("controller", "verify-quote", str(tmp_path / "quote.json"), "--plan", str(tmp_path / "plan.json"), *store)
    cli("controller", "release", str(tmp_path / "quote.json"), "--vault", "notes", "--escrow-key",
        str(tmp_path / "escrow.key"), "-o", str(tmp_path / "release.json"), *store)
    released = cli("device", "unlock", "--release", str(tmp_path / "release.json"), "--root", str(root), *device)
    assert "vault notes: unlocked" in released
    assert secret.read_text() == "meeting at noon"
    assert state.sealed("notes")["key_identifier"] == identifier, "the record is whole again"

    cli("device", "lock", "--state-dir", str(state.root), "--root", str(root))
    cli("device", "unlock", "--root", str(root), *device)  # locally, through the TPM
    assert secret.read_text() == "meeting at noon"
    assert json.loads(cli("device", "status", "--root", str(root), "--json", *device))["matches"]
