"""Issue 6, must show 1, as one test on real swtpm + loop-mounted ext4 through the real commands:
seal → firmware update (a bound PCR changes) → unlock refused, report names the PCR → policy gains the
new value → nonce → quote → verify → release → unlock → re-seal → reboot (measurements replayed) →
local unlock works.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest

from compiler.plan import Attestation, Device, Plan, Seal, Vault, encode_plan, format_time
from compiler.signing import PLAN_PAYLOAD_TYPE, generate_key, public_key_pem, sign
from enforcer.attest import AttestationTpm
from enforcer.report import split_signed_report
from enforcer.state import StateDir
from vaultpolicy import status_codes
from vaultpolicy.cli import main

pytestmark = pytest.mark.device
PCRS = (0, 2, 4, 7)
UPDATED_BOOTLOADER = b"bootloader v2"
PUBLISHED_SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "report.schema.json").read_text())


def plan_for(version: int, allowed: dict[int, list[str]], escrow_public: str, persist: str) -> Plan:
    now = datetime.now(timezone.utc)
    return Plan(
        plan_version=version, issued_at=format_time(now - timedelta(minutes=1)),
        expires=format_time(now + timedelta(days=1)), source_sha256="00" * 32,
        device=Device(persist=persist, escrow_public_key=escrow_public),
        vaults=(Vault(name="config", path=f"{persist}/vault/config", encryption="aes-256-xts", limit_bytes=0,
                      seal=Seal(bank="sha256", pcrs=PCRS, attestation="boot"), on_remove="retain"),),
        attestations=(Attestation(name="boot", bank="sha256", pcrs=PCRS,
                                  allowed={str(i): tuple(v) for i, v in allowed.items()},
                                  nonce_bytes=32, nonce_lifetime_seconds=300, escrow_required=True),),
    )


def pcr_values(tcti: str) -> dict[int, str]:
    with AttestationTpm(tcti) as tpm:
        return {i: v.hex() for i, v in tpm.read_pcrs("sha256", PCRS)[1].items()}


def report_vault(cli, root: Path, device: list[str], tmp_path: Path, code: int) -> dict:
    """Run `device report` and return the (only) vault's entry."""
    cli("device", "report", "--root", str(root), "-o", str(tmp_path / "report.json"), *device, code=code)
    report_bytes, _ = split_signed_report((tmp_path / "report.json").read_bytes())
    report = json.loads(report_bytes)
    jsonschema.validate(report, PUBLISHED_SCHEMA)  # what a controller of another make would check
    return report["vaults"][0]


def test_firmware_update_release_and_local_unlock(swtpm, ext4_image, tmp_path, capsys):
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
    signing_key = generate_key()
    (tmp_path / "plan.pub").write_bytes(public_key_pem(signing_key.public_key()))
    cli("controller", "escrow-keygen", "-o", str(tmp_path / "escrow.key"))
    escrow_public = (tmp_path / "escrow.key.pub").read_text().strip()

    def publish(plan: Plan) -> tuple[str, str]:
        payload = encode_plan(plan)
        (tmp_path / f"plan{plan.plan_version}.json").write_bytes(payload)
        (tmp_path / f"plan{plan.plan_version}.signed").write_bytes(sign(PLAN_PAYLOAD_TYPE, payload, [signing_key]).to_bytes())
        return str(tmp_path / f"plan{plan.plan_version}.json"), str(tmp_path / f"plan{plan.plan_version}.signed")

    # provisioning: measured boot, apply (creates, seals and escrows the key), enrol, escrow acknowledged
    swtpm.measure_boot()
    before_update = pcr_values(swtpm.tcti)
    plan1, signed1 = publish(plan_for(1, {i: [v] for i, v in before_update.items()}, escrow_public, persist))
    cli("device", "apply", signed1, "--trust", str(tmp_path / "plan.pub"), "--root", str(root), "--device-id", "gw-1", *device)
    secret = root / persist.lstrip("/") / "vault" / "config" / "db.conf"
    secret.write_text("password=hunter2")
    (tmp_path / "identity.json").write_text(cli("device", "identity", "--device-id", "gw-1", *device))
    cli("controller", "enroll", str(tmp_path / "identity.json"), *store)
    assert report_vault(cli, root, device, tmp_path, status_codes.DRIFT)["reason"] == "escrow-missing"  # S9
    cli("device", "escrow-deposit", "-o", str(tmp_path / "deposit.json"), *device)  # the blobs, signed by the TPM
    cli("controller", "escrow", str(tmp_path / "deposit.json"), "--ack-dir", str(tmp_path / "acks"), *store)
    cli("device", "escrow-ack", str(tmp_path / "acks" / "gw-1.config.ack.json"), "--state-dir", str(state.root))
    assert report_vault(cli, root, device, tmp_path, status_codes.SUCCESS)["condition"] == "Ready"

    # firmware update: reboot with a new boot loader measured into PCR 4
    cli("device", "lock", "--state-dir", str(state.root), "--root", str(root))
    swtpm.restart()
    swtpm.measure_boot()
    from enforcer.tpm import Tpm

    with Tpm(swtpm.tcti) as tpm:
        tpm.extend_pcr(4, "sha256", UPDATED_BOOTLOADER)
    refused = cli("device", "unlock", "--root", str(root), *device, code=status_codes.ERROR)
    assert "config" in refused and "PCR sha256:4 changed" in refused
    with pytest.raises(OSError):
        secret.read_text()

    config = report_vault(cli, root, device, tmp_path, status_codes.DRIFT)
    assert (config["condition"], config["reason"], config["mismatching_pcrs"]) == ("Locked", "pcr-mismatch", [4])
    assert config["escrow"] == "acknowledged"
    fleet = cli("controller", "drift", str(tmp_path / "report.json"), *store, code=status_codes.DRIFT)
    assert "gw-1: plan 1" in fleet and "config: Locked (pcr-mismatch): PCR sha256:4 changed since sealing\n" in fleet

    # the old policy refuses the new measurement and releases nothing
    nonce = cli("controller", "nonce", "--device-id", "gw-1", "--plan", plan1, *store).strip()
    cli("device", "quote", "--nonce", nonce, "-o", str(tmp_path / "quote-old.json"), *device)
    cli("controller", "verify-quote", str(tmp_path / "quote-old.json"), "--plan", plan1, *store, code=status_codes.ERROR)
    cli("controller", "release", str(tmp_path / "quote-old.json"), "--escrow-key", str(tmp_path / "escrow.key"),
        "-o", str(tmp_path / "nothing.json"), *store, code=status_codes.ERROR)
    assert not (tmp_path / "nothing.json").exists()

    # the policy gains the new value; a fresh quote verifies and the key is released
    after_update = pcr_values(swtpm.tcti)
    allowed = {i: sorted({before_update[i], after_update[i]}) for i in PCRS}
    plan2, _ = publish(plan_for(2, allowed, escrow_public, persist))
    nonce = cli("controller", "nonce", "--device-id", "gw-1", "--plan", plan2, *store).strip()
    cli("device", "quote", "--nonce", nonce, "-o", str(tmp_path / "quote.json"), *device)
    cli("controller", "verify-quote", str(tmp_path / "quote.json"), "--plan", plan2, *store)
    cli("controller", "release", str(tmp_path / "quote.json"), "--escrow-key", str(tmp_path / "escrow.key"),
        "-o", str(tmp_path / "release.json"), *store)
    tampered = json.loads((tmp_path / "release.json").read_bytes())
    tampered["device_id"] = "gw-2"
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    cli("device", "unlock", "--release", str(tmp_path / "tampered.json"), "--root", str(root), *device, code=status_codes.ERROR)
    with pytest.raises(OSError):
        secret.read_text()
    released = cli("device", "unlock", "--release", str(tmp_path / "release.json"), "--root", str(root), *device)
    assert "vault config: unlocked (controller-release)" in released  # device id: the one `identity` recorded
    assert secret.read_text() == "password=hunter2"
    cli("device", "status", "--root", str(root), *device)  # the refused unlock no longer shows as drift
    assert report_vault(cli, root, device, tmp_path, status_codes.SUCCESS)["last_unlock"]["method"] == "controller-release"

    # reboot into the updated firmware: the re-sealed key unlocks locally, no controller involved
    cli("device", "lock", "--state-dir", str(state.root), "--root", str(root))
    swtpm.restart()
    swtpm.measure_boot()
    with Tpm(swtpm.tcti) as tpm:
        tpm.extend_pcr(4, "sha256", UPDATED_BOOTLOADER)
    assert pcr_values(swtpm.tcti) == after_update
    cli("device", "unlock", "--root", str(root), *device)
    assert secret.read_text() == "password=hunter2"
    assert report_vault(cli, root, device, tmp_path, status_codes.SUCCESS)["last_unlock"]["method"] == "tpm-sealed"

    # a reboot into a boot loader no policy allows: the old release file is refused by the TPM (it once
    # unlocked the vault again and re-sealed the key to the bad PCRs, so later bad boots unlocked locally)
    cli("device", "lock", "--state-dir", str(state.root), "--root", str(root))
    swtpm.restart()
    swtpm.measure_boot()
    with Tpm(swtpm.tcti) as tpm:
        tpm.extend_pcr(4, "sha256", b"bootloader v3, never approved")
    sealed = state.sealed_path("config").read_bytes()
    capsys.readouterr()
    assert main(["device", "unlock", "--release", str(tmp_path / "release.json"), "--root", str(root), *device]) == status_codes.ERROR
    assert "opens only in the boot state the controller verified: PCR sha256:4 differs" in capsys.readouterr().err
    with pytest.raises(OSError):
        secret.read_text()
    assert state.sealed_path("config").read_bytes() == sealed, "not re-sealed to the unapproved state"
    cli("device", "unlock", "--root", str(root), *device, code=status_codes.ERROR)  # nor unlocked locally
