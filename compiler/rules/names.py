"""Names: duplicate declarations, unknown vaults and attestations, misplaced opt-outs."""

from __future__ import annotations

from collections.abc import Iterator

from policy_lang.diagnostics import Diagnostic, error
from vaultpolicy.suggest import did_you_mean

from .. import codes
from ..model import Model
from ..resolve import BUILTIN_VAULTS

_DUPLICATE_CODES = {
    "vault": codes.DUPLICATE_VAULT,
    "attestation": codes.DUPLICATE_ATTESTATION,
    "app": codes.DUPLICATE_APP,
    "component": codes.DUPLICATE_COMPONENT,
    "device": codes.DUPLICATE_BLOCK,
    "defaults": codes.DUPLICATE_BLOCK,
}


def duplicates(model: Model) -> Iterator[Diagnostic]:
    for dup in model.duplicates:
        if dup.kind in ("device", "defaults"):
            message = f"another `{dup.kind}` block"  # at each after the first: the third is no "second"
            help_text = f"merge it into the first `{dup.kind}` block"
        else:
            message = f"{dup.kind} `{dup.name}` is already declared"
            help_text = f"rename one of them or merge their settings; names of {dup.kind}s are unique"
        yield error(_DUPLICATE_CODES[dup.kind], message, dup.span, help_text, notes=[f"first declared at {dup.first}"])


def unknown_vaults(model: Model) -> Iterator[Diagnostic]:
    for app in model.apps.values():
        if app.vault is None or app.vault.value in model.vaults:
            continue
        name = app.vault.value
        if name in BUILTIN_VAULTS:
            help_text = f"the built-in vault `{name}` is opted out in this policy; bind the app to another vault"
        else:
            help_text = did_you_mean(name, model.vaults) or f"declare it with `vault {name} {{ … }}`"
        yield error(codes.UNKNOWN_VAULT, f"app `{app.name.value}` uses unknown vault `{name}`", app.vault.span, help_text)


def unknown_attestations(model: Model) -> Iterator[Diagnostic]:
    # A `seal` in `defaults` applies to many vaults: report it once, at the setting.
    vaults_by_setting: dict = {}
    for vault_name, attestation in model.unknown_seals:
        vaults_by_setting.setdefault(attestation, []).append(vault_name)
    for attestation, vault_names in vaults_by_setting.items():
        name = attestation.value
        help_text = did_you_mean(name, model.attestations) or f"declare it with `attestation {name} {{ pcrs 0, 4, 7 }}`"
        yield error(
            codes.UNKNOWN_ATTESTATION,
            f"unknown attestation `{name}`",
            attestation.span,
            help_text,
            notes=[f"sealing vault{'s' if len(vault_names) > 1 else ''} {', '.join(f'`{v}`' for v in vault_names)}"],
        )


def misplaced_opt_outs(model: Model) -> Iterator[Diagnostic]:
    for vault, reason in model.misplaced_opt_outs:
        yield error(
            codes.OPT_OUT_NOT_BUILTIN,
            f"vault `{vault}` is not built in, so it cannot be opted out of",
            reason.span,
            "delete the vault's block instead: a vault that is not built in exists only when declared; "
            "only the built-in vaults `config` and `images` are opted out of",
        )


RULES = (duplicates, unknown_vaults, unknown_attestations, misplaced_opt_outs)
