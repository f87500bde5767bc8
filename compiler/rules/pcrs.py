"""PCRs and attestation: no PCR 5 and no resettable PCR, each PCR once, volatile PCRs warned, firmware
anchors present, no presence-only binding, allowed values for covered PCRs and of the bank's digest
size, nonces valid for minutes.

PCR indexes (0-23), banks, nonce sizes and lifetimes are literals the language checks as it reads
them (VP0012, VP0014, VP0013, VP0011): the model never holds another value."""

from __future__ import annotations

import re
from collections.abc import Iterator

from policy_lang.diagnostics import Diagnostic, Span, error, warning

from .. import codes
from ..model import Located, Model, first_span
from ..plan import BANK_DIGEST_BYTES, NEVER_SEALED_PCR
from ..units import format_duration

_VOLATILE = {
    1: (codes.PCR1_VOLATILE, "PCR 1 changes when a bootable USB stick is plugged in or a firmware setting changes"),
    8: (codes.PCR_UPDATE_VOLATILE, "PCR 8 measures the boot loader's commands, which change with kernel and GRUB updates"),
    9: (codes.PCR_UPDATE_VOLATILE, "PCR 9 measures the kernel and initrd GRUB loads, which change with every update"),
    10: (codes.PCR_RUNTIME_VOLATILE, "PCR 10 is the IMA log, extended at runtime with every file the kernel measures"),
    11: (codes.PCR_PHASE_VOLATILE, "PCR 11 is extended at each boot phase (systemd-stub, systemd-pcrphase)"),
    12: (codes.PCR_PHASE_VOLATILE, "PCR 12 measures the kernel command line and credentials, which vary per boot"),
}
# Any program with TPM access can reset these and extend them to any value: they bind nothing.
_RESETTABLE = {16: "PCR 16 is the debug PCR", 23: "PCR 23 is the application support PCR"}
# A nonce is a freshness proof: longer than this, a recorded quote can be replayed for too long.
MAX_NONCE_LIFETIME_SECONDS = 10 * 60


def check_pcr_list(owner: str, pcrs: tuple[Located[int], ...], anchor: Span | None,
                   notes: tuple[str, ...] = ()) -> Iterator[Diagnostic]:
    """The checks every PCR selection gets; `anchor` is where to point for what is missing."""
    seen: set[int] = set()
    for pcr in pcrs:
        if pcr.value in seen:
            yield warning(codes.PCR_REPEATED, f"{owner} lists PCR {pcr.value} twice", pcr.span,
                          f"remove the second {pcr.value}: the plan seals to each PCR once", notes)
            continue
        seen.add(pcr.value)
        if pcr.value == NEVER_SEALED_PCR:
            yield error(
                codes.PCR5_SEALED,
                f"{owner} seals to PCR 5, which flips on every A/B update",
                pcr.span,
                "remove 5: PCR 5 measures the GPT, which changes with each update and would lock the device out",
                notes,
            )
        elif pcr.value in _RESETTABLE:
            yield error(
                codes.PCR_RESETTABLE,
                f"{owner} seals to PCR {pcr.value}, which any program can reset",
                pcr.span,
                f"remove {pcr.value}: {_RESETTABLE[pcr.value]}, resettable and extendable from software, so it "
                "proves nothing about the boot",
                notes,
            )
        elif pcr.value in _VOLATILE:
            code, why = _VOLATILE[pcr.value]
            yield warning(code, f"{owner} seals to volatile PCR {pcr.value}", pcr.span, f"{why}; consider removing it", notes)
    if not pcrs:
        return
    present = {p.value for p in pcrs}
    missing_firmware = [i for i in (0, 4) if i not in present]
    if missing_firmware:
        yield warning(
            codes.MISSING_FIRMWARE_ANCHOR,
            f"{owner} does not seal to firmware PCR{'s' if len(missing_firmware) > 1 else ''} {' and '.join(map(str, missing_firmware))}",
            anchor,
            "add PCR 0 (firmware) and PCR 4 (boot loader): without them a modified boot chain can unseal the key",
            notes,
        )
    if 7 not in present:
        yield warning(
            codes.MISSING_SECURE_BOOT_PCR,
            f"{owner} does not seal to PCR 7 (secure boot state)",
            anchor,
            "add PCR 7 so that disabling secure boot or changing its keys keeps the vault locked",
            notes,
        )


def attestations(model: Model) -> Iterator[Diagnostic]:
    for att in model.attestations.values():
        owner = f"attestation `{att.name.value}`"
        yield from check_pcr_list(owner, att.pcrs, att.name.span)
        yield from _allow_rules(att)
        lifetime = att.nonce_lifetime_seconds
        if lifetime.value > MAX_NONCE_LIFETIME_SECONDS:
            yield warning(
                codes.NONCE_LIFETIME_LONG,
                f"{owner}'s nonce stays valid for {format_duration(lifetime.value)}",
                lifetime.span,
                "a nonce proves the quote is fresh: a quote recorded while it is valid can be replayed until it "
                f"expires; keep it to minutes (at most {format_duration(MAX_NONCE_LIFETIME_SECONDS)}), e.g. `valid 5m`",
            )


def _allow_rules(att) -> Iterator[Diagnostic]:
    covered = {p.value for p in att.pcrs}
    digest_hex = BANK_DIGEST_BYTES.get(att.bank.value, 0) * 2
    for rule in att.allow:
        if rule.pcr.value not in covered:
            yield error(
                codes.ALLOW_UNSEALED_PCR,
                f"attestation `{att.name.value}` allows values for PCR {rule.pcr.value}, which it does not cover",
                rule.pcr.span,
                f"add {rule.pcr.value} to `pcrs`, or remove this rule",
            )
        for value in rule.values:
            if digest_hex and not re.fullmatch(f"[0-9a-fA-F]{{{digest_hex}}}", value.value):
                yield error(
                    codes.ALLOW_BAD_DIGEST,
                    f"`{value.value}` is not a {att.bank.value} digest",
                    value.span,
                    f"write {digest_hex} hexadecimal digits",
                )


def vault_seals(model: Model) -> Iterator[Diagnostic]:
    """Explicit `seal pcrs …` settings (once per setting: one in `defaults` serves many vaults), and
    presence-only bindings wherever they come from."""
    sealed = [vault for vault in model.vaults.values() if vault.seal is not None]
    # sealed by default to the policy's one attestation, which lists no PCRs: one error at the attestation
    by_default: dict[str, list[str]] = {}
    for vault in sealed:
        seal = vault.seal
        if seal.span is None and seal.attestation is not None and not seal.pcrs \
                and seal.attestation.value in model.attestations:
            by_default.setdefault(seal.attestation.value, []).append(vault.name.value)
    for name, vaults in by_default.items():
        # the vaults in a note: a check of a file with a broken block compares messages, and which vaults
        # take the default depends on what the broken block would have said
        yield error(
            codes.PRESENCE_ONLY,
            f"attestation `{name}` lists no PCRs, and vaults are sealed to it by default (it is the policy's "
            "only attestation): presence-only binding",
            model.attestations[name].name.span,
            "any boot of this TPM could unseal their keys; list its PCRs (`pcrs 0, 4, 7`), or give the vaults a "
            "`seal` of their own",
            notes=("sealed to it by default: " + ", ".join(f"vault `{v}`" for v in vaults),),
        )
    implicit = {v for names in by_default.values() for v in names}
    sealed = [vault for vault in sealed if vault.name.value not in implicit]
    for setting in model.settings(lambda vault: vault.seal.span, sealed):
        vault, seal = setting.vaults[0], setting.vaults[0].seal
        if seal.attestation is None and seal.span is not None:
            yield from check_pcr_list(setting.owner, seal.pcrs, seal.span, setting.notes)
        unknown_attestation = seal.attestation is not None and seal.attestation.value not in model.attestations
        if not seal.pcrs and not unknown_attestation:
            via = f" through attestation `{seal.attestation.value}`" if seal.attestation else ""
            sealed_how = f"`defaults` seals{via}" if setting.in_defaults else f"vault `{vault.name.value}` is sealed{via}"
            yield error(
                codes.PRESENCE_ONLY,
                f"{sealed_how} to no PCRs: presence-only binding",
                first_span(seal.span, vault.name.span, model.attestations[seal.attestation.value].name.span if seal.attestation else None),
                "any boot of this TPM could unseal the key; list PCRs such as 0, 4, 7",
                notes=setting.notes,
            )


def banks(model: Model) -> Iterator[Diagnostic]:
    """Each bank written in the policy: SHA-1 warned, and one other than the device's warned where it
    is used (an attestation, a `seal pcrs … bank`), since the firmware may extend only the device's."""
    device_bank = model.device.bank
    written = [("`device`", device_bank)] if device_bank.span is not None else []
    written += [(f"attestation `{att.name.value}`", att.bank) for att in model.attestations.values()
                if att.bank.span is not None]
    # a seal that names no bank of its own holds the device's (the same object): reported once, as `device`
    sealed = [vault for vault in model.vaults.values() if vault.seal is not None and vault.seal.attestation is None
              and vault.seal.bank is not device_bank and vault.seal.bank.span is not None]
    written += [(setting.owner, setting.vaults[0].seal.bank) for setting in model.settings(lambda v: v.seal.bank.span, sealed)]
    for owner, bank in written:
        if bank.value == "sha1":
            yield warning(codes.BANK_SHA1, f"{owner} uses the SHA-1 PCR bank", bank.span,
                          "SHA-1 collides in practice: write `bank sha256` where the TPM has that bank")
        if bank is not device_bank and bank.value != device_bank.value:
            yield warning(
                codes.BANK_NOT_MEASURED,
                f"{owner} reads PCR bank {bank.value}, but the device's bank is {device_bank.value}",
                bank.span,
                f"the firmware may extend only {device_bank.value}: a bank it never extends binds nothing; "
                f"write `bank {device_bank.value}`, or change `device {{ bank }}` if the firmware extends {bank.value}",
            )


RULES = (attestations, vault_seals, banks)
