"""Keys and data handling: rotation at most daily, no `destroy` on protected vaults, escrow needs a key."""

from __future__ import annotations

from collections.abc import Iterator

from policy_lang.diagnostics import Diagnostic, Span, error

from .. import codes
from ..model import Model, first_span
from ..units import format_duration

ONE_DAY = 86400


def rotation(model: Model) -> Iterator[Diagnostic]:
    reported: set[Span] = set()  # a `rotate` in `defaults` serves many vaults: report it once
    for vault in model.vaults.values():
        rotate = vault.rotate_seconds
        if rotate.value is None or rotate.value >= ONE_DAY or rotate.span in reported:
            continue
        reported.add(rotate.span)
        yield error(
            codes.ROTATION_TOO_SHORT,
            f"vault `{vault.name.value}` rotates its key every {format_duration(rotate.value)}, more often than once a day",
            rotate.span,
            "rotate every 1d or longer",
        )


def destroy_protected(model: Model) -> Iterator[Diagnostic]:
    for vault in model.vaults.values():
        if vault.protected.value and vault.on_remove.value == "destroy":
            why = "is protected" if vault.protected.span else "is a protected built-in vault"
            yield error(
                codes.DESTROY_PROTECTED,
                f"vault `{vault.name.value}` {why} but says `on_remove destroy`",
                first_span(vault.on_remove.span, vault.protected.span, vault.name.span),
                "a protected vault's data is never destroyed: use `on_remove retain`",
            )


def escrow_key(model: Model) -> Iterator[Diagnostic]:
    if model.device.escrow_key is not None:
        return
    for att in model.attestations.values():
        if att.escrow_required.value:
            yield error(
                codes.ESCROW_WITHOUT_KEY,
                f"attestation `{att.name.value}` requires escrow but no escrow key is configured",
                att.escrow_required.span,
                "add `escrow_key \"controller-escrow.pub\"` to the `device` block (see `vaultpolicy controller escrow-keygen`)",
            )


RULES = (rotation, destroy_protected, escrow_key)
