"""Plan × Observed -> the steps that make the device match the plan. A pure function: no I/O.

`Action` is closed: apply.py has one handler per member and nothing else. `Step.reason` says why,
for people (status, logs, the journal); the apply step never branches on it (terraform's rule for
`ActionReason`). What cannot be fixed safely is a `Problem`, never an action: data is destroyed only
when a signed plan says `destroy` for that vault, never as a fallback (S20).

Steps come out in dependency order per vault (plaintext moved aside before the vault is made, the
key before the policy, the policy before files migrate in), so a fresh observation after a crash at
any step yields exactly the remaining steps. `escrow_steps` are apart: escrow is the controller's
copy of a key, not the vault's state (see there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from compiler.plan import Plan, Vault
from compiler.units import format_measured, format_size
from enforcer.blockdev import BLOCK_SIZE, image_bytes_for
from enforcer.escrow import escrow_gap, escrow_public_raw
from enforcer.fscrypt import KeyStatus, policy_difference
from enforcer.quota import limits_for
from enforcer.observe import Observed, ObservedVault, PathState, staging_path
from enforcer.state import VaultRecord


class Action(StrEnum):
    STAGE_PLAINTEXT = "stage-plaintext"  # move a non-empty plaintext directory aside (space checked first)
    CREATE_DIRECTORY = "create-directory"  # a vault without a limit: a plain directory
    CREATE_STORAGE = "create-storage"  # a vault with a limit: its own ext4 image, mounted at the path
    MOUNT_STORAGE = "mount-storage"  # the image exists but is not mounted (after a reboot)
    GROW_STORAGE = "grow-storage"  # the limit rose: grow the image online
    CREATE_PROJECT = "create-project"  # a vault with a limit where quotas are enforced: its directory, project, limit
    SET_QUOTA = "set-quota"  # its directory's project id, or the project's limit, is not what it must be
    CREATE_KEY = "create-key"  # generate, seal (test-unseal), write the sealed blob, add to the kernel
    ESCROW_KEY = "escrow-key"  # unseal an existing key and wrap it for the plan's escrow key (S9)
    UNLOCK = "unlock"  # unseal the recorded blob and add the key to the kernel
    RESEAL = "reseal"  # the plan seals to other PCRs: unseal with the old blob, seal anew
    SET_POLICY = "set-policy"  # the fscrypt v2 policy on the empty vault directory
    MIGRATE = "migrate"  # copy staged plaintext in, fsync, verify hashes, then remove the plaintext
    RE_ENCRYPT = "re-encrypt"  # the plan changes the encryption: copy into a new tree, swap, erase the old key
    ORPHAN = "orphan"  # left the plan with `retain`: lock it, keep the sealed key, report it
    DESTROY = "destroy"  # left the plan with `destroy`: crypto-erase (key, sealed blob, files)


class Backing(StrEnum):
    """How the kernel enforces a vault's limit."""

    IMAGE = "image"  # its own ext4 image of the limit's size, mounted at the path (enforcer/blockdev.py)
    PROJECT_QUOTA = "project-quota"  # a project of its own on the persist filesystem (enforcer/quota.py)


def choose_backing(record: VaultRecord | None, has_image: bool, quota_enforced: bool) -> Backing:
    """A vault keeps the backing its record names for life (a kernel that gains quota support does not
    move an image vault); a vault recorded with a limit before backings were recorded, or whose image
    is there, has an image; a new one gets a project quota where its filesystem enforces them."""
    if record is not None and record.backing:
        return Backing(record.backing)
    if has_image or (record is not None and record.limit_bytes):
        return Backing.IMAGE
    return Backing.PROJECT_QUOTA if quota_enforced else Backing.IMAGE


def backing_of(record: VaultRecord | None, seen: ObservedVault) -> Backing:
    return choose_backing(record, seen.image_bytes is not None or seen.storage_damaged is not None, seen.quota_enforced)


@dataclass(frozen=True)
class Step:
    action: Action
    vault: str
    reason: str  # for people only


@dataclass(frozen=True)
class Problem:
    vault: str
    reason: str  # kebab-case, stable
    message: str


@dataclass(frozen=True)
class Reconciliation:
    steps: list[Step] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def reconcile(plan: Plan, observed: Observed) -> Reconciliation:
    result = Reconciliation()
    for vault in plan.vaults:
        _plan_vault(vault, observed.vaults[vault.name], observed.records.get(vault.name), result)
    for name, record in sorted(observed.records.items()):
        if plan.vault(name) is None:
            _removed_vault(record, observed.vaults[name], result, apply_interrupted(plan, observed, name))
    return result


def _plan_vault(vault: Vault, seen: ObservedVault, record: VaultRecord | None, out: Reconciliation) -> None:
    name = vault.name
    steps: list[Step] = []

    def step(action: Action, reason: str) -> None:
        steps.append(Step(action, name, reason))

    def problem(reason: str, message: str) -> None:
        out.problems.append(Problem(name, reason, message))

    if seen.path_state in (PathState.SYMLINK, PathState.SYMLINK_IN_PATH, PathState.NOT_DIRECTORY):
        problem("unsafe-path", f"`{seen.path}` is a {seen.path_state.value}; the vault is not created there")
        return
    if seen.storage_damaged is not None:
        problem("storage-damaged", f"{seen.storage_damaged}; the vault is left as it is: repair the image by hand "
                f"(`e2fsck {seen.image}`) or restore it from a backup")
        return
    if storage_lost(vault, record, seen):
        still = (": it is still mounted from the deleted file, so copy the files out before it is unmounted"
                 if seen.mounted else ": restore the image from a backup")
        problem("storage-lost", f"its image `{seen.image}` is missing, and the vault's files were in it; no empty "
                f"filesystem is made in its place{still}")
        return
    if record is not None and record.path != vault.path:
        problem("path-change-unsupported", f"the plan moves the vault from `{record.path}` to `{vault.path}`; the "
                f"device does not move vaults: its files stay at `{record.path}` and are managed there")
    if record is not None and record.encryption != vault.encryption:
        _limit_steps(vault, seen, record, False, step, problem)
        locked = seen.path_state is PathState.DIRECTORY and seen.key_status is not KeyStatus.PRESENT
        if record.encryption != "none" and seen.seal is not None and locked:
            problem("vault-locked", f"the vault is locked: unlock it first (`vaultpolicy device unlock`); its "
                    f"encryption changes from {record.encryption} to {vault.encryption} once its files are readable")
        else:
            step(Action.RE_ENCRYPT, f"the encryption changes from {record.encryption} to {vault.encryption}: "
                 "the files are copied into a new tree that is swapped in")
        out.steps.extend(steps)
        return

    encrypted = vault.encryption != "none"
    has_storage = vault.limit_bytes > 0
    # the directory already is the vault's storage: its image mounted there, or it carries the vault's project
    its_storage = seen.mounted or (record is not None and record.project_id is not None
                                   and seen.project_id == record.project_id)
    plaintext_here = (
        seen.path_state is PathState.DIRECTORY and not its_storage and seen.policy is None and seen.empty is False
    )
    staged = seen.staged_plaintext
    moved_aside = False
    if plaintext_here and (encrypted or has_storage):
        if staged:
            problem("staging-conflict", f"plaintext is both at `{seen.path}` and staged beside it; resolve by hand")
            return
        step(Action.STAGE_PLAINTEXT, "a non-empty plaintext directory is where the vault belongs")
        staged = moved_aside = True
    fresh = moved_aside or seen.path_state is PathState.MISSING

    if has_storage:
        _limit_steps(vault, seen, record, fresh, step, problem)
    elif fresh:
        step(Action.CREATE_DIRECTORY, "the vault directory does not exist")

    if encrypted:
        if seen.seal is None:
            # an image whose vault is encrypted holds the files wherever its mount point is
            if seen.image_encrypted or (seen.policy is not None and not fresh):
                problem("key-lost", "the directory is encrypted but no sealed key is recorded for it; "
                        "it is not re-created (its data would be lost)")
                return
            step(Action.CREATE_KEY, "the vault has no sealed key")
        else:
            wanted = vault.seal
            if wanted is not None and (seen.seal.bank, seen.seal.pcrs) != (wanted.bank, tuple(sorted(wanted.pcrs))):
                step(Action.RESEAL, f"the key is sealed to {seen.seal.bank} PCRs {list(seen.seal.pcrs)}, "
                     f"the plan asks for {wanted.bank} PCRs {sorted(wanted.pcrs)}")
            elif seen.key_status is not KeyStatus.PRESENT:
                step(Action.UNLOCK, "the key is not in the kernel")
        if seen.policy is None or fresh:
            step(Action.SET_POLICY, "the vault directory has no encryption policy")
        elif seen.seal is not None and seen.policy.key_identifier != seen.seal.key_identifier:
            problem("policy-mismatch", "the directory is encrypted under another key than the sealed one")
        elif (differs := policy_difference(seen.policy, vault.encryption)) is not None:
            problem("policy-mismatch", differs)

    if staged:
        step(Action.MIGRATE, "plaintext files wait to move into the vault")
    elif seen.erasing_plaintext:
        step(Action.MIGRATE, "migrated plaintext waits to be deleted and its blocks discarded")
    out.steps.extend(steps)


def escrow_steps(plan: Plan, observed: Observed) -> list[Step]:
    """When the plan has an escrow key: an ESCROW_KEY step for each sealed vault of the plan whose files
    are under its sealed key and whose key the device holds no blob of for that escrow key (`escrow_gap`:
    none yet, as when a plan adds escrow to existing vaults; an earlier key's; another escrow key's).
    A new key is escrowed as it is made (CREATE_KEY, rotation, re-encryption). Never for a vault whose
    files are under another key: its blob may be the only copy of that key (S20); an image not mounted
    yet (after a reboot) shows no policy, so the step checks that again once MOUNT_STORAGE ran.

    Apart from `reconcile`, which `status` and `gate` read: apps need not wait for the controller's
    copy of a key, and a key that cannot be escrowed now is no reason to keep them from their data; the
    drift report says `escrow-missing` (S9). `InputError` when the plan's escrow key is not one."""
    if plan.device.escrow_public_key is None:
        return []
    escrow_public = escrow_public_raw(plan.device.escrow_public_key, "the plan's device.escrow_public_key")
    steps = []
    for vault in plan.vaults:
        seen = observed.vaults[vault.name]
        if vault.encryption == "none" or seen.seal is None or seen.path_state is not PathState.DIRECTORY:
            continue
        awaiting_mount = seen.policy is None and seen.image_bytes is not None and not seen.mounted
        if not awaiting_mount and (seen.policy is None or seen.policy.key_identifier != seen.seal.key_identifier):
            continue
        gap = escrow_gap(seen.escrow, seen.seal.key_identifier, escrow_public)
        if gap is not None:
            steps.append(Step(Action.ESCROW_KEY, vault.name, f"{gap}: it is wrapped for the plan's escrow key"))
    return steps


def storage_lost(vault: Vault, record: VaultRecord | None, seen: ObservedVault) -> bool:
    """A vault the device made with its own image (recorded, its key sealed) whose image file is gone:
    making it again would hide the loss under an empty vault. Its path is then the empty mount point,
    or still mounted from the deleted file; an encrypted directory there is a vault that never had an
    image (a plan gave it a limit)."""
    return (record is not None and bool(vault.limit_bytes or record.limit_bytes) and seen.seal is not None
            and record.backing != Backing.PROJECT_QUOTA
            and seen.image_bytes is None and seen.storage_damaged is None
            and (seen.mounted or seen.policy is None))


def _limit_steps(vault: Vault, seen: ObservedVault, record: VaultRecord | None, fresh: bool, step, problem) -> None:
    """A vault with a limit: by its backing, its image or its project quota."""
    if not vault.limit_bytes:
        return
    if backing_of(record, seen) is Backing.PROJECT_QUOTA:
        _quota_steps(vault, seen, record, fresh, step, problem)
    else:
        _storage_steps(vault, seen, step, problem)


def _quota_steps(vault: Vault, seen: ObservedVault, record: VaultRecord | None, fresh: bool, step, problem) -> None:
    """A vault with a project quota: its directory carries its project (with PROJINHERIT), whose hard
    limits are the vault's. A limit may rise or fall, but not below what the vault holds."""
    if fresh:
        step(Action.CREATE_PROJECT, f"the vault needs its directory with a project quota of "
             f"{format_size(vault.limit_bytes)} for its limit")
        return
    if record is None or record.project_id is None or seen.project_id != record.project_id or not seen.project_inherit:
        step(Action.SET_QUOTA, "the vault directory does not carry the vault's project (id and PROJINHERIT)")
        return
    if seen.quota is None:
        problem("quota-not-enforced", f"the filesystem of `{seen.path}` no longer enforces project quotas, so the "
                f"vault's {format_size(vault.limit_bytes)} limit is not applied: mount it with `prjquota` again")
        return
    wanted = limits_for(vault.limit_bytes)
    if (seen.quota.limit_bytes, seen.quota.inode_limit) == wanted:
        return
    if wanted[0] < seen.quota.used_bytes or wanted[1] < seen.quota.used_inodes:
        problem("limit-below-usage", f"the limit fell to {format_size(vault.limit_bytes)} ({wanted[1]} files) but "
                f"the vault holds {format_measured(seen.quota.used_bytes)} in {seen.quota.used_inodes} files; its quota "
                f"stays at {format_size(seen.quota.limit_bytes)}: remove data from the vault first")
        return
    step(Action.SET_QUOTA, f"the vault's project quota is {format_size(seen.quota.limit_bytes)}, its limit is "
         f"{format_size(vault.limit_bytes)}")


def _storage_steps(vault: Vault, seen: ObservedVault, step, problem) -> None:
    """A vault with a limit and an image: its own image, made, mounted and grown to the limit."""
    if seen.image_bytes is None:
        step(Action.CREATE_STORAGE, f"the vault needs its own {format_size(vault.limit_bytes)} filesystem for its limit")
        return
    if not seen.mounted:
        step(Action.MOUNT_STORAGE, "the vault's image is not mounted")
    # the filesystem's own size, not the image file's: a resize a crash cut short grew the file only
    if seen.image_bytes < image_bytes_for(vault.limit_bytes):
        step(Action.GROW_STORAGE, f"the vault's filesystem has {format_size(seen.image_bytes)}, its limit is "
             f"{format_size(vault.limit_bytes)}")
    elif seen.image_bytes > -(-vault.limit_bytes // BLOCK_SIZE) * BLOCK_SIZE:  # older images: the whole limit
        problem("limit-below-size", f"the limit fell to {format_size(vault.limit_bytes)} but the vault's filesystem "
                f"has {format_size(seen.image_bytes)}; shrinking is not supported, the vault keeps its size")


def apply_interrupted(plan: Plan, observed: Observed, name: str) -> bool:
    """The vault is one an unfinished apply (of a newer plan) began to make: recorded, never orphaned,
    and not in the applied plan. Not a vault that left the plan: that one is orphaned by the apply
    that drops it, and read-only commands must say it waits for that apply to run again."""
    record = observed.records.get(name)
    return observed.apply_unfinished and plan.vault(name) is None and record is not None and not record.orphaned


def _removed_vault(record: VaultRecord, seen: ObservedVault, out: Reconciliation, interrupted: bool) -> None:
    """A vault that left the plan is retained or destroyed as its record says, after what an interrupted
    migration into it left: its copied plaintext is erased first (the files are in the vault); files still
    staged unencrypted beside it (their one whole copy) hold it as it is, reported, until a person acts.
    `interrupted`: a vault an unfinished apply of a newer plan began to make (`apply_interrupted`), whose
    staged files that apply moves in: read-only commands say so themselves."""
    staging = staging_path(Path(seen.path))
    if seen.staged_plaintext:
        if not interrupted:
            out.problems.append(Problem(record.name, "plaintext-staged", (
                f"an apply that moved its files into the vault was interrupted: they wait, unencrypted, in "
                f"`{staging}`, and the plan no longer has the vault, so they are not moved in; the vault is "
                f"neither retained nor destroyed until they are gone: move them where they belong and remove "
                f"`{staging}`, or apply a plan that has the vault again")))
        return
    if seen.path_state.through_symlink:
        # destroying (or erasing beside it) there would delete whatever the link leads to; retaining would
        # unmount and lock there
        what = "destroyed" if record.on_remove == "destroy" else "locked and retained"
        out.problems.append(Problem(record.name, "unsafe-path", f"`{seen.path}` is a {seen.path_state.value}; "
                                    f"the vault is not {what} through it (its key and files are kept): remove "
                                    "the symlink or put the vault's directory back at its path"))
        return
    if seen.erasing_plaintext:
        out.steps.append(Step(Action.MIGRATE, record.name, "migrated plaintext waits to be deleted and its blocks "
                              "discarded"))
    if record.on_remove == "destroy":
        out.steps.append(Step(Action.DESTROY, record.name, "the vault left the plan with on_remove destroy"))
    elif not record.orphaned or seen.key_status is KeyStatus.PRESENT:
        out.steps.append(Step(Action.ORPHAN, record.name, "the vault left the plan with on_remove retain"))
