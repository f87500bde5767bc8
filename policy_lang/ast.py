"""The policy AST: what the author wrote, with a source span on every node.

Spans are left out of equality (cedar's `Node<T>`): two policies that say the same thing compare
equal wherever they were written. A setting the author did not write is `None`: the compiler
fills it from `defaults`, then from the built-in defaults, so "not written" stays visible here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .diagnostics import Span

Encryption = Literal["aes-256-xts", "adiantum", "none"]
OnRemove = Literal["retain", "destroy"]
OnFailure = Literal["keep_locked", "deny_release"]


class Node(BaseModel):
    model_config = ConfigDict(frozen=True)

    span: Span = Field(exclude=True, repr=False)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash(repr(self.model_dump()))


class Name(Node):
    """A reference to, or the declaration of, a named thing."""

    value: str


class StringLit(Node):
    value: str  # escapes already decoded


class SizeLit(Node):
    bytes: int
    text: str  # as written, e.g. "512MiB"


class DurationLit(Node):
    seconds: int
    text: str  # as written, e.g. "90d"


class PcrIndex(Node):
    index: int


class IntLit(Node):
    value: int


class EncryptionSetting(Node):
    mode: Encryption


class SealSetting(Node):
    """`seal boot` (an attestation) or `seal pcrs 0, 7 [bank sha256]` (explicit PCRs)."""

    attestation: Name | None = None
    pcrs: tuple[PcrIndex, ...] = ()
    bank: Name | None = None


class RotateSetting(Node):
    every: DurationLit


class OnRemoveSetting(Node):
    action: OnRemove


class Flag(Node):
    """A bare keyword such as `protected`; its span points at the keyword."""


class VaultSettings(Node):
    """Settings a vault may state and `defaults` may supply."""

    encryption: EncryptionSetting | None = None
    seal: SealSetting | None = None
    rotate: RotateSetting | None = None
    on_remove: OnRemoveSetting | None = None


class DeviceDecl(Node):
    persist: StringLit | None = None
    capacity: SizeLit | None = None
    reserve: SizeLit | None = None
    tpm_required: bool | None = None
    bank: Name | None = None
    # Simulators and some boards never measure firmware; sealing then binds nothing (S3).
    allow_unmeasured_boot: Flag | None = None
    escrow_key: StringLit | None = None  # file with the controller's X25519 escrow public key


class AllowRule(Node):
    """`allow pcr 0 = "ab…" | "cd…"` or `allow pcr 0 from "values.txt"`."""

    pcr: PcrIndex
    values: tuple[StringLit, ...] = ()
    reference_file: StringLit | None = None


class AttestationDecl(Node):
    name: Name
    bank: Name | None = None
    pcrs: tuple[PcrIndex, ...] = ()
    allow: tuple[AllowRule, ...] = ()
    nonce_bytes: IntLit | None = None
    nonce_valid: DurationLit | None = None
    escrow_required: Flag | None = None
    on_failure: tuple[OnFailure, ...] = ()


class DefaultsDecl(Node):
    settings: VaultSettings


class VaultDecl(Node):
    name: Name
    path: StringLit | None = None
    limit: SizeLit | None = None
    settings: VaultSettings
    protected: Flag | None = None
    holds: tuple[StringLit, ...] = ()
    # Only for the built-in `config` and `images` vaults: the author opts out and says why.
    opt_out_reason: StringLit | None = None


class StoreEntry(Node):
    path: StringLit
    sensitive: bool


class ComponentDecl(Node):
    name: Name
    stores: tuple[StoreEntry, ...] = ()


class AppDecl(Node):
    name: Name
    vault: Name | None = None
    end_to_end: Flag | None = None


class IncludeDecl(Node):
    path: StringLit


Item = DeviceDecl | AttestationDecl | DefaultsDecl | VaultDecl | ComponentDecl | AppDecl | IncludeDecl


class Policy(Node):
    """One parsed file; `includes` are resolved by `policy_lang.load`, which merges their items."""

    file: str
    items: tuple[Item, ...] = ()

    @classmethod
    def of_items(cls, file: str, items: tuple[Item, ...], span: Span) -> "Policy":
        """A policy of nodes already validated when they were built: validating the tuple again
        matches each item against every member of `Item`, which on a 12,500-item policy cost 4% of
        a lark parse of it, each time."""
        return cls.model_construct(file=file, items=items, span=span)

    def of_type(self, kind: type) -> list:
        return [item for item in self.items if isinstance(item, kind)]
