"""Keys and data handling: rotation at most daily, no `destroy` on protected vaults, escrow needs a key."""

from __future__ import annotations

from collections.abc import Iterator

from policy_lang.diagnostics import Diagnostic, error

from .. import codes
from ..model import Model, first_span
from ..units import format_duration

ONE_DAY = 86400


def rotation(model: Model) -> Iterator[Diagnostic]:
    for setting in model.settings(lambda vault: vault.rotate_seconds.span):
        seconds = setting.vaults[0].rotate_seconds.value
        if seconds is None or seconds >= ONE_DAY:
            continue
        keys = "keys" if setting.in_defaults else "its key"
        yield error(
            codes.ROTATION_TOO_SHORT,
            f"{setting.owner} rotates {keys} every {format_duration(seconds)}, more often than once a day",
            setting.span,
            "rotate every 1d or longer",
            notes=setting.notes,
        )


def destroy_protected(model: Model) -> Iterator[Diagnostic]:
    destroyed = [v for v in model.vaults.values() if v.protected.value and v.on_remove.value == "destroy"]
    for setting in model.settings(lambda vault: vault.on_remove.span, destroyed):
        vault = setting.vaults[0]
        if setting.in_defaults:
            message = f"`defaults` says `on_remove destroy`, which {'protected vaults inherit' if len(setting.vaults) > 1 else 'a protected vault inherits'}"
            fix = "use `on_remove retain`, in `defaults` or in each protected vault"
        else:
            why = "is protected" if vault.protected.span else "is a protected built-in vault"
            message = f"vault `{vault.name.value}` {why} but says `on_remove destroy`"
            fix = "use `on_remove retain`"
        yield error(
            codes.DESTROY_PROTECTED,
            message,
            first_span(setting.span, vault.protected.span, vault.name.span),
            f"a protected vault's data is never destroyed: {fix}",
            notes=setting.notes,
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
