"""Boot-time unlock, lock, status and the app gate — all reading the kernel and the TPM (S6-S8).

- `load_applied`: the applied plan's exact signed bytes, re-verified against the trust root and the
  recorded digest before anything trusts them (S12). Expiry and the version floor are not checked
  again here: an applied plan that has since expired must still unlock the device at boot.
- `unlock_all`: per vault, mount its storage when a reboot dropped it, unseal, add the key, check the
  kernel's key identifier is the recorded one, read the status back. A PCR mismatch leaves that vault
  locked, names the PCRs, and the other vaults still unlock. Each outcome is what the kernel says of
  the key the vault directory's policy names, read again after the work, not what the steps did.
- `lock_all`: per recorded vault `locked`, `incompletely-locked` (files still open, S7) or `failed`;
  it needs no verified plan (locking is always safe).
- `report`: per vault whether it matches the plan and every reason it does not.
- `gate`: an app may start only when its vault is unlocked and matches the plan; an end-to-end app
  only when its vault is encrypted too, whatever the plan says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from compiler.plan import Plan, Vault, plan_digest
from compiler.signing import PLAN_PAYLOAD_TYPE, Envelope, TrustRoot
from enforcer import blockdev, fscrypt
from enforcer.apply import Applier, key_in_kernel, lock_key
from enforcer.fscrypt import KeyStatus
from enforcer.observe import (Layout, Observed, ObservedSeal, ObservedVault, PathState, is_empty, is_mount, keyring_dir,
                              layout, observe, observe_vault, path_state, staging_path)
from enforcer.reconcile import Action, Problem, Reconciliation, Step, apply_interrupted, reconcile
from enforcer.rotate import RecoveryFailed, pending_path
from enforcer.state import SEALED_DAMAGED_HINT, Condition, StateCorrupt, StateDir, VaultRecord
from enforcer.verify import decode_signed
from vaultpolicy.errors import DeviceError, PlanRejected


class NoAppliedPlan(DeviceError):
    """The device has never applied a plan."""


# a vault whose sealed key is gone: the controller's escrowed copy is the only way back
KEY_LOST_HINT = ("have the controller release its escrowed key (`vaultpolicy device unlock --release FILE`), "
                 "which seals it again")
# a damaged or replaced stored plan: the controller's plan applied again replaces it (the same bytes are
# no rollback), and locking needs no plan
_STORED_PLAN_HINT = ("apply the controller's current signed plan again (`vaultpolicy device apply SIGNED`): it "
                     "replaces the stored copy; `vaultpolicy device lock` works without it")


def stored_envelope(state: StateDir) -> Envelope | None:
    """The applied plan's envelope as stored, unverified; None when no plan was applied. A damaged one is
    named as the stored applied plan, not taken for a plan someone offered."""
    data = state.applied_envelope()
    if data is None:
        return None
    try:
        return Envelope.from_bytes(data, str(state.plan_path))
    except PlanRejected as exc:
        raise PlanRejected(exc.reason, f"the stored applied plan is damaged: {exc.message}",
                           hint=_STORED_PLAN_HINT) from None


def load_applied(state: StateDir, trust: TrustRoot) -> Plan:
    envelope = stored_envelope(state)
    if envelope is None:
        raise NoAppliedPlan(f"no plan has been applied (state dir {state.root})", hint="run `vaultpolicy device apply` first")
    try:
        payload = trust.verify(envelope, PLAN_PAYLOAD_TYPE)
    except PlanRejected as exc:
        raise PlanRejected(exc.reason, f"the stored applied plan {state.plan_path} does not verify: {exc.message}",
                           hint=_STORED_PLAN_HINT) from None
    floor = state.floor()
    if floor is not None and plan_digest(payload) != floor[1]:
        raise PlanRejected("applied-plan-changed", f"the stored applied plan {state.plan_path} is not the one that "
                           "was applied", hint=_STORED_PLAN_HINT)
    return decode_stored(state, payload)


def decode_stored(state: StateDir, payload: bytes) -> Plan:
    """The stored applied plan's payload decoded; a plan this enforcer refuses (one applied by an older,
    less strict enforcer) is named as the stored applied plan."""
    try:
        return decode_signed(payload)
    except PlanRejected as exc:
        raise PlanRejected(exc.reason, f"the stored applied plan {state.plan_path} cannot be enforced: {exc.message}",
                           hint=_STORED_PLAN_HINT) from None


@dataclass(frozen=True)
class VaultResult:
    vault: str
    outcome: str  # unlocked | already-unlocked | locked | incompletely-locked | failed | not-created | unencrypted
    reason: str = ""
    message: str = ""
    pcrs: tuple[int, ...] = ()
    hint: str | None = None


def unlock_all(plan: Plan, state: StateDir, root: Path | None, tpm, now: datetime,
               unrecovered: dict[str, RecoveryFailed] | None = None) -> list[VaultResult]:
    """Unlock every vault of the plan but those whose interrupted rotation could not be recovered
    (`Rotator.recover`: they fail). A vault that stays locked or fails does not stop the others;
    conditions are recorded best effort (`StateDir.warnings`): a boot unlock that unlocked the vaults
    must not fail because the state dir is read-only or full."""
    observed, damaged = observe_each(plan, state, root, unrecovered)
    usable = plan.model_copy(update={"vaults": tuple(v for v in plan.vaults if v.name not in damaged)})
    rec = reconcile(usable, observed)
    steps = [s for s in rec.steps if s.action in (Action.MOUNT_STORAGE, Action.UNLOCK)]
    # a vault whose re-seal to new PCRs failed at apply is still sealed to its old ones: unlock it with
    # that blob (the next apply re-seals it), and so is one whose re-encryption waits for its key
    steps += [Step(Action.UNLOCK, s.vault, "its key waits to be sealed to the plan's PCRs") for s in rec.steps
              if s.action is Action.RESEAL and observed.vaults[s.vault].key_status is not KeyStatus.PRESENT]
    steps += [Step(Action.UNLOCK, p.vault, "its re-encryption waits for its key") for p in rec.problems
              if p.reason == "vault-locked"]
    outcomes = Applier(usable, state, root, tpm, now, records=observed.records).run(steps)
    # what apply refuses for these vaults, unlock cannot get past either, and says so in the same words
    refused = {p.vault: p for p in rec.problems if p.reason in ("storage-damaged", "storage-lost", "key-lost")}
    conditions = state.conditions()  # read once: a vault that unlocked clears only a condition it has
    results = []
    for vault in plan.vaults:
        subject = f"vault/{vault.name}"
        if vault.name in damaged:
            results.append(failed_unlock(state, vault.name, damaged[vault.name], now))
            continue
        seen = observed.vaults[vault.name]
        outcome = outcomes.get(vault.name)
        if vault.name in refused:
            result = _refused(refused[vault.name], seen)
            with state.best_effort():
                state.set_condition(subject, False, result.reason, f"unlock refused: {result.message}", now)
            results.append(result)
        elif (observed.records.get(vault.name) or vault).encryption == "none":  # how its files are now
            results.append(VaultResult(vault.name, "unencrypted"))
        elif outcome is not None and outcome.error is not None:
            pcrs = tuple(getattr(outcome.error, "pcrs", ()))
            reason = "pcr-mismatch" if pcrs else "unlock-failed"
            message = outcome.error.detail
            with state.best_effort():
                state.set_condition(subject, False, reason, f"unlock refused: {message}", now)
            hint = pcr_mismatch_hint(plan, vault) if pcrs else outcome.error.hint
            results.append(VaultResult(vault.name, "locked", reason, message, pcrs, hint))
        elif seen.seal is None:
            results.append(VaultResult(vault.name, "not-created", "not-created", "no sealed key yet: run `device apply`"))
        else:
            done = outcome is not None and any(s.action is Action.UNLOCK for s in outcome.done)
            result = _kernel_outcome(state, root, observed.records.get(vault.name) or vault, seen.seal, done)
            with state.best_effort():
                if result.outcome in ("unlocked", "already-unlocked"):
                    if subject in conditions:
                        state.clear_condition(subject)
                else:
                    state.set_condition(subject, False, result.reason, f"unlock refused: {result.message}", now)
            results.append(result)
    left = sorted(set(damaged) - {v.name for v in plan.vaults})  # vaults the plan no longer has, damaged too
    return results + [failed_unlock(state, name, damaged[name], now) for name in left]


def pcr_mismatch_hint(plan: Plan, vault) -> str:
    """What to do about a vault the boot's PCR values keep locked. A legitimate change (a firmware
    update) is recovered by a controller release, which needs the vault sealed to an attestation and
    its key escrowed (the plan's escrow key); any other vault opens only in the boot it was sealed in."""
    if vault.seal is not None and vault.seal.attestation is not None and plan.device.escrow_public_key:
        return ("if this boot is legitimate (a firmware update, say), the controller can release the vault's escrowed "
                "key after verifying a quote, then `vaultpolicy device unlock --release FILE` unlocks and re-seals it "
                "(docs/attestation.md); else boot as when it was sealed")
    return ("boot as when the key was sealed: nothing else opens this vault (a vault sealed to an attestation, with "
            "the plan's escrow key, can be released by the controller after a legitimate change)")


def _refused(problem: Problem, seen: ObservedVault) -> VaultResult:
    """A vault whose storage is damaged or lost (failed), or whose sealed key is lost: then it is as its
    key is in the kernel, and nothing on the device can put the key back."""
    if problem.reason != "key-lost":
        return VaultResult(problem.vault, "failed", problem.reason, problem.message)
    if seen.key_status is KeyStatus.PRESENT:
        return VaultResult(problem.vault, "already-unlocked", "key-lost", "no sealed key is recorded for its encrypted "
                           "directory: its files are readable now, but once its key leaves the kernel nothing on the "
                           "device can unlock it", hint=KEY_LOST_HINT)
    return VaultResult(problem.vault, "locked", "key-lost", "no sealed key is recorded for its encrypted directory: "
                       "nothing on the device can unlock it", hint=KEY_LOST_HINT)


def failed_unlock(state: StateDir, name: str, error: DeviceError, now: datetime) -> VaultResult:
    """A vault left as it is: a state file of it is damaged, or its interrupted rotation could not be
    recovered."""
    reason = error.reason if isinstance(error, RecoveryFailed) else "state-damaged"
    message = error.detail
    with state.best_effort():
        state.set_condition(f"vault/{name}", False, reason, f"unlock refused: {message}", now)
    return VaultResult(name, "failed", reason, message, hint=error.hint)


def _kernel_outcome(state: StateDir, root: Path | None, vault: Vault | VaultRecord, seal: ObservedSeal,
                    unlocked_now: bool) -> VaultResult:
    """What the kernel says of the vault's files once the steps ran, read again: never what the steps
    believe they did (a key that is not the one the directory is encrypted under unlocks nothing)."""
    where = layout(state, root, vault.name, vault.path)
    kind = path_state(root, where.path)
    if kind is not PathState.DIRECTORY:
        what = "not found" if kind is PathState.MISSING else f"not a directory ({kind.value})"
        return VaultResult(vault.name, "failed", "path-not-found", f"{where.path}: {what}",
                           hint="pass the --root (and --state-dir) that `device apply` used")
    try:
        policy = fscrypt.get_policy(str(where.path))
        status = None if policy is None else fscrypt.key_status(keyring_dir(where.path), policy.key_identifier)
    except DeviceError as exc:
        return VaultResult(vault.name, "locked", "unlock-failed", exc.message)
    if policy is None:
        return VaultResult(vault.name, "failed", "not-encrypted", f"{where.path} has no encryption policy",
                           hint="run `vaultpolicy device apply`, which encrypts it")
    if status is KeyStatus.PRESENT:
        return VaultResult(vault.name, "unlocked" if unlocked_now else "already-unlocked")
    if policy.key_identifier != seal.key_identifier:
        return VaultResult(vault.name, "locked", "policy-mismatch",
                           f"its directory is encrypted under the key {policy.key_identifier.hex()}, not under its "
                           f"sealed key {seal.key_identifier.hex()}, and the kernel does not have that key",
                           hint="have the controller release the escrowed key (`vaultpolicy device unlock --release "
                           "FILE`)")
    return VaultResult(vault.name, "locked", "unlock-failed", f"the kernel reports its key {status.name.lower()}")


def observe_each(plan: Plan, state: StateDir, root: Path | None,
                 left_alone: dict[str, DeviceError] | None = None) -> tuple[Observed, dict[str, DeviceError]]:
    """`observe(plan, state, root, None)` vault by vault, so that a damaged vault or sealed record fails
    only its own vault: (what was observed, vault -> why its state file is damaged, or why it is in
    `left_alone`, which is not observed). No TPM: unlocking needs no PCR comparison up front (a refused
    unseal names the changed PCRs itself), and skipping it keeps unlock within a few percent of bare
    unseals."""
    records, damaged = state.read_records()
    damaged = {**damaged, **(left_alone or {})}
    wanted = {v.name: v.path for v in plan.vaults if v.name not in damaged} | \
        {r.name: r.path for r in records.values() if r.name not in damaged}
    vaults, shared = {}, {}
    for name, path in sorted(wanted.items()):
        try:
            vaults[name] = observe_vault(state, root, name, path, None, shared)
        except StateCorrupt as exc:
            damaged[name] = exc
    return Observed(vaults, {n: r for n, r in records.items() if n not in damaged}), damaged


def lock_all(state: StateDir, root: Path | None, force: bool = False) -> list[VaultResult]:
    """Lock every encrypted vault the device has a record of — in the applied plan, orphaned, or left
    by a plan that no longer verifies. Removing a key is always safe, so lock trusts no plan: a
    tampered or unverifiable applied plan must not keep keys in the kernel (fail closed). A damaged
    record or a vault path that is not there fails that vault only: "locked" is said only when the
    kernel says so (the shutdown unit relies on it). The one key lock keeps is the last copy of a
    vault's key (no sealed key on disk): it fails that vault (`key-lost`) unless `force`."""
    records, damaged = state.read_records()
    if not records and not damaged and state.applied_envelope() is None:
        raise NoAppliedPlan(f"no plan has been applied (state dir {state.root}): there is no vault to lock",
                            hint="run `vaultpolicy device apply` first")
    results = [VaultResult(name, "failed", "state-damaged", f"{exc.message}: its path is unknown, so it was not locked",
                           hint="restore the record from a backup; until then lock the vault's filesystem by hand")
               for name, exc in damaged.items()]
    results += [_lock_vault(state, root, record, force) for record in records.values() if record.encryption != "none"]
    return sorted(results, key=lambda result: result.vault)


def _lock_vault(state: StateDir, root: Path | None, record: VaultRecord, force: bool) -> VaultResult:
    name, where = record.name, layout(state, root, record.name, record.path)
    identifiers: list[bytes] = []  # every key the vault's files may be under
    damaged, sealed = None, None
    try:
        sealed = state.sealed(name)
        if sealed is not None:
            identifiers.append(bytes.fromhex(sealed["key_identifier"]))
    except StateCorrupt as exc:
        damaged = exc
    except (KeyError, TypeError, ValueError) as exc:
        damaged = StateCorrupt(f"the sealed key record {state.sealed_path(name)} is damaged ({exc.__class__.__name__}: "
                               f"{exc})", hint=SEALED_DAMAGED_HINT)
    try:
        kind = path_state(root, where.path)
        if kind is not PathState.DIRECTORY:
            return _lock_without_path(name, where, kind, identifiers, damaged)
        policy = _files_policy(where)
        if policy is not None and policy.key_identifier not in identifiers:
            if sealed is None and damaged is None and not force and key_in_kernel(policy.key_identifier, where):
                return VaultResult(name, "failed", "key-lost", "no sealed key is recorded for it, so the kernel holds "
                                   "the only copy of its key; it was not removed: once it is, nothing can unlock the "
                                   "vault", hint=f"copy its files out, or {KEY_LOST_HINT}; `vaultpolicy device lock "
                                   "--force` removes the key anyway")
            identifiers.insert(0, policy.key_identifier)  # the key its files are under, whatever the record says (S6)
        removals = [lock_key(identifier, where) for identifier in identifiers]
        encrypted = policy is not None or _encrypted_offline(where)
    except DeviceError as exc:
        return VaultResult(name, "failed", "lock-failed", exc.message)
    busy = any(removal is not None and removal.files_busy for removal in removals)
    if damaged is not None:
        done = "its key is out of the kernel" if identifiers and not busy else "its key may still be in the kernel"
        return VaultResult(name, "failed", "state-damaged", f"{damaged.message}; {done}, but `device unlock` "
                           "cannot unseal it", hint=damaged.hint)
    if busy:
        return VaultResult(name, "incompletely-locked", "files-busy",
                           "files in the vault are still open; the key is gone, their contents stay readable until they close")
    if (not encrypted and record.limit_bytes and record.backing != "project-quota" and sealed is not None
            and not where.image.exists()):
        return VaultResult(name, "locked", "storage-lost", f"its image `{where.image}` is missing, and the vault's "
                           "files were in it; no key of it is in the kernel", hint="restore the image from a backup")
    if not encrypted:  # an apply stopped before it encrypted the directory: there is nothing locked
        clear = "" if is_empty(where.path) else ", and the files in it are in the clear"
        return VaultResult(name, "not-encrypted", "not-encrypted", f"{where.path} is not encrypted yet{clear}",
                           hint="run `vaultpolicy device apply`, which encrypts it")
    if sealed is None:
        return VaultResult(name, "locked", "key-lost", "no sealed key is recorded for it: nothing on the device can "
                           "unlock it again", hint=KEY_LOST_HINT)
    return VaultResult(name, "locked")


def _files_policy(where: Layout) -> fscrypt.EncryptionPolicy | None:
    """The policy the vault's files are under: its path's, or, for a vault with an image that is not
    bound at its path, that of the image's vault directory when the image is mounted in the state dir."""
    policy = fscrypt.get_policy(str(where.path))
    if policy is None and where.image.exists() and not is_mount(where.path) and where.store_data.is_dir():
        policy = fscrypt.get_policy(str(where.store_data))
    return policy


def _encrypted_offline(where: Layout) -> bool:
    """Whether the vault directory of an image that is not mounted is encrypted; an image that cannot be
    read counts as encrypted (nothing is in the clear that lock could say)."""
    if not where.image.exists() or blockdev.is_mounted(where.store):
        return False
    try:
        return blockdev.vault_encrypted_offline(where.image)
    except blockdev.BlockdevError:
        return True


def _lock_without_path(name: str, where, kind: PathState, identifiers: list[bytes],
                       damaged: StateCorrupt | None) -> VaultResult:
    """The vault path is not there (a wrong or missing --root, or it was removed): its key cannot be
    reached through it. Only a vault with its own image has a filesystem to ask without its path (its
    image is mounted in the state dir); there the kernel may confirm that none of its keys is in."""
    if (identifiers and damaged is None and blockdev.is_mounted(where.store)
            and all(fscrypt.key_status(str(where.store), i) is KeyStatus.ABSENT for i in identifiers)):
        return VaultResult(name, "locked")
    what = "not found" if kind is PathState.MISSING else f"not a directory ({kind.value})"
    return VaultResult(name, "failed", "path-not-found", f"{where.path}: {what}, so its key may still be in the kernel",
                       hint="pass the --root (and --state-dir) that `device apply` used")


@dataclass(frozen=True)
class VaultReport:
    vault: str
    path: str
    # unlocked | locked | incompletely-locked | missing | unencrypted (as planned) | orphaned |
    # plaintext (files in the clear where an encrypted vault belongs) | not-encrypted (empty, no policy) |
    # storage-damaged, storage-lost (its image cannot be read, is gone) | apply-interrupted (a vault an
    # unfinished apply of a newer plan began to make)
    state: str
    matches: bool
    reasons: tuple[str, ...] = ()
    used_bytes: int | None = None
    limit_bytes: int | None = None
    changed_pcrs: tuple[int, ...] = ()


@dataclass(frozen=True)
class StatusReport:
    plan_version: int | None
    vaults: list[VaultReport] = field(default_factory=list)
    plan_condition: Condition | None = None

    @property
    def matches(self) -> bool:
        return all(v.matches for v in self.vaults) and (self.plan_condition is None or self.plan_condition.ok)


def report(plan: Plan, observed: Observed, state: StateDir) -> StatusReport:
    rec: Reconciliation = reconcile(plan, observed)
    conditions = state.conditions()
    vaults = []
    for name, seen in sorted(observed.vaults.items()):
        wanted = plan.vault(name)
        problems = {p.reason: p.message for p in rec.problems if p.vault == name}
        interrupted = apply_interrupted(plan, observed, name)
        if interrupted:  # not a vault that left the plan (the steps would say so): one a newer plan adds
            reasons = [f"an apply that adds this vault did not finish (it was interrupted, or it is running now): "
                       f"the applied plan (version {plan.plan_version}) does not have it yet; run `vaultpolicy "
                       "device apply` with the plan that adds it again"]
            if seen.staged_plaintext:
                copy = "" if seen.empty is not False else "; the vault holds a partial copy"
                reasons.insert(0, f"PLAINTEXT: its files wait, unencrypted, in `{staging_path(Path(seen.path))}` "
                               f"to move into the vault{copy}; that apply copies them in, verifies and erases them")
            elif seen.erasing_plaintext:
                reasons.insert(0, "PLAINTEXT: its files are in the vault, but the plaintext they were copied from is "
                               "still on disk beside it, not erased yet; that apply erases it")
        else:
            reasons = [s.reason for s in rec.steps if s.vault == name]
        reasons += list(problems.values())
        reasons += list(seen.errors)
        if pending_path(state, name).exists():
            reasons.append("a key rotation or re-encryption of this vault is under way or was interrupted: "
                           "`vaultpolicy device apply`, `device rotate` or `device unlock` finishes or undoes it")
        condition = conditions.get(f"vault/{name}")
        if condition is not None and not condition.ok:
            reasons.append(condition.message)
        if seen.seal is not None and seen.seal.changed_pcrs and not (condition and condition.reason == "pcr-mismatch"):
            pcrs = ", ".join(map(str, seen.seal.changed_pcrs))
            reasons.append(f"PCR {seen.seal.bank}:{pcrs} differs from the value the key was sealed to: unlock will be refused")
        if seen.seal is not None and not seen.seal.digest_ok:
            reasons.append("the sealed blob's policy digest is not the PolicyPCR digest of its PCR selection")
        if "storage-damaged" in problems or "storage-lost" in problems:
            vault_state = "storage-damaged" if "storage-damaged" in problems else "storage-lost"
        elif interrupted:
            vault_state = "apply-interrupted"
        elif "plaintext-staged" in problems:  # a removed vault's files, unencrypted beside it
            vault_state = "plaintext"
        elif seen.path_state is not PathState.DIRECTORY:
            vault_state = "missing"
        elif wanted is None:
            vault_state = "orphaned"
        elif wanted.encryption == "none" and seen.policy is None:  # else its decryption is still to come
            vault_state = "unencrypted"
        elif seen.policy is None and seen.empty is False:  # what the kernel says, whatever the plan wants
            vault_state = "plaintext"
        elif seen.policy is None and seen.image_bytes is not None and not seen.mounted:
            vault_state = "locked"  # an empty mount point: the data is in the vault's image, not mounted
        elif seen.policy is None:
            vault_state = "not-encrypted"
        else:
            vault_state = {KeyStatus.PRESENT: "unlocked", KeyStatus.INCOMPLETELY_REMOVED: "incompletely-locked"}.get(
                seen.key_status, "locked")
            if seen.seal is None and vault_state != "locked":
                reasons.insert(0, "no sealed key on disk: the files are readable now, but once the key leaves the "
                               "kernel nothing can unlock the vault again")
        limit = wanted.limit_bytes if wanted is not None and wanted.limit_bytes else None
        matches = not reasons and (wanted is None or vault_state in ("unlocked", "unencrypted")) and not interrupted
        vaults.append(VaultReport(name, seen.path, vault_state, matches, tuple(dict.fromkeys(reasons)),
                                  seen.used_bytes, limit, seen.seal.changed_pcrs if seen.seal else ()))
    return StatusReport(plan.plan_version, vaults, conditions.get("plan"))


@dataclass(frozen=True)
class GateDecision:
    allowed: bool
    detail: str  # the vault path when allowed, else why not
    hint: str | None = None  # what to do about a refusal


def gate(plan: Plan, state: StateDir, root: Path | None, tpm, app_name: str) -> GateDecision:
    """Whether the app may start: its vault unlocked and as the plan says (for an end-to-end app,
    encrypted too)."""
    from vaultpolicy.suggest import did_you_mean

    app = next((a for a in plan.apps if a.name == app_name), None)
    if app is None:
        names = [a.name for a in plan.apps]
        raise DeviceError(f"the applied plan (version {plan.plan_version}) has no app `{app_name}`; its apps: "
                          f"{', '.join(f'`{n}`' for n in names) or 'none'}", hint=did_you_mean(app_name, names))
    if app.vault is None:
        if app.end_to_end:
            return GateDecision(False, f"app `{app_name}` needs end-to-end protection but has no vault")
        return GateDecision(True, "")
    observed = observe(plan, state, root, tpm)
    vault_report = next(v for v in report(plan, observed, state).vaults if v.vault == app.vault)
    if app.end_to_end and vault_report.state == "unencrypted":  # a signed plan the compiler would have refused
        return GateDecision(False, f"app `{app_name}` needs end-to-end protection, but its vault `{app.vault}` is not "
                            "encrypted (`encryption none` in the plan)")
    if vault_report.matches and vault_report.state in ("unlocked",) + (() if app.end_to_end else ("unencrypted",)):
        return GateDecision(True, vault_report.path)
    why = "; ".join(vault_report.reasons) or vault_report.state
    if vault_report.state == "locked" and vault_report.changed_pcrs:  # unlock refuses it in this boot
        hint = pcr_mismatch_hint(plan, plan.vault(app.vault))
    elif vault_report.state == "locked":
        hint = "run `vaultpolicy device unlock` (the boot unit does); `vaultpolicy device status` says why it stays locked"
    else:
        hint = "`vaultpolicy device status` says what the vault needs"
    # an unlocked vault that differs from the plan: say so, or "is unlocked: <why>" reads as the reason
    state = vault_report.state + (" but not as the plan says" if vault_report.state in ("unlocked", "unencrypted") else "")
    return GateDecision(False, f"vault `{app.vault}` of app `{app_name}` is {state}: {why}", hint)
