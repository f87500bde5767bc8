"""The attestation commands end to end through `vaultpolicy.cli.main`, on a real swtpm."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest

from compiler.plan import Attestation, Device, Plan, Seal, Vault, encode_plan, format_time, plan_digest
from compiler.signing import PLAN_PAYLOAD_TYPE, generate_key, sign
from enforcer import escrow, fscrypt
from enforcer.attest import AttestationTpm
from enforcer.release import Release, open_release
from enforcer.state import StateDir
from vaultpolicy import status_codes
from vaultpolicy.cli import main

PCRS = (0, 2, 4, 7)


def make_plan(allowed: dict[int, str], escrow_public: str) -> Plan:
    now = datetime.now(timezone.utc)
    return Plan(
        plan_version=1, issued_at=format_time(now), expires=format_time(now + timedelta(days=1)), source_sha256="00" * 32,
        device=Device(persist="/persist", allow_unmeasured_boot=True, escrow_public_key=escrow_public),
        vaults=(Vault(name="config", path="/persist/vault/config", encryption="aes-256-xts", limit_bytes=0,
                      seal=Seal(bank="sha256", pcrs=PCRS, attestation="boot"), on_remove="retain"),),
        attestations=(Attestation(name="boot", bank="sha256", pcrs=PCRS, allowed={str(i): (v,) for i, v in allowed.items()},
                                  nonce_bytes=16, nonce_lifetime_seconds=300, escrow_required=True),),
    )


@pytest.fixture
def world(make_tpm, tmp_path):
    tpm = make_tpm()
    tpm.measure_boot()
    with AttestationTpm(tpm.tcti) as device:
        _, values = device.read_pcrs("sha256", PCRS)
    assert main(["controller", "escrow-keygen", "-o", str(tmp_path / "escrow.key")]) == 0
    escrow_public = (tmp_path / "escrow.key.pub").read_text().strip()
    plan = make_plan({i: v.hex() for i, v in values.items()}, escrow_public)
    payload = encode_plan(plan)
    (tmp_path / "plan.json").write_bytes(payload)
    state = StateDir(tmp_path / "state")
    state.commit_plan(sign(PLAN_PAYLOAD_TYPE, payload, [generate_key()]).to_bytes(), 1, plan_digest(payload))
    common = ["--state-dir", str(state.root), "--tpm", tpm.tcti, "--device-id", "gw-1"]
    return tpm, tmp_path, state, common


def run_ok(capsys, argv, code=status_codes.SUCCESS) -> str:
    capsys.readouterr()
    assert main(argv) == code, capsys.readouterr().err
    return capsys.readouterr().out


def test_enrol_escrow_quote_verify_release(world, capsys):
    tpm, tmp, state, common = world
    store = ["--store", str(tmp / "controller.db")]
    plan = ["--plan", str(tmp / "plan.json")]
    (tmp / "id.json").write_text(run_ok(capsys, ["device", "identity", *common]))
    assert "enrolled device `gw-1`" in run_ok(capsys, ["controller", "enroll", str(tmp / "id.json"), *store])

    # the device escrows a key (as the enforcer does when it creates one) and signs the deposit; the
    # controller stores it and acknowledges
    raw = bytes(range(64))
    controller_pub = escrow.load_escrow_public((tmp / "escrow.key.pub").read_text(), "escrow.key.pub")
    blob_path = escrow.record_escrow(state.root, escrow.wrap_key(controller_pub, "gw-1", "config", fscrypt.key_identifier(raw), raw))
    capsys.readouterr()
    assert main(["controller", "escrow", str(blob_path), "--ack-dir", str(tmp / "acks"), *store]) == status_codes.ERROR
    assert "an escrow blob as the device wrote it, not a deposit the device signed" in capsys.readouterr().err
    assert not list((tmp / "acks").glob("*"))  # a bare blob proves nothing: anyone can make one
    run_ok(capsys, ["device", "escrow-deposit", "-o", str(tmp / "deposit.json"), *common])
    stored = run_ok(capsys, ["controller", "escrow", str(tmp / "deposit.json"), "--ack-dir", str(tmp / "acks"), *store])
    assert f"escrow of `gw-1` vault `config` stored; acknowledgement {tmp / 'acks' / 'gw-1.config.ack.json'}" in stored
    again = run_ok(capsys, ["controller", "escrow", str(tmp / "deposit.json"), "--ack-dir", str(tmp / "acks"), *store])
    assert "escrow of `gw-1` vault `config` already held" in again
    assert escrow.escrow_state(state.root, "config") == "pending"
    run_ok(capsys, ["device", "escrow-ack", str(tmp / "acks" / "gw-1.config.ack.json"), "--state-dir", str(state.root)])
    assert escrow.escrow_state(state.root, "config") == "acknowledged"

    nonce = run_ok(capsys, ["controller", "nonce", "--device-id", "gw-1", *plan, *store]).strip()
    assert len(bytes.fromhex(nonce)) == 16
    run_ok(capsys, ["device", "quote", "--nonce", nonce, "-o", str(tmp / "quote.json"), *common])
    verified = json.loads(run_ok(capsys, ["controller", "verify-quote", str(tmp / "quote.json"), "--json", *plan, *store]))
    assert verified["verified"] is True
    refused = run_ok(capsys, ["controller", "verify-quote", str(tmp / "quote.json"), "--json", *plan, *store], status_codes.ERROR)
    assert json.loads(refused)["reason"] == "nonce-used"

    run_ok(capsys, ["controller", "release", str(tmp / "quote.json"), "--escrow-key", str(tmp / "escrow.key"),
                    "-o", str(tmp / "release.json"), *store])
    release = Release.from_bytes((tmp / "release.json").read_bytes())
    assert bytes(open_release(tpm.tcti, release, "gw-1")["config"][1]) == raw
    capsys.readouterr()
    assert main(["controller", "release", str(tmp / "quote.json"), "--escrow-key", str(tmp / "escrow.key"),
                 "-o", str(tmp / "again.json"), *store]) == status_codes.ERROR
    assert "already released" in capsys.readouterr().err and not (tmp / "again.json").exists()


def verified_release_quote(world, capsys) -> list[str]:
    """Enrol, escrow `config`, quote and verify: the `controller release` command for that quote, without -o."""
    _, tmp, _, common = world
    store = ["--store", str(tmp / "controller.db")]
    plan = ["--plan", str(tmp / "plan.json")]
    (tmp / "id.json").write_text(run_ok(capsys, ["device", "identity", *common]))
    run_ok(capsys, ["controller", "enroll", str(tmp / "id.json"), *store])
    raw = bytes(range(64))
    public = escrow.load_escrow_public((tmp / "escrow.key.pub").read_text(), "escrow.key.pub")
    escrow.record_escrow(tmp / "state", escrow.wrap_key(public, "gw-1", "config", fscrypt.key_identifier(raw), raw))
    run_ok(capsys, ["device", "escrow-deposit", "-o", str(tmp / "deposit.json"), *common])
    run_ok(capsys, ["controller", "escrow", str(tmp / "deposit.json"), "--ack-dir", str(tmp / "acks"), *store])
    nonce = run_ok(capsys, ["controller", "nonce", "--device-id", "gw-1", *plan, *store]).strip()
    run_ok(capsys, ["device", "quote", "--nonce", nonce, "-o", str(tmp / "quote.json"), *common])
    run_ok(capsys, ["controller", "verify-quote", str(tmp / "quote.json"), *plan, *store])
    return ["controller", "release", str(tmp / "quote.json"), "--escrow-key", str(tmp / "escrow.key"), *store]


def test_release_refuses_an_escrow_key_others_can_read(world, capsys):
    """As ssh refuses such a private key: the mode is a mistake to fix, not to go on with. Nothing is
    released (the quote is not spent), and with the mode fixed the same quote releases."""
    tmp = world[1]
    release = [*verified_release_quote(world, capsys), "-o", str(tmp / "release.json")]
    for mode in (0o644, 0o640, 0o620):
        (tmp / "escrow.key").chmod(mode)
        capsys.readouterr()
        assert main(release) == status_codes.ERROR
        assert capsys.readouterr().err == (f"error: escrow key `{tmp / 'escrow.key'}` is open to others (mode {mode:04o}): a "
                                           f"private key must be its owner's alone\n  = help: chmod 600 {tmp / 'escrow.key'}\n")
        assert not (tmp / "release.json").exists()
    (tmp / "escrow.key").chmod(0o600)
    run_ok(capsys, release)
    assert Release.from_bytes((tmp / "release.json").read_bytes()).keys[0].vault == "config"


def test_no_file_the_controller_writes_holds_a_raw_vault_key(world, capsys):
    """The store keeps escrow blobs wrapped for the escrow key, the release file a duplicate wrapped for
    the device's TPM, the acknowledgement a digest: the key appears in none of them, in any encoding,
    and no temporary file is left beside them."""
    tmp = world[1]
    run_ok(capsys, [*verified_release_quote(world, capsys), "-o", str(tmp / "release.json")])
    raw = bytes(range(64))
    encodings = [raw, raw.hex().encode(), raw.hex().upper().encode(), base64.b64encode(raw), base64.b64encode(raw)[:-4]]
    written = [tmp / "controller.db", tmp / "release.json", *(tmp / "acks").iterdir()]
    assert [path for path in written if any(form in path.read_bytes() for form in encodings)] == []
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".") or p.name.endswith("-journal")) == []


def test_a_release_file_that_cannot_be_written_spends_no_quote(world, capsys, small_disk):
    """The quote was marked released before the file was written: on a full disk the release was lost
    and the device had to quote again."""
    tpm, tmp, _, _ = world
    release = [*verified_release_quote(world, capsys), "-o", str(small_disk.path / "release.json")]
    small_disk.fill()
    capsys.readouterr()
    assert main(release) == status_codes.ERROR
    assert capsys.readouterr().err == f"error: cannot write `{small_disk.path / 'release.json'}`: No space left on device\n"
    assert sorted(p.name for p in small_disk.path.iterdir()) == [".filler"]  # no temporary file left either
    small_disk.free()
    run_ok(capsys, release)
    released = Release.from_bytes((small_disk.path / "release.json").read_bytes())
    assert bytes(open_release(tpm.tcti, released, "gw-1")["config"][1]) == bytes(range(64))


def test_every_refused_pcr_is_named_on_stderr_and_in_the_json_answer(world, capsys):
    tpm, tmp, state, common = world
    store = ["--store", str(tmp / "controller.db")]
    plan = ["--plan", str(tmp / "plan.json")]
    (tmp / "id.json").write_text(run_ok(capsys, ["device", "identity", *common]))
    run_ok(capsys, ["controller", "enroll", str(tmp / "id.json"), *store])
    tpm.extend(4, b"firmware update")
    tpm.extend(7, b"new secure boot db")
    nonce = run_ok(capsys, ["controller", "nonce", "--device-id", "gw-1", *plan, *store]).strip()
    run_ok(capsys, ["device", "quote", "--nonce", nonce, "-o", str(tmp / "quote.json"), *common])
    capsys.readouterr()
    assert main(["controller", "verify-quote", str(tmp / "quote.json"), *plan, "--json", *store]) == status_codes.ERROR
    out, err = capsys.readouterr()
    assert "error: refused (pcr-not-allowed): PCRs not allowed by attestation `boot`: PCR 4 = " in err and "; PCR 7 = " in err and "Traceback" not in err
    answer = json.loads(out)
    assert (answer["verified"], answer["reason"], answer["pcrs"]) == (False, "pcr-not-allowed", [4, 7])


def test_bad_inputs_are_clear_errors(world, capsys, tmp_path):
    _, tmp, _, common = world
    (tmp_path / "junk.json").write_text("{not json")
    capsys.readouterr()
    assert main(["controller", "enroll", str(tmp_path / "junk.json"), "--store", str(tmp / "c.db")]) == status_codes.ERROR
    assert "junk.json: not JSON" in capsys.readouterr().err
    assert main(["device", "quote", "--nonce", "abcd", *common]) == status_codes.ERROR
    assert "--nonce is 2 bytes" in capsys.readouterr().err


def test_a_policy_given_to_enroll_or_drift_is_named_for_what_it_is(store, tmp_path, capsys):
    """`controller enroll kiosk.vpol` said "not JSON" where other commands say "is a policy (.vpol)",
    and drift said "rejected kiosk.vpol: kiosk.vpol: not JSON", the file named twice."""
    policy, junk = tmp_path / "kiosk.vpol", tmp_path / "junk.json"
    policy.write_text('# the kiosk\nvault kiosk { path "/persist/kiosk" }\n')
    junk.write_text("{not json")
    store = ["--store", str(store.path)]
    assert main(["controller", "enroll", str(policy), *store]) == status_codes.ERROR
    assert capsys.readouterr().err == f"error: `{policy}` is a policy (.vpol), not a `vaultpolicy.identity.v2` document\n"
    assert main(["controller", "drift", str(policy), str(junk), *store]) == status_codes.ERROR
    rejected = capsys.readouterr().out.splitlines()[-2:]
    assert rejected == [f"rejected {policy}: it is a policy (.vpol), not a `vaultpolicy.signed-report.v1` document",
                        f"rejected {junk}: not JSON (expecting property name enclosed in double quotes at line 1 column 2)"]
    # another of vaultpolicy's documents is named for what it is ("not a `vaultpolicy.identity.v2` document")
    plan, quote = tmp_path / "plan.json", tmp_path / "quote.json"
    plan.write_text('{"schema_version": "3", "plan_version": 1}')
    quote.write_text('{"format": "vaultpolicy.quote.v1"}')
    assert main(["controller", "enroll", str(plan), *store]) == status_codes.ERROR
    assert capsys.readouterr().err == f"error: `{plan}` is an unsigned plan, not a `vaultpolicy.identity.v2` document\n"
    assert main(["controller", "drift", str(quote), *store]) == status_codes.ERROR
    assert capsys.readouterr().out.splitlines()[-1] == (f"rejected {quote}: it is a quote (`device quote`), not a "
                                                        "`vaultpolicy.signed-report.v1` document")
    # another version of the very format is said to be one, not named as if it were another document
    older = tmp_path / "identity-v1.json"
    older.write_text('{"format": "vaultpolicy.identity.v1"}')
    assert main(["controller", "enroll", str(older), *store]) == status_codes.ERROR
    assert capsys.readouterr().err == (f"error: {older}: a `vaultpolicy.identity.v1` document; this vaultpolicy "
                                       "reads `vaultpolicy.identity.v2`\n  = help: make it again with this version of "
                                       "vaultpolicy\n")
    newer = tmp_path / "identity-v9.json"
    newer.write_text('{"format": "vaultpolicy.identity.v9"}')
    assert main(["controller", "enroll", str(newer), *store]) == status_codes.ERROR
    assert capsys.readouterr().err.endswith("  = help: upgrade vaultpolicy here to the version that made it\n")


@pytest.mark.parametrize("nonce,said", [
    ("abc", "has an odd number of hex digits (3): each byte is two"),
    ("ab cd", "has ` ` at character 3, which is not a hex digit"),
    ("0x" + "ab" * 16, "has `x` at character 2, which is not a hex digit"),
])
def test_a_nonce_that_is_not_hex_says_what_is_wrong_with_it(world, capsys, nonce, said):
    """`--nonce abc` (or a quote whose `nonce` is `abc`) said "is not hex": it is hex, of odd length."""
    tmp = world[1]
    release = [*verified_release_quote(world, capsys), "-o", str(tmp / "release.json")]
    quote = json.loads((tmp / "quote.json").read_text())
    (tmp / "quote.json").write_text(json.dumps({**quote, "nonce": nonce}))
    verify = ["controller", "verify-quote", str(tmp / "quote.json"), "--plan", str(tmp / "plan.json"),
              "--store", str(tmp / "controller.db")]
    for argv in (verify, release):
        capsys.readouterr()
        assert main(argv) == status_codes.ERROR
        assert capsys.readouterr().err == f"error: {tmp / 'quote.json'}: field `nonce` {said}\n"
    assert main(["device", "quote", "--nonce", nonce, "-o", str(tmp / "q.json"), *world[3]]) == status_codes.ERROR
    assert capsys.readouterr().err.startswith(f"error: --nonce `{nonce}` {said}\n  = help: give the nonce")


def test_a_replayed_release_and_an_edited_report_show_their_reason(world, capsys):
    """"keys were already released for this quote" and an edited report's rejection showed no reason,
    where every refusal of the device shows `(reason, VPnnnn)`."""
    tmp, common = world[1], world[3]
    release = verified_release_quote(world, capsys)
    run_ok(capsys, [*release, "-o", str(tmp / "release.json")])
    assert main([*release, "-o", str(tmp / "again.json")]) == status_codes.ERROR
    assert capsys.readouterr().err == "error: refused (quote-used): keys were already released for this quote (a replayed quote?)\n"
    (tmp / "root").mkdir()
    run_ok(capsys, ["device", "report", "--root", str(tmp / "root"), "-o", str(tmp / "report.json"), *common], status_codes.DRIFT)
    signed = json.loads((tmp / "report.json").read_text())
    report = json.loads(base64.b64decode(signed["report"]))
    report["vaults"][0]["condition"] = "Ready"
    signed["report"] = base64.b64encode(json.dumps(report).encode()).decode()
    (tmp / "edited.json").write_text(json.dumps(signed))
    fleet = run_ok(capsys, ["controller", "drift", str(tmp / "edited.json"), "--store", str(tmp / "controller.db")],
                   status_codes.ERROR)
    assert fleet.splitlines()[-1] == (f"rejected {tmp / 'edited.json'}: refused (report-altered): the report was changed "
                                      "after the device signed it")


def test_report_and_fleet_drift(world, capsys):
    _, tmp, state, common = world
    store = ["--store", str(tmp / "controller.db")]
    (tmp / "id.json").write_text(run_ok(capsys, ["device", "identity", *common]))
    run_ok(capsys, ["controller", "enroll", str(tmp / "id.json"), *store])
    nonce = run_ok(capsys, ["controller", "nonce", "--device-id", "gw-1", "--plan", str(tmp / "plan.json"), *store]).strip()
    (tmp / "root").mkdir()
    run_ok(capsys, ["device", "report", "--nonce", nonce, "--root", str(tmp / "root"), "-o", str(tmp / "report.json"), *common],
           status_codes.DRIFT)
    text = run_ok(capsys, ["controller", "drift", str(tmp / "report.json"), "--require-nonce", *store], status_codes.DRIFT)
    assert "gw-1: plan 1" in text and "config: Drifted (path-missing)" in text and "[escrow missing]" in text
    # the docs' example: the same verified report rendered again, as markdown (the same statement)
    markdown = run_ok(capsys, ["controller", "drift", str(tmp / "report.json"), "--format", "markdown", *store], status_codes.DRIFT)
    assert "| gw-1 | 1 | config | Drifted | path-missing |" in markdown and "replayed" not in markdown
    # a new report over the same nonce (a new quote, at a later TPM clock) is a replay
    run_ok(capsys, ["device", "report", "--nonce", nonce, "--root", str(tmp / "root"), "-o", str(tmp / "again.json"), *common],
           status_codes.DRIFT)
    data = json.loads(run_ok(capsys, ["controller", "drift", str(tmp / "again.json"), "--format", "json", *store],
                             status_codes.ERROR))
    assert data["devices"] == [] and "this one is a replay" in data["rejected"][0][1]


def test_verify_quote_with_the_wrong_plan_then_the_right_one(world, capsys):
    tpm, tmp, state, common = world
    store = ["--store", str(tmp / "controller.db")]
    plan = ["--plan", str(tmp / "plan.json")]
    (tmp / "id.json").write_text(run_ok(capsys, ["device", "identity", *common]))
    run_ok(capsys, ["controller", "enroll", str(tmp / "id.json"), *store])
    nonce = run_ok(capsys, ["controller", "nonce", "--device-id", "gw-1", *plan, *store]).strip()
    run_ok(capsys, ["device", "quote", "--nonce", nonce, "-o", str(tmp / "quote.json"), *common])
    wrong = make_plan({i: "00" * 32 for i in PCRS}, "")
    (tmp / "wrong.json").write_bytes(encode_plan(wrong))
    capsys.readouterr()
    assert main(["controller", "verify-quote", str(tmp / "quote.json"), "--plan", str(tmp / "wrong.json"), *store]) == status_codes.ERROR
    assert main(["controller", "verify-quote", str(tmp / "quote.json"), *plan, *store]) == status_codes.ERROR
    retry = capsys.readouterr().err.splitlines()[-2:]
    assert "by a verification of this same quote that failed (pcr-not-allowed: PCRs not allowed" in retry[0]
    assert "replayed" not in retry[0] and "vaultpolicy controller nonce --device-id gw-1" in retry[1]


def test_escrow_keygen_refuses_to_replace_a_key(tmp_path, capsys):
    key = tmp_path / "escrow.key"
    assert main(["controller", "escrow-keygen", "-o", str(key)]) == 0
    before = key.read_bytes()
    capsys.readouterr()
    assert main(["controller", "escrow-keygen", "-o", str(key)]) == status_codes.ERROR
    assert f"`{key}` and `{key}.pub` already exist\n" in capsys.readouterr().err
    assert key.read_bytes() == before
    assert main(["controller", "escrow-keygen", "-o", str(key), "--force"]) == 0
    assert key.read_bytes() != before


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("ak_public_pem", "garbage", "is not a PEM public key"),
        ("ak_public_pem", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "is not a PEM public key"),
        ("ak_name", "zz", "SHA-256 TPM name"),
        ("ak_name", "000b" + "00" * 8, "SHA-256 TPM name"),
        ("storage_public", "!!", "is not valid base64"),
        ("storage_public", "AAAA", "is not the public area of this project's storage primary"),
        ("storage_public", lambda real: _flip_byte(real, 9), "is not the public area of this project's storage primary"),
        ("storage_public", lambda real: _flip_byte(real, -1), "holds a point that is not on the P-256 curve"),
    ],
)
def test_enroll_refuses_a_malformed_identity(make_tpm, tmp_path, capsys, field, value, reason):
    tpm = make_tpm()
    state = tmp_path / "state"
    assert main(["device", "identity", "--state-dir", str(state), "--tpm", tpm.tcti, "--device-id", "gw-1",
                 "-o", str(tmp_path / "identity.json")]) == 0
    identity = json.loads((tmp_path / "identity.json").read_text())
    identity[field] = value(identity[field]) if callable(value) else value
    (tmp_path / "bad.json").write_text(json.dumps(identity))
    capsys.readouterr()
    db = str(tmp_path / "controller.db")
    assert main(["controller", "enroll", str(tmp_path / "bad.json"), "--store", db]) == status_codes.ERROR
    assert reason in capsys.readouterr().err
    # The real identity still enrols afterwards: nothing was recorded for the bad one.
    assert main(["controller", "enroll", str(tmp_path / "identity.json"), "--store", db]) == 0


def _flip_byte(b64_text: str, position: int) -> str:
    """The base64 of the decoded bytes with one bit flipped at `position` (9: in the object attributes)."""
    data = bytearray(base64.b64decode(b64_text))
    data[position] ^= 1
    return base64.b64encode(bytes(data)).decode()
