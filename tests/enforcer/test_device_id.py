"""The device's id is one recorded fact (STATE/host.json): the id `device apply` (or `device identity`) was
given is the default of every device command, and a --device-id that contradicts it is refused naming both
(real swtpm, loop-mounted ext4, the CLI in a subprocess)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from enforcer import escrow
from enforcer.report import split_signed_report
from enforcer.state import StateDir
from vp_helpers import REPO, make_plan, vault

pytestmark = pytest.mark.device


def vaultpolicy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaultpolicy", *args], capture_output=True, text=True, cwd=REPO)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def attest(device):
    """The options of the attestation commands (they take no --root, but `report`)."""
    return ["--state-dir", str(device.state), "--tpm", device.tcti]


def test_the_id_apply_was_given_is_every_commands_default(device, attest):
    """`--device-id lab-1` was used once and forgotten: the same plan again without it was refused
    (wrong-target) and status said the last plan was REFUSED; rotate escrowed the new key as the host
    name, so the next deposit was refused whole; report signed the host name."""
    controller = escrow.generate_escrow_key()
    plan = make_plan([vault("config")], targets=["lab-1"], escrow_public_key=escrow.escrow_public_text(controller))
    ok(device.apply(plan, "--device-id", "lab-1"))
    assert StateDir(device.state).host().device_id == "lab-1"

    again = device.apply(plan)  # no --device-id
    assert again.returncode == 0, again.stdout + again.stderr
    status = device.cli("device", "status")
    assert status.returncode == 0 and "REFUSED" not in status.stdout, status.stdout

    ok(device.cli("device", "rotate", "config"))
    assert escrow.EscrowBlob.from_bytes((device.state / "escrow" / "config.json").read_bytes()).device_id == "lab-1"

    store = ["--store", str(device.work / "controller.db")]
    (device.work / "identity.json").write_text(ok(vaultpolicy("device", "identity", *attest)))
    assert json.loads((device.work / "identity.json").read_text())["device_id"] == "lab-1"
    ok(vaultpolicy("controller", "enroll", str(device.work / "identity.json"), *store))
    # with -o it says what it wrote, as compile and sign do (it printed nothing)
    deposited = ok(vaultpolicy("device", "escrow-deposit", *attest, "-o", str(device.work / "deposit.json")))
    assert deposited == f"wrote {device.work / 'deposit.json'}: the escrow deposit of device `lab-1`, for " \
        "`vaultpolicy controller escrow`\n"
    ok(vaultpolicy("controller", "escrow", str(device.work / "deposit.json"), "--ack-dir", str(device.work / "acks"),
                   *store))
    ok(vaultpolicy("device", "escrow-ack", str(device.work / "acks" / "lab-1.config.ack.json"), attest[0], attest[1]))

    report = ok(vaultpolicy("device", "report", *attest, "--root", str(device.root)))
    assert json.loads(split_signed_report(report.strip().encode())[0])["device_id"] == "lab-1"
    written = device.work / "report.json"
    said = ok(vaultpolicy("device", "report", *attest, "--root", str(device.root), "-o", str(written)))
    assert said == f"wrote {written}: the signed report of device `lab-1`, 0 of 1 vault drifting, for " \
        "`vaultpolicy controller drift`\n" and split_signed_report(written.read_bytes())
    quote = ok(vaultpolicy("device", "quote", "--nonce", "ab" * 16, *attest))
    assert json.loads(quote)["device_id"] == "lab-1"


def test_a_device_id_other_than_the_recorded_one_is_refused_naming_both(device, attest):
    ok(device.apply(make_plan([vault("config")]), "--device-id", "lab-1"))
    host = (device.state / "host.json").read_bytes()
    conditions = StateDir(device.state).conditions()
    refusal = f"error: --device-id `lab-2` is not this device's id: `lab-1` (recorded in {device.state}/host.json)"
    for command in (["apply", str(device.sign(make_plan([vault("config")], version=2))), "--trust", str(device.trust)],
                    ["rotate"], ["unlock"], ["unlock", "--release", str(device.work / "release.json")]):
        if "--release" in command:  # a release is checked for its device before anything else
            (device.work / "release.json").write_text(json.dumps({
                "format": "vaultpolicy.release.v2", "device_id": "lab-2", "quote_sha256": "00" * 32, "bank": "sha256",
                "pcrs": {"0": "00" * 32}, "keys": [{"vault": "config", "key_identifier": "00" * 16, "public": "",
                                                    "duplicate": "", "seed": ""}]}))
        refused = device.cli("device", *command, "--device-id", "lab-2")
        assert refused.returncode == 1 and refused.stderr.startswith(refusal), (command, refused.stderr)
        assert "= help: omit --device-id: the recorded id is the default for every device command" in refused.stderr
    for command in (["identity"], ["quote", "--nonce", "ab" * 16], ["report", "--root", str(device.root)],
                    ["escrow-deposit"]):
        refused = vaultpolicy("device", *command, *attest, "--device-id", "lab-2")
        assert refused.returncode == 1 and refused.stderr.startswith(refusal), (command, refused.stderr)
    assert (device.state / "host.json").read_bytes() == host and StateDir(device.state).conditions() == conditions
    assert ok(device.cli("device", "status"))  # nothing was forked: the device matches its plan


def test_an_id_is_recorded_once_given_or_bound_and_the_host_name_stands_in_until_then(device, attest):
    """An apply given no id records none while nothing names the device; `device identity` then records
    the one it is given, which later applies match targets against. A plan naming targets binds the id
    it matched, the host name included."""
    hostname = socket.gethostname()
    ok(device.apply(make_plan([vault("config")])))
    assert StateDir(device.state).host().device_id is None
    wrong = device.apply(make_plan([vault("config")], version=2, targets=["lab-1"]))
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert f"plan targets `lab-1`, not device `{hostname}` (its host name: no --device-id given or recorded)" \
        in wrong.stderr, wrong.stderr

    ok(vaultpolicy("device", "identity", *attest, "--device-id", "lab-1"))
    assert StateDir(device.state).host().device_id == "lab-1"
    ok(device.apply(make_plan([vault("config")], version=2, targets=["lab-1"])))
    refused = device.apply(make_plan([vault("config")], version=3), "--device-id", "lab-2")
    assert refused.returncode == 1 and "is not this device's id: `lab-1`" in refused.stderr, refused.stderr

    fresh = device.work / "fresh"
    plan = device.sign(make_plan([vault("other", path="/persist/other")], targets=[hostname]), "host.signed")
    ok(vaultpolicy("device", "apply", str(plan), "--trust", str(device.trust), "--state-dir", str(fresh), "--root",
                   str(device.root), "--tpm", device.tcti))
    assert StateDir(fresh).host().device_id == hostname  # the plan named it: it is this device's now


def test_an_id_recorded_by_an_older_enforcer_is_read_and_moved_into_the_host_record(device, attest):
    """Before, `device identity` recorded the id in STATE/attest/identity.json and host.json held the root
    and the TPM only: such a state dir keeps its id, and the next apply moves it into host.json."""
    ok(device.apply(make_plan([vault("config")])))
    (device.state / "host.json").write_text(json.dumps({"root": str(device.root), "tpm": device.tcti}))
    legacy = device.state / "attest" / "identity.json"
    legacy.parent.mkdir(exist_ok=True)
    legacy.write_text(json.dumps({"device_id": "gw-1"}))

    quote = ok(vaultpolicy("device", "quote", "--nonce", "ab" * 16, *attest))
    assert json.loads(quote)["device_id"] == "gw-1"
    refused = vaultpolicy("device", "quote", "--nonce", "ab" * 16, *attest, "--device-id", "gw-2")
    assert refused.returncode == 1, refused.stderr
    assert f"is not this device's id: `gw-1` (recorded in {legacy})" in refused.stderr

    ok(device.apply(make_plan([vault("config")])))
    assert StateDir(device.state).host().device_id == "gw-1" and not legacy.exists()
    assert json.loads(ok(vaultpolicy("device", "quote", "--nonce", "ab" * 16, *attest)))["device_id"] == "gw-1"


def test_a_deposit_holding_a_blob_made_under_another_id_says_so_and_how_to_mend_it(device, attest):
    """Before the id was recorded, rotate escrowed a key as the host name while `device identity` enrolled
    another id, and the controller refused the next deposit whole (`a blob of device vm signed by kiosk-1`),
    with no hint. The device now sees it first and says which vault and what to do."""
    controller = escrow.generate_escrow_key()
    plan = make_plan([vault("config")], escrow_public_key=escrow.escrow_public_text(controller))
    ok(device.apply(plan, "--device-id", "vm"))
    # what an older enforcer left: host.json without the id, the id `device identity` recorded elsewhere
    (device.state / "host.json").write_text(json.dumps({"root": str(device.root), "tpm": device.tcti}))
    (device.state / "attest").mkdir(exist_ok=True)
    (device.state / "attest" / "identity.json").write_text(json.dumps({"device_id": "kiosk-1"}))

    refused = vaultpolicy("device", "escrow-deposit", *attest, "-o", str(device.work / "deposit.json"))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: the escrow blob of vault `config` names device `vm`, not this device's id "
                                     "`kiosk-1` (made before the id was recorded); nothing was deposited"), refused.stderr
    assert "= help: give the vault a new key, escrowed as `kiosk-1`: `vaultpolicy device rotate config`" in refused.stderr
    assert not (device.work / "deposit.json").exists()

    ok(device.cli("device", "rotate", "config"))
    assert escrow.EscrowBlob.from_bytes((device.state / "escrow" / "config.json").read_bytes()).device_id == "kiosk-1"
    assert StateDir(device.state).host().device_id == "kiosk-1"  # rotate escrowed under it: recorded in host.json
    ok(vaultpolicy("device", "escrow-deposit", *attest, "-o", str(device.work / "deposit.json")))
