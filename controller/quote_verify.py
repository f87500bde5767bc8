"""Verify a device's TPM quote, in the order issue 6 fixes:

1. the signature, with the enrolled attestation key (and the quote names that key as its signer); the
   signed qualifying data binds the quote's purpose, and only a `release` quote is verified here;
2. the nonce: bound into the signed qualifying data, issued by us to this device for this attestation
   requirement, unused, not expired;
3. the PCR digest recomputed from the reported values equals the quoted one (same bank and selection
   as the policy's attestation). TPM2_Quote digests the bank's values with the signing scheme's hash
   (the one the signature names: SHA-256 for our AK), not with the bank's (TPM 2.0 Part 3, TPM2_Quote);
4. every value is allowed by the policy — all PCRs that are not are named, not just the first;
5. the TPM's reset/restart counters and clock do not go backwards.

The TPM structures are parsed here by hand (a few fixed fields, TPM 2.0 Part 2 marshalling), so the
controller needs no TPM stack. A PCR of the attestation with no `allowed` list allows nothing: the
policy must say which measurements it trusts (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from compiler.plan import Attestation, Plan
from controller import nonce as nonces
from controller.errors import AttestationRejected
from controller.store import Store
from enforcer.attest import Quote, qualifying_data, storage_parent_binding

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_ECDSA = 0x0018
HASH_ALGS = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}


@dataclass(frozen=True)
class ParsedAttest:
    signer_name: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    selection: dict[str, tuple[int, ...]]  # bank -> PCR indexes
    pcr_digest: bytes
    signing_hash: str  # the signature's hash: what the TPM digested the PCR values with, whatever the bank

    @property
    def counters(self) -> tuple[int, int, int]:
        """When the TPM signed: (reset count, restart count, clock)."""
        return self.reset_count, self.restart_count, self.clock


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise AttestationRejected("malformed-quote", "quote structure is truncated")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def uint(self, fmt: str) -> int:
        return struct.unpack(">" + fmt, self.take(struct.calcsize(fmt)))[0]

    def sized(self) -> bytes:
        return self.take(self.uint("H"))


def parse_attest(data: bytes, signing_hash: str) -> ParsedAttest:
    reader = _Reader(data)
    if reader.uint("I") != TPM_GENERATED_VALUE or reader.uint("H") != TPM_ST_ATTEST_QUOTE:
        raise AttestationRejected("malformed-quote", "not a TPM-generated quote structure")
    signer_name = reader.sized()
    extra_data = reader.sized()
    clock, reset_count, restart_count, _safe = reader.uint("Q"), reader.uint("I"), reader.uint("I"), reader.uint("B")
    reader.uint("Q")  # firmware version
    selection: dict[str, tuple[int, ...]] = {}
    for _ in range(reader.uint("I")):
        bank = HASH_ALGS.get(reader.uint("H"), "unknown")
        bitmap = reader.take(reader.uint("B"))
        selection[bank] = tuple(i for i in range(len(bitmap) * 8) if bitmap[i // 8] & (1 << (i % 8)))
    digest = reader.sized()
    if reader.pos != len(data):
        raise AttestationRejected("malformed-quote", "quote structure has trailing bytes")
    return ParsedAttest(signer_name, extra_data, clock, reset_count, restart_count, selection, digest, signing_hash)


def _der_signature(signature: bytes) -> tuple[bytes, hashes.HashAlgorithm]:
    reader = _Reader(signature)
    if reader.uint("H") != TPM_ALG_ECDSA:
        raise AttestationRejected("bad-signature", "quote signature is not ECDSA")
    hash_name = HASH_ALGS.get(reader.uint("H"))
    r, s = reader.sized(), reader.sized()
    if hash_name is None or reader.pos != len(signature):
        raise AttestationRejected("bad-signature", "quote signature is malformed")
    return encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big")), getattr(hashes, hash_name.upper())()


@dataclass(frozen=True)
class VerifiedQuote:
    device_id: str
    quote_sha256: str
    purpose: str
    bound_sha256: bytes
    pcrs: dict[int, bytes]
    reset_count: int
    restart_count: int
    clock: int


def check_signature(quote: Quote, ak_public_pem: str, ak_name: str) -> ParsedAttest:
    """Step 1 (also used for reports): signed by this AK, which the quote names as its signer."""
    public_key = serialization.load_pem_public_key(ak_public_pem.encode())
    der, algorithm = _der_signature(quote.signature)
    try:
        public_key.verify(der, quote.attest, ec.ECDSA(algorithm))
    except InvalidSignature:
        raise AttestationRejected(
            "bad-signature", f"quote signature does not verify with the attestation key enrolled for `{quote.device_id}`"
        ) from None
    parsed = parse_attest(quote.attest, algorithm.name)
    if parsed.signer_name.hex() != ak_name:
        raise AttestationRejected("bad-signature", "quote names a different signing key than the enrolled one")
    expected = qualifying_data(quote.purpose, quote.nonce, quote.bound_sha256)
    if not hmac.compare_digest(parsed.extra_data, expected):
        raise AttestationRejected("nonce-mismatch", "the signed qualifying data does not match the quote's nonce and binding")
    return parsed


def check_pcr_digest(quote: Quote, parsed: ParsedAttest, attestation: Attestation) -> None:
    """Step 3: reported values hash to the signed digest, over exactly the policy's bank and PCRs."""
    wanted = tuple(sorted(attestation.pcrs))
    if parsed.selection != {attestation.bank: wanted} or quote.bank != attestation.bank:
        raise AttestationRejected(
            "pcr-selection",
            f"quote covers {_selection_text(parsed.selection)}, the policy `{attestation.name}` asks for "
            f"{attestation.bank}:{','.join(map(str, wanted))}",
        )
    check_reported_values(quote, parsed)


def check_reported_values(quote: Quote, parsed: ParsedAttest) -> None:
    """The reported PCR values are the quoted ones: same selection, and they hash to the signed digest."""
    quoted = parsed.selection.get(quote.bank)
    if len(parsed.selection) != 1 or quoted is None or sorted(quote.pcrs) != list(quoted):
        raise AttestationRejected("pcr-digest", "reported PCR values do not match the quoted selection")
    if quoted_pcr_digest(quote.pcrs, quoted, parsed.signing_hash) != parsed.pcr_digest:
        raise AttestationRejected("pcr-digest", "reported PCR values do not hash to the quoted PCR digest (altered values?)")


def quoted_pcr_digest(values: dict[int, bytes], pcrs: tuple[int, ...], signing_hash: str) -> bytes:
    """TPM2_Quote's pcrDigest: the selected PCR values in index order, hashed with the signing scheme's
    hash. Not PolicyPCR's digest (`enforcer.tpm.policy_pcr_digest`), which the session's hash makes."""
    return hashlib.new(signing_hash, b"".join(values[i] for i in sorted(pcrs))).digest()


def check_counters(device, parsed: ParsedAttest) -> None:
    """Step 5: a quote older than one already seen is a replay. The reset count never goes back; within
    one reset (one boot) neither the restart count nor the clock does, each on its own: a later resume
    never runs the TPM's clock back. Across a reset the clock may (an unorderly shutdown loses its tail)."""
    if device.reset_count is None:
        return
    seen = (device.reset_count, device.restart_count, device.clock)
    now = parsed.counters
    if went_backwards(now, seen):
        raise AttestationRejected(
            "counters-backwards",
            f"TPM counters went backwards (reset/restart/clock {now} after {seen}): an old quote?",
        )


def went_backwards(counters: tuple[int, int, int], seen: tuple[int, int, int]) -> bool:
    """TPM (reset count, restart count, clock) `counters` are older than `seen` (`check_counters`' rule)."""
    return counters[0] < seen[0] or (counters[0] == seen[0] and (counters[1] < seen[1] or counters[2] < seen[2]))


def sealed_to(plan: Plan) -> dict[str, str | None]:
    """Each sealed vault of the plan and the attestation its key is sealed to (None: explicit PCRs)."""
    return {vault.name: vault.seal.attestation for vault in plan.vaults if vault.seal is not None}


def verify_quote(store: Store, quote: Quote, attestation: Attestation, now: int,
                 sealed: dict[str, str | None] | None = None) -> VerifiedQuote:
    """`sealed` is `sealed_to(plan)` of the plan `attestation` is from: it is recorded with the verified
    quote, which releases only the keys of vaults sealed to `attestation` (none when not given)."""
    device = store.device(quote.device_id)
    if device is None:
        raise AttestationRejected(
            "device-unknown", f"device `{quote.device_id}` is not enrolled", hint="enrol it with `vaultpolicy controller enroll`"
        )
    parsed = check_signature(quote, device.ak_public_pem, device.ak_name)
    if quote.purpose != "release":  # signed: check_signature recomputed the qualifying data from it
        raise AttestationRejected(
            "not-a-release-quote", f"the quote was made for a {quote.purpose}, not for key release",
            hint="have the device quote with `vaultpolicy device quote --nonce N`",
        )
    if device.storage_public is None:
        raise AttestationRejected("release-key-mismatch", f"device `{quote.device_id}` was enrolled before releases were "
                                  "bound to its TPM's storage key", hint="enrol the output of a new `vaultpolicy device identity`")
    if quote.bound_sha256 != storage_parent_binding(device.storage_public):
        raise AttestationRejected("release-key-mismatch", "quote binds a storage key other than the enrolled one")
    with nonces.spend(store, quote.nonce, quote.device_id, now, quote.digest(), attestation):  # one store transaction
        check_pcr_digest(quote, parsed, attestation)
        problems = attestation.not_allowed(quote.pcrs, unlisted_allowed=False)
        if problems:
            raise AttestationRejected(
                "pcr-not-allowed",
                f"PCRs not allowed by attestation `{attestation.name}`: " + "; ".join(problems.values()),
                hint="if this is a legitimate update, add the new values to the policy's `allow` list",
                pcrs=sorted(problems),
            )
        # read again inside the transaction: another process may have verified a later quote meanwhile
        check_counters(store.device(quote.device_id), parsed)
        store.record_counters(quote.device_id, parsed.reset_count, parsed.restart_count, parsed.clock)
        store.add_verified_quote(quote.digest(), quote.device_id, now, now + attestation.nonce_lifetime_seconds,
                                 attestation.name, quote.bank, dict(quote.pcrs), dict(sealed or {}))
    return VerifiedQuote(
        quote.device_id, quote.digest(), quote.purpose, quote.bound_sha256, dict(quote.pcrs),
        parsed.reset_count, parsed.restart_count, parsed.clock,
    )


def _selection_text(selection: dict[str, tuple[int, ...]]) -> str:
    return " ".join(f"{bank}:{','.join(map(str, pcrs))}" for bank, pcrs in selection.items()) or "no PCRs"
