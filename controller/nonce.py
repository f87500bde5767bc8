"""Attestation nonces: random, 12–32 bytes, issued for one device, single use, short-lived (S10).

`now` is passed in (unix seconds) so tests fix the clock instead of sleeping.
"""

from __future__ import annotations

import secrets

from compiler.plan import Attestation
from controller.errors import AttestationRejected
from controller.store import Store


def issue(store: Store, device_id: str, attestation: Attestation, now: int) -> bytes:
    """A fresh nonce of the policy's size and lifetime, recorded as issued to `device_id`."""
    nonce = secrets.token_bytes(attestation.nonce_bytes)
    store.add_nonce(nonce, device_id, now, now + attestation.nonce_lifetime_seconds)
    return nonce


def consume(store: Store, nonce: bytes, device_id: str, now: int) -> None:
    """Use the nonce once for `device_id`, or raise naming why it is refused."""
    if not 12 <= len(nonce) <= 32:
        raise AttestationRejected("nonce-unknown", f"nonce is {len(nonce)} bytes; nonces are 12 to 32 bytes")
    record = store.get_nonce(nonce)
    if record is None:
        raise AttestationRejected("nonce-unknown", "nonce was not issued by this controller")
    if record.device_id != device_id:
        raise AttestationRejected(
            "nonce-wrong-device", f"nonce was issued to device `{record.device_id}`, not `{device_id}`"
        )
    if record.used_at is not None:
        raise AttestationRejected("nonce-used", "nonce was already used (a replayed quote?)")
    if now >= record.expires_at:
        raise AttestationRejected(
            "nonce-expired", f"nonce expired {now - record.expires_at}s ago", hint="ask for a new nonce and quote again"
        )
    if not store.mark_nonce_used(nonce, now):
        raise AttestationRejected("nonce-used", "nonce was already used (a replayed quote?)")
