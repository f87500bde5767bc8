"""Drift reports: what the device observes, per vault, bound to its TPM so nobody can forge one.

The report (`Report`, format "vaultpolicy.report.v1", published as docs/report.schema.json, which
`Report.model_json_schema()` generates) carries per vault a condition — Ready, Locked, Drifted,
Disabled, Orphaned — with a kebab-case reason and a message, the PCRs that no longer match the
sealed key, usage against the limit, last rotation (the sealed record's `rotated_at`, written when the
key was created; unknown only for keys sealed before it was recorded) and whether it is overdue,
escrow state, and how the vault was last unlocked. Everything comes from `enforcer.observe` (kernel
and TPM) and the sealed records, never from a log of what the enforcer believes it did (S6).

Signing: the report's canonical bytes (RFC 8785) are hashed into a TPM2_Quote's qualifying data
(purpose "report", with the controller's nonce when one was given), signed by the attestation key.
The signed report ("vaultpolicy.signed-report.v1") holds the exact report bytes and the quote, so an
edited report no longer matches the quote, and a report from another TPM fails the enrolled key.

Condition precedence (the first that applies): Drifted with reason `storage-damaged` or
`storage-lost` (the vault's own image cannot be read, or is gone) → Drifted, or Disabled when
plaintext waits beside it, with reason `apply-interrupted` (a vault an unfinished apply of a newer
plan began to make, which is not in the applied plan) → Orphaned (managed but no longer in the plan, kept
locked as `retain` says; Drifted when its key is in the kernel or its record says `destroy`) →
Disabled (an encrypted vault's path holds plaintext: S5, loudly) → Drifted with reason
`plaintext-erase-pending` (a migration copied the plaintext in but its copy beside the vault, renamed
`.<name>.vp-erase`, is not deleted and discarded yet) → Drifted (path, policy, seal or limit differ
from the plan) → Locked (key not in the kernel; the reason names PCRs that changed) →
Ready. A vault that would be Ready but for which reconcile finds a problem `device apply` cannot mend
(a limit the kernel does not enforce as stated, a path the plan moved, ...) is Drifted with that
problem's reason and message, as `device status` says. A vault that would be Ready but whose
attestation requires escrow the controller has not yet acknowledged is Drifted with reason
`escrow-missing` (S9); its escrow is `missing` too when the blob the device holds is of another key,
or wrapped for another escrow key, than its key and the plan's.
Ready and Orphaned are what the plan asked for; every other condition is drift (`Report.drifting`:
`device report` exits 3).
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Literal

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compiler.plan import Plan, Vault, format_time
from enforcer.attest import Quote
from enforcer.escrow import escrow_public_raw, escrow_state, load_json_object
from enforcer.fscrypt import KeyStatus, policy_difference
from enforcer.observe import Observed, ObservedVault, PathState, staging_path
from enforcer.reconcile import Problem, apply_interrupted, reconcile, storage_lost
from enforcer.release import last_unlocks
from enforcer.rotate import overdue as key_overdue
from enforcer.state import StateDir
from vaultpolicy.encoding import b64decode_exact
from vaultpolicy.errors import InputError

REPORT_FORMAT = "vaultpolicy.report.v1"
SIGNED_REPORT_FORMAT = "vaultpolicy.signed-report.v1"

Condition = Literal["Ready", "Locked", "Drifted", "Disabled", "Orphaned"]


class ReportModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Usage(ReportModel):
    used_bytes: int | None = Field(description="bytes in use on the vault's storage, from statvfs")
    limit_bytes: int = Field(description="the plan's limit; 0 means no limit")


class Rotation(ReportModel):
    last_rotated: str | None = Field(description="RFC 3339 UTC time the key was created or last rotated, if known")
    rotate_seconds: int | None = Field(description="the plan's rotation period")
    overdue: bool | None = Field(description="null when the last rotation time is unknown")


class LastUnlock(ReportModel):
    method: Literal["tpm-sealed", "controller-release", "none"] = Field(
        description="how the vault was last unlocked, whether or not it is unlocked now (`condition` says that): "
        "`tpm-sealed` (its sealed key, by `device unlock` or `apply`), `controller-release` (a released key), "
        "`none` (no unlock recorded: a key `apply` just created was added without one)")
    at: str | None = Field(default=None, description="RFC 3339 UTC time of that unlock")


class VaultReport(ReportModel):
    name: str
    condition: Condition
    reason: str = Field(description="stable kebab-case word; tools branch on this, not on the message")
    message: str
    mismatching_pcrs: list[int] = Field(description="PCRs whose value differs from the one the key is sealed to")
    usage: Usage
    rotation: Rotation
    escrow: Literal["missing", "pending", "acknowledged", "not-required"]
    last_unlock: LastUnlock


class PlanRef(ReportModel):
    plan_version: int | None = Field(description="the applied plan's version; null when none was applied")
    plan_sha256: str | None = None


class Report(ReportModel):
    """A device's drift report (vaultpolicy.report.v1)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="vaultpolicy drift report")

    format: Literal["vaultpolicy.report.v1"] = REPORT_FORMAT
    device_id: str
    generated_at: str = Field(description="RFC 3339 UTC")
    plan: PlanRef
    vaults: list[VaultReport]

    def to_bytes(self) -> bytes:
        return rfc8785.dumps(self.model_dump(mode="json"))

    @property
    def drifting(self) -> list[VaultReport]:
        """Vaults not as the plan wants them. Orphaned is what a plan asks with `retain` (the vault left the
        plan, its data kept, locked): it is listed as retained, never as drift (`device status` agrees)."""
        return [v for v in self.vaults if v.condition not in ("Ready", "Orphaned")]

    @property
    def retained(self) -> list[VaultReport]:
        return [v for v in self.vaults if v.condition == "Orphaned"]


def report_schema() -> dict:
    """The published JSON Schema (docs/report.schema.json); a test keeps the file equal to this."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Report.model_json_schema()}


def load_report(data: bytes, source: str = "report") -> Report:
    try:
        return Report.model_validate_json(data, strict=True)  # as the schema says: "1" is not a plan version
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "report"
        raise InputError(f"{source}: field `{where}`: {first['msg']}") from None


# --- the pure part: one vault's condition -----------------------------------------------------------


def vault_condition(wanted: Vault | None, seen: ObservedVault, managed: bool,
                    on_remove: str = "retain", interrupted: bool = False,
                    storage_lost: bool = False) -> tuple[Condition, str, str]:
    """`on_remove`: for a vault no longer in the plan, what its record says to do with it;
    `interrupted`: an unfinished apply of a newer plan began to make it (`reconcile.apply_interrupted`);
    `storage_lost`: its image is gone (`reconcile.storage_lost`)."""
    if seen.storage_damaged is not None:
        return "Drifted", "storage-damaged", seen.storage_damaged
    if storage_lost:
        return "Drifted", "storage-lost", f"its image `{seen.image}` is missing, and the vault's files were in it"
    if interrupted:
        if seen.staged_plaintext:
            return "Disabled", "apply-interrupted", (f"an apply that adds this vault did not finish: its files wait, "
                                                     f"unencrypted, in `{staging_path(Path(seen.path))}` to move "
                                                     "into it (`device apply` with that plan again)")
        erase = "; the plaintext its files were copied from is not erased yet" if seen.erasing_plaintext else ""
        return "Drifted", "apply-interrupted", (f"an apply that adds this vault did not finish{erase} (`device apply` "
                                                "with that plan again)")
    if wanted is None:
        if seen.staged_plaintext:  # reconcile's plaintext-staged: its files' one whole copy, unencrypted
            return "Disabled", "plaintext-staged", (f"an interrupted apply left the files of this vault, which the plan "
                                                    f"no longer has, unencrypted in `{staging_path(Path(seen.path))}`")
        if seen.erasing_plaintext:
            return "Drifted", "plaintext-erase-pending", ("the plaintext the vault's files were migrated from is not "
                                                          "erased yet (`device apply` deletes it and discards its blocks)")
        if on_remove == "destroy":
            return "Drifted", "destroy-pending", "the plan destroys this vault; it is still there (`device apply` destroys it)"
        if seen.key_status is KeyStatus.PRESENT:
            return "Drifted", "retained-unlocked", ("the plan retains this vault locked, but its key is in the kernel "
                                                    "(`device apply` or `device lock` removes it)")
        return "Orphaned", "removed-from-plan", "the plan no longer has this vault; its data is retained, locked"
    encrypted = wanted.encryption != "none"
    if seen.path_state is PathState.MISSING:
        return "Drifted", "path-missing", f"{seen.path} does not exist"
    if seen.path_state is not PathState.DIRECTORY:
        return "Drifted", "path-not-directory", f"{seen.path} is a {seen.path_state.value}, not a plain directory"
    if encrypted and seen.policy is None and (seen.empty is False or seen.staged_plaintext):
        return "Disabled", "plaintext-directory", f"{seen.path} holds unencrypted files where an encrypted vault belongs"
    if seen.erasing_plaintext:  # the files are in the vault; their plaintext copy still is on disk beside it
        return "Drifted", "plaintext-erase-pending", ("the plaintext the vault's files were migrated from is not "
                                                      "erased yet (`device apply` deletes it and discards its blocks)")
    if not encrypted and seen.policy is not None:
        return "Drifted", "encryption-change-pending", "the plan decrypts this vault; its files are still encrypted"
    if not encrypted:
        return "Ready", "unencrypted-by-policy", "the plan keeps this directory unencrypted"
    if seen.policy is None:
        return "Drifted", "not-encrypted", f"{seen.path} has no encryption policy" + ("" if managed else " (not created yet)")
    if seen.policy.contents_mode != wanted.encryption:
        return "Drifted", "encryption-change-pending", (f"the files are encrypted with {seen.policy.contents_mode}, "
                                                       f"the plan asks for {wanted.encryption}")
    if (differs := policy_difference(seen.policy, wanted.encryption)) is not None:
        return "Drifted", "policy-mismatch", differs
    if seen.seal is None:
        return "Drifted", "no-sealed-key", "no sealed key is recorded for this vault"
    if seen.policy.key_identifier != seen.seal.key_identifier:
        return "Drifted", "key-mismatch", "the directory is encrypted with a different key than the sealed one"
    if wanted.seal and (seen.seal.bank, tuple(sorted(seen.seal.pcrs))) != (wanted.seal.bank, tuple(sorted(wanted.seal.pcrs))):
        return "Drifted", "seal-selection", f"the key is sealed to {seen.seal.bank}:{_pcrs(seen.seal.pcrs)}, the plan wants {wanted.seal.bank}:{_pcrs(wanted.seal.pcrs)}"
    if not seen.seal.digest_ok:
        return "Drifted", "seal-policy", "the sealed key's policy digest does not match its recorded PCR values"
    if wanted.limit_bytes and seen.used_bytes is not None and seen.used_bytes > wanted.limit_bytes:
        return "Drifted", "over-limit", f"{seen.used_bytes} bytes used, limit {wanted.limit_bytes}"
    if seen.key_status is not KeyStatus.PRESENT:
        if seen.seal.changed_pcrs:
            return "Locked", "pcr-mismatch", f"PCR {seen.seal.bank}:{_pcrs(seen.seal.changed_pcrs)} changed since sealing"
        return "Locked", "key-absent", "the key is not in the kernel; run `vaultpolicy device unlock`"
    return "Ready", "ready", "unlocked, encrypted and sealed as the plan says"


def _pcrs(pcrs) -> str:
    return ",".join(map(str, sorted(pcrs)))


def build_report(
    device_id: str, plan: Plan | None, plan_sha256: str | None, observed: Observed, state: StateDir, now: datetime
) -> Report:
    unlocks = last_unlocks(state)
    requiring = {a.name for a in plan.attestations if a.escrow_required} if plan else set()
    escrow_public = (escrow_public_raw(plan.device.escrow_public_key, "the applied plan's device.escrow_public_key")
                     if plan and plan.device.escrow_public_key else None)
    # what apply cannot mend (a limit not enforced as stated, a moved path): the vault is not as the plan says
    problems: dict[str, Problem] = {}
    for problem in reconcile(plan, observed).problems if plan else ():
        problems.setdefault(problem.vault, problem)
    vaults = []
    for name, seen in sorted(observed.vaults.items()):
        wanted = plan.vault(name) if plan else None
        record = observed.records.get(name)
        condition, reason, message = vault_condition(
            wanted, seen, record is not None, record.on_remove if record else "retain",
            interrupted=plan is not None and apply_interrupted(plan, observed, name),
            storage_lost=wanted is not None and storage_lost(wanted, record, seen))
        if condition == "Ready" and name in problems:
            condition, reason, message = "Drifted", problems[name].reason, problems[name].message
        escrow_required = bool(wanted and wanted.seal and wanted.seal.attestation in requiring)
        escrow = escrow_state(state.root, name, seen.seal.key_identifier if seen.seal else None, escrow_public)
        if escrow_required and escrow != "acknowledged" and condition == "Ready":
            # S9: a policy that requires escrow is not satisfied until the controller holds the key
            condition, reason = "Drifted", "escrow-missing"
            message = f"escrow is {escrow}: the controller has not acknowledged this vault's key" + (
                " for the plan's escrow key (`device apply` wraps it while it unseals, then `device escrow-deposit`)"
                if escrow == "missing" else " (`device escrow-deposit`, then `device escrow-ack`)")
        elif escrow == "missing" and not escrow_required:
            escrow = "not-required"
        sealed = state.sealed(name)
        rotate_seconds = wanted.rotate_seconds if wanted else None
        last_rotated = sealed.get("rotated_at") if sealed else None
        unlock = unlocks.get(name)
        vaults.append(
            VaultReport(
                name=name,
                condition=condition,
                reason=reason,
                message=message,
                mismatching_pcrs=sorted(seen.seal.changed_pcrs) if seen.seal else [],
                usage=Usage(used_bytes=seen.used_bytes, limit_bytes=wanted.limit_bytes if wanted else 0),
                rotation=Rotation(last_rotated=last_rotated, rotate_seconds=rotate_seconds,
                                  overdue=key_overdue(sealed, rotate_seconds, now)),
                escrow=escrow,
                # history: how the key last got in; whether it is in now is the condition's (Locked)
                last_unlock=LastUnlock(**unlock) if unlock else LastUnlock(method="none"),
            )
        )
    return Report(
        device_id=device_id,
        generated_at=format_time(now),
        plan=PlanRef(plan_version=plan.plan_version if plan else None, plan_sha256=plan_sha256),
        vaults=vaults,
    )


# --- signing with the TPM -------------------------------------------------------------------------


def report_binding(report_bytes: bytes) -> bytes:
    return hashlib.sha256(report_bytes).digest()


def sign_report(tcti: str, report: Report, nonce: bytes, bank: str, pcrs: tuple[int, ...]) -> bytes:
    from enforcer.attest import AttestationTpm

    report_bytes = report.to_bytes()
    with AttestationTpm(tcti) as tpm:
        quote = tpm.quote(report.device_id, "report", nonce, report_binding(report_bytes), bank, pcrs)
    return rfc8785.dumps(
        {
            "format": SIGNED_REPORT_FORMAT,
            "report": base64.b64encode(report_bytes).decode(),
            "quote": json.loads(quote.to_bytes()),
        }
    )


def split_signed_report(data: bytes, source: str = "signed report") -> tuple[bytes, Quote]:
    """(exact report bytes, quote); no check here: `controller.drift.verify_report` does that."""
    obj = load_json_object(data, source, SIGNED_REPORT_FORMAT)
    if not isinstance(obj.get("report"), str) or not isinstance(obj.get("quote"), dict):
        raise InputError(f"{source}: needs `report` (base64) and `quote` (object)")
    try:
        report_bytes = b64decode_exact(obj["report"])
    except ValueError:
        raise InputError(f"{source}: field `report` is not valid base64") from None
    return report_bytes, Quote.from_obj(obj["quote"], f"{source}: quote")
