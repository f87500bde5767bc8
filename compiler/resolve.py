"""AST `Policy` -> resolved `Model`: bind names, apply `defaults`, then the built-in defaults.

Pure: reads no files. Nothing is reported here; what cannot be bound (duplicates, unknown
attestations, misplaced opt-outs) is recorded in the model for the rules to report, so one run
finds every error. Built-in defaults are documented in docs/compiler.md.
"""

from __future__ import annotations

import posixpath

from policy_lang import ast

from . import model as m
from .model import Located

DEFAULT_PERSIST = "/persist"
DEFAULT_ENCRYPTION = "aes-256-xts"
DEFAULT_ROTATE_SECONDS = 180 * 86400
DEFAULT_ON_REMOVE = "retain"
DEFAULT_BANK = "sha256"
DEFAULT_PCRS = (0, 4, 7)  # firmware, boot loader, secure boot state
DEFAULT_NONCE_BYTES = 32
DEFAULT_NONCE_LIFETIME_SECONDS = 300
DEFAULT_ON_FAILURE = ("keep_locked", "deny_release")  # every action, in the order plans list them
# Built-in vaults exist even when undeclared: `config` holds the device configuration (protected),
# `images` holds mutated app images. Both live at `<persist>/vault/<name>`.
BUILTIN_VAULTS = {"config": True, "images": False}  # name -> protected by default


def default_vault_path(persist: str, name: str) -> str:
    return posixpath.join(persist, "vault", name)


def _loc(node, attr: str = "value") -> Located | None:
    return None if node is None else Located(getattr(node, attr), node.span)


def _first_of_kind(items: list, kind: str, duplicates: list[m.Duplicate]):
    for extra in items[1:]:
        duplicates.append(m.Duplicate(kind, kind, extra.span, items[0].span))
    return items[0] if items else None


def _unique_by_name(decls: list, kind: str, duplicates: list[m.Duplicate]) -> dict:
    seen: dict[str, object] = {}
    for decl in decls:
        name = decl.name.value
        if name in seen:
            duplicates.append(m.Duplicate(kind, name, decl.name.span, seen[name].name.span))
        else:
            seen[name] = decl
    return seen


def _device(decl: ast.DeviceDecl | None) -> m.Device:
    d = decl or ast.DeviceDecl.model_construct(span=None)
    return m.Device(
        persist=_loc(d.persist) or Located(DEFAULT_PERSIST),
        capacity_bytes=_loc(d.capacity, "bytes") or Located(None),
        reserve_bytes=_loc(d.reserve, "bytes") or Located(0),
        tpm_required=True if d.tpm_required is None else d.tpm_required,
        bank=_loc(d.bank) or Located(DEFAULT_BANK),
        allow_unmeasured_boot=d.allow_unmeasured_boot is not None,
        escrow_key=_loc(d.escrow_key),
    )


def _attestation(decl: ast.AttestationDecl, device: m.Device) -> m.Attestation:
    return m.Attestation(
        name=_loc(decl.name),
        bank=_loc(decl.bank) or device.bank,
        pcrs=tuple(_loc(p, "index") for p in decl.pcrs),
        allow=tuple(
            m.AllowRule(
                pcr=_loc(rule.pcr, "index"),
                values=tuple(_loc(v) for v in rule.values),
                reference_file=_loc(rule.reference_file),
            )
            for rule in decl.allow
        ),
        nonce_bytes=_loc(decl.nonce_bytes) or Located(DEFAULT_NONCE_BYTES),
        nonce_lifetime_seconds=_loc(decl.nonce_valid, "seconds") or Located(DEFAULT_NONCE_LIFETIME_SECONDS),
        escrow_required=Located(True, decl.escrow_required.span) if decl.escrow_required else Located(False),
        # In one order, each action once: `deny_release, keep_locked` is the same plan as the default.
        on_failure=tuple(a for a in DEFAULT_ON_FAILURE if a in decl.on_failure) or DEFAULT_ON_FAILURE,
    )


class _VaultResolver:
    def __init__(self, device: m.Device, defaults: ast.VaultSettings | None, attestations: dict[str, m.Attestation]):
        self.device = device
        self.defaults = defaults or ast.VaultSettings.model_construct(span=None)
        self.attestations = attestations
        self.unknown_seals: list[tuple[str, Located[str]]] = []

    def setting(self, decl: ast.VaultDecl | None, attr: str):
        own = getattr(decl.settings, attr) if decl is not None else None
        return own if own is not None else getattr(self.defaults, attr)

    def builtin_seal(self) -> m.Seal:
        if len(self.attestations) == 1:
            only = next(iter(self.attestations.values()))
            return m.Seal(only.bank, only.pcrs, Located(only.name.value), None)
        return m.Seal(self.device.bank, tuple(Located(i) for i in DEFAULT_PCRS), None, None)

    def seal(self, vault_name: str, setting: ast.SealSetting | None) -> m.Seal:
        if setting is None:
            return self.builtin_seal()
        if setting.attestation is not None:
            name = _loc(setting.attestation)
            attestation = self.attestations.get(name.value)
            if attestation is None:
                self.unknown_seals.append((vault_name, name))
                return m.Seal(self.device.bank, (), name, setting.span)
            return m.Seal(attestation.bank, attestation.pcrs, name, setting.span)
        bank = _loc(setting.bank) or self.device.bank
        return m.Seal(bank, tuple(_loc(p, "index") for p in setting.pcrs), None, setting.span)

    def vault(self, name: str, decl: ast.VaultDecl | None) -> m.Vault:
        builtin = name in BUILTIN_VAULTS
        encryption = self.setting(decl, "encryption")
        encryption_loc = _loc(encryption, "mode") or Located(DEFAULT_ENCRYPTION)
        rotate = self.setting(decl, "rotate")
        on_remove = self.setting(decl, "on_remove")
        if decl is not None and decl.path is not None:
            path = _loc(decl.path)
        else:
            path = Located(default_vault_path(self.device.persist.value, name), decl.name.span if decl else None)
        if decl is not None and decl.protected is not None:
            protected = Located(True, decl.protected.span)
        else:
            protected = Located(BUILTIN_VAULTS.get(name, False))
        return m.Vault(
            name=Located(name, decl.name.span if decl else None),
            path=path,
            encryption=encryption_loc,
            limit_bytes=_loc(decl.limit, "bytes") if decl and decl.limit else Located(None),
            rotate_seconds=Located(rotate.every.seconds, rotate.span) if rotate else Located(DEFAULT_ROTATE_SECONDS),
            seal=None if encryption_loc.value == "none" else self.seal(name, self.setting(decl, "seal")),
            on_remove=Located(on_remove.action, on_remove.span) if on_remove else Located(DEFAULT_ON_REMOVE),
            protected=protected,
            holds=tuple(_loc(h) for h in decl.holds) if decl else (),
            builtin=builtin,
        )


def resolve(policy: ast.Policy) -> m.Model:
    duplicates: list[m.Duplicate] = []
    device_decl = _first_of_kind(policy.of_type(ast.DeviceDecl), "device", duplicates)
    defaults_decl = _first_of_kind(policy.of_type(ast.DefaultsDecl), "defaults", duplicates)
    device = _device(device_decl)

    attestation_decls = _unique_by_name(policy.of_type(ast.AttestationDecl), "attestation", duplicates)
    attestations = {name: _attestation(decl, device) for name, decl in attestation_decls.items()}

    vault_decls = _unique_by_name(policy.of_type(ast.VaultDecl), "vault", duplicates)
    misplaced = [
        (n, _loc(d.opt_out_reason)) for n, d in vault_decls.items() if d.opt_out_reason is not None and n not in BUILTIN_VAULTS
    ]
    resolver = _VaultResolver(device, defaults_decl.settings if defaults_decl else None, attestations)
    vaults: dict[str, m.Vault] = {}
    for name in BUILTIN_VAULTS:
        decl = vault_decls.get(name)
        if decl is None or decl.opt_out_reason is None:
            vaults[name] = resolver.vault(name, decl)
    for name, decl in vault_decls.items():
        if name not in BUILTIN_VAULTS:  # a misplaced opt-out is reported, the vault still exists
            vaults[name] = resolver.vault(name, decl)

    # An app that names no vault keeps its mutated images in the built-in `images` vault.
    default_app_vault = Located("images") if "images" in vaults else None
    apps = {
        name: m.App(
            name=_loc(decl.name),
            vault=_loc(decl.vault) or default_app_vault,
            end_to_end=Located(True, decl.end_to_end.span) if decl.end_to_end else Located(False),
        )
        for name, decl in _unique_by_name(policy.of_type(ast.AppDecl), "app", duplicates).items()
    }
    components = {
        name: m.Component(
            name=_loc(decl.name),
            stores=tuple(m.Store(_loc(s.path), s.sensitive) for s in decl.stores),
        )
        for name, decl in _unique_by_name(policy.of_type(ast.ComponentDecl), "component", duplicates).items()
    }
    return m.Model(
        file=policy.file,
        device=device,
        vaults=vaults,
        apps=apps,
        components=components,
        attestations=attestations,
        duplicates=tuple(duplicates),
        misplaced_opt_outs=tuple(misplaced),
        unknown_seals=tuple(resolver.unknown_seals),
        defaults=defaults_decl.span if defaults_decl else None,
    )
