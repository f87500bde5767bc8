"""The resolved model: names bound, defaults applied, every value paired with where it came from.

`resolve` builds it from the AST; the rules read it; `build` turns it into a `Plan`. A `Located`
value keeps the span of the setting that decided it (the vault's own line, the `defaults` block, or
None for a built-in default), so a diagnostic points at the line the author must change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from policy_lang.diagnostics import Span

T = TypeVar("T")


@dataclass(frozen=True)
class Located(Generic[T]):
    value: T
    span: Span | None = None


def first_span(*spans: Span | None) -> Span | None:
    """The most precise span available: a setting's own, else its block's, else none (a built-in)."""
    return next((s for s in spans if s is not None), None)


@dataclass(frozen=True)
class Seal:
    bank: Located[str]
    pcrs: tuple[Located[int], ...]
    attestation: Located[str] | None  # set when sealed through `seal NAME`
    span: Span | None  # the `seal` setting that decided it

    def indexes(self) -> tuple[int, ...]:
        return tuple(sorted({p.value for p in self.pcrs}))


@dataclass(frozen=True)
class Vault:
    name: Located[str]
    path: Located[str]
    encryption: Located[str]
    limit_bytes: Located[int | None]
    rotate_seconds: Located[int | None]
    seal: Seal | None  # None when encryption is "none"
    on_remove: Located[str]
    protected: Located[bool]
    holds: tuple[Located[str], ...]
    builtin: bool

    @property
    def encrypted(self) -> bool:
        return self.encryption.value != "none"

    @property
    def path_written(self) -> bool:
        """Whether the policy wrote this vault's path; else it is `<persist>/vault/<name>`, located at
        the vault's name when the vault is declared."""
        return self.path.span is not None and self.path.span != self.name.span


@dataclass(frozen=True)
class App:
    name: Located[str]
    vault: Located[str] | None
    end_to_end: Located[bool]


@dataclass(frozen=True)
class Store:
    path: Located[str]
    sensitive: bool


@dataclass(frozen=True)
class Component:
    name: Located[str]
    stores: tuple[Store, ...]


@dataclass(frozen=True)
class AllowRule:
    pcr: Located[int]
    values: tuple[Located[str], ...]
    reference_file: Located[str] | None


@dataclass(frozen=True)
class Attestation:
    name: Located[str]
    bank: Located[str]
    pcrs: tuple[Located[int], ...]
    allow: tuple[AllowRule, ...]
    nonce_bytes: Located[int]
    nonce_lifetime_seconds: Located[int]
    escrow_required: Located[bool]
    on_failure: tuple[str, ...]


@dataclass(frozen=True)
class Device:
    persist: Located[str]
    capacity_bytes: Located[int | None]
    reserve_bytes: Located[int]
    tpm_required: bool
    bank: Located[str]
    allow_unmeasured_boot: bool
    escrow_key: Located[str] | None  # the file name as written


@dataclass(frozen=True)
class Duplicate:
    """A second declaration of a name (or a second `device`/`defaults` block); the first one wins."""

    kind: str  # "vault", "app", "component", "attestation", "device", "defaults"
    name: str
    span: Span
    first: Span


@dataclass(frozen=True)
class Model:
    file: str
    device: Device
    vaults: dict[str, Vault]  # in declaration order, built-ins first
    apps: dict[str, App]
    components: dict[str, Component]
    attestations: dict[str, Attestation]
    duplicates: tuple[Duplicate, ...] = ()
    # opt-outs on vaults that are not built in: (vault name, the reason given)
    misplaced_opt_outs: tuple[tuple[str, Located[str]], ...] = ()
    # seal settings that name an attestation nobody declared: (vault name, attestation name)
    unknown_seals: tuple[tuple[str, Located[str]], ...] = field(default=())
    defaults: Span | None = None  # the `defaults` block that counts, if any

    def settings(self, span_of: Callable[[Vault], Span | None], vaults: Iterable[Vault] | None = None) -> list[Setting]:
        """`vaults` (all by default) grouped by the setting that decided something for them (`span_of`):
        one group for a setting of `defaults`, which every vault that does not state its own inherits,
        so that a rule reports it once, as the defaults' setting; one vault a group otherwise."""
        groups: dict[object, list[Vault]] = {}
        for vault in self.vaults.values() if vaults is None else vaults:
            span = span_of(vault)
            groups.setdefault(span if self._in_defaults(span) else (span, vault.name.value), []).append(vault)
        return [Setting(span_of(group[0]), self._in_defaults(span_of(group[0])), tuple(group)) for group in groups.values()]

    def _in_defaults(self, span: Span | None) -> bool:
        d = self.defaults
        return span is not None and d is not None and span.file == d.file and d.start_pos <= span.start_pos < d.end_pos


@dataclass(frozen=True)
class Setting:
    """A setting and the vaults it decided something for (`Model.settings`): a vault's own, or one of
    `defaults`, which names the block in messages and the vaults that inherit it in a note."""

    span: Span | None
    in_defaults: bool
    vaults: tuple[Vault, ...]

    @property
    def owner(self) -> str:
        return "`defaults`" if self.in_defaults else f"vault `{self.vaults[0].name.value}`"

    @property
    def notes(self) -> tuple[str, ...]:
        if not self.in_defaults:
            return ()
        names = ", ".join(f"`{vault.name.value}`" for vault in self.vaults[:_NAMED_INHERITORS])
        more = len(self.vaults) - _NAMED_INHERITORS
        return (f"inherited by vault{'s' if len(self.vaults) > 1 else ''} {names}{f' and {more} more' if more > 0 else ''}",)


_NAMED_INHERITORS = 6  # a note lists this many vaults that inherit a setting, and counts the others
