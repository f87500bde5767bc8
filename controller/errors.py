"""Controller refusals: one error type with a stable kebab-case `reason` (like `PlanRejected`)."""

from __future__ import annotations

from vaultpolicy.errors import VaultpolicyError


class AttestationRejected(VaultpolicyError):
    """A nonce, quote, release or report was refused; `reason` is stable, `message` says why.

    `pcrs` names the PCRs at fault when the refusal is about measured values.
    """

    def __init__(self, reason: str, message: str, hint: str | None = None, pcrs: list[int] | None = None):
        super().__init__(message, hint)
        self.reason = reason
        self.pcrs = pcrs or []

    @property
    def shown(self) -> str:
        """With its reason, as the device shows its refusals': `refused (quote-used): keys were …`."""
        return f"refused ({self.reason}): {self.message}"


class StoreError(VaultpolicyError):
    """The controller store cannot be opened, read or written; the message names the file and why."""
