"""Release: only after a verified quote, once, and only the quoting device's TPM can open it (issue 6)."""

from __future__ import annotations

import dataclasses
import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from controller import nonce as nonces
from controller.errors import AttestationRejected
from controller.quote_verify import verify_quote
from controller.release import accept_escrow, release_keys
from enforcer import escrow
from enforcer.attest import AttestationTpm, release_key_binding
from enforcer.release import Release, open_release
from vaultpolicy.errors import DeviceError

ATTESTED_PCRS = (0, 2, 4, 7)
NOW = 1_800_000_000
KEY_ID = bytes(range(16))
SEALED = {"config": "boot", "images": "boot"}  # the plan's vaults and the attestation each key is sealed to


@pytest.fixture
def setup(make_tpm, store, make_policy):
    tpm = make_tpm()
    tpm.measure_boot()
    with AttestationTpm(tpm.tcti) as device:
        identity = device.identity("gw-1")
        _, values = device.read_pcrs("sha256", ATTESTED_PCRS)
    store.enroll("gw-1", identity.ak_public_pem, identity.ak_name, identity.release_public_pem, NOW)
    controller_key = escrow.generate_escrow_key()
    raw = secrets.token_bytes(64)
    blob = escrow.wrap_key(controller_key.public_key(), "gw-1", "config", KEY_ID, raw)
    ack = accept_escrow(store, blob.to_bytes(), NOW)
    assert b'"vault":"config"' in ack
    policy = make_policy({i: [v.hex()] for i, v in values.items()})
    return tpm, identity, policy, controller_key, raw


def fresh_quote(store, tpm, identity, policy):
    nonce = nonces.issue(store, "gw-1", policy, NOW)
    with AttestationTpm(tpm.tcti) as device:
        return device.quote("gw-1", "release", nonce, release_key_binding(identity.release_public_pem), "sha256", ATTESTED_PCRS)


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
    with pytest.raises(DeviceError, match="does not open"):
        open_release(other.tcti, release, "gw-1")
    with pytest.raises(DeviceError, match="for device `gw-1`"):
        open_release(tpm.tcti, release, "gw-2")


def test_tampered_release_fails(setup, store):
    tpm, identity, policy, controller_key, _ = setup
    quote = fresh_quote(store, tpm, identity, policy)
    verify_quote(store, quote, policy, NOW, SEALED)
    release = release_keys(store, quote, ["config"], controller_key, NOW)
    entry = release.keys[0]
    for change in ({"vault": "images"}, {"key_identifier": bytes(16)}, {"ciphertext": entry.ciphertext[:-1] + bytes([entry.ciphertext[-1] ^ 1])}):
        tampered = dataclasses.replace(release, keys=(dataclasses.replace(entry, **change),))
        with pytest.raises(DeviceError):
            open_release(tpm.tcti, tampered, "gw-1")
    with pytest.raises(DeviceError):
        open_release(tpm.tcti, dataclasses.replace(release, quote_sha256="00" * 32), "gw-1")


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


def test_escrow_only_from_enrolled_devices(store):
    blob = escrow.wrap_key(escrow.generate_escrow_key().public_key(), "gw-9", "config", KEY_ID, bytes(64))
    refused("device-unknown", lambda: accept_escrow(store, blob.to_bytes(), NOW))


def test_attestation_leaks_no_tpm_handles(make_tpm):
    """S11: identity, quotes, ECDH and their failures leave no transient object or session behind."""
    from enforcer.attest import AttestationError
    from enforcer.tpm import Tpm

    tpm = make_tpm()
    with AttestationTpm(tpm.tcti) as device:
        identity = device.identity("gw-1")
    with Tpm(tpm.tcti) as counter:
        before = counter.loaded_handles()
    peer = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    with AttestationTpm(tpm.tcti) as device:
        for _ in range(20):
            device.identity("gw-1")
            device.quote("gw-1", "release", bytes(16), release_key_binding(identity.release_public_pem), "sha256", ATTESTED_PCRS)
            assert len(device.ecdh_zgen(peer.x.to_bytes(32, "big"), peer.y.to_bytes(32, "big"))) == 32
            with pytest.raises(AttestationError, match="not on the required curve"):
                device.ecdh_zgen(bytes(32), bytes(32))
            with pytest.raises(AttestationError):
                device.quote("gw-1", "report", bytes(16), bytes(32), "sha256", ())
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
        quote = device.quote("gw-1", "release", nonce, release_key_binding(identity.release_public_pem), "sha256", (7,))
    verify_quote(store, quote, weak, NOW, {"config": "boot", "logs": "weak", "cache": None})
    error = refused("wrong-attestation", lambda: release_keys(store, quote, ["config"], controller_key, NOW))
    assert error.message == "vault `config` is sealed to attestation `boot`; this quote satisfied `weak`"
    assert "--attestation boot" in error.hint
    error = refused("no-escrow", lambda: release_keys(store, quote, None, controller_key, NOW))
    assert error.message == "device `gw-1` has no escrowed key of a vault sealed to attestation `weak`"
    assert "sealed to PCRs of its own" in refused("wrong-attestation", lambda: release_keys(store, quote, ["cache"], controller_key, NOW)).message
    assert "not a sealed vault of the plan" in refused("wrong-attestation", lambda: release_keys(store, quote, ["other"], controller_key, NOW)).message
    assert store.verified_quote(quote.digest()).released_at is None  # nothing was released
