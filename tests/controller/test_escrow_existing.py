"""S9 for vaults that already exist: a plan that adds escrow, or a new escrow key, escrows the keys the
device has, on a real swtpm and a loop-mounted ext4 through the real commands. Only key creation and
rotation escrowed a key before: vaults made under a plan without escrow stayed `escrow-missing` for
good, `device escrow-deposit` had nothing to send, and a later firmware update left them locked for good.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from compiler.plan import Attestation, Device, Plan, Seal, Vault, encode_plan, format_time
from compiler.signing import PLAN_PAYLOAD_TYPE, generate_key, public_key_pem, sign
from enforcer import escrow
from enforcer.attest import AttestationTpm
from enforcer.report import split_signed_report
from enforcer.state import StateDir
from vaultpolicy import status_codes
from vaultpolicy.cli import main

pytestmark = pytest.mark.device
PCRS = (0, 2, 4, 7)


class Gateway:
    """Device `gw-1` on `swtpm` with its persist partition `ext4_image`, a controller with its store, and
    the plans they share; `cli` runs the real CLI in-process and returns stdout."""

    def __init__(self, swtpm, ext4_image: str, tmp_path: Path, capsys):
        self.swtpm, self.work, self.capsys = swtpm, tmp_path, capsys
        self.root, self.persist = Path(ext4_image).parent, "/" + Path(ext4_image).name
        self.state = StateDir(tmp_path / "state")
        self.device = ["--state-dir", str(self.state.root), "--tpm", swtpm.tcti]
        self.store = ["--store", str(tmp_path / "controller.db")]
        self.signing_key = generate_key()
        (tmp_path / "plan.pub").write_bytes(public_key_pem(self.signing_key.public_key()))
        swtpm.measure_boot()
        with AttestationTpm(swtpm.tcti) as tpm:
            self.measured = {i: v.hex() for i, v in tpm.read_pcrs("sha256", PCRS)[1].items()}

    def cli(self, *argv: str, code: int = status_codes.SUCCESS) -> str:
        self.capsys.readouterr()
        result = main(list(argv))
        out, err = self.capsys.readouterr()
        assert result == code, f"{argv[:2]} -> {result}\n{out}\n{err}"
        return out + err

    def escrow_key(self, name: str) -> str:
        """A controller escrow key pair `name` (+ `.pub`); the public key as a plan holds it."""
        self.cli("controller", "escrow-keygen", "-o", str(self.work / name))
        return (self.work / f"{name}.pub").read_text().strip()

    def publish(self, version: int, escrow_public: str | None, vaults: tuple[tuple[str, tuple[int, ...], str | None], ...],
                allowed: dict[int, list[str]] | None = None) -> str:
        """Plan `version` with `vaults` (name, PCRs, attestation) written as planN.json and planN.signed."""
        now = datetime.now(timezone.utc)
        plan = Plan(
            plan_version=version, issued_at=format_time(now - timedelta(minutes=1)),
            expires=format_time(now + timedelta(days=1)), source_sha256="00" * 32,
            device=Device(persist=self.persist, escrow_public_key=escrow_public),
            vaults=tuple(Vault(name=name, path=f"{self.persist}/vault/{name}", encryption="aes-256-xts", limit_bytes=0,
                               seal=Seal(bank="sha256", pcrs=pcrs, attestation=attestation), on_remove="retain")
                         for name, pcrs, attestation in vaults),
            attestations=(Attestation(name="boot", bank="sha256", pcrs=PCRS,
                                      allowed={str(i): tuple(v) for i, v in
                                               (allowed or {i: [v] for i, v in self.measured.items()}).items()},
                                      nonce_bytes=32, nonce_lifetime_seconds=300,
                                      escrow_required=escrow_public is not None),),
        )
        payload = encode_plan(plan)
        (self.work / f"plan{version}.json").write_bytes(payload)
        (self.work / f"plan{version}.signed").write_bytes(sign(PLAN_PAYLOAD_TYPE, payload, [self.signing_key]).to_bytes())
        return str(self.work / f"plan{version}.signed")

    def apply(self, signed: str, *extra: str, code: int = status_codes.SUCCESS) -> str:
        return self.cli("device", "apply", signed, "--trust", str(self.work / "plan.pub"), "--root", str(self.root),
                        "--device-id", "gw-1", *extra, *self.device, code=code)

    def extend(self, pcr: int, data: bytes) -> None:
        """Measure `data` into the PCR, as a firmware update's boot does (the keys in the kernel stay)."""
        from enforcer.tpm import Tpm

        with Tpm(self.swtpm.tcti) as tpm:
            tpm.extend_pcr(pcr, "sha256", data)

    def enroll(self) -> None:
        (self.work / "identity.json").write_text(self.cli("device", "identity", "--device-id", "gw-1", *self.device))
        self.cli("controller", "enroll", str(self.work / "identity.json"), *self.store)

    def deposit_and_acknowledge(self) -> str:
        """Deposit every blob the device holds and record the acknowledgements; what the controller said."""
        self.cli("device", "escrow-deposit", "-o", str(self.work / "deposit.json"), *self.device)
        said = self.cli("controller", "escrow", str(self.work / "deposit.json"), "--ack-dir", str(self.work / "acks"),
                        *self.store)
        self.cli("device", "escrow-ack", *map(str, sorted((self.work / "acks").glob("gw-1.*.ack.json"))),
                 "--state-dir", str(self.state.root))
        return said

    def report(self, code: int) -> dict[str, dict]:
        self.cli("device", "report", "--root", str(self.root), "-o", str(self.work / "report.json"), *self.device, code=code)
        return {v["name"]: v for v in json.loads(split_signed_report((self.work / "report.json").read_bytes())[0])["vaults"]}

    def vault_path(self, name: str) -> Path:
        return self.root / self.persist.lstrip("/") / "vault" / name

    def sealed_key(self, name: str) -> bytes:
        from enforcer.tpm import SealedBlob, Tpm

        with Tpm(self.swtpm.tcti) as tpm:
            return bytes(tpm.unseal(SealedBlob.from_json(json.dumps(self.state.sealed(name)["blob"]))))

    def release(self, plan_json: str, escrow_key: str) -> str:
        nonce = self.cli("controller", "nonce", "--device-id", "gw-1", "--plan", plan_json, *self.store).strip()
        self.cli("device", "quote", "--nonce", nonce, "-o", str(self.work / "quote.json"), *self.device)
        self.cli("controller", "verify-quote", str(self.work / "quote.json"), "--plan", plan_json, *self.store)
        (self.work / "release.json").unlink(missing_ok=True)
        self.cli("controller", "release", str(self.work / "quote.json"), "--escrow-key", str(self.work / escrow_key),
                 "-o", str(self.work / "release.json"), *self.store)
        return str(self.work / "release.json")


@pytest.fixture
def gw(swtpm, ext4_image, tmp_path, capsys) -> Gateway:
    return Gateway(swtpm, ext4_image, tmp_path, capsys)


BOTH = (("config", PCRS, "boot"), ("notes", PCRS, "boot"))


def test_a_plan_that_adds_escrow_escrows_the_existing_keys_and_a_firmware_update_is_recovered(gw):
    gw.apply(gw.publish(1, None, BOTH))
    (gw.vault_path("config") / "db.conf").write_text("password=hunter2")
    gw.enroll()
    assert "holds no escrow blob" in gw.cli("device", "escrow-deposit", *gw.device, code=status_codes.ERROR)
    assert {v["escrow"] for v in gw.report(status_codes.SUCCESS).values()} == {"not-required"}

    public = gw.escrow_key("escrow.key")
    applied = gw.apply(gw.publish(2, public, BOTH))
    for name in ("config", "notes"):
        assert f"vault {name}: escrow-key (the key is not escrowed: it is wrapped for the plan's escrow key)" in applied
        assert f"vault {name}: key escrowed: wrapped for the controller's escrow key, pending" in applied
        blob = escrow.EscrowBlob.from_bytes((gw.state.root / "escrow" / f"{name}.json").read_bytes())
        private = escrow.load_escrow_private((gw.work / "escrow.key").read_bytes(), "escrow.key")
        assert bytes(escrow.unwrap_key(private, blob)) == gw.sealed_key(name)
    pending = gw.report(status_codes.DRIFT)
    assert {(v["condition"], v["reason"], v["escrow"]) for v in pending.values()} == {("Drifted", "escrow-missing", "pending")}

    said = gw.deposit_and_acknowledge()
    assert "escrow of `gw-1` vault `config` stored" in said and "escrow of `gw-1` vault `notes` stored" in said
    ready = gw.report(status_codes.SUCCESS)
    assert {(v["condition"], v["escrow"]) for v in ready.values()} == {("Ready", "acknowledged")}
    fleet = gw.cli("controller", "drift", str(gw.work / "report.json"), *gw.store)
    assert "escrow-unconfirmed" not in fleet and "Drifted" not in fleet
    again = json.loads(gw.apply(str(gw.work / "plan2.signed"), "--json"))
    assert again["steps"] == [] and again["failed"] == []

    # what S9 is about: a firmware update, and the key comes back from the controller
    gw.cli("device", "lock", "--state-dir", str(gw.state.root), "--root", str(gw.root))
    gw.swtpm.restart()
    gw.swtpm.measure_boot()
    gw.extend(4, b"bootloader v2")
    refused = gw.cli("device", "unlock", "--root", str(gw.root), *gw.device, code=status_codes.ERROR)
    assert "PCR sha256:4 changed" in refused
    # sealed to an attestation and escrowed: the hint names the release (a vault without either gets no such hint)
    assert "the controller can release the vault's escrowed key after verifying a quote" in refused
    with AttestationTpm(gw.swtpm.tcti) as tpm:
        updated = tpm.read_pcrs("sha256", (4,))[1][4].hex()
    gw.publish(3, public, BOTH, {**{i: [v] for i, v in gw.measured.items()}, 4: [gw.measured[4], updated]})
    released = gw.cli("device", "unlock", "--release", gw.release(str(gw.work / "plan3.json"), "escrow.key"),
                      "--root", str(gw.root), *gw.device)
    assert "vault config: unlocked (controller-release)" in released and "vault notes: unlocked (controller-release)" in released
    assert (gw.vault_path("config") / "db.conf").read_text() == "password=hunter2"


def test_a_new_escrow_key_rewraps_the_keys_and_one_that_does_not_unseal_is_named_until_it_does(gw):
    """A new escrow key in the plan: each key is wrapped for it while it unseals (the controller keeps the
    earlier blob beside the new one). A key whose PCRs changed is named with a hint, keeps its earlier
    blob, is reported `escrow-missing`, and is escrowed by the apply after the device is back in its state."""
    vaults = (("config", PCRS, "boot"), ("logs", (0, 2, 4), None))
    first = gw.escrow_key("first.key")
    gw.apply(gw.publish(1, first, vaults))
    gw.enroll()
    gw.deposit_and_acknowledge()
    earlier_config_blob = (gw.state.root / "escrow" / "config.json").read_bytes()

    gw.extend(7, b"new secure boot db")  # config is sealed to PCR 7, logs is not
    second = gw.escrow_key("second.key")
    applied = gw.apply(gw.publish(2, second, vaults), code=status_codes.ERROR)
    assert "vault logs: escrow-key (the key is escrowed for another escrow key than the plan's: it is wrapped " \
        "for the plan's escrow key)" in applied and "vault logs: key escrowed" in applied
    assert "vault config: escrow-key FAILED: vault `config`: its key cannot be escrowed now: PCR sha256:7 changed " \
        "since it was sealed, so the TPM does not unseal it; its escrow stays as it was; apply the plan again once " \
        "the device runs in the state the key is sealed to" in applied
    assert "`vaultpolicy device rotate config` gives it a new key" in applied
    assert (gw.state.root / "escrow" / "config.json").read_bytes() == earlier_config_blob  # kept: the first key opens it
    assert "vault/config" not in gw.state.conditions()  # status and gate do not wait for the controller's copy
    report = gw.report(status_codes.DRIFT)
    assert (report["config"]["condition"], report["config"]["reason"], report["config"]["escrow"]) == (
        "Drifted", "escrow-missing", "missing")
    assert "for the plan's escrow key" in report["config"]["message"]
    assert report["logs"]["escrow"] == "pending"

    # a reboot into the state config's key is sealed to; the same plan again escrows it, then nothing is left
    gw.cli("device", "lock", "--state-dir", str(gw.state.root), "--root", str(gw.root))
    gw.swtpm.restart()
    gw.swtpm.measure_boot()
    gw.cli("device", "unlock", "--root", str(gw.root), *gw.device)
    applied = gw.apply(str(gw.work / "plan2.signed"))
    assert "vault config: escrow-key (the key is escrowed for another escrow key than the plan's" in applied
    assert "vault logs" not in applied
    assert json.loads(gw.apply(str(gw.work / "plan2.signed"), "--json"))["steps"] == []
    said = gw.deposit_and_acknowledge()
    assert "vault `config` stored beside the other blob held for this key" in said
    assert gw.report(status_codes.SUCCESS)["config"]["escrow"] == "acknowledged"
    gw.cli("device", "lock", "--state-dir", str(gw.state.root), "--root", str(gw.root))
    released = gw.cli("device", "unlock", "--release", gw.release(str(gw.work / "plan2.json"), "second.key"),
                      "--root", str(gw.root), *gw.device)
    assert "vault config: unlocked (controller-release)" in released
