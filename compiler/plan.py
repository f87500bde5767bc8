"""The plan contract: what the controller signs and the device enforces.

An import leaf (pydantic and rfc8785 only; no lark, no jinja2) so the device can load plans without
the compiler. The in-memory `Plan` and its encoded form are kept apart: `encode_plan` gives the
canonical RFC 8785 bytes that get signed and stored; `decode_plan` reads them back. No floats
anywhere: sizes in bytes, durations in seconds, times as RFC 3339 UTC strings.

Field use (terraform's rule for plan fields): `reason`-like text fields (`note`) are for people and
must never drive a decision on the device.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Literal

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = 1

# The smallest vault limit the device can honour: each limited vault gets its own ext4 image, and a
# smaller one with a journal leaves almost no room. The compiler refuses smaller limits (VP0403)
# so a plan never asks for what the device must refuse.
MIN_VAULT_LIMIT_BYTES = 8 * 1024 * 1024

Encryption = Literal["aes-256-xts", "adiantum", "none"]
OnRemove = Literal["retain", "destroy"]
PcrBank = Literal["sha1", "sha256", "sha384", "sha512"]


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
    limit_bytes: int = Field(ge=0)
    rotate_seconds: int | None = None
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


class Device(PlanModel):
    persist: str
    capacity_bytes: int | None = None
    reserve_bytes: int = 0
    tpm_required: bool = True
    bank: PcrBank = "sha256"
    allow_unmeasured_boot: bool = False  # simulators only: permit sealing while PCR 0 and 4 are zero
    escrow_public_key: str | None = None  # base64 X25519 public key of the controller


class Plan(PlanModel):
    schema_version: str = SCHEMA_VERSION
    plan_version: int = Field(ge=1)
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
    protected: tuple[str, ...] = ()

    @field_validator("issued_at", "expires")
    @classmethod
    def _rfc3339_utc(cls, value: str) -> str:
        parse_time(value)
        return value

    def vault(self, name: str) -> Vault | None:
        return next((v for v in self.vaults if v.name == name), None)


class PlanFormatError(ValueError):
    """The bytes are not a plan this code understands; the message says which field and why."""


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"`{text}` is not an RFC 3339 UTC time like 2026-01-31T12:00:00Z") from None


def encode_plan(plan: Plan) -> bytes:
    """The canonical bytes (RFC 8785). The same plan always gives the same bytes."""
    return rfc8785.dumps(plan.model_dump(mode="json"))


def decode_plan(payload: bytes) -> Plan:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanFormatError(f"plan is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PlanFormatError("plan is not a JSON object")
    if data.get("schema_version") is None:
        raise PlanFormatError("not a vaultpolicy plan: it has no `schema_version`")
    major = str(data["schema_version"]).split(".")[0]
    if major != str(SCHEMA_MAJOR):
        raise PlanFormatError(
            f"plan schema version `{data['schema_version']}` is not supported (this device knows {SCHEMA_MAJOR}.x)"
        )
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "missing":
            raise PlanFormatError(f"plan has no `{where}` field") from None
        raise PlanFormatError(f"plan field `{where}`: {first['msg']}") from None


def plan_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()
