"""Device-side verification of a signed plan, in the order the design fixes (issue 5):

1. envelope and signatures against the device's trust root (threshold of distinct keys, S13)
2. `plan_version` above the last applied one; the applied plan's own bytes may come again (reconcile)
3. not expired, and not issued in the future beyond `CLOCK_SLACK` (one clock reading, passed in)
4. targets this device (empty targets: every device)
5. a schema this device knows (`compiler.plan.decode_canonical_plan`), in its one canonical encoding
   (`not-canonical`), and a plan that does not contradict itself (`compiler.plan.inconsistencies`:
   refused as `plan-inconsistent`)
6. no protected vault the device manages would be destroyed or put at risk (S16)

Protection is sticky: once a vault's record on the device says `protected`, no plan lifts it
(`record_for` keeps the flag whatever later plans say). A plan is refused when it would destroy such
a vault, switch its `on_remove` to `destroy`, or change its encryption (re-creating it loses its
data). A protected vault may still leave the plan with `retain`: it stays, locked, keys kept.

Pure: no I/O. Every refusal is a `PlanRejected` with a stable `reason`; the caller records it as a
condition and keeps the last good plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from compiler.plan import (Plan, PlanFormatError, PlanInconsistent, PlanNotCanonical, Vault, decode_canonical_plan, parse_time,
                           plan_digest)
from compiler.signing import PLAN_PAYLOAD_TYPE, Envelope, TrustRoot
from enforcer.state import VaultRecord
from vaultpolicy.encoding import load_json
from vaultpolicy.errors import PlanRejected

CLOCK_SLACK = timedelta(minutes=5)


@dataclass(frozen=True)
class VerifiedPlan:
    plan: Plan
    payload: bytes  # the exact signed bytes
    envelope: bytes  # the exact envelope bytes, stored as the applied plan
    sha256: str


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str | None = None
    classes: tuple[str, ...] = ()
    origin: str = ""  # where the id came from, for a refusal: "its host name", "recorded in …"

    def matches(self, targets: tuple[str, ...] | list[str]) -> bool:
        if not targets:
            return True
        names = {self.device_id} if self.device_id else set()
        names |= {f"class:{c}" for c in self.classes}
        return bool(names & set(targets))


def verify_plan(
    envelope_bytes: bytes,
    trust: TrustRoot,
    *,
    now: datetime,
    floor: tuple[int, str] | None,
    device: DeviceIdentity,
    managed: Mapping[str, VaultRecord] | None = None,
    source: str | None = None,
) -> VerifiedPlan:
    """`source`: the file the envelope came from, named when it is not a signed plan at all."""
    payload = trust.verify(Envelope.from_bytes(envelope_bytes, source), PLAN_PAYLOAD_TYPE)
    digest = plan_digest(payload)
    header = _header(payload)

    version = header.get("plan_version")
    if type(version) is not int:
        raise PlanRejected("unknown-schema", "plan has no integer `plan_version`")
    if floor is not None:
        floor_version, floor_sha = floor
        if digest != floor_sha and version <= floor_version:
            raise PlanRejected(
                "rollback",
                f"plan version {version} is not above the applied version {floor_version}",
                hint="the controller must issue a plan with a higher plan_version",
            )

    check_validity(header, now)

    targets = header.get("targets", [])
    if not isinstance(targets, list) or not device.matches(tuple(str(t) for t in targets)):
        who = f"device `{device.device_id}`" if device.device_id else "this device (no --device-id given)"
        who += f" ({device.origin})" if device.origin else ""
        raise PlanRejected("wrong-target", f"plan targets {', '.join(f'`{t}`' for t in targets)}, not {who}")

    plan = decode_signed(payload)
    _check_protection(plan, managed or {})
    return VerifiedPlan(plan, payload, envelope_bytes, digest)


def check_validity(header: Mapping[str, object], now: datetime) -> None:
    """Step 3 on the plan's `issued_at` and `expires`: refused as `expired`, or `future-dated` when issued
    further ahead of `now` than CLOCK_SLACK. `vaultpolicy verify` runs it too, to refuse what a device would."""
    issued_at, expires = _time(header, "issued_at"), _time(header, "expires")
    if expires <= now:
        raise PlanRejected("expired", f"plan expired at {header['expires']}")
    if issued_at > now + CLOCK_SLACK:
        raise PlanRejected(
            "future-dated",
            f"plan is issued at {header['issued_at']}, in the future beyond the {int(CLOCK_SLACK.total_seconds())}s clock slack",
            hint="check the device clock",
        )


def decode_signed(payload: bytes) -> Plan:
    """The plan in a verified payload, or the refusal: `plan-inconsistent` when it has the schema's shape
    but contradicts itself (`compiler.plan.inconsistencies`: a newer enforcer would refuse it too),
    `not-canonical` when its bytes are not the plan's one encoding (S12), else `unknown-schema`."""
    try:
        return decode_canonical_plan(payload)
    except PlanInconsistent as exc:
        raise PlanRejected("plan-inconsistent", str(exc)) from None
    except PlanNotCanonical as exc:
        raise PlanRejected("not-canonical", f"signed payload: {exc}") from None
    except PlanFormatError as exc:
        raise PlanRejected("unknown-schema", str(exc)) from None


def _header(payload: bytes) -> dict:
    try:
        header = load_json(payload)
    except ValueError:
        raise PlanRejected("unknown-schema", "signed payload is not a JSON plan") from None
    if not isinstance(header, dict):
        raise PlanRejected("unknown-schema", "signed payload is not a JSON object")
    return header


def _time(header: Mapping[str, object], field: str) -> datetime:
    try:
        return parse_time(str(header[field]))
    except (KeyError, ValueError) as exc:
        raise PlanRejected("unknown-schema", f"plan field `{field}`: {exc}") from None


def record_for(plan: Plan, vault: Vault, previous: VaultRecord | None) -> VaultRecord:
    """What the device records for a vault of `plan`; `protected` never goes back to false (S16).

    Once recorded, `path` and `encryption` say where the vault's files are and how they are
    encrypted, not what a plan asked: only a finished re-encryption (enforcer/rotate.py) changes
    `encryption`, and a plan that moves a vault is a problem, never a new record (reconcile.py). Its
    `backing` and `project_id` are the applier's to set (a vault keeps its backing for life)."""
    protected = vault.protected or vault.name in plan.protected or (previous is not None and previous.protected)
    path, encryption = (vault.path, vault.encryption) if previous is None else (previous.path, previous.encryption)
    backing, project = (None, None) if previous is None else (previous.backing, previous.project_id)
    return VaultRecord(vault.name, path, encryption, vault.on_remove, protected, vault.limit_bytes,
                       backing=backing, project_id=project)


def _check_protection(plan: Plan, managed: Mapping[str, VaultRecord]) -> None:
    """A protected vault stays protected on the device even when the policy drops the flag (S16)."""
    for name, record in managed.items():
        if not record.protected:
            continue
        vault = plan.vault(name)
        if vault is None:
            if record.on_remove == "destroy":
                raise PlanRejected("destroys-protected", f"plan destroys protected vault `{name}`")
            continue
        if vault.encryption != record.encryption:
            raise PlanRejected(
                "destroys-protected",
                f"plan replaces protected vault `{name}` (encryption {record.encryption} -> {vault.encryption})",
            )
        if vault.on_remove == "destroy" and record.on_remove != "destroy":
            raise PlanRejected(
                "destroys-protected",
                f"plan sets on_remove destroy on protected vault `{name}`; the device keeps its protection "
                "even when the policy no longer says `protected`",
            )
