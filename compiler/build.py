"""Resolved `Model` -> `compiler.plan.Plan`: sorted, defaults filled, no floats, no spans.

The only I/O is reading the files the policy names (`escrow_key`, `allow pcr N from "…"`), through an
injectable reader, relative to the policy file that names them. Sorting every collection by name
makes the same policy give the same bytes and keeps diffs free of reordering noise.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from policy_lang.diagnostics import Diagnostics, error
from policy_lang.load import UnreadableInput, read_input_file

from . import codes
from . import model as m
from . import plan as p
from .model import first_span
from .pathutil import containing
from .rules.coverage import vault_path_index
from .signing import describe_key_file
from vaultpolicy.encoding import b64decode_exact, json_problem, not_utf8

FileReader = Callable[[Path], bytes]  # raises OSError or UnreadableInput, as read_input_file


@dataclass(frozen=True)
class BuildOptions:
    plan_version: int
    issued_at: datetime
    valid_for_seconds: int
    source_sha256: str
    prev_plan_sha256: str | None = None
    targets: tuple[str, ...] = ()
    # Vaults the previous plan protected (`Plan.protected_vaults`) -> the encryption it gave each, None
    # for one that has left it: protection is sticky along the chain of plans, as on the device (S16),
    # which refuses a plan that destroys such a vault or changes its encryption.
    kept_protected: Mapping[str, str | None] = field(default_factory=dict)


def kept_protection(previous: p.Plan) -> dict[str, str | None]:
    """`BuildOptions.kept_protected` for a plan compiled after `previous`."""
    return {name: vault.encryption if (vault := previous.vault(name)) else None
            for name in sorted(previous.protected_vaults())}


def _relative_to_policy(located: m.Located[str], fallback_file: str) -> Path:
    named = Path(located.value)
    origin = Path(located.span.file if located.span else fallback_file)
    return named if named.is_absolute() else origin.parent / named


def _unreadable(exc: OSError | UnreadableInput) -> str:
    """Why `read_input_file` refused a file the policy names, as `policy_lang.load.unreadable` says it."""
    return (exc.strerror or str(exc)).lower() if isinstance(exc, OSError) else str(exc)


def _escrow_public_key(device: m.Device, file: str, read: FileReader, diagnostics: Diagnostics) -> str | None:
    if device.escrow_key is None:
        return None
    path = _relative_to_policy(device.escrow_key, file)
    try:
        data = read(path)
    except (OSError, UnreadableInput) as exc:
        why = _unreadable(exc)
    else:
        raw = _x25519_raw(data)
        if raw is not None:
            return base64.b64encode(raw).decode()
        why = f"it is {describe_key_file(data)}, not an X25519 escrow public key"
    diagnostics.append(
        error(codes.ESCROW_KEY_UNREADABLE, f"cannot use escrow key file `{path}`: {why}", device.escrow_key.span,
              "create it with `vaultpolicy controller escrow-keygen`")
    )
    return None


def _x25519_raw(data: bytes) -> bytes | None:
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            return None
        if not isinstance(key, X25519PublicKey):
            return None
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = b64decode_exact(data.strip())
    except binascii.Error:
        return None
    return raw if len(raw) == 32 else None


def _reference_values(rule: m.AllowRule, bank: str, file: str, read: FileReader, diagnostics: Diagnostics) -> tuple[str, ...]:
    path = _relative_to_policy(rule.reference_file, file)
    digits = p.BANK_DIGEST_BYTES[bank] * 2
    fix = f"write one {bank} digest ({digits} hexadecimal digits) a line"
    try:
        text = read(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        why = json_problem(not_utf8(exc))
    except (OSError, UnreadableInput) as exc:
        why, fix = _unreadable(exc), "check the file name: it is relative to the policy file that names it"
    else:
        numbered = [(n, line.split("#", 1)[0].strip().lower()) for n, line in enumerate(text.splitlines(), 1)]
        numbered = [(n, value) for n, value in numbered if value]
        not_digests = [n for n, value in numbered if not re.fullmatch(f"[0-9a-f]{{{digits}}}", value)]
        if numbered and not not_digests:
            return tuple(value for _, value in numbered)
        why = f"line {not_digests[0]} is not a {bank} digest" if not_digests else "it holds no digests (only comments or blank lines)"
    diagnostics.append(
        error(codes.ALLOW_FILE_UNREADABLE, f"cannot read allowed values for PCR {rule.pcr.value} from `{path}`: {why}",
              rule.reference_file.span, fix)
    )
    return ()


def _seal(seal: m.Seal | None) -> p.Seal | None:
    if seal is None:
        return None
    return p.Seal(bank=seal.bank.value, pcrs=seal.indexes(), attestation=seal.attestation.value if seal.attestation else None)


def _vault(vault: m.Vault) -> p.Vault:
    return p.Vault(
        name=vault.name.value,
        path=vault.path.value,
        encryption=vault.encryption.value,
        limit_bytes=vault.limit_bytes.value or 0,  # 0: no limit stated
        rotate_seconds=vault.rotate_seconds.value if vault.encrypted else None,  # a plain vault has no key to rotate
        seal=_seal(vault.seal),
        on_remove=vault.on_remove.value,
        protected=vault.protected.value,
        builtin=vault.builtin,
        holds=tuple(sorted({h.value for h in vault.holds})),
    )


def _attestation(att: m.Attestation, allowed: dict[str, tuple[str, ...]]) -> p.Attestation:
    return p.Attestation(
        name=att.name.value,
        bank=att.bank.value,
        pcrs=tuple(sorted({x.value for x in att.pcrs})),
        allowed=allowed,
        nonce_bytes=att.nonce_bytes.value,
        nonce_lifetime_seconds=att.nonce_lifetime_seconds.value,
        escrow_required=att.escrow_required.value,
        on_failure=att.on_failure,
    )


def _allowed_values(att: m.Attestation, file: str, read: FileReader, diagnostics: Diagnostics) -> dict[str, tuple[str, ...]]:
    """PCR index -> sorted allowed digests, those written inline and those in the named files."""
    allowed: dict[str, set[str]] = {}
    for rule in att.allow:
        values = [v.value.lower() for v in rule.values]
        if rule.reference_file is not None:
            values.extend(_reference_values(rule, att.bank.value, file, read, diagnostics))
        allowed.setdefault(str(rule.pcr.value), set()).update(values)
    return {pcr: tuple(sorted(values)) for pcr, values in sorted(allowed.items(), key=lambda kv: int(kv[0]))}


@dataclass(frozen=True)
class NamedFiles:
    """What the files a policy names say: the escrow public key (base64) and, per attestation, the
    allowed PCR values."""

    escrow_public_key: str | None
    allowed: dict[str, dict[str, tuple[str, ...]]]


def read_named_files(model: m.Model, read: FileReader = read_input_file) -> tuple[NamedFiles, Diagnostics]:
    """Read every file the policy names; a missing or unusable one is a diagnostic at its name.

    `check` and `build` both call this, so check reports exactly what compile would refuse."""
    diagnostics = Diagnostics()
    escrow = _escrow_public_key(model.device, model.file, read, diagnostics)
    allowed = {name: _allowed_values(att, model.file, read, diagnostics) for name, att in model.attestations.items()}
    return NamedFiles(escrow, allowed), diagnostics


def _breaks_kept_protection(model: m.Model, kept: Mapping[str, str | None]) -> Diagnostics:
    """What the device refuses for a vault the previous plan protected, since it keeps the protection:
    `on_remove destroy` (VP0602 covers a vault this policy protects) and another encryption, which
    would migrate the data (VP0606). A setting of `defaults` is reported once, for every such vault."""
    diagnostics = Diagnostics()
    stays = "(protection, once in a plan, stays)"
    destroyed = [v for v in model.vaults.values()
                 if v.name.value in kept and not v.protected.value and v.on_remove.value == "destroy"]
    for setting in model.settings(lambda vault: first_span(vault.on_remove.span, vault.name.span), destroyed):
        diagnostics.append(error(
            codes.DESTROY_PROTECTED, _kept_protection_broken(setting, "on_remove destroy", "says `on_remove destroy`"),
            setting.span, f"a protected vault's data is never destroyed: use `on_remove retain` {stays}",
            notes=setting.notes))
    changed = [v for v in model.vaults.values() if kept.get(v.name.value) not in (None, v.encryption.value)]
    for setting in model.settings(lambda vault: first_span(vault.encryption.span, vault.name.span), changed):
        first, after = setting.vaults[0].name.value, setting.vaults[0].encryption.value
        keep = ", ".join(f"`encryption {kept[v.name.value]}`" + (f" in vault `{v.name.value}`" if setting.in_defaults else "")
                         for v in setting.vaults)
        diagnostics.append(error(
            codes.PROTECTED_ENCRYPTION_CHANGED,
            _kept_protection_broken(setting, f"encryption {after}", f"its encryption changes from `{kept[first]}` to `{after}`"),
            setting.span, f"a protected vault's data never migrates: keep {keep} {stays}", notes=setting.notes))
    return diagnostics


def _kept_protection_broken(setting: m.Setting, written: str, change: str) -> str:
    """The message for a vault the previous plan protected whose setting the device refuses: the
    vault's own `change`, or the `written` setting of `defaults` that such vaults inherit."""
    if setting.in_defaults:
        which = ("vaults the previous plan protected inherit" if len(setting.vaults) > 1
                 else "a vault the previous plan protected inherits")
        return f"`defaults` says `{written}`, which {which}, and the device keeps that protection"
    return (f"vault `{setting.vaults[0].name.value}` was protected by the previous plan, and the device keeps that "
            f"protection, but {change}")


class BuiltPlanInconsistent(RuntimeError):
    """A bug of ours: the rules passed a policy whose plan `compiler.plan.inconsistencies` (what
    decoding and the device check) finds fault with. Such a plan is never written."""


def build(model: m.Model, options: BuildOptions, read: FileReader = read_input_file) -> tuple[p.Plan | None, Diagnostics]:
    """The plan, or None with the diagnostics saying why (only the named files can fail here).

    Raises BuiltPlanInconsistent for a plan that decoding would refuse, so none is ever written."""
    named, diagnostics = read_named_files(model, read)
    diagnostics.extend(_breaks_kept_protection(model, options.kept_protected))
    if diagnostics.has_errors():
        return None, diagnostics
    index = vault_path_index(model)
    device = model.device
    plan_device = p.Device(
        persist=device.persist.value,
        capacity_bytes=device.capacity_bytes.value,
        reserve_bytes=device.reserve_bytes.value,
        tpm_required=device.tpm_required,
        bank=device.bank.value,
        allow_unmeasured_boot=device.allow_unmeasured_boot,
        escrow_public_key=named.escrow_public_key,
    )
    attestations = tuple(
        _attestation(model.attestations[name], named.allowed[name]) for name in sorted(model.attestations)
    )
    vaults = tuple(_vault(model.vaults[name]) for name in sorted(model.vaults))
    plan = p.Plan(
        plan_version=options.plan_version,
        issued_at=p.format_time(options.issued_at),
        expires=p.format_time(options.issued_at + timedelta(seconds=options.valid_for_seconds)),
        source_sha256=options.source_sha256,
        prev_plan_sha256=options.prev_plan_sha256,
        targets=tuple(sorted(set(options.targets))),
        device=plan_device,
        vaults=vaults,
        apps=tuple(
            p.App(name=app.name.value, vault=app.vault.value if app.vault else None, end_to_end=app.end_to_end.value)
            for app in (model.apps[name] for name in sorted(model.apps))
        ),
        components=tuple(
            p.Component(
                name=comp.name.value,
                stores=tuple(
                    p.Store(path=s.path.value, sensitive=s.sensitive, vault=containing(index, s.path.value))
                    for s in sorted(comp.stores, key=lambda s: (s.path.value, s.sensitive))
                ),
            )
            for comp in (model.components[name] for name in sorted(model.components))
        ),
        attestations=attestations,
        protected=tuple(sorted({v.name for v in vaults if v.protected} | set(options.kept_protected))),
    )
    for problem in p.inconsistencies(plan):
        raise BuiltPlanInconsistent(f"the compiler built a plan that decoding refuses: {problem}")
    return plan, diagnostics
