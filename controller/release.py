"""Release escrowed vault keys to a device that has just proved its state with a verified quote.

Why this wrapping: the key must be usable only by the quoting device's TPM, and only in the PCR state
the controller verified, whoever holds the release file (root on the device included). So the
controller makes it a TPM duplication blob (TPM 2.0 Part 1, "Duplication"; `tpm2_pytss.utils.wrap`)
for the device's storage parent, whose public area is enrolled with the attestation key and bound into
every release quote: a sealed KEYEDHASH object holding the key, with authPolicy = PolicyPCR over the
verified quote's PCR values and without USERWITHAUTH (no password unseals it), its sensitive area
encrypted and integrity-protected under a seed that only the storage parent's private key, inside that
TPM, recovers (TPM2_Import). The device unseals it in a PolicyPCR session, so a release replayed in
another PCR state, or opened with any other tool, is refused by the TPM itself. The object's name
(hence its policy and its key) is covered by the wrapper's HMAC: a changed byte fails the import.

Release file JSON (`format` = "vaultpolicy.release.v2", `enforcer.release.Release`): device_id,
quote_sha256, bank, pcrs {"<index>": hex} (the verified values), keys [{vault, key_identifier (hex),
public, duplicate, seed (base64 TPM2B_PUBLIC, TPM2B_PRIVATE, TPM2B_ENCRYPTED_SECRET)}].

A verified quote releases once, within the policy's nonce lifetime of its verification, and only the
keys of vaults sealed to the attestation it satisfied.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from controller.errors import AttestationRejected
from controller.store import Store, VerifiedQuoteRecord
from enforcer.attest import Quote, require_storage_parent
from enforcer.escrow import EscrowBlob, EscrowError, make_ack, unwrap_key
from enforcer.release import Release, ReleasedKey
from enforcer.tpm import _wipe, policy_digest


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
    if device.storage_public is None:
        raise AttestationRejected("release-key-mismatch", _ENROLLED_BEFORE_STORAGE_KEYS.format(device_id),
                                  hint="enrol the output of a new `vaultpolicy device identity`")
    parent = require_storage_parent(device.storage_public, f"the storage key enrolled for `{device_id}`")
    policy = policy_digest(record.bank, tuple(record.pcrs), record.pcrs)
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
            keys.append(ReleasedKey(vault, blob.key_identifier, *_duplicate(parent, raw, policy)))
        finally:
            raw[:] = bytes(len(raw))
    if not store.mark_released(quote.digest(), now):
        raise AttestationRejected("quote-used", "keys were already released for this quote (a replayed quote?)")
    return Release(device_id, quote.digest(), record.bank, record.pcrs, tuple(keys))


_ENROLLED_BEFORE_STORAGE_KEYS = ("device `{}` was enrolled before releases were bound to its TPM's storage key, "
                                 "so nothing can be released to it")


def _duplicate(parent, raw: bytearray, policy: bytes) -> tuple[bytes, bytes, bytes]:
    """(TPM2B_PUBLIC, TPM2B_PRIVATE, TPM2B_ENCRYPTED_SECRET) of a sealed object holding `raw` that only
    `parent`'s TPM imports and only a PolicyPCR session reaching `policy` unseals. Not fixedTPM or
    fixedParent (an imported object cannot be), NODA as the enforcer's own sealed keys, never
    USERWITHAUTH; no inner wrapper: the outer one (seed for the parent's key, AES-128-CFB + HMAC) is
    what binds it to the TPM."""
    from tpm2_pytss import TPM2B_SENSITIVE
    from tpm2_pytss.constants import TPMA_OBJECT
    from tpm2_pytss.utils import wrap

    sensitive, public = TPM2B_SENSITIVE.keyedhash_from_secret(bytes(raw), objectAttributes=TPMA_OBJECT.NODA)
    public.publicArea.authPolicy = policy
    try:
        _, duplicate, seed = wrap(parent.publicArea, public, sensitive)
    finally:
        _wipe(sensitive)
    return public.marshal(), duplicate.marshal(), seed.marshal()

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
