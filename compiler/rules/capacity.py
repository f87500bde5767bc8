"""Capacity: vault limits plus the reserve fit the device's stated capacity."""

from __future__ import annotations

from collections.abc import Iterator

from policy_lang.diagnostics import Diagnostic, error, warning

from .. import codes
from ..model import Model
from ..plan import MIN_VAULT_LIMIT_BYTES
from ..units import format_size


def total_limits(model: Model) -> Iterator[Diagnostic]:
    capacity = model.device.capacity_bytes
    if capacity.value is None:
        return
    reserve = model.device.reserve_bytes.value
    total = sum(v.limit_bytes.value or 0 for v in model.vaults.values())
    if total + reserve > capacity.value:
        biggest = sorted((v for v in model.vaults.values() if v.limit_bytes.value), key=lambda v: -v.limit_bytes.value)[:5]
        largest = ", ".join(f"`{v.name.value}` {format_size(v.limit_bytes.value)}" for v in biggest)
        yield error(
            codes.OVER_CAPACITY,
            f"vault limits ({format_size(total)}) plus the reserve ({format_size(reserve)}) exceed the capacity {format_size(capacity.value)}",
            capacity.span,
            "lower some vault limits or the reserve",
            notes=[f"largest limits: {largest}"] if largest else [],
        )


def unlimited_vaults(model: Model) -> Iterator[Diagnostic]:
    capacity = model.device.capacity_bytes
    if capacity.value is None:
        return
    for vault in model.vaults.values():
        if vault.limit_bytes.value is not None:
            continue
        name = vault.name.value
        if vault.name.span is not None:
            yield warning(codes.NO_LIMIT, f"vault `{name}` has no limit, so the capacity check cannot account for it",
                          vault.name.span, "add `limit SIZE` to the vault")
        else:  # a built-in vault the policy does not write: the capacity it escapes is where to point
            yield warning(codes.NO_LIMIT, f"built-in vault `{name}` has no limit, so the capacity check cannot "
                          "account for it", capacity.span, f"declare it with a limit: `vault {name} {{ limit SIZE }}`")


def limits_too_small(model: Model) -> Iterator[Diagnostic]:
    for vault in model.vaults.values():
        limit = vault.limit_bytes
        if limit.value is not None and limit.value < MIN_VAULT_LIMIT_BYTES and limit.span is not None:
            yield error(
                codes.LIMIT_TOO_SMALL,
                f"vault `{vault.name.value}` has a limit of {format_size(limit.value)}, below the device's "
                f"minimum of {format_size(MIN_VAULT_LIMIT_BYTES)}",
                limit.span,
                f"raise the limit to at least {format_size(MIN_VAULT_LIMIT_BYTES)} (the device makes each limited "
                "vault its own filesystem image), or remove it",
            )


RULES = (total_limits, unlimited_vaults, limits_too_small)
