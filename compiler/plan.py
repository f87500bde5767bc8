"""The plan contract: what the controller signs and the device enforces.

An import leaf (pydantic and rfc8785 only; no lark, no jinja2) so the device can load plans without
the compiler. The in-memory `Plan` and its encoded form are kept apart: `encode_plan` gives the
canonical RFC 8785 bytes that get signed and stored; `decode_plan` reads them back, strictly (S12):
every value has its JSON type (no `"16777216"` for a number, no `0` for false, no `3.0` for 3), no
field is repeated, and the plan is consistent in what a device relies on (`inconsistencies`). No
floats anywhere: sizes in bytes, durations in seconds, times as RFC 3339 UTC strings.

Field use (terraform's rule for plan fields): `reason`-like text fields (`note`) are for people and
must never drive a decision on the device.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Annotated, Literal

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vaultpolicy.encoding import json_problem, load_json
from vaultpolicy.printable import escaped, hidden_character

from .pathutil import is_inside, is_normalized

SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = 1

# The smallest vault limit the device can honour: each limited vault gets its own ext4 image, and a
# smaller one with a journal leaves almost no room. The compiler refuses smaller limits (VP0403)
# so a plan never asks for what the device must refuse.
MIN_VAULT_LIMIT_BYTES = 8 * 1024 * 1024
# RFC 8785 numbers are IEEE doubles: integers are exact only up to 2**53 - 1.
MAX_EXACT_INT = 2**53 - 1
MAX_PCR = 23
NEVER_SEALED_PCR = 5  # measures the GPT, which flips on every A/B update
BANK_DIGEST_BYTES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

Encryption = Literal["aes-256-xts", "adiantum", "none"]
OnRemove = Literal["retain", "destroy"]
PcrBank = Literal["sha1", "sha256", "sha384", "sha512"]
Count = Annotated[int, Field(ge=0, le=MAX_EXACT_INT)]


class PlanModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Seal(PlanModel):
    """What a vault's key is sealed to. `pcrs` is never empty for a sealed vault (S2)."""

    bank: PcrBank
    pcrs: tuple[int, ...] = Field(min_length=1)
    attestation: str | None = None  # the attestation requirement it came from, if any


class Vault(PlanModel):
    name: str
    path: str  # absolute, normalized, inside the device's persist root
    encryption: Encryption
    limit_bytes: Count
    rotate_seconds: Annotated[int, Field(ge=1, le=MAX_EXACT_INT)] | None = None
    seal: Seal | None = None  # None exactly when encryption is "none"
    on_remove: OnRemove
    protected: bool = False
    builtin: bool = False  # one of the default vaults (`config`, `images`)
    holds: tuple[str, ...] = ()  # absolute directories inside `path`


class App(PlanModel):
    name: str
    vault: str | None
    end_to_end: bool = False


class Store(PlanModel):
    path: str
    sensitive: bool
    vault: str | None  # the vault whose path contains it, if any


class Component(PlanModel):
    name: str
    stores: tuple[Store, ...] = ()


class Attestation(PlanModel):
    name: str
    bank: PcrBank
    pcrs: tuple[int, ...]
    allowed: dict[str, tuple[str, ...]] = {}  # PCR index (decimal string) -> allowed hex digests
    nonce_bytes: int = Field(ge=12, le=32)
    nonce_lifetime_seconds: int = Field(gt=0)
    escrow_required: bool = False
    on_failure: tuple[Literal["keep_locked", "deny_release"], ...] = ("keep_locked", "deny_release")

    def not_allowed(self, values: dict[int, bytes], *, unlisted_allowed: bool) -> dict[int, str]:
        """PCR index -> why its value in `values` is not allowed (empty when all are). A PCR this
        attestation lists no values for: refused, unless `unlisted_allowed` (a device sealing to the
        boot it is in, where the author pinned no value; a release always fails closed)."""
        problems: dict[int, str] = {}
        for index in sorted(self.pcrs):  # `values` holds each: the TPM read them, or the quote's selection is checked
            allowed = {v.lower() for v in self.allowed.get(str(index), ())}
            value = values[index].hex()
            if not allowed and not unlisted_allowed:
                problems[index] = f"the policy allows no value for PCR {index}"
            elif allowed and value not in allowed:
                problems[index] = f"PCR {index} = {value} is not an allowed value"
        return problems


class Device(PlanModel):
    persist: str
    capacity_bytes: Count | None = None
    reserve_bytes: Count = 0
    tpm_required: bool = True
    bank: PcrBank = "sha256"
    allow_unmeasured_boot: bool = False  # simulators only: permit sealing while PCR 0 and 4 are zero
    escrow_public_key: str | None = None  # base64 X25519 public key of the controller


class Plan(PlanModel):
    schema_version: str = SCHEMA_VERSION
    plan_version: int = Field(ge=1, le=MAX_EXACT_INT)
    issued_at: str
    expires: str
    source_sha256: str
    prev_plan_sha256: str | None = None
    targets: tuple[str, ...] = ()  # device ids or `class:NAME`; empty means every device
    device: Device
    vaults: tuple[Vault, ...] = ()
    apps: tuple[App, ...] = ()
    components: tuple[Component, ...] = ()
    attestations: tuple[Attestation, ...] = ()
    protected: tuple[str, ...] = ()  # sorted; may name vaults a previous plan protected that have left the plan

    @field_validator("issued_at", "expires")
    @classmethod
    def _rfc3339_utc(cls, value: str) -> str:
        parse_time(value)
        return value

    def vault(self, name: str) -> Vault | None:
        return next((v for v in self.vaults if v.name == name), None)

    def attestation(self, name: str) -> Attestation | None:
        return next((a for a in self.attestations if a.name == name), None)

    def protected_vaults(self) -> frozenset[str]:
        """Every vault the plan protects, by its `protected` list or the vault's own flag. A device that
        applies the plan keeps them protected from then on (enforcer.verify.record_for), so
        `compile --prev` carries them into the next plan's list (S16)."""
        return frozenset(self.protected) | {v.name for v in self.vaults if v.protected}


class PlanFormatError(ValueError):
    """The bytes are not a plan this code understands; the message says which field and why."""


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC to the second (`2026-01-31T12:00:00Z`). isoformat, not strftime: it costs less (a boot
    unlock writes one per vault), and its year always has four digits."""
    return moment.astimezone(timezone.utc).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


# the one layout `format_time` writes; fromisoformat then checks the ranges (strptime took 20x as long, and
# a boot unlock reads one time per vault and four for the stored plan)
_UTC_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def parse_time(text: str) -> datetime:
    try:
        if not _UTC_TIME.fullmatch(text):
            raise ValueError
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"`{text}` is not an RFC 3339 UTC time like 2026-01-31T12:00:00Z") from None


def canonical_json(value: object) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value: the one serializer for what vaultpolicy signs, stores or
    prints as JSON (plans, envelopes, trust roots, `diff --format json`).

    rfc8785 writes in Python, value by value. For what vaultpolicy writes (strings, integers within
    2^53, booleans, null, lists, objects with string keys) the stdlib's C encoder writes the same
    bytes once the keys are sorted: it escapes what RFC 8785 escapes, the same way (the quote, the
    backslash and control characters, the short forms where JSON has them, lowercase hex for the
    rest), and code point order is UTF-16 order while no character is at or above U+D800. Anything
    else (a float, an unsafe integer, such a character, a lone surrogate) goes to rfc8785, for its
    bytes and its errors."""
    try:
        text = json.dumps(_keys_sorted(value), ensure_ascii=False, separators=(",", ":"), check_circular=False)
    except _LeftToRfc8785:
        return rfc8785.dumps(value)
    if text.isascii() or max(text) < "\ud800":
        return text.encode()
    return rfc8785.dumps(value)


class _LeftToRfc8785(Exception):
    """A value `_keys_sorted` does not take: one whose RFC 8785 form json.dumps would not write."""


def _keys_sorted(value: object) -> object:
    """`value` with the keys of every object in code point order; _LeftToRfc8785 for a float, an
    integer outside RFC 8785's exact range, a key that is not a string or any other type."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            return value
        raise _LeftToRfc8785
    if kind is dict:
        if not all(type(key) is str for key in value):
            raise _LeftToRfc8785
        return {key: _keys_sorted(value[key]) for key in sorted(value)}
    if kind is list or kind is tuple:
        return [_keys_sorted(item) for item in value]
    raise _LeftToRfc8785


def encode_plan(plan: Plan) -> bytes:
    """The canonical bytes (RFC 8785). The same plan always gives the same bytes."""
    return canonical_json(plan.model_dump(mode="json"))


class PlanInconsistent(PlanFormatError):
    """The plan has the schema's shape but contradicts itself where a device relies on it: a name
    twice, a reference to nothing, an end-to-end app on a plain vault, PCR 5 sealed, ..."""


class PlanNotCanonical(PlanFormatError):
    """A plan to sign, or a signed one, whose bytes are not its one canonical encoding (S12)."""


def decode_canonical_plan(payload: bytes) -> Plan:
    """The plan in `payload`, which must be exactly the bytes `encode_plan` makes of it: a signed plan
    has one encoding, so the same plan cannot be signed (and digested, for `prev_plan_sha256` and the
    device's version floor) as other bytes.

    Bytes that validate and are their plan's encoding are read once, by pydantic: they are then a JSON
    object that names each field once, all that `decode_plan`'s first read (in Python, a boot unlock's
    costliest step after the signature) checks before validating. Their schema version and consistency
    are checked as `decode_plan` checks them. Any other payload is read by `decode_plan` and
    `check_canonical`, whose refusal names what is wrong, as before."""
    try:
        plan = Plan.model_validate_json(payload, strict=True)  # JSON types as they are: no coercion
        canonical = encode_plan(plan) == payload
    except ValueError:  # not a valid plan (ValidationError), or one RFC 8785 cannot encode
        canonical = False
    if not canonical:
        plan = decode_plan(payload)
        check_canonical(plan, payload)
        return plan
    _check_schema_version(plan.schema_version)
    _check_consistent(plan)
    return plan


def check_canonical(plan: Plan, payload: bytes) -> None:
    """PlanNotCanonical unless `payload`, which decoded to `plan`, is the bytes `encode_plan` makes of it."""
    if encode_plan(plan) != payload:
        raise PlanNotCanonical("the plan is not in the canonical form `vaultpolicy compile` writes (RFC 8785 JSON "
                               "on one line)")


def decode_plan(payload: bytes) -> Plan:
    """The plan in `payload`, read strictly; PlanFormatError says what is wrong, naming the field."""
    try:
        data = load_json(payload, object_pairs_hook=_object_without_repeats)
    except json.JSONDecodeError as exc:
        raise PlanFormatError(f"plan is not JSON: {json_problem(exc)}") from None
    if not isinstance(data, dict):
        raise PlanFormatError("plan is not a JSON object")
    if data.get("schema_version") is None:
        raise PlanFormatError("not a vaultpolicy plan: it has no `schema_version`")
    _check_schema_version(data["schema_version"])
    try:
        plan = Plan.model_validate_json(payload, strict=True)  # JSON types as they are: no coercion
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _field_named(first["loc"], data)
        if first["type"] == "missing":
            raise PlanFormatError(f"plan has no {where} field") from None
        message = first["msg"][:1].lower() + first["msg"][1:]
        got = json.dumps(first.get("input"))
        shown = f", not `{got}`" if not isinstance(first.get("input"), (dict, list)) and len(got) <= 40 else ""
        raise PlanFormatError(f"plan field {where}: {message}{shown}") from None
    _check_consistent(plan)
    return plan


def _check_schema_version(version: object) -> None:
    if not isinstance(version, str) or version.split(".")[0] != str(SCHEMA_MAJOR):
        raise PlanFormatError(
            f"plan schema version `{json.dumps(version)}` is not supported (this device knows {SCHEMA_MAJOR}.x)"
        )


def _check_consistent(plan: Plan) -> None:
    for problem in inconsistencies(plan):
        raise PlanInconsistent(f"plan is inconsistent: {problem}")


def _object_without_repeats(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose every field is named once: with a repeat, readers disagree on its value."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise PlanFormatError(f"plan gives the field `{repeated}` twice in one object")
    return obj


def _field_named(loc: tuple, data: dict) -> str:
    """`` `vaults.3.limit_bytes` (vault `data`) ``: the dotted path, and the thing's name where it has one."""
    where = f"`{'.'.join(str(part) for part in loc)}`"
    if len(loc) >= 2 and loc[0] in _NAMED and isinstance(loc[1], int):
        try:
            name = data[loc[0]][loc[1]]["name"]
        except (KeyError, IndexError, TypeError):
            name = None
        if isinstance(name, str):
            return f"{where} ({_NAMED[loc[0]]} `{name}`)"
    return where


_NAMED = {"vaults": "vault", "apps": "app", "components": "component", "attestations": "attestation"}
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def inconsistencies(plan: Plan) -> Iterator[str]:
    """What in `plan` contradicts itself or the device's rules, in words (the compiler never writes
    such a plan; a plan made or edited elsewhere may be one)."""
    for kind, items in (("vault", plan.vaults), ("app", plan.apps), ("component", plan.components),
                        ("attestation", plan.attestations)):
        yield from _repeated_names(kind, [item.name for item in items])
    yield from _repeated_names("protected vault", list(plan.protected))
    yield from _repeated_names("target", list(plan.targets))
    for target in plan.targets:
        if not target.removeprefix("class:").strip() or hidden_character(target) is not None:
            yield f"target `{escaped(target)}` is not a device id or `class:NAME`"
    if parse_time(plan.expires) <= parse_time(plan.issued_at):
        yield f"it expires ({plan.expires}) no later than it is issued ({plan.issued_at})"
    for field, digest in (("source_sha256", plan.source_sha256), ("prev_plan_sha256", plan.prev_plan_sha256)):
        if digest is not None and not _SHA256_HEX.fullmatch(digest):
            yield f"`{field}` is not a SHA-256 digest in lower-case hex"
    yield from _device_problems(plan)
    attestations = {a.name: a for a in plan.attestations}
    for attestation in plan.attestations:
        yield from _attestation_problems(attestation)
    vaults = {v.name: v for v in plan.vaults}
    for vault in plan.vaults:
        yield from _vault_problems(vault, plan, attestations)
    yield from _overlapping_vaults(plan.vaults)
    for app in plan.apps:
        vault = vaults.get(app.vault) if app.vault is not None else None
        if app.vault is not None and vault is None:
            yield f"app `{app.name}` uses vault `{app.vault}`, which the plan does not have"
        elif app.end_to_end and (vault is None or vault.seal is None):
            yield f"app `{app.name}` is end-to-end but its vault {f'`{vault.name}` is not encrypted' if vault else 'is none'}"
    for component in plan.components:
        for store in component.stores:
            if _bad_path(store.path):
                yield f"component `{component.name}` stores `{escaped(store.path)}`, which is not an absolute normalized path"
            if store.vault is not None and store.vault not in vaults:
                yield f"component `{component.name}` stores `{store.path}` in vault `{store.vault}`, which the plan does not have"


def _repeated_names(kind: str, names: list[str]) -> Iterator[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            yield f"it lists {kind} `{name}` twice"
        seen.add(name)


def _bad_path(path: str) -> bool:
    return not path.startswith("/") or not is_normalized(path) or hidden_character(path) is not None


def _device_problems(plan: Plan) -> Iterator[str]:
    device = plan.device
    if _bad_path(device.persist) or device.persist == "/":
        yield f"persist root `{escaped(device.persist)}` is not an absolute normalized directory below `/`"
    if device.capacity_bytes is not None:
        total = sum(v.limit_bytes for v in plan.vaults) + device.reserve_bytes
        if total > device.capacity_bytes:
            yield f"vault limits plus the reserve ({total} bytes) exceed the capacity ({device.capacity_bytes} bytes)"
    # The key's own form is checked where it is used (enforcer.escrow.load_escrow_public).
    required = next((a.name for a in plan.attestations if a.escrow_required), None)
    if required is not None and device.escrow_public_key is None:
        yield f"attestation `{required}` requires escrow but the device has no `escrow_public_key`"


def _pcr_problems(owner: str, pcrs: tuple[int, ...]) -> Iterator[str]:
    for pcr in pcrs:
        if not 0 <= pcr <= MAX_PCR:
            yield f"{owner} lists PCR {pcr}, which does not exist (PCRs are 0 to {MAX_PCR})"
        elif pcr == NEVER_SEALED_PCR:
            yield f"{owner} lists PCR 5, which flips on every A/B update"
    if list(pcrs) != sorted(set(pcrs)):
        yield f"{owner} lists PCRs {list(pcrs)}, not in ascending order without repeats"


def _attestation_problems(attestation: Attestation) -> Iterator[str]:
    owner = f"attestation `{attestation.name}`"
    yield from _pcr_problems(owner, attestation.pcrs)
    digest_hex = re.compile(f"[0-9a-f]{{{BANK_DIGEST_BYTES[attestation.bank] * 2}}}")
    for pcr, values in attestation.allowed.items():
        if not pcr.isdigit() or int(pcr) not in attestation.pcrs or str(int(pcr)) != pcr:
            yield f"{owner} allows values for PCR `{pcr}`, which it does not list"
        for value in values:
            if not digest_hex.fullmatch(value):
                yield f"{owner} allows `{escaped(value)[:80]}` for PCR {pcr}, which is not a lower-case {attestation.bank} digest"
    yield from _repeated_names(f"{owner}'s `on_failure`", list(attestation.on_failure))


def _vault_problems(vault: Vault, plan: Plan, attestations: dict[str, Attestation]) -> Iterator[str]:
    owner = f"vault `{vault.name}`"
    persist = plan.device.persist
    if _bad_path(vault.path):
        yield f"{owner} has path `{escaped(vault.path)}`, which is not an absolute normalized path"
    elif not is_inside(vault.path, persist) or vault.path == persist:
        yield f"{owner} at `{vault.path}` is not below the persist root `{persist}`"
    for held in vault.holds:
        if _bad_path(held) or not is_inside(held, vault.path):
            yield f"{owner} holds `{escaped(held)}`, which is not a directory inside its path"
    if (vault.encryption == "none") != (vault.seal is None):
        yield f"{owner} has encryption `{vault.encryption}` and {'a seal' if vault.seal else 'no seal'}: a vault is sealed exactly when encrypted"
    if vault.seal is not None:
        yield from _pcr_problems(owner, vault.seal.pcrs)
        if vault.seal.attestation is not None:
            attestation = attestations.get(vault.seal.attestation)
            if attestation is None:
                yield f"{owner} is sealed to attestation `{vault.seal.attestation}`, which the plan does not have"
            elif (attestation.bank, attestation.pcrs) != (vault.seal.bank, vault.seal.pcrs):
                yield (f"{owner} is sealed to {vault.seal.bank} PCRs {list(vault.seal.pcrs)}, but its attestation "
                       f"`{attestation.name}` lists {attestation.bank} PCRs {list(attestation.pcrs)}")


def _overlapping_vaults(vaults: tuple[Vault, ...]) -> Iterator[str]:
    """Sorted by path components, a nested path follows its ancestor: one pass with a stack."""
    well_formed = sorted((v for v in vaults if not _bad_path(v.path)), key=lambda v: v.path.split("/"))
    stack: list[Vault] = []
    for vault in well_formed:
        while stack and not is_inside(vault.path, stack[-1].path):
            stack.pop()
        if stack:
            relation = "shares the directory of" if vault.path == stack[-1].path else "lies inside"
            yield f"vault `{vault.name}` at `{vault.path}` {relation} vault `{stack[-1].name}` (`{stack[-1].path}`)"
        stack.append(vault)


def plan_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()
