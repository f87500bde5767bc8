"""Release escrowed vault keys to a device that has just proved its state with a verified quote.

Why this wrapping (the simplest sound option): every device has a TPM-resident ECDH key (the
release key, `enforcer.attest`), enrolled together with its attestation key, and every release quote
binds that key's digest into its signed qualifying data. The controller unwraps the escrowed key and
re-wraps it ECIES-style to the release key: ephemeral P-256 key E, shared = ECDH(E, release key),
HKDF-SHA256, AES-256-GCM with a random nonce. Only TPM2_ECDH_ZGen inside that TPM can recompute the
shared secret, so the release file is useless anywhere else, and the raw key never travels in clear.
TPM2_Import/duplication would give the same guarantee with more TPM-structure code on both sides.
The AAD binds device id, quote digest, vault name and kernel key identifier, so a release cannot be
replayed for another vault or presented as the answer to another quote.

Release file JSON (`format` = "vaultpolicy.release.v1", `enforcer.release.Release`): device_id,
quote_sha256, ephemeral_public (base64 uncompressed P-256 point), keys [{vault, key_identifier (hex),
nonce, ciphertext (base64)}].

A verified quote releases once, within the policy's nonce lifetime of its verification.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from controller.errors import AttestationRejected
from controller.store import Store, VerifiedQuoteRecord
from enforcer.attest import Quote
from enforcer.escrow import EscrowBlob, EscrowError, aead_seal, make_ack, unwrap_key
from enforcer.release import Release, ReleasedKey, release_wrapping_key


def accept_escrow(store: Store, blob_bytes: bytes, now: int, source: str = "escrow blob") -> bytes:
    """Store a device's escrow blob and return the acknowledgement the device records.

    Only enrolled devices may deposit; the blob is kept byte for byte as the device wrote it (its digest is what the ack names).
    """
    blob = EscrowBlob.from_bytes(blob_bytes, source)
    if store.device(blob.device_id) is None:
        raise AttestationRejected("device-unknown", f"{source}: device `{blob.device_id}` is not enrolled")
    store.add_escrow(blob.device_id, blob.vault, blob.key_identifier, blob.to_bytes(), blob.sha256(), now)
    return make_ack(blob)


def release_keys(store: Store, quote: Quote, vaults: list[str] | None, escrow_private: X25519PrivateKey, now: int) -> Release:
    """Re-wrap the escrowed keys of `vaults` (None: every escrowed vault sealed to the attestation the
    quote satisfied) to the quoting device's TPM; refuses unless the quote was verified (by
    `verify_quote`: only release quotes are), is fresh, has released nothing yet, and each vault's key
    is sealed to the attestation the quote satisfied (a quote verified against a weaker requirement
    must not open a vault sealed to a stronger one)."""
    record = store.verified_quote(quote.digest())
    if record is None or record.device_id != quote.device_id:
        raise AttestationRejected("quote-not-verified", "this quote has not been verified; run `controller verify-quote` first")
    if record.attestation is None:
        raise AttestationRejected("quote-not-verified", "this quote was verified by an earlier controller that did not "
                                  "record which attestation it satisfied", hint=_QUOTE_AGAIN)
    if record.released_at is not None:
        raise AttestationRejected("quote-used", "keys were already released for this quote (a replayed quote?)")
    if now >= record.expires_at:
        raise AttestationRejected("quote-expired", "the quote's verification is too old; ask for a new nonce and quote")
    device_id = record.device_id
    if vaults is None:
        vaults = [v for v in store.escrowed_vaults(device_id) if record.sealed_to.get(v) == record.attestation]
        if not vaults:
            raise AttestationRejected("no-escrow", f"device `{device_id}` has no escrowed key of a vault sealed to "
                                      f"attestation `{record.attestation}`")
    if not vaults:
        raise AttestationRejected("no-escrow", "name at least one vault to release")
    for vault in vaults:
        _require_sealed_to_the_quoted_attestation(record, vault)
    device = store.device(device_id)
    release_public = serialization.load_pem_public_key(device.release_public_pem.encode())
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    ephemeral_public = ephemeral.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    wrapping_key = release_wrapping_key(ephemeral.exchange(ec.ECDH(), release_public), ephemeral_public, device.release_public_pem)
    header = Release(device_id, quote.digest(), ephemeral_public, ())
    keys = []
    for vault in vaults:
        blob_bytes = store.escrow_blob(device_id, vault)
        if blob_bytes is None:
            raise AttestationRejected("no-escrow", f"no escrowed key for vault `{vault}` of device `{device_id}`")
        blob = EscrowBlob.from_bytes(blob_bytes, f"escrow record {device_id}/{vault}")
        try:
            raw = unwrap_key(escrow_private, blob)
        except EscrowError as exc:
            raise AttestationRejected("escrow-unreadable", exc.message) from None
        try:
            nonce, ciphertext = aead_seal(wrapping_key, raw, header.aad(vault, blob.key_identifier))
        finally:
            raw[:] = bytes(len(raw))
        keys.append(ReleasedKey(vault, blob.key_identifier, nonce, ciphertext))
    if not store.mark_released(quote.digest(), now):
        raise AttestationRejected("quote-used", "keys were already released for this quote (a replayed quote?)")
    return Release(device_id, quote.digest(), ephemeral_public, tuple(keys))


_QUOTE_AGAIN = "get a new nonce with `vaultpolicy controller nonce`, quote and verify again"


def _require_sealed_to_the_quoted_attestation(record: VerifiedQuoteRecord, vault: str) -> None:
    if vault not in record.sealed_to:
        raise AttestationRejected("wrong-attestation", f"vault `{vault}` is not a sealed vault of the plan the quote was verified against")
    needed = record.sealed_to[vault]
    if needed is None:
        raise AttestationRejected(
            "wrong-attestation", f"vault `{vault}` is sealed to PCRs of its own, not to an attestation, so no quote vouches for its seal",
            hint="seal it to an attestation in the policy (`seal NAME`)")
    if needed != record.attestation:
        raise AttestationRejected(
            "wrong-attestation", f"vault `{vault}` is sealed to attestation `{needed}`; this quote satisfied `{record.attestation}`",
            hint=f"verify a new quote with `--attestation {needed}` (device and controller)")
