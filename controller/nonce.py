"""Attestation nonces: random, 12–32 bytes, issued for one device and one attestation requirement,
single use, short-lived (S10).

`now` is passed in (unix seconds) so tests fix the clock instead of sleeping.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from compiler.plan import Attestation, format_time
from controller.errors import AttestationRejected, StoreError
from controller.store import Nonce, Store
from vaultpolicy.errors import VaultpolicyError


def issue(store: Store, device_id: str, attestation: Attestation, now: int) -> bytes:
    """A fresh nonce of the policy's size and lifetime, recorded as issued to `device_id` for `attestation`."""
    nonce = secrets.token_bytes(attestation.nonce_bytes)
    store.add_nonce(nonce, device_id, attestation.name, now, now + attestation.nonce_lifetime_seconds)
    return nonce


VERIFIED = "verified"  # the outcome recorded for a nonce whose verification succeeded


@contextmanager
def spend(store: Store, nonce: bytes, device_id: str, now: int, quote_sha256: str, attestation: Attestation | None = None,
          *, repeatable: bool = False) -> Iterator[None]:
    """Use the nonce once for `device_id`'s quote, or raise naming why it is refused; the checks run
    inside the block, and how they end is recorded with the nonce, so a later refusal can say what
    used it (an operator's mistake, such as the wrong plan, is then told apart from a replay).

    All of it (the nonce's checks, its use, the block and what the block records, the outcome) is one
    store transaction: another process with the same nonce waits, then finds it used, and a device's
    counters are checked and advanced by one verification at a time. A refusal inside the block is
    committed with the nonce used; a store failure leaves the nonce as it was.

    `attestation`: the requirement the quote is verified against (a release quote). The nonce must have
    been issued for it, and expires by the lifetime it was issued with or by this requirement's, whichever
    ends first: a nonce issued for a lax requirement (or under a plan that allowed longer) does not
    lend its lifetime to a strict one. A report's nonce (None) may be any of the device's.

    `repeatable`: the quote that already used the nonce and verified may be verified again (a drift
    report rendered twice is the same statement); any other quote with the nonce is still a replay."""
    if not 12 <= len(nonce) <= 32:
        raise AttestationRejected("nonce-unknown", f"nonce is {len(nonce)} bytes; nonces are 12 to 32 bytes")
    refusal = None
    with store.transaction():
        record = store.get_nonce(nonce)
        if record is None:
            raise AttestationRejected("nonce-unknown", "nonce was not issued by this controller")
        if record.device_id != device_id:
            raise AttestationRejected(
                "nonce-wrong-device", f"nonce was issued to device `{record.device_id}`, not `{device_id}`"
            )
        if repeatable and (record.used_by, record.outcome) == (quote_sha256, VERIFIED):
            yield
            return
        if record.used_at is not None:
            raise _used(record, quote_sha256)
        expires_at = record.expires_at
        if attestation is not None:
            if record.attestation != attestation.name:
                issued_for = f"attestation `{record.attestation}`" if record.attestation else "no named attestation"
                raise AttestationRejected(
                    "nonce-wrong-attestation", f"nonce was issued for {issued_for}, not `{attestation.name}`",
                    hint=f"get one for it with `vaultpolicy controller nonce --device-id {device_id} --attestation "
                         f"{attestation.name}` and quote again")
            expires_at = min(expires_at, record.issued_at + attestation.nonce_lifetime_seconds)
        if now >= expires_at:
            raise AttestationRejected(
                "nonce-expired", f"nonce expired {now - expires_at}s ago", hint=_NEW_NONCE.format(device_id)
            )
        if not store.mark_nonce_used(nonce, now, quote_sha256):  # checked above in this transaction: never
            raise _used(store.get_nonce(nonce), quote_sha256)
        try:
            yield
        except StoreError:
            raise
        except VaultpolicyError as exc:
            reason = getattr(exc, "reason", None)
            store.record_nonce_outcome(nonce, f"{reason}: {exc.message}" if reason else exc.message)
            refusal = exc
        else:
            store.record_nonce_outcome(nonce, VERIFIED)
    if refusal is not None:
        raise refusal


_NEW_NONCE = "a nonce is single-use: get a new one with `vaultpolicy controller nonce --device-id {}` and quote again"


def _used(record: Nonce, quote_sha256: str) -> AttestationRejected:
    when = format_time(datetime.fromtimestamp(record.used_at, timezone.utc))
    which = "this same quote" if record.used_by == quote_sha256 else "another quote"
    if record.outcome is None:
        ended = "that did not finish"
    elif record.outcome == VERIFIED:
        ended = "that succeeded" + ("" if record.used_by == quote_sha256 else ": this one is a replay")
    else:
        ended = f"that failed ({record.outcome})"
    return AttestationRejected(
        "nonce-used", f"nonce was used at {when} by a verification of {which} {ended}", hint=_NEW_NONCE.format(record.device_id)
    )
