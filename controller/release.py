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

import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from controller.errors import AttestationRejected
from controller.quote_verify import check_reported_values, check_signature
from controller.store import EscrowOutcome, Store, VerifiedQuoteRecord
from enforcer import fscrypt
from enforcer.attest import Quote, require_storage_parent
from enforcer.escrow import EscrowBlob, EscrowError, deposit_binding, make_ack, split_deposit, unwrap_key
from enforcer.release import Release, ReleasedKey
from enforcer.state import PLAIN_NAME
from enforcer.tpm import _wipe, policy_digest


@dataclass(frozen=True)
class Deposited:
    blob: EscrowBlob
    ack: bytes  # what the device records (`device escrow-ack`)
    outcome: EscrowOutcome

    @property
    def ack_file_name(self) -> str:
        return f"{self.blob.device_id}.{self.blob.vault}.ack.json"


def accept_deposit(store: Store, deposit: bytes, now: int, source: str = "escrow deposit") -> list[Deposited]:
    """Store the escrow blobs of a deposit the device signed, and return an acknowledgement for each.

    Accepted only when the deposit's quote verifies with the enrolled attestation key of the device that
    every blob names, was made for escrow, and binds these exact blobs: the key identifier a blob is for
    is public, so anyone with the escrow public key can build one, and only the device's TPM vouches for
    its own. Each blob is kept byte for byte (its digest is what the ack names) and never replaces one
    already held (`Store.add_escrow`). Nothing is stored unless the whole deposit verifies, and then
    all of it in one transaction."""
    blobs, quote = split_deposit(deposit, source)
    device = store.device(quote.device_id)
    if device is None:
        raise AttestationRejected("device-unknown", f"{source}: device `{quote.device_id}` is not enrolled")
    parsed = check_signature(quote, device.ak_public_pem, device.ak_name)
    if quote.purpose != "escrow":
        raise AttestationRejected("not-a-deposit", f"{source}: the quote was made for a {quote.purpose}, not for escrow")
    if not hmac.compare_digest(quote.bound_sha256, deposit_binding(blobs)):
        raise AttestationRejected("deposit-altered", f"{source}: the escrow blobs were changed after the device signed them")
    check_reported_values(quote, parsed)
    parsed_blobs = [EscrowBlob.from_bytes(data, f"{source}: blob {n}") for n, data in enumerate(blobs, 1)]
    for blob in parsed_blobs:
        if blob.device_id != quote.device_id:
            raise AttestationRejected("deposit-altered", f"{source}: a blob of device `{blob.device_id}` signed by `{quote.device_id}`")
        # the device chose these names, and its acknowledgement's file name is made of them
        for what, name in (("device", blob.device_id), ("vault", blob.vault)):
            if not PLAIN_NAME.fullmatch(name):
                raise AttestationRejected("deposit-malformed", f"{source}: a blob names {what} `{name}`, which no device "
                                          "has: a name is letters, digits, `_`, `.` and `-`, and does not start with `.`")
    with store.transaction():  # all of the deposit or none of it (a full disk mid-way stores nothing)
        return [Deposited(blob, make_ack(blob), store.add_escrow(blob.device_id, blob.vault, blob.key_identifier,
                                                                 blob.to_bytes(), blob.sha256(), now))
                for blob in parsed_blobs]


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
        blob, raw = _escrowed_key(store, device_id, vault, escrow_private)
        try:
            keys.append(ReleasedKey(vault, blob.key_identifier, *_duplicate(parent, raw, policy)))
        finally:
            raw[:] = bytes(len(raw))
    if not store.mark_released(quote.digest(), now):
        raise AttestationRejected("quote-used", "keys were already released for this quote (a replayed quote?)")
    return Release(device_id, quote.digest(), record.bank, record.pcrs, tuple(keys))


_ENROLLED_BEFORE_STORAGE_KEYS = ("device `{}` was enrolled before releases were bound to its TPM's storage key, "
                                 "so nothing can be released to it")


def _escrowed_key(store: Store, device_id: str, vault: str, escrow_private: X25519PrivateKey) -> tuple[EscrowBlob, bytearray]:
    """The vault's escrowed key: from the first of its blobs (newest first) that opens with this escrow
    key and holds the key its identifier names (a blob the device deposited beside another, say for a
    new escrow key, or a bad one, is passed over)."""
    blobs = store.escrow_blobs(device_id, vault)
    if not blobs:
        raise AttestationRejected("no-escrow", f"no escrowed key for vault `{vault}` of device `{device_id}`")
    why = []
    for data in blobs:
        blob = EscrowBlob.from_bytes(data, f"escrow record {device_id}/{vault}")
        try:
            raw = unwrap_key(escrow_private, blob)
        except EscrowError as exc:
            why.append(exc.message)
            continue
        # a key of another length is no fscrypt key (and has no identifier): passed over like a wrong one
        if len(raw) == fscrypt.RAW_KEY_SIZE and hmac.compare_digest(fscrypt.key_identifier(raw), blob.key_identifier):
            return blob, raw
        raw[:] = bytes(len(raw))
        why.append(f"escrow blob for vault `{vault}` holds a key other than `{blob.key_identifier.hex()}`")
    raise AttestationRejected("escrow-unreadable", why[0] if len(why) == 1 else
                              f"none of the {len(why)} escrow blobs of vault `{vault}` yields its key: " + "; ".join(why))


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
