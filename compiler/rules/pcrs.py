"""PCRs and attestation: indexes in range, a supported bank, no PCR 5, volatile PCRs warned, firmware
anchors present, no presence-only binding, sane nonces and allowed values."""

from __future__ import annotations

import re
from collections.abc import Iterator

from policy_lang.diagnostics import Diagnostic, Span, error, warning

from .. import codes
from ..model import Located, Model, first_span

BANK_DIGEST_BYTES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
MAX_PCR = 23
_VOLATILE = {
    1: (codes.PCR1_VOLATILE, "PCR 1 changes when a bootable USB stick is plugged in or a firmware setting changes"),
    11: (codes.PCR_PHASE_VOLATILE, "PCR 11 is extended at each boot phase (systemd-stub, systemd-pcrphase)"),
    12: (codes.PCR_PHASE_VOLATILE, "PCR 12 measures the kernel command line and credentials, which vary per boot"),
}


def check_bank(bank: Located[str]) -> Iterator[Diagnostic]:
    if bank.value not in BANK_DIGEST_BYTES:
        yield error(
            codes.UNSUPPORTED_BANK,
            f"PCR bank `{bank.value}` is not supported",
            bank.span,
            f"use one of {', '.join(f'`{b}`' for b in BANK_DIGEST_BYTES)}",
        )


def check_pcr_list(owner: str, pcrs: tuple[Located[int], ...], anchor: Span | None) -> Iterator[Diagnostic]:
    """The checks every PCR selection gets; `anchor` is where to point for what is missing."""
    for pcr in pcrs:
        if not 0 <= pcr.value <= MAX_PCR:
            yield error(codes.PCR_OUT_OF_RANGE, f"PCR {pcr.value} does not exist", pcr.span, f"PCR indexes are 0 to {MAX_PCR}")
        elif pcr.value == 5:
            yield error(
                codes.PCR5_SEALED,
                f"{owner} seals to PCR 5, which flips on every A/B update",
                pcr.span,
                "remove 5: PCR 5 measures the GPT, which changes with each update and would lock the device out",
            )
        elif pcr.value in _VOLATILE:
            code, why = _VOLATILE[pcr.value]
            yield warning(code, f"{owner} seals to volatile PCR {pcr.value}", pcr.span, f"{why}; consider removing it")
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
        )
    if 7 not in present:
        yield warning(
            codes.MISSING_SECURE_BOOT_PCR,
            f"{owner} does not seal to PCR 7 (secure boot state)",
            anchor,
            "add PCR 7 so that disabling secure boot or changing its keys keeps the vault locked",
        )


def attestations(model: Model) -> Iterator[Diagnostic]:
    for att in model.attestations.values():
        owner = f"attestation `{att.name.value}`"
        yield from check_bank(att.bank)
        yield from check_pcr_list(owner, att.pcrs, att.name.span)
        if not 12 <= att.nonce_bytes.value <= 32:
            yield error(
                codes.NONCE_SIZE,
                f"{owner} asks for {att.nonce_bytes.value}-byte nonces",
                att.nonce_bytes.span,
                "nonces are 12 to 32 bytes; 32 is a good choice",
            )
        if att.nonce_lifetime_seconds.value <= 0:
            yield error(
                codes.NONCE_LIFETIME, f"{owner} gives nonces no lifetime", att.nonce_lifetime_seconds.span, "use e.g. `valid 5m`"
            )
        yield from _allow_rules(att)


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
    """Explicit `seal pcrs …` settings (checked once per setting: `defaults` serves many vaults), and
    presence-only bindings wherever they come from."""
    checked: set[Span] = set()
    for vault in model.vaults.values():
        seal = vault.seal
        if seal is None:
            continue
        owner = f"vault `{vault.name.value}`"
        if seal.attestation is None and seal.span is not None and seal.span not in checked:
            checked.add(seal.span)
            yield from check_bank(seal.bank)
            yield from check_pcr_list(owner, seal.pcrs, seal.span)
        unknown_attestation = seal.attestation is not None and seal.attestation.value not in model.attestations
        if not seal.pcrs and not unknown_attestation:
            via = f" through attestation `{seal.attestation.value}`" if seal.attestation else ""
            yield error(
                codes.PRESENCE_ONLY,
                f"{owner} is sealed{via} to no PCRs: presence-only binding",
                first_span(seal.span, vault.name.span, model.attestations[seal.attestation.value].name.span if seal.attestation else None),
                "any boot of this TPM could unseal the key; list PCRs such as 0, 4, 7",
            )


def device_bank(model: Model) -> Iterator[Diagnostic]:
    yield from check_bank(model.device.bank)


RULES = (attestations, vault_seals, device_bank)
