"""Escrow blobs (issue 6, must show 4): fresh ciphertext each time, any altered byte fails, bindings hold."""

from __future__ import annotations

import base64
import json
import secrets

import pytest

from enforcer import escrow
from enforcer.escrow import EscrowBlob, EscrowError

KEY_ID = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.fixture
def controller_key():
    return escrow.generate_escrow_key()


def test_round_trip_and_fresh_ciphertext(controller_key):
    raw = secrets.token_bytes(64)
    first = escrow.wrap_key(controller_key.public_key(), "dev-1", "config", KEY_ID, raw)
    second = escrow.wrap_key(controller_key.public_key(), "dev-1", "config", KEY_ID, raw)
    assert first.ciphertext != second.ciphertext
    assert first.nonce != second.nonce and first.ephemeral_public != second.ephemeral_public
    assert raw not in first.to_bytes() and base64.b64encode(raw) not in first.to_bytes()
    parsed = EscrowBlob.from_bytes(first.to_bytes())
    assert bytes(escrow.unwrap_key(controller_key, parsed)) == raw


def test_every_altered_byte_of_the_blob_file_fails(controller_key):
    data = escrow.wrap_key(controller_key.public_key(), "dev-1", "config", KEY_ID, secrets.token_bytes(64)).to_bytes()
    for position in range(len(data)):
        altered = bytearray(data)
        altered[position] ^= 0x01  # also turns hex digits upper case and base64 tails loose
        with pytest.raises((escrow.InputError, EscrowError)):
            escrow.unwrap_key(controller_key, EscrowBlob.from_bytes(bytes(altered)))
    with pytest.raises(escrow.InputError, match="not the exact bytes a device writes"):
        EscrowBlob.from_bytes(data + b"\n")


def test_every_altered_byte_fails(controller_key):
    blob = escrow.wrap_key(controller_key.public_key(), "dev-1", "config", KEY_ID, secrets.token_bytes(64))
    for field in ("ephemeral_public", "nonce", "ciphertext"):
        value = getattr(blob, field)
        for position in range(len(value)):
            altered = bytearray(value)
            altered[position] ^= 0x01
            tampered = EscrowBlob(**{**blob.__dict__, field: bytes(altered)})
            with pytest.raises(EscrowError):
                escrow.unwrap_key(controller_key, tampered)


@pytest.mark.parametrize(
    "change", [{"device_id": "dev-2"}, {"vault": "images"}, {"key_identifier": bytes(16)}], ids=lambda c: next(iter(c))
)
def test_binding_to_device_vault_and_key_id(controller_key, change):
    blob = escrow.wrap_key(controller_key.public_key(), "dev-1", "config", KEY_ID, secrets.token_bytes(64))
    with pytest.raises(EscrowError):
        escrow.unwrap_key(controller_key, EscrowBlob(**{**blob.__dict__, **change}))


def test_other_controller_key_cannot_unwrap(controller_key):
    blob = escrow.wrap_key(controller_key.public_key(), "dev-1", "config", KEY_ID, secrets.token_bytes(64))
    with pytest.raises(EscrowError):
        escrow.unwrap_key(escrow.generate_escrow_key(), blob)


def test_device_escrow_state_pending_until_matching_ack(tmp_path, controller_key):
    assert escrow.escrow_state(tmp_path, "config") == "missing"
    blob = escrow.wrap_key(controller_key.public_key(), "dev-1", "config", KEY_ID, secrets.token_bytes(64))
    escrow.record_escrow(tmp_path, blob)
    assert escrow.escrow_state(tmp_path, "config") == "pending"

    other = escrow.wrap_key(controller_key.public_key(), "dev-1", "config", KEY_ID, secrets.token_bytes(64))
    with pytest.raises(escrow.InputError, match="different escrow blob"):
        escrow.record_ack(tmp_path, escrow.make_ack(other))
    assert escrow.escrow_state(tmp_path, "config") == "pending"

    assert escrow.record_ack(tmp_path, escrow.make_ack(blob)) == "config"
    assert escrow.escrow_state(tmp_path, "config") == "acknowledged"

    escrow.record_escrow(tmp_path, other)  # a rotated key needs its own acknowledgement
    assert escrow.escrow_state(tmp_path, "config") == "pending"


def test_malformed_blob_is_an_input_error():
    with pytest.raises(escrow.InputError, match="not a `vaultpolicy.escrow.v1` document"):
        EscrowBlob.from_bytes(json.dumps({"format": "other"}).encode(), "blob.json")
    with pytest.raises(escrow.InputError, match="blob.json: field `nonce` is not valid base64"):
        EscrowBlob.from_bytes(
            json.dumps({"format": escrow.ESCROW_FORMAT, "device_id": "d", "vault": "v", "key_identifier": "00",
                        "ephemeral_public": "", "nonce": "!!", "ciphertext": ""}).encode(),
            "blob.json",
        )


def test_a_blob_names_the_escrow_key_it_is_wrapped_for_and_that_name_is_bound(controller_key):
    blob = escrow.wrap_key(controller_key.public_key(), "dev-1", "config", KEY_ID, secrets.token_bytes(64))
    assert blob.recipient == escrow.escrow_public_raw(escrow.escrow_public_text(controller_key), "key")
    assert EscrowBlob.from_bytes(blob.to_bytes()) == blob
    with pytest.raises(EscrowError, match="wrapped for another escrow key"):
        escrow.unwrap_key(escrow.generate_escrow_key(), blob)
    renamed = EscrowBlob(**{**blob.__dict__, "recipient": escrow.escrow_public_raw(
        escrow.escrow_public_text(escrow.generate_escrow_key()), "key")})
    with pytest.raises(EscrowError):  # the recipient is in the AAD: naming another one breaks the blob
        escrow.unwrap_key(controller_key, renamed)


def test_a_blob_made_before_blobs_named_their_escrow_key_still_reads_and_unwraps(controller_key):
    raw = secrets.token_bytes(64)
    ephemeral = escrow.generate_escrow_key()  # the earlier wrapping, by hand: the same, without `recipient`
    ephemeral_public = escrow.escrow_public_raw(escrow.escrow_public_text(ephemeral), "key")
    recipient = escrow.escrow_public_raw(escrow.escrow_public_text(controller_key), "key")
    key = escrow.derive_key(ephemeral.exchange(controller_key.public_key()), ephemeral_public + recipient,
                            b"vaultpolicy escrow v1")
    header = EscrowBlob("dev-1", "config", KEY_ID, ephemeral_public, b"", b"")
    nonce, ciphertext = escrow.aead_seal(key, raw, header.aad())
    old = EscrowBlob("dev-1", "config", KEY_ID, ephemeral_public, nonce, ciphertext)
    assert b"recipient" not in old.to_bytes() and EscrowBlob.from_bytes(old.to_bytes()) == old
    assert bytes(escrow.unwrap_key(controller_key, old)) == raw
    assert escrow.escrow_gap(old, KEY_ID, recipient).startswith("its escrow blob does not name the escrow key")


def test_escrow_state_of_a_blob_of_another_key_or_for_another_escrow_key_is_missing(tmp_path, controller_key):
    blob = escrow.wrap_key(controller_key.public_key(), "dev-1", "config", KEY_ID, secrets.token_bytes(64))
    escrow.record_escrow(tmp_path, blob)
    escrow.record_ack(tmp_path, escrow.make_ack(blob))
    assert escrow.escrow_state(tmp_path, "config", KEY_ID, blob.recipient) == "acknowledged"
    assert escrow.escrow_state(tmp_path, "config", bytes(16), blob.recipient) == "missing"
    assert escrow.escrow_state(tmp_path, "config", KEY_ID, bytes(32)) == "missing"
    (tmp_path / "escrow" / "config.json").write_text("{damaged")
    assert escrow.escrow_state(tmp_path, "config") == "missing"  # a file that is no blob escrows nothing
