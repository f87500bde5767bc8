"""Quotes from a real swtpm, verified by the controller; every negative of issue 6 (must show 2) is refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess

import pytest

from controller import nonce as nonces
from controller.errors import AttestationRejected
from controller.quote_verify import parse_attest, verify_quote, went_backwards
from controller.release import accept_deposit, release_keys
from enforcer import escrow, fscrypt
from enforcer.attest import AK_HANDLE, AttestationTpm, Quote, qualifying_data, storage_parent_binding

ATTESTED_PCRS = (0, 2, 4, 7)  # as in conftest: what measure_boot() extends
NOW = 1_800_000_000


def enroll(store, tpm, device_id):
    with AttestationTpm(tpm.tcti) as device:
        identity = device.identity(device_id)
    store.enroll(identity.device_id, identity.ak_public_pem, identity.ak_name, identity.storage_public, NOW)
    return identity


def quote(tpm, identity, nonce, pcrs=ATTESTED_PCRS, bank="sha256"):
    with AttestationTpm(tpm.tcti) as device:
        return device.quote(identity.device_id, "release", nonce, storage_parent_binding(identity.storage_public), bank, pcrs)


def allowed_now(tpm, bank="sha256"):
    with AttestationTpm(tpm.tcti) as device:
        _, values = device.read_pcrs(bank, ATTESTED_PCRS)
    return {i: [v.hex()] for i, v in values.items()}


@pytest.fixture
def device(make_tpm, store, make_policy):
    tpm = make_tpm()
    tpm.measure_boot()
    return tpm, enroll(store, tpm, "gw-1"), make_policy(allowed_now(tpm))


def refused(store, reason, made, policy, now):
    """The quote is refused for `reason`, and no key can be released on it."""
    with pytest.raises(AttestationRejected) as caught:
        verify_quote(store, made, policy, now)
    assert caught.value.reason == reason, caught.value.message
    with pytest.raises(AttestationRejected) as release_refused:
        release_keys(store, made, ["config"], escrow.generate_escrow_key(), now)
    assert release_refused.value.reason in ("quote-not-verified", "quote-used")
    return caught.value


def test_identity_is_persistent_and_stable(make_tpm):
    tpm = make_tpm()
    with AttestationTpm(tpm.tcti) as device:
        first = device.identity("gw-1")
    tpm.restart()
    with AttestationTpm(tpm.tcti) as device:
        assert device.identity("gw-1") == first
    assert first.ak_public_pem.startswith("-----BEGIN PUBLIC KEY-----")


def test_attestation_key_is_a_persistent_restricted_p256_signing_key(make_tpm, tmp_path):
    """Read back by tpm2-tools, not by our code: a primary re-derived from the seed would give the same
    identity after a restart, so only the TPM's handle list shows the AK was made persistent. The
    storage key releases are wrapped to is the owner hierarchy's storage primary that tpm2-tools derives
    from the same template (nothing else is made persistent)."""
    tpm = make_tpm()
    with AttestationTpm(tpm.tcti) as device:
        identity = device.identity("gw-1")

    def tool(*argv: str) -> str:
        done = subprocess.run([*argv, "-T", tpm.tcti], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    persistent = tool("tpm2_getcap", "handles-persistent")
    assert re.findall(r"0x[0-9a-fA-F]+", persistent) == [f"{AK_HANDLE:#x}"]
    ak = dict(re.findall(r"^(\S[^:\n]*):\n  value: (.*)$", tool("tpm2_readpublic", "-c", f"{AK_HANDLE:#x}"), re.MULTILINE))
    assert (set(ak["attributes"].split("|")), ak["type"], ak["curve-id"], ak["scheme"], ak["scheme-halg"]) == (
        {"fixedtpm", "fixedparent", "sensitivedataorigin", "userwithauth", "restricted", "sign"},
        "ecc", "NIST p256", "ecdsa", "sha256")
    tool("tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb", "-c", str(tmp_path / "primary.ctx"),
         "-a", "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda")
    tool("tpm2_readpublic", "-c", str(tmp_path / "primary.ctx"), "-o", str(tmp_path / "primary.pub"))
    assert (tmp_path / "primary.pub").read_bytes() == identity.storage_public


def test_fresh_quote_verifies_once(device, store):
    tpm, identity, policy = device
    nonce = nonces.issue(store, "gw-1", policy, NOW)
    assert len(nonce) == policy.nonce_bytes
    made = quote(tpm, identity, nonce)
    verified = verify_quote(store, Quote.from_bytes(made.to_bytes()), policy, NOW + 1, {"config": "boot"})
    assert verified.device_id == "gw-1" and sorted(verified.pcrs) == list(ATTESTED_PCRS)
    escrow_key, raw = escrow.generate_escrow_key(), bytes(64)
    blob = escrow.wrap_key(escrow_key.public_key(), "gw-1", "config", fscrypt.key_identifier(raw), raw)
    accept_deposit(store, escrow.sign_deposit(tpm.tcti, "gw-1", [blob.to_bytes()], "sha256", ATTESTED_PCRS), NOW)
    assert release_keys(store, made, ["config"], escrow_key, NOW + 2).keys  # the genuine release
    replay = refused(store, "nonce-used", made, policy, NOW + 3)  # the replayed quote gets nothing more
    assert replay.message == "nonce was used at 2027-01-15T08:00:01Z by a verification of this same quote that succeeded"
    assert "get a new one with `vaultpolicy controller nonce --device-id gw-1`" in replay.hint


def test_a_failed_verification_uses_the_nonce_and_says_so(device, store, make_policy):
    # an operator passes the wrong plan: the nonce is spent (single use), and the retry with the right
    # plan says what spent it instead of suspecting a replay
    tpm, identity, policy = device
    made = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))
    wrong_plan = make_policy({7: ["00" * 32]})
    refused(store, "pcr-not-allowed", made, wrong_plan, NOW + 1)
    retry = refused(store, "nonce-used", made, policy, NOW + 2)
    assert retry.message.startswith("nonce was used at 2027-01-15T08:00:01Z by a verification of this same quote that failed "
                                    "(pcr-not-allowed: PCRs not allowed by attestation `boot`: the policy allows no value for PCR 0")
    assert "vaultpolicy controller nonce --device-id gw-1" in retry.hint
    other = quote(tpm, identity, made.nonce)  # a second quote over the spent nonce
    assert "by a verification of another quote that failed" in refused(store, "nonce-used", other, policy, NOW + 3).message


def test_nonce_from_another_device(device, store, make_tpm):
    tpm, identity, policy = device
    other_tpm = make_tpm()
    enroll(store, other_tpm, "gw-2")
    nonce = nonces.issue(store, "gw-2", policy, NOW)
    refused(store, "nonce-wrong-device", quote(tpm, identity, nonce), policy, NOW)


def test_expired_and_unknown_nonce(device, store):
    tpm, identity, policy = device
    nonce = nonces.issue(store, "gw-1", policy, NOW)
    made = quote(tpm, identity, nonce)
    refused(store, "nonce-expired", made, policy, NOW + policy.nonce_lifetime_seconds)
    refused(store, "nonce-unknown", quote(tpm, identity, bytes(32)), policy, NOW)


def test_a_nonce_serves_only_the_attestation_it_was_issued_for_and_its_lifetime(device, store):
    """A nonce issued for a lax requirement (a day to live) does not pass for a strict one, and a nonce
    verified against a requirement whose lifetime is now shorter expires by the shorter one."""
    tpm, identity, policy = device
    lax = policy.model_copy(update={"name": "lax", "nonce_lifetime_seconds": 86_400})
    made = quote(tpm, identity, nonces.issue(store, "gw-1", lax, NOW))
    error = refused(store, "nonce-wrong-attestation", made, policy, NOW + 1)
    assert error.message == "nonce was issued for attestation `lax`, not `boot`" and "--attestation boot" in error.hint
    shortened = policy.model_copy(update={"nonce_lifetime_seconds": 60})
    made = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))  # lives 300 s as issued
    assert refused(store, "nonce-expired", made, shortened, NOW + 120).message == "nonce expired 60s ago"


def test_altered_pcr_value(device, store):
    tpm, identity, policy = device
    made = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))
    altered = dataclasses.replace(made, pcrs={**made.pcrs, 7: bytes(32)})
    error = refused(store, "pcr-digest", altered, policy, NOW)
    assert "altered" in error.message


def test_pcr_values_shifted_between_neighbours_are_refused_at_reading(device, store):
    """Moving a byte from one value to the next keeps their concatenation, so the quoted digest still
    matched: each value must be one digest of the bank. A bank or index no TPM has is refused too."""
    from vaultpolicy.errors import InputError

    tpm, identity, policy = device
    made = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))
    first, second = sorted(made.pcrs)[:2]
    shifted = {**made.pcrs, first: made.pcrs[first] + made.pcrs[second][:1], second: made.pcrs[second][1:]}
    with pytest.raises(InputError, match=rf"PCR {first} of field `pcrs` has 33 bytes; a sha256 value has 32"):
        Quote.from_bytes(dataclasses.replace(made, pcrs=shifted).to_bytes(), "q.json")
    for field, value, message in (("bank", "md5", r"field `bank` is `md5`, not a PCR bank \(sha1, sha256"),
                                  ("pcrs", {"99": "00" * 32}, "field `pcrs` names PCR `99`; PCRs are 0 to 23"),
                                  ("pcrs", {"\u00b2": "00" * 32}, "field `pcrs` names PCR `\u00b2`")):  # "²".isdigit()
        obj = {**json.loads(made.to_bytes()), field: value}
        with pytest.raises(InputError, match=message):
            Quote.from_obj(obj, "q.json")


def test_altered_signature_and_attest(device, store):
    tpm, identity, policy = device
    made = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))
    signature = bytearray(made.signature)
    signature[-1] ^= 1
    refused(store, "bad-signature", dataclasses.replace(made, signature=bytes(signature)), policy, NOW)
    attest = bytearray(made.attest)
    attest[-1] ^= 1
    refused(store, "bad-signature", dataclasses.replace(made, attest=bytes(attest)), policy, NOW)
    # none of that used the nonce: the genuine quote still verifies
    assert verify_quote(store, made, policy, NOW).device_id == "gw-1"


def test_unenrolled_key(device, store, make_tpm):
    tpm, identity, policy = device
    stranger = make_tpm()
    with AttestationTpm(stranger.tcti) as other:
        stranger_identity = other.identity("gw-1")  # claims to be gw-1 with its own key
    nonce = nonces.issue(store, "gw-1", policy, NOW)
    forged = quote(stranger, dataclasses.replace(stranger_identity, storage_public=identity.storage_public), nonce)
    refused(store, "bad-signature", forged, policy, NOW)
    refused(store, "device-unknown", dataclasses.replace(forged, device_id="gw-9"), policy, NOW)


def test_pcr_values_not_allowed_are_all_named(device, store):
    tpm, identity, policy = device
    tpm.extend(4, b"new bootloader")
    tpm.extend(7, b"new secure boot db")
    made = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))
    error = refused(store, "pcr-not-allowed", made, policy, NOW)
    assert error.pcrs == [4, 7]
    assert "PCR 4" in error.message and "PCR 7" in error.message and "PCR 0 " not in error.message


def test_quote_over_fewer_pcrs_than_policy(device, store):
    tpm, identity, policy = device
    made = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW), pcrs=(0, 2))
    refused(store, "pcr-selection", made, policy, NOW)


def test_counters_going_backwards(device, store):
    tpm, identity, policy = device
    old = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))
    tpm.restart()  # reboot: reset count goes up
    tpm.measure_boot()
    newer = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))
    verify_quote(store, newer, policy, NOW)
    refused(store, "counters-backwards", old, policy, NOW)


def test_clock_going_back_within_one_boot_is_refused_even_with_a_later_restart_count(device, store):
    tpm, identity, policy = device
    made = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))
    parsed = verify_quote(store, made, policy, NOW)
    # the controller saw this boot earlier with a later clock: a later restart count does not excuse it
    store.record_counters("gw-1", parsed.reset_count, parsed.restart_count - 1, parsed.clock + 3_600_000)
    refused(store, "counters-backwards", quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW)), policy, NOW)


def tpm2_checkquote(identity, made, pcr_values: bytes, folder):
    """tpm2-tools' verifier, which nobody here wrote, on `made` with `pcr_values` as the values file.
    `-g sha256` is the AK's signing hash, which is also what TPM2_Quote digests the PCRs with."""
    (folder / "ak.pem").write_text(identity.ak_public_pem)
    (folder / "msg").write_bytes(made.attest)
    (folder / "sig").write_bytes(made.signature)
    (folder / "pcrs").write_bytes(pcr_values)
    qualification = qualifying_data(made.purpose, made.nonce, made.bound_sha256).hex()
    return subprocess.run(
        ["tpm2_checkquote", "-u", folder / "ak.pem", "-m", folder / "msg", "-s", folder / "sig", "-f", folder / "pcrs",
         "-l", f"{made.bank}:" + ",".join(map(str, sorted(made.pcrs))), "-g", "sha256", "-q", qualification],
        capture_output=True, text=True,
    )


def test_tpm2_checkquote_accepts_our_quote(device, store, tmp_path):
    tpm, identity, policy = device
    made = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))
    accepted = tpm2_checkquote(identity, made, b"".join(made.pcrs[i] for i in ATTESTED_PCRS), tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    altered = bytes(32) + b"".join(made.pcrs[i] for i in ATTESTED_PCRS[1:])
    assert tpm2_checkquote(identity, made, altered, tmp_path).returncode != 0


@pytest.mark.parametrize("bank", ["sha1", "sha384"])
def test_a_quote_over_another_bank_verifies_and_its_altered_values_do_not(make_tpm, store, make_policy, bank, tmp_path):
    """TPM2_Quote digests the selected PCRs with the signing scheme's hash (SHA-256 for our AK), not
    the bank's: the verifier hashed them with the bank's, so a sha1 or sha384 attestation, which the
    plan schema accepts, never verified ("altered values?"). Both verifiers accept it now, and
    still refuse a changed value: one the TPM measured (named) and one edited into the quote."""
    tpm = make_tpm()
    tpm.allocate("sha256", bank)
    tpm.measure_boot()
    identity = enroll(store, tpm, "gw-1")
    policy = make_policy(allowed_now(tpm, bank), bank=bank)
    made = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW), bank=bank)
    assert {len(v) for v in made.pcrs.values()} == {hashlib.new(bank).digest_size}

    assert verify_quote(store, made, policy, NOW).pcrs == made.pcrs
    accepted = tpm2_checkquote(identity, made, b"".join(made.pcrs[i] for i in ATTESTED_PCRS), tmp_path)
    assert accepted.returncode == 0, accepted.stderr

    tpm.extend(7, b"new secure boot db")
    measured = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW), bank=bank)
    error = refused(store, "pcr-not-allowed", measured, policy, NOW)
    assert error.pcrs == [7] and f"PCR 7 = {measured.pcrs[7].hex()} is not an allowed value" in error.message

    fresh = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW), bank=bank)
    edited = dataclasses.replace(fresh, pcrs={**fresh.pcrs, 7: made.pcrs[7]})  # claims the allowed value
    assert "altered" in refused(store, "pcr-digest", edited, policy, NOW).message
    assert tpm2_checkquote(identity, edited, b"".join(edited.pcrs[i] for i in ATTESTED_PCRS), tmp_path).returncode != 0


def test_a_quote_made_for_a_report_is_no_release_quote(device, store):
    """The purpose is in the signed qualifying data: a report quote is refused for release, and calling
    it `release` in its JSON breaks the signature's binding. Before, verify_quote accepted any purpose,
    and release read `purpose` from the JSON: a verified report quote relabelled `release` released keys."""
    tpm, identity, policy = device
    nonce = nonces.issue(store, "gw-1", policy, NOW)
    with AttestationTpm(tpm.tcti) as attesting:
        report_quote = attesting.quote("gw-1", "report", nonce, hashlib.sha256(b"a report").digest(), "sha256", ATTESTED_PCRS)
    error = refused(store, "not-a-release-quote", report_quote, policy, NOW)
    assert error.message == "the quote was made for a report, not for key release"
    refused(store, "nonce-mismatch", dataclasses.replace(report_quote, purpose="release"), policy, NOW)
    assert store.get_nonce(nonce).used_at is None, "a refused purpose leaves the nonce to the report it was asked for"


def test_a_lower_restart_count_within_one_boot_is_refused_whatever_the_clock(device, store):
    """Within one reset the restart count never goes back: a quote whose restart count is lower than the
    one seen is an old quote, even when its clock is later (the clock alone would let it pass)."""
    tpm, identity, policy = device
    seen = verify_quote(store, quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW)), policy, NOW)
    # the controller saw this boot after a resume (TPM2_Startup(STATE): restart count + 1), at this clock
    store.record_counters("gw-1", seen.reset_count, seen.restart_count + 1, seen.clock)
    made = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))
    counters = parse_attest(made.attest, "sha256").counters
    assert counters[0] == seen.reset_count and counters[1] < seen.restart_count + 1 and counters[2] > seen.clock
    error = refused(store, "counters-backwards", made, policy, NOW)
    assert f"after {(seen.reset_count, seen.restart_count + 1, seen.clock)}" in error.message


def test_the_clock_may_go_back_across_a_reset(device, store):
    """A reboot may lose the TPM clock's tail (an unorderly shutdown): a quote of a later reset whose
    clock is earlier than the one seen in the previous boot is accepted, as check_counters documents."""
    tpm, identity, policy = device
    before = verify_quote(store, quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW)), policy, NOW)
    tpm.restart()
    tpm.measure_boot()
    made = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))
    reset_count, _, clock = parse_attest(made.attest, "sha256").counters
    assert reset_count > before.reset_count
    # the previous boot was seen an hour later than this boot's clock
    store.record_counters("gw-1", before.reset_count, before.restart_count, clock + 3_600_000)
    after = verify_quote(store, made, policy, NOW)
    assert (after.reset_count, after.clock) == (reset_count, clock)
    assert (store.device("gw-1").reset_count, store.device("gw-1").clock) == (reset_count, clock)


def test_went_backwards_compares_as_documented():
    seen = (3, 2, 5_000)
    assert went_backwards((3, 1, 9_000), seen)  # a lower restart count alone, in the same reset
    assert went_backwards((3, 3, 4_999), seen)  # the clock back in the same reset, restart count up
    assert went_backwards((2, 9, 9_000), seen)  # an earlier reset
    assert not went_backwards((4, 0, 1), seen)  # a later reset: restart count and clock start again
    assert not went_backwards(seen, seen) and not went_backwards((3, 2, 5_001), seen)


def test_a_disallowed_quote_whose_counters_also_went_back_is_refused_as_not_allowed(device, store):
    """Issue 6's order: "each value is allowed by the policy" (step 4) before "the counters do not go
    backwards" (step 5), so the answer names the PCRs."""
    tpm, identity, policy = device
    tpm.extend(7, b"unapproved boot")
    old = quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW))
    tpm.restart()
    tpm.measure_boot()
    verify_quote(store, quote(tpm, identity, nonces.issue(store, "gw-1", policy, NOW)), policy, NOW)
    recorded = store.device("gw-1")
    assert went_backwards(parse_attest(old.attest, "sha256").counters,
                          (recorded.reset_count, recorded.restart_count, recorded.clock))
    error = refused(store, "pcr-not-allowed", old, policy, NOW)
    assert error.pcrs == [7]


def test_two_nonces_issued_at_once_differ_and_each_serves_its_own_quote(device, store):
    tpm, identity, policy = device
    first, second = nonces.issue(store, "gw-1", policy, NOW), nonces.issue(store, "gw-1", policy, NOW)
    assert first != second and len(first) == len(second) == policy.nonce_bytes
    verify_quote(store, quote(tpm, identity, first), policy, NOW)
    assert store.get_nonce(second).used_at is None  # using one leaves the other
    verify_quote(store, quote(tpm, identity, second), policy, NOW)
