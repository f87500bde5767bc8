"""enforcer.tpm against a real swtpm: sealing hygiene (S1, S2, S3, S11) and the blob format."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer import tcti as tcti_module
from enforcer import tpm as tpm_module
from enforcer.tpm import (
    BankNotAllocated, InvalidSealedBlob, PcrMismatch, SealedBlob, Tpm, TpmFailure, TpmPolicyFailure,
    UnmeasuredBoot,
)

BOUND = (0, 2, 4, 7)


@pytest.fixture
def booted(swtpm):
    """An open Tpm after a simulated measured boot."""
    with Tpm(swtpm.tcti) as device:
        swtpm.measure_boot(device)
        yield device


def _raw_esapi(tcti: str):
    import tpm2_pytss

    return tpm2_pytss, tpm2_pytss.ESAPI(tcti)


def test_seal_unseal_round_trip_and_blob_holds_no_secret(booted):
    secret = os.urandom(64)
    blob = booted.seal(secret, "sha256", BOUND)
    assert booted.unseal(blob) == bytearray(secret)
    assert blob.pcrs == BOUND
    assert blob.pcr_values == booted.read_pcrs("sha256", BOUND)

    text = blob.to_json()
    assert SealedBlob.from_json(text) == blob
    for encoding in (secret, secret.hex().encode(), secret[:16]):
        assert encoding not in text.encode()
    assert secret not in blob.public + blob.private
    held = bytearray(os.urandom(32))  # a bytearray is sealed straight from its buffer
    assert booted.unseal(booted.seal(held, "sha256", BOUND)) == held


def test_sealed_object_attributes_and_policy(booted):
    import tpm2_pytss

    blob = booted.seal(os.urandom(64), "sha256", BOUND)
    public, _ = tpm2_pytss.TPM2B_PUBLIC.unmarshal(blob.public)
    attrs = tpm2_pytss.TPMA_OBJECT
    assert public.publicArea.objectAttributes == attrs.FIXEDTPM | attrs.FIXEDPARENT | attrs.NODA
    assert not public.publicArea.objectAttributes & attrs.USERWITHAUTH
    assert bytes(public.publicArea.authPolicy) == blob.policy_digest
    assert blob.policy_digest == tpm_module.policy_digest("sha256", BOUND, blob.pcr_values)


def _trial_digest(tcti: str, bank: str, pcrs) -> bytes:
    """The policy digest the TPM itself computes for PolicyPCR over `pcrs` (trial session)."""
    tss, esys = _raw_esapi(tcti)
    try:
        session = esys.start_auth_session(
            tss.ESYS_TR.NONE, tss.ESYS_TR.NONE, tss.TPM2_SE.TRIAL,
            tss.TPMT_SYM_DEF(algorithm=tss.TPM2_ALG.NULL), tss.TPM2_ALG.SHA256)
        try:
            esys.policy_pcr(session, b"", tss.TPML_PCR_SELECTION.parse(f"{bank}:{','.join(map(str, pcrs))}"))
            return bytes(esys.policy_get_digest(session))
        finally:
            esys.flush_context(session)
    finally:
        esys.close()


def test_software_policy_digest_matches_the_tpm_trial_session(swtpm):
    swtpm.measure_boot()
    for bank, pcrs in (("sha256", (0, 7)), ("sha256", (0, 2, 4, 7, 8, 9, 10, 11, 12, 13, 14)), ("sha1", (4,))):
        with Tpm(swtpm.tcti) as device:
            values = device.read_pcrs(bank, pcrs)
        assert tpm_module.policy_digest(bank, pcrs, values) == _trial_digest(swtpm.tcti, bank, pcrs)


def test_storage_primary_template_is_the_one_keys_are_sealed_under():
    """The primary is derived from its template: another template is another key, under which no sealed
    key loads. storage_primary_template unmarshals its bytes; they are tpm2-pytss's parse of
    `ecc256:aes128cfb` with these attributes, which bench/unlock.py's bare program writes."""
    import tpm2_pytss as tss

    attributes = tss.TPMA_OBJECT
    parsed = tss.TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=attributes.RESTRICTED | attributes.DECRYPT
                                    | attributes.FIXEDTPM | attributes.FIXEDPARENT | attributes.SENSITIVEDATAORIGIN
                                    | attributes.USERWITHAUTH | attributes.NODA)
    template = tpm_module.storage_primary_template()
    assert template.marshal() == parsed.marshal()
    assert template is not tpm_module.storage_primary_template()  # callers fill in its unique point


def test_s1_password_session_cannot_unseal(swtpm):
    with Tpm(swtpm.tcti) as device:
        swtpm.measure_boot(device)
        blob = device.seal(os.urandom(64), "sha256", BOUND)
    tss, esys = _raw_esapi(swtpm.tcti)
    primary = sealed = None
    try:
        primary, *_ = esys.create_primary(tss.TPM2B_SENSITIVE_CREATE(), tpm_module.storage_primary_template(),
                                          tss.ESYS_TR.OWNER)
        sealed = esys.load(primary, tss.TPM2B_PRIVATE.unmarshal(blob.private)[0],
                           tss.TPM2B_PUBLIC.unmarshal(blob.public)[0])
        with pytest.raises(tss.TSS2_Exception) as raised:
            esys.unseal(sealed, session1=tss.ESYS_TR.PASSWORD)
        assert raised.value.error == tss.TPM2_RC.AUTH_UNAVAILABLE
    finally:
        for handle in (sealed, primary):
            if handle is not None:
                esys.flush_context(handle)
        esys.close()


@pytest.mark.parametrize("changed", BOUND)
def test_s2_extending_a_bound_pcr_refuses_unseal_and_names_it(booted, changed):
    blob = booted.seal(os.urandom(64), "sha256", BOUND)
    booted.extend_pcr(changed, "sha256", b"a different boot loader")
    with pytest.raises(PcrMismatch) as raised:
        booted.unseal(blob)
    assert raised.value.pcrs == [changed]
    assert f"sha256:{changed}" in raised.value.message


def test_s2_unbound_pcr_does_not_matter_and_reboot_reproduces_the_policy(swtpm):
    secret = os.urandom(64)
    with Tpm(swtpm.tcti) as device:
        swtpm.measure_boot(device)
        blob = device.seal(secret, "sha256", (0, 7))
        device.extend_pcr(9, "sha256", b"an unbound measurement")
        assert device.unseal(blob) == bytearray(secret)
    swtpm.restart()  # PCRs reset: the key stays sealed until the same boot is measured again
    with Tpm(swtpm.tcti) as device:
        with pytest.raises(PcrMismatch) as raised:
            device.unseal(blob)
        assert raised.value.pcrs == [0, 7]
        swtpm.measure_boot(device)
        assert device.unseal(blob) == bytearray(secret)


def test_s3_unmeasured_boot_is_refused_unless_allowed(swtpm):
    with Tpm(swtpm.tcti) as device:
        with pytest.raises(UnmeasuredBoot, match="sha256:0,4 is all zero"):
            device.seal(os.urandom(64), "sha256", (7,))
        device.extend_pcr(0, "sha256", b"firmware only")
        with pytest.raises(UnmeasuredBoot, match="sha256:4 is all zero"):
            device.seal(os.urandom(64), "sha256", (0, 7))
        secret = os.urandom(32)
        blob = device.seal(secret, "sha256", (0, 7), allow_unmeasured_boot=True)
        assert device.unseal(blob) == bytearray(secret)


def test_s3_bank_the_firmware_never_extends_is_refused(booted):
    # measure_boot extended sha256 only: the sha384 bank exists but holds zeros
    with pytest.raises(UnmeasuredBoot, match="sha384"):
        booted.seal(os.urandom(64), "sha384", BOUND)


def test_s3_unallocated_bank_is_refused(swtpm):
    subprocess.run(["tpm2_pcrallocate", "-T", swtpm.tcti, "sha1:none+sha256:all"],
                   check=True, capture_output=True)
    swtpm.restart()  # allocation takes effect at the next TPM reset
    with Tpm(swtpm.tcti) as device:
        assert "sha1" not in device.allocated_banks()
        swtpm.measure_boot(device)
        with pytest.raises(BankNotAllocated, match="no allocated `sha1` PCR bank"):
            device.seal(os.urandom(64), "sha1", BOUND)
        with pytest.raises(BankNotAllocated, match="unknown PCR bank `md5`"):
            device.seal(os.urandom(64), "md5", BOUND)
        with pytest.raises(BankNotAllocated, match="out of range"):
            device.seal(os.urandom(64), "sha256", (0, 24))
        with pytest.raises(TpmPolicyFailure, match="at least one PCR"):
            device.seal(os.urandom(64), "sha256", ())


def test_tampered_blobs_are_refused_specifically(booted):
    blob = booted.seal(os.urandom(64), "sha256", BOUND)
    record = json.loads(blob.to_json())

    forged_values = dict(record, pcr_values={**record["pcr_values"], "7": "00" * 32})
    with pytest.raises(TpmPolicyFailure, match="inconsistent"):
        booted.unseal(SealedBlob.from_json(json.dumps(forged_values)))

    other = booted.seal(os.urandom(64), "sha256", (0, 4))
    swapped = SealedBlob(blob.bank, other.pcrs, blob.public, blob.private, other.policy_digest, other.pcr_values)
    with pytest.raises(TpmPolicyFailure, match="authPolicy"):
        booted.unseal(swapped)

    flipped = bytearray(blob.private)
    flipped[-1] ^= 1
    with pytest.raises(TpmFailure):
        booted.unseal(SealedBlob(blob.bank, blob.pcrs, blob.public, bytes(flipped), blob.policy_digest,
                                 blob.pcr_values))

    for broken in ("not json", json.dumps(dict(record, public="***")), json.dumps(dict(record, pcrs=[0]))):
        with pytest.raises(InvalidSealedBlob):
            SealedBlob.from_json(broken)


def test_s11_loaded_handles_unchanged_after_many_cycles_including_failures(swtpm):
    with Tpm(swtpm.tcti) as device:
        swtpm.measure_boot(device)
        device.seal(os.urandom(64), "sha256", BOUND)  # the cached primary is loaded from here on
        before = device.loaded_handles()
        assert before == {"transient": 1, "loaded_sessions": 0, "saved_sessions": 0}
        for round_number in range(15):
            secret = os.urandom(64)
            blob = device.seal(secret, "sha256", BOUND)
            assert device.unseal(blob) == bytearray(secret)
            device.extend_pcr(BOUND[round_number % len(BOUND)], "sha256", b"drift %d" % round_number)
            with pytest.raises(PcrMismatch):
                device.unseal(blob)
            with pytest.raises(TpmFailure):
                device.unseal(SealedBlob(blob.bank, blob.pcrs, blob.public, blob.private[:-1] + bytes([blob.private[-1] ^ 1]),
                                         blob.policy_digest, blob.pcr_values))
            assert device.loaded_handles() == before
    with Tpm(swtpm.tcti) as device:  # closing flushed the primary too
        assert device.loaded_handles() == {"transient": 0, "loaded_sessions": 0, "saved_sessions": 0}


def test_a_failed_test_unseal_refuses_the_seal_and_leaves_nothing_loaded(swtpm, booted):
    """A bound PCR changes between TPM2_Create and the test-unseal: another client extends it while the
    seal's test-unseal is stopped after PolicyPCR. The TPM refuses that Unseal, and again after the
    retry (the policy now fails on the new value), so no blob is returned."""
    booted.seal(os.urandom(64), "sha256", BOUND)  # the cached primary is loaded from here on
    before = booted.loaded_handles()

    def measure_first(stop: int) -> None:
        if stop == 0:
            booted.extend_pcr(BOUND[-1], "sha256", b"a measurement after the seal")

    said, stops = stopped_in_the_tpm(swtpm.tcti, ["seal", json.dumps(BOUND)], measure_first)
    assert said["pcr_mismatch"] and said["pcrs"] == [BOUND[-1]] and stops == 2, said
    assert booted.loaded_handles() == before


# A seal or an unseal in its own process, stopped between PolicyPCR and Unseal (`VAULTPOLICY_STOP_AT=
# unseal-loaded`; a seal stops in its test-unseal) so that the test can act on the same swtpm from here at
# that moment: nothing of the operation is patched.
_TPM_OPERATION = """
import json, os, sys
from enforcer.tpm import PcrMismatch, SealedBlob, Tpm
try:
    with Tpm(sys.argv[1]) as device:
        if sys.argv[2] == "seal":
            device.seal(os.urandom(64), "sha256", json.loads(sys.argv[3]))
            print(json.dumps({"sealed": True}))
        else:
            blob = SealedBlob.from_json(open(sys.argv[3]).read())
            print(json.dumps({"unsealed": bytes(device.unseal(blob)).hex()}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc), "rc": getattr(exc, "rc", None),
                      "pcr_mismatch": isinstance(exc, PcrMismatch), "pcrs": getattr(exc, "pcrs", None)}))
"""


def stopped_in_the_tpm(tcti: str, operation: list[str], at_each_stop) -> tuple[dict, int]:
    """Run `operation` (`["seal", "[0, 7]"]`, `["unseal", BLOB_FILE]`) in another process; at each stop
    between PolicyPCR and Unseal call `at_each_stop(n)` (n = 0, 1, ...), then let it go on.
    (what it printed, how many times it stopped)"""
    child = subprocess.Popen([sys.executable, "-c", _TPM_OPERATION, tcti, *operation], stdout=subprocess.PIPE,
                             text=True, cwd=Path(__file__).parents[2],
                             env={**os.environ, "VAULTPOLICY_STOP_AT": "unseal-loaded"})
    stops = 0
    while True:
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            break
        at_each_stop(stops)
        stops += 1
        os.kill(child.pid, signal.SIGCONT)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    said = child.stdout.read()
    child.stdout.close()
    assert child.returncode == 0, said
    return json.loads(said), stops


def unseal_stopped(tcti: str, blob: SealedBlob, tmp_path: Path, at_each_stop) -> tuple[dict, int]:
    sealed = tmp_path / "blob.json"
    sealed.write_text(blob.to_json())
    return stopped_in_the_tpm(tcti, ["unseal", str(sealed)], at_each_stop)


def test_the_tpms_own_policy_failure_with_matching_pcrs_is_a_policy_failure(swtpm, booted, tmp_path):
    """While the unseal is stopped, another client adds PolicyCommandCode to its policy session: the
    session's digest is no longer the object's authPolicy, though every PCR still matches."""
    import tpm2_pytss

    secret = os.urandom(64)
    blob = booted.seal(secret, "sha256", BOUND)
    before = booted.loaded_handles()

    def another_policy(_stop: int) -> None:  # the stopped unseal's session is the one loaded now
        (session,) = booted._handles(tpm2_pytss.TPM2_HT.LOADED_SESSION)
        booted._esys.policy_command_code(booted._esys.tr_from_tpmpublic(session), tpm2_pytss.TPM2_CC.Unseal)

    said, stops = unseal_stopped(swtpm.tcti, blob, tmp_path, another_policy)
    assert stops == 1 and said["error"] == "TpmPolicyFailure" and not said["pcr_mismatch"], said
    assert "refused the PCR policy although the PCRs match" in said["message"] and said["rc"] is not None
    assert booted.read_pcrs("sha256", BOUND) == blob.pcr_values
    assert booted.loaded_handles() == before
    assert booted.unseal(blob) == bytearray(secret)


def test_pcr_changed_during_unseal_is_retried_once(swtpm, booted, tmp_path):
    """A measurement lands between PolicyPCR and Unseal (another client extends PCR 9, which the key is not
    sealed to): the TPM refuses that Unseal (PCR_CHANGED) and the retry succeeds; twice, it gives up."""
    secret = os.urandom(64)
    blob = booted.seal(secret, "sha256", BOUND)
    before = booted.loaded_handles()

    def measure_first(stop: int) -> None:
        if stop == 0:
            booted.extend_pcr(9, "sha256", b"a measurement racing the unseal")

    said, stops = unseal_stopped(swtpm.tcti, blob, tmp_path, measure_first)
    assert said == {"unsealed": secret.hex()} and stops == 2, "refused once (PCR changed), then unsealed"

    said, stops = unseal_stopped(swtpm.tcti, blob, tmp_path,
                                 lambda _stop: booted.extend_pcr(9, "sha256", b"a measurement racing the unseal"))
    assert said["error"] == "PcrChangedDuringOperation" and "tried twice" in said["message"] and stops == 2, said
    assert booted.loaded_handles() == before


def test_read_pcrs_beyond_one_batch_and_extend_semantics(swtpm):
    with Tpm(swtpm.tcti) as device:
        values = device.read_pcrs("sha256", range(24))
        assert sorted(values) == list(range(24)) and values[0] == bytes(32)
        device.extend_pcr(10, "sha256", b"measured blob")
        expected = hashlib.sha256(bytes(32) + hashlib.sha256(b"measured blob").digest()).digest()
        assert device.read_pcrs("sha256", [10]) == {10: expected}


def test_unreachable_tpm_is_backend_unavailable(needs_device):
    with pytest.raises(tpm_module.BackendUnavailable, match="cannot open the TPM"):
        Tpm("swtpm:host=127.0.0.1,port=1")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pcrs=st.sets(st.integers(0, 23), min_size=1, max_size=24), bank=st.sampled_from(["sha1", "sha256", "sha384"]))
def test_policy_digest_matches_the_tpm_for_any_selection(swtpm, pcrs, bank):
    with Tpm(swtpm.tcti) as device:
        extendable = sorted(index for index in pcrs if index < 17 or index == 23)  # 17-22: locality 4 only
        if extendable:
            device.extend_pcr(extendable[0], bank, b"make one value non-zero")
        values = device.read_pcrs(bank, pcrs)
    assert tpm_module.policy_digest(bank, sorted(pcrs), values) == _trial_digest(swtpm.tcti, bank, sorted(pcrs))


def test_a_tpm_in_dictionary_attack_lockout_refuses_quotes_by_name_and_still_unseals_the_vault_keys(booted, swtpm):
    """Anyone may hammer a password object until the TPM locks out (one allowed failure here). Lockout
    refuses authorizations that use a DA-protected authValue; our sealed keys are authorized by their
    PCR policy alone (no USERWITHAUTH, no PolicyAuthValue), so a lockout must not lock the vaults too.
    The attestation key is DA-protected (USERWITHAUTH, empty authValue): its quote is refused, and that
    is said as a lockout (`TpmLockout`), not as a TSS response code in a generic quote failure."""
    from enforcer.attest import AttestationTpm

    blob = booted.seal(os.urandom(64), "sha256", BOUND)
    tss, esys = _raw_esapi(swtpm.tcti)
    try:
        esys.dictionary_attack_parameters(1, 1000, 1000)  # one failure allowed, no recovery during the test
        primary, *_ = esys.create_primary(tss.TPM2B_SENSITIVE_CREATE(), tpm_module.storage_primary_template(),
                                          tss.ESYS_TR.OWNER)
        guarded = tss.TPM2B_PUBLIC(tss.TPMT_PUBLIC(
            type=tss.TPM2_ALG.KEYEDHASH, nameAlg=tss.TPM2_ALG.SHA256,
            objectAttributes=tss.TPMA_OBJECT.FIXEDTPM | tss.TPMA_OBJECT.FIXEDPARENT | tss.TPMA_OBJECT.USERWITHAUTH))
        guarded.publicArea.parameters.keyedHashDetail.scheme.scheme = tss.TPM2_ALG.NULL
        secret = tss.TPM2B_SENSITIVE_CREATE(tss.TPMS_SENSITIVE_CREATE(userAuth=tss.TPM2B_AUTH(b"right"),
                                                                      data=tss.TPM2B_SENSITIVE_DATA(b"x")))
        private, public, *_ = esys.create(primary, secret, guarded)
        target = esys.load(primary, private, public)
        for password, code in ((b"wrong", tss.TPM2_RC.AUTH_FAIL), (b"right", tss.TPM2_RC.LOCKOUT)):
            esys.tr_set_auth(target, password)
            with pytest.raises(tss.TSS2_Exception) as refused:
                esys.unseal(target)
            assert tpm_module._response_code(refused.value) == code, "the TPM is in lockout now"
        for handle in (target, primary):
            esys.flush_context(handle)
    finally:
        esys.close()
    with AttestationTpm(swtpm.tcti) as attesting, pytest.raises(tpm_module.TpmLockout) as refused:
        attesting.quote("gw-1", "report", b"", bytes(32), "sha256", BOUND)
    assert refused.value.message == (
        "the TPM is in dictionary-attack lockout (too many wrong authorization values were tried): it refuses the "
        "attestation key until the lockout ends, so no quote can be signed; vault keys are not DA-protected and "
        "still unlock")
    assert "`tpm2_dictionarylockout --clear-lockout`" in refused.value.hint
    assert refused.value.rc is not None and tpm_module._response_code(refused.value) == 0x921  # TPM_RC_LOCKOUT
    assert len(booted.unseal(blob)) == 64


def test_leftovers_of_a_killed_client_are_flushed_on_an_unmanaged_tpm(swtpm):
    tss, esys = _raw_esapi(swtpm.tcti)
    try:  # a client that dies without flushing: a loaded primary, an open policy session and a saved one
        esys.create_primary(tss.TPM2B_SENSITIVE_CREATE(), tpm_module.storage_primary_template(), tss.ESYS_TR.OWNER)
        for _ in range(2):
            session = esys.start_auth_session(tss.ESYS_TR.NONE, tss.ESYS_TR.NONE, tss.TPM2_SE.POLICY,
                                              tss.TPMT_SYM_DEF(algorithm=tss.TPM2_ALG.NULL), tss.TPM2_ALG.SHA256)
        esys.context_save(session)
    finally:
        esys.close()
    assert not tcti_module.has_resource_manager(swtpm.tcti)
    assert tcti_module.has_resource_manager("device:/dev/tpmrm0")
    with Tpm(swtpm.tcti) as device:
        swtpm.measure_boot(device)
        assert device.loaded_handles() == {"transient": 1, "loaded_sessions": 1, "saved_sessions": 1}
        blob = device.seal(os.urandom(64), "sha256", BOUND)  # our own primary is now loaded too
        assert device.flush_leftovers() == 3  # the session handles are listed only when the TPM counts some
        assert device.flush_leftovers() == 0
        assert device.loaded_handles() == {"transient": 1, "loaded_sessions": 0, "saved_sessions": 0}
        assert len(device.unseal(blob)) == 64, "our cached primary survived the clean-up"


def test_a_flush_leaves_the_handles_of_a_live_connection_alone(swtpm):
    """A `status` or `quote` takes no state-dir lock: a `device unlock` starting meanwhile flushed its
    primary from under it. Now the flush is left to a later command while a connection of ours is live;
    what a killed one left is still flushed (the kernel drops a dead process's lock)."""
    def run(script: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "import os, signal, sys\nfrom enforcer.tpm import Tpm\n" + script,
                               swtpm.tcti], capture_output=True, text=True, cwd=Path(__file__).parents[2])

    flush = "with Tpm(sys.argv[1]) as tpm:\n    print(tpm.flush_leftovers())\n"
    with Tpm(swtpm.tcti) as reader:
        swtpm.measure_boot(reader)
        blob = reader.seal(os.urandom(64), "sha256", BOUND)  # its primary stays loaded
        assert run(flush).stdout.strip() == "0", "a live connection's handles are not leftovers"
        assert len(reader.unseal(blob)) == 64, "the reader's primary is still loaded"
    killed = run("tpm = Tpm(sys.argv[1])\ntpm.read_pcrs('sha256', [0])\ntpm._primary()\n"
                 "os.kill(os.getpid(), signal.SIGKILL)\n")
    assert killed.returncode == -signal.SIGKILL
    assert run(flush).stdout.strip() == "1", "the killed command's primary is flushed"


def test_missing_tpm_library_is_backend_unavailable_not_an_import_error():
    script = (
        "import sys; sys.modules['tpm2_pytss'] = None\n"
        "from enforcer import tpm\n"  # importing the module needs no TPM library
        "try:\n"
        "    tpm.Tpm('swtpm:host=127.0.0.1,port=1')\n"
        "except tpm.BackendUnavailable as exc:\n"
        "    print(exc.message, '|', exc.hint)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).parents[2], check=True)
    assert result.stdout.startswith("the TPM library is unavailable")
    assert "tpm2-pytss" in result.stdout and result.stderr == ""
