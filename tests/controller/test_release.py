"""Release: only after a verified quote, once, and only the quoting device's TPM can open it (issue 6)."""

from __future__ import annotations

import dataclasses
import secrets

import pytest

from controller import nonce as nonces
from controller.errors import AttestationRejected
from controller.quote_verify import verify_quote
from controller.release import accept_deposit, release_keys
from enforcer import escrow, fscrypt
from enforcer.attest import AttestationError, AttestationTpm, storage_parent_binding
from enforcer.release import Release, open_release
from vaultpolicy.errors import DeviceError, InputError

ATTESTED_PCRS = (0, 2, 4, 7)
NOW = 1_800_000_000
RAW = secrets.token_bytes(64)  # the vault key the device escrows
KEY_ID = fscrypt.key_identifier(RAW)
SEALED = {"config": "boot", "images": "boot"}  # the plan's vaults and the attestation each key is sealed to


@pytest.fixture
def setup(make_tpm, store, make_policy):
    return escrowed_device(make_tpm(), store, make_policy, "sha256")


def escrowed_device(tpm, store, make_policy, bank: str):
    """`tpm` booted, enrolled as gw-1, its key of vault `config` deposited (the deposit quoted over
    `bank`), and a policy of attestation `boot` over `bank` allowing this boot."""
    tpm.measure_boot()
    with AttestationTpm(tpm.tcti) as device:
        identity = device.identity("gw-1")
        _, values = device.read_pcrs(bank, ATTESTED_PCRS)
    store.enroll("gw-1", identity.ak_public_pem, identity.ak_name, identity.storage_public, NOW)
    controller_key = escrow.generate_escrow_key()
    blob = escrow.wrap_key(controller_key.public_key(), "gw-1", "config", KEY_ID, RAW)
    deposit = escrow.sign_deposit(tpm.tcti, "gw-1", [blob.to_bytes()], bank, ATTESTED_PCRS)
    [deposited] = accept_deposit(store, deposit, NOW)
    assert deposited.outcome == "stored" and b'"vault":"config"' in deposited.ack
    policy = make_policy({i: [v.hex()] for i, v in values.items()}, bank=bank)
    return tpm, identity, policy, controller_key, RAW


def fresh_quote(store, tpm, identity, policy):
    nonce = nonces.issue(store, "gw-1", policy, NOW)
    with AttestationTpm(tpm.tcti) as device:
        return device.quote("gw-1", "release", nonce, storage_parent_binding(identity.storage_public), policy.bank, ATTESTED_PCRS)


def refused(reason, call):
    with pytest.raises(AttestationRejected) as caught:
        call()
    assert caught.value.reason == reason, caught.value.message
    return caught.value


def test_released_key_opens_only_in_the_quoting_tpm(setup, store, make_tpm):
    tpm, identity, policy, controller_key, raw = setup
    quote = fresh_quote(store, tpm, identity, policy)
    verify_quote(store, quote, policy, NOW, SEALED)
    release = release_keys(store, quote, ["config"], controller_key, NOW + 1)
    assert raw not in release.to_bytes()
    opened = open_release(tpm.tcti, Release.from_bytes(release.to_bytes()), "gw-1")
    assert opened["config"][0] == KEY_ID and bytes(opened["config"][1]) == raw

    other = make_tpm()
    other.measure_boot()  # the same PCR values: only the TPM differs
    with pytest.raises(DeviceError, match="does not import into this TPM"):
        open_release(other.tcti, release, "gw-1")
    with pytest.raises(DeviceError, match="for device `gw-1`"):
        open_release(tpm.tcti, release, "gw-2")


def test_a_release_over_a_sha384_attestation_opens_in_the_verified_state_only(make_tpm, store, make_policy):
    """The deposit and the release quote are over sha384 (they were refused before: the verifier hashed
    the quoted values with the bank's hash). The released object's PolicyPCR digest is the session's
    SHA-256 over the sha384 values, on the controller and on the device alike."""
    tpm = make_tpm()
    tpm.allocate("sha384")
    tpm, identity, policy, controller_key, raw = escrowed_device(tpm, store, make_policy, "sha384")
    quote = fresh_quote(store, tpm, identity, policy)
    verify_quote(store, quote, policy, NOW, SEALED)
    release = release_keys(store, quote, ["config"], controller_key, NOW)
    assert release.bank == "sha384" and bytes(open_release(tpm.tcti, release, "gw-1")["config"][1]) == raw
    tpm.extend(4, b"unapproved boot loader")
    with pytest.raises(DeviceError, match=r"opens only in the boot state the controller verified: PCR sha384:4 differs"):
        open_release(tpm.tcti, release, "gw-1")


def test_a_release_opens_only_in_the_pcr_state_the_controller_verified(setup, store):
    """A release replayed after a reboot into an unapproved PCR 4 opened before (and re-sealed the key
    to the bad state); the TPM refuses it now, to this software and to a bare ESAPI caller alike (root
    on the device with the release file), and opens it again once the verified state is back."""
    from tpm2_pytss import (ESAPI, TPM2B_DATA, TPM2B_ENCRYPTED_SECRET, TPM2B_PRIVATE, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE,
                            TPML_PCR_SELECTION, TPMT_SYM_DEF, TPMT_SYM_DEF_OBJECT, TSS2_Exception)
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RC, TPM2_SE

    from enforcer.tpm import storage_primary_template

    tpm, identity, policy, controller_key, raw = setup
    quote = fresh_quote(store, tpm, identity, policy)
    verify_quote(store, quote, policy, NOW, SEALED)
    release = release_keys(store, quote, ["config"], controller_key, NOW)
    tpm.restart()  # reboot into a boot loader the policy does not allow
    tpm.measure_boot()
    tpm.extend(4, b"unapproved boot loader")
    with pytest.raises(DeviceError, match=r"opens only in the boot state the controller verified: PCR sha256:4 differs"):
        open_release(tpm.tcti, release, "gw-1")
    lying = dataclasses.replace(release, pcrs={**release.pcrs, 4: _current(tpm, 4)})  # the file edited to today's PCR 4
    with pytest.raises(DeviceError, match="the TPM refused the PCR policy") as caught:
        open_release(tpm.tcti, lying, "gw-1")
    assert "the release file was altered" in caught.value.hint

    entry = release.keys[0]
    with ESAPI(tpm.tcti) as esapi:  # what root can do with the file and the TPM, without this software
        parent, *_ = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), storage_primary_template(), ESYS_TR.OWNER)
        public = TPM2B_PUBLIC.unmarshal(entry.public)[0]
        private = esapi.import_(parent, TPM2B_DATA(), public, TPM2B_PRIVATE.unmarshal(entry.duplicate)[0],
                                TPM2B_ENCRYPTED_SECRET.unmarshal(entry.seed)[0], TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL))
        sealed = esapi.load(parent, private, public)
        with pytest.raises(TSS2_Exception) as password:
            esapi.unseal(sealed)  # no USERWITHAUTH: the empty password is no way in
        assert password.value.error == TPM2_RC.AUTH_UNAVAILABLE
        session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                           TPM2_ALG.SHA256)
        esapi.policy_pcr(session, b"", TPML_PCR_SELECTION.parse("sha256:0,2,4,7"))  # the PCRs as they are now
        with pytest.raises(TSS2_Exception) as policy_refused:
            esapi.unseal(sealed, session1=session)
        assert policy_refused.value.error == TPM2_RC.POLICY_FAIL
        for handle in (session, sealed, parent):
            esapi.flush_context(handle)

    tpm.restart()  # the approved boot again
    tpm.measure_boot()
    assert bytes(open_release(tpm.tcti, release, "gw-1")["config"][1]) == raw


def _current(tpm, pcr: int) -> bytes:
    with AttestationTpm(tpm.tcti) as device:
        return device.read_pcrs("sha256", (pcr,))[1][pcr]


def test_tampered_release_fails(setup, store):
    tpm, identity, policy, controller_key, _ = setup
    quote = fresh_quote(store, tpm, identity, policy)
    verify_quote(store, quote, policy, NOW, SEALED)
    release = release_keys(store, quote, ["config"], controller_key, NOW)
    entry = release.keys[0]

    def flipped(data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1])

    for change in ({"public": flipped(entry.public)}, {"duplicate": flipped(entry.duplicate)}, {"seed": flipped(entry.seed)}):
        tampered = dataclasses.replace(release, keys=(dataclasses.replace(entry, **change),))
        with pytest.raises(DeviceError):
            open_release(tpm.tcti, tampered, "gw-1")
    with pytest.raises(InputError, match="is not a TPM duplication blob"):
        open_release(tpm.tcti, dataclasses.replace(release, keys=(dataclasses.replace(entry, seed=b"\x00"),)), "gw-1")


def test_release_needs_a_verified_fresh_unused_quote(setup, store):
    tpm, identity, policy, controller_key, _ = setup
    unverified = fresh_quote(store, tpm, identity, policy)
    refused("quote-not-verified", lambda: release_keys(store, unverified, ["config"], controller_key, NOW))

    quote = fresh_quote(store, tpm, identity, policy)
    verify_quote(store, quote, policy, NOW, SEALED)
    refused("no-escrow", lambda: release_keys(store, quote, ["images"], controller_key, NOW))
    refused("quote-expired", lambda: release_keys(store, quote, ["config"], controller_key, NOW + policy.nonce_lifetime_seconds))
    release_keys(store, quote, ["config"], controller_key, NOW)
    refused("quote-used", lambda: release_keys(store, quote, ["config"], controller_key, NOW))  # replay


def test_refused_quote_releases_nothing(setup, store):
    tpm, identity, policy, controller_key, _ = setup
    tpm.extend(7, b"unexpected secure boot db")
    quote = fresh_quote(store, tpm, identity, policy)
    refused("pcr-not-allowed", lambda: verify_quote(store, quote, policy, NOW))
    refused("quote-not-verified", lambda: release_keys(store, quote, ["config"], controller_key, NOW))


def test_attestation_leaks_no_tpm_handles(setup, store):
    """S11: identity, quotes, opening releases and their failures leave no transient object or session."""
    from enforcer.tpm import Tpm

    tpm, identity, policy, controller_key, raw = setup
    quote = fresh_quote(store, tpm, identity, policy)
    verify_quote(store, quote, policy, NOW, SEALED)
    release = release_keys(store, quote, ["config"], controller_key, NOW)
    entry = release.keys[0]
    altered = {"config": (entry.public, entry.duplicate[:-1] + bytes([entry.duplicate[-1] ^ 1]), entry.seed)}
    objects = {"config": (entry.public, entry.duplicate, entry.seed)}
    wrong_state = {**release.pcrs, 4: bytes(32)}
    with Tpm(tpm.tcti) as counter:
        before = counter.loaded_handles()
    with AttestationTpm(tpm.tcti) as device:
        for _ in range(10):
            device.identity("gw-1")
            device.quote("gw-1", "release", bytes(16), storage_parent_binding(identity.storage_public), "sha256", ATTESTED_PCRS)
            assert bytes(device.unseal_released(objects, release.bank, release.pcrs)["config"]) == raw
            with pytest.raises(AttestationError, match="does not import"):
                device.unseal_released(altered, release.bank, release.pcrs)
            with pytest.raises(AttestationError, match="PCR sha256:4 differs"):
                device.unseal_released(objects, release.bank, wrong_state)
            with pytest.raises(AttestationError):
                device.quote("gw-1", "report", bytes(16), bytes(32), "sha256", ())
            with pytest.raises(InputError):
                device.unseal_released({"config": (entry.public, entry.duplicate, b"")}, release.bank, release.pcrs)
        tpm.extend(4, b"unapproved boot loader")
        _, now_values = device.read_pcrs("sha256", ATTESTED_PCRS)
        for _ in range(10):  # PolicyPCR passes over today's values, the unseal fails on the object's policy
            with pytest.raises(AttestationError, match="refused the PCR policy"):
                device.unseal_released(objects, release.bank, now_values)
    with Tpm(tpm.tcti) as counter:
        assert counter.loaded_handles() == before


def test_unlock_records_overwrite_in_place_and_a_torn_one_only_loses_history(tmp_path):
    from datetime import datetime, timezone

    from enforcer.release import last_unlocks, record_unlock
    from enforcer.state import StateDir

    state, now = StateDir(tmp_path), datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc)
    record_unlock(state, "config", "controller-release", now)
    record_unlock(state, "config", "tpm-sealed", now)  # shorter than what it overwrites
    record_unlock(state, "images", "tpm-sealed", now)
    assert last_unlocks(state) == {"config": {"method": "tpm-sealed", "at": "2026-01-31T12:00:00Z"},
                                   "images": {"method": "tpm-sealed", "at": "2026-01-31T12:00:00Z"}}
    (tmp_path / "attest" / "last-unlock" / "images.json").write_bytes(b'{"method": "tpm-se')  # a crash mid-write
    assert set(last_unlocks(state)) == {"config"}
    with pytest.raises(ValueError):
        record_unlock(state, "config", "guessed", now)


def test_a_quote_releases_only_vaults_sealed_to_the_attestation_it_satisfied(setup, store, make_policy):
    """A plan with two attestations: `weak` quotes PCR 7 only, `config` is sealed to `boot` (0, 2, 4, 7).
    With PCR 4 unapproved, a quote verified against `weak` released `config` before; now it is refused
    naming the vault and the attestation it needs, and the default release finds nothing to release."""
    tpm, identity, policy, controller_key, _ = setup
    tpm.extend(4, b"unapproved boot loader")
    weak = policy.model_copy(update={"name": "weak", "pcrs": (7,), "allowed": {"7": policy.allowed["7"]}})
    nonce = nonces.issue(store, "gw-1", weak, NOW)
    with AttestationTpm(tpm.tcti) as device:
        quote = device.quote("gw-1", "release", nonce, storage_parent_binding(identity.storage_public), "sha256", (7,))
    verify_quote(store, quote, weak, NOW, {"config": "boot", "logs": "weak", "cache": None})
    error = refused("wrong-attestation", lambda: release_keys(store, quote, ["config"], controller_key, NOW))
    assert error.message == "vault `config` is sealed to attestation `boot`; this quote satisfied `weak`"
    assert "--attestation boot" in error.hint
    error = refused("no-escrow", lambda: release_keys(store, quote, None, controller_key, NOW))
    assert error.message == "device `gw-1` has no escrowed key of a vault sealed to attestation `weak`"
    assert "sealed to PCRs of its own" in refused("wrong-attestation", lambda: release_keys(store, quote, ["cache"], controller_key, NOW)).message
    assert "not a sealed vault of the plan" in refused("wrong-attestation", lambda: release_keys(store, quote, ["other"], controller_key, NOW)).message
    assert store.verified_quote(quote.digest()).released_at is None  # nothing was released
