"""Two plans -> a `ChangeSet`: what changes, its data impact, the apps it touches, and what the device
would refuse. Pure data (frozen dataclasses); the jinja2 templates in `templates/diff.*` render it.

Things are matched by name and compared field by field, so reordering in the source never shows up,
and plan metadata (version, times, digests) is not a change: a plan diffed with its successor from
the same policy is empty (S15).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum

from .plan import Plan, PlanModel, Vault
from .units import format_size


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    REMOVE = "remove"  # leaves the plan and nothing is destroyed (a vault with `on_remove retain`)
    DESTROY = "destroy"  # leaves the plan and its data is erased (`on_remove destroy`)


MARKERS = {Action.CREATE: "+", Action.UPDATE: "~", Action.REPLACE: "-/+", Action.REMOVE: "-", Action.DESTROY: "-"}

# What the device does where the action's name alone would mislead (docs/enforcer.md: "orphan",
# "migrate"; enforcer/codes.py: VP1108, the device never moves a vault's files).
RETAINED = "retain: locked, key kept, reported orphaned"
ENCRYPTED = "plain files migrate into the encrypted directory"
NOT_MOVED = "path not moved: files stay at {path}, reported as VP1108"
NOT_SHRUNK = "limit lowered: the device never shrinks a vault, it keeps {limit} and reports VP1104 (limit-below-size)"
NOT_RENAMED = ("at the path of removed vault `{old}`, whose files stay there, locked: the device renames no vault "
               "and reports VP1102 (key-lost) here")
KEPT_PROTECTED = "the device keeps it protected"  # protection is sticky (enforcer/verify.py: record_for)

# A thing that leaves the plan is shown by what identifies it, not by a field diff of absent values.
_IDENTIFYING = {
    "vault": ("path", "encryption", "on_remove"),
    "attestation": ("bank", "pcrs"),
    "app": ("vault",),
    "component": ("stores",),
}


class Impact(StrEnum):
    """What happens to the data at rest, mildest first."""

    NONE = "none"
    RESEAL = "reseal"  # the key is sealed again to other PCRs or another attestation
    REKEY = "rekey"  # the rotation schedule changes: a new key wraps the data
    RE_ENCRYPT = "re-encrypt"  # the data migrates into a new encrypted directory (a cipher change, or none -> a cipher)
    DECRYPTS_DATA = "decrypts data"  # encryption becomes `none`: data will rest in plain text
    DESTROYS_DATA = "destroys data"


_IMPACT_ORDER = list(Impact)


@dataclass(frozen=True)
class FieldChange:
    """One value that differs, at its dotted path in the plan (`seal.pcrs`), exactly as the plan holds
    it (sizes in bytes, durations in seconds); None when absent. Templates spell it for people."""

    field: str
    old: object
    new: object


@dataclass(frozen=True)
class Change:
    kind: str  # "device", "attestation", "vault", "app", "component"
    name: str
    action: Action
    marker: str
    impact: Impact
    fields: tuple[FieldChange, ...]  # a created thing: its new values but false and empty ones; a removed one: what identifies it
    affected_apps: tuple[str, ...]  # apps other than the changed thing itself
    blocked: str | None = None  # why the device would refuse the plan because of this change
    note: str | None = None  # what the device does beyond the action's name (RETAINED, ENCRYPTED)


@dataclass(frozen=True)
class ChangeSet:
    old: str  # labels of the inputs, e.g. file names
    new: str
    changes: tuple[Change, ...]

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    @property
    def blocked(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.blocked)

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)


def _field_changes(kind: str, old: PlanModel | None, new: PlanModel | None) -> tuple[FieldChange, ...]:
    before = old.model_dump(mode="json") if old is not None else {}
    after = new.model_dump(mode="json") if new is not None else {}
    before.pop("name", None)
    after.pop("name", None)
    if new is None:
        before = {key: before[key] for key in _IDENTIFYING[kind]}
    changes = tuple(_leaf_changes("", before, after))
    if old is None:  # a created thing: the values that say something (not `builtin: false`, `holds: (none)`)
        return tuple(change for change in changes if not _says_nothing(change.new))
    return changes


def _says_nothing(value) -> bool:
    return value is False or value is None or value == [] or value == {}


def _leaf_changes(prefix: str, before, after) -> Iterator[FieldChange]:
    """Nested objects are compared key by key, so only what changed shows, at its dotted path;
    lists are compared whole (the plan keeps them sorted, so a difference is a real one)."""
    if _is_object(before) and _is_object(after):
        before, after = before or {}, after or {}
        for key in sorted(set(before) | set(after)):
            yield from _leaf_changes(f"{prefix}{key}.", before.get(key), after.get(key))
    elif before != after:
        yield FieldChange(prefix.removesuffix("."), before, after)


def _is_object(value) -> bool:
    return value is None or isinstance(value, dict)


def _worst(impacts) -> Impact:
    return max(impacts, key=_IMPACT_ORDER.index, default=Impact.NONE)


def _apps_using(vault: str, *plans: Plan) -> tuple[str, ...]:
    return tuple(sorted({a.name for plan in plans for a in plan.apps if a.vault == vault}))


def _vault_change(old: Vault | None, new: Vault | None, old_plan: Plan, new_plan: Plan,
                  retained_at: dict[str, str]) -> Change | None:
    """`retained_at`: path -> the vault that leaves the plan from there with `on_remove retain`."""
    fields = _field_changes("vault", old, new)
    if old is not None and new is not None and not fields:
        return None
    name = (new or old).name
    blocked = note = None
    protected = old is not None and name in old_plan.protected_vaults()
    if old is None:
        action, impact = Action.CREATE, Impact.NONE
        if new.path in retained_at:  # a rename, as the device cannot read it
            note = NOT_RENAMED.format(old=retained_at[new.path])
    elif new is None and old.on_remove == "destroy":
        action, impact = Action.DESTROY, Impact.DESTROYS_DATA
        if protected:
            blocked = f"vault `{name}` is protected: the device refuses a plan that destroys it"
    elif new is None:
        action, impact, note = Action.REMOVE, Impact.NONE, RETAINED
    else:
        changed = {f.field.split(".")[0] for f in fields}
        impacts = []
        if "seal" in changed:
            impacts.append(Impact.RESEAL)
        if "rotate_seconds" in changed and new.encryption != "none":  # a plain vault has no key
            impacts.append(Impact.REKEY)
        if "encryption" in changed:
            impacts.append(Impact.DECRYPTS_DATA if new.encryption == "none" else Impact.RE_ENCRYPT)
        notes = [ENCRYPTED] if old.encryption == "none" and new.encryption != "none" else []
        if "path" in changed:
            notes.append(NOT_MOVED.format(path=old.path))
        if 0 < new.limit_bytes < old.limit_bytes:
            notes.append(NOT_SHRUNK.format(limit=format_size(old.limit_bytes)))
        if protected and "protected" in changed:
            notes.append(KEPT_PROTECTED)
        note = "; ".join(notes) or None
        impact = _worst(impacts)
        action = Action.REPLACE if "encryption" in changed else Action.UPDATE
        if protected and "encryption" in changed:
            blocked = f"vault `{name}` is protected: the device refuses a plan that changes its encryption"
        elif protected and new.on_remove == "destroy" and old.on_remove != "destroy":
            blocked = f"vault `{name}` is protected: the device refuses a plan that sets `on_remove destroy` on it"
    apps = _apps_using(name, old_plan, new_plan)
    return Change("vault", name, action, MARKERS[action], impact, fields, apps, blocked, note)


def _simple_change(kind: str, old, new, affected: tuple[str, ...], impact: Impact = Impact.NONE) -> Change | None:
    """Apps, components and attestations hold no data: leaving the plan removes, never destroys."""
    fields = _field_changes(kind, old, new)
    if old is not None and new is not None and not fields:
        return None
    action = Action.CREATE if old is None else Action.REMOVE if new is None else Action.UPDATE
    return Change(kind, (new or old).name, action, MARKERS[action], impact, fields, affected)


def _pairs(old_items, new_items):
    before = {item.name: item for item in old_items}
    after = {item.name: item for item in new_items}
    for name in sorted(set(before) | set(after)):
        yield before.get(name), after.get(name)


def _device_change(old: Plan, new: Plan) -> Change | None:
    fields = _field_changes("device", old.device, new.device)
    fields += _field_changes_of("targets", old.targets, new.targets)
    if not fields:
        return None
    return Change("device", "device", Action.UPDATE, MARKERS[Action.UPDATE], Impact.NONE, fields, ())


def _field_changes_of(field: str, old, new) -> tuple[FieldChange, ...]:
    return () if old == new else (FieldChange(field, list(old), list(new)),)


def _apps_sealed_by(attestation: str, *plans: Plan) -> tuple[str, ...]:
    vaults = {v.name for plan in plans for v in plan.vaults if v.seal and v.seal.attestation == attestation}
    return tuple(sorted({a.name for plan in plans for a in plan.apps if a.vault in vaults}))


def diff_plans(old: Plan, new: Plan, old_label: str = "old", new_label: str = "new") -> ChangeSet:
    changes: list[Change | None] = [_device_change(old, new)]
    for before, after in _pairs(old.attestations, new.attestations):
        binding = before is not None and after is not None and (before.bank, before.pcrs) != (after.bank, after.pcrs)
        name = (after or before).name
        changes.append(
            _simple_change("attestation", before, after, _apps_sealed_by(name, old, new), Impact.RESEAL if binding else Impact.NONE)
        )
    retained_at = {v.path: v.name for v in old.vaults if new.vault(v.name) is None and v.on_remove != "destroy"}
    for before, after in _pairs(old.vaults, new.vaults):
        changes.append(_vault_change(before, after, old, new, retained_at))
    for before, after in _pairs(old.apps, new.apps):
        changes.append(_simple_change("app", before, after, ()))  # the app itself is the change, not an app it affects
    for before, after in _pairs(old.components, new.components):
        changes.append(_simple_change("component", before, after, ()))
    return ChangeSet(old_label, new_label, tuple(c for c in changes if c is not None))


def json_data(changeset: ChangeSet) -> dict:
    """What `diff.json` writes: the ChangeSet as it is, plus whether anything changes."""
    data = asdict(changeset)
    data["has_changes"] = changeset.has_changes
    return data
