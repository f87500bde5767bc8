"""What `device apply` checks before it changes anything: a plan this host cannot carry out is refused
whole, with the reason and what to do, instead of being half applied (an image made and mounted, then
a key that cannot be made or sealed, and the plan recorded as applied).

- `check_host` (before the TPM is opened): the persist partition is there, a directory reached
  without a symlink, and every encrypted vault without its own image is on a filesystem with fscrypt
  (asked of the nearest existing directory on its path with FS_IOC_GET_ENCRYPTION_POLICY_EX, which
  changes nothing). A vault whose limit is an image gets its own `-O encrypt` image, so its
  filesystem is ours; one whose limit is a project quota is a directory on the persist filesystem,
  which needs fscrypt like a vault without a limit.
- `check_sealing` (after reconcile, for the vaults whose steps seal a key): the TPM has the bank and
  the PCRs, and PCR 0 and 4 are not all zero unless the plan allows an unmeasured boot
  (`Tpm.check_sealable`: what `Tpm.seal` would refuse, asked without sealing); and for a vault sealed
  to an attestation, this boot is one it allows (`unallowed_boot`): a key sealed to any other would
  unlock in that boot and stay locked in the ones the policy trusts.
- `check_image_room` (after reconcile, for the steps that make or grow a vault's image): the images
  are allocated in full, so what they take, summed per filesystem they land on, must fit in its free
  space, keeping `blockdev.STATE_RESERVE_BYTES` for the state files. Each image checked itself only
  as its step ran, so a first vault was made, sealed and mounted before a second found no room.

Each refusal is an `ApplyRefused` with a stable `reason` (enforcer/codes.py); the caller records it as
the `plan` condition, and nothing else has changed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from compiler.plan import Plan
from compiler.units import format_measured, format_size
from enforcer import blockdev, fscrypt, quota
from enforcer.observe import PathState, host_path, nearest_directory, path_state
from enforcer.reconcile import Action, Backing, Step, choose_backing
from enforcer.state import StateDir, VaultRecord
from vaultpolicy.errors import DeviceError

# the steps that seal a new key (a re-encryption to `none` seals nothing: checked per vault below)
_SEALING = (Action.CREATE_KEY, Action.RESEAL, Action.RE_ENCRYPT)
_ALLOCATING = (Action.CREATE_STORAGE, Action.GROW_STORAGE)  # the steps that make or grow an image
_UNMEASURED_HINT = ("on a simulator or a development board, allow it in the policy's `device` block "
                    "(`allow_unmeasured_boot`; never in production); on a device, have its firmware measure the boot")


class ApplyRefused(DeviceError):
    """The host cannot carry out the plan; nothing was changed. `reason` has a `vaultpolicy explain` code."""

    def __init__(self, reason: str, message: str, **kwargs):
        super().__init__(message, **kwargs)
        self.reason = reason


def check_host(plan: Plan, records: Mapping[str, VaultRecord], root: Path | None, state: StateDir) -> None:
    persist = host_path(root, plan.device.persist)
    kind = path_state(root, persist)
    if kind is not PathState.DIRECTORY:
        what = {PathState.MISSING: "does not exist", PathState.NOT_DIRECTORY: "is not a directory"}.get(
            kind, "is or passes through a symlink")
        raise ApplyRefused("persist-missing", f"the persist partition `{plan.device.persist}` is not there: `{persist}` "
                           f"{what}", hint="mount the persist partition there, or pass the --root that holds it")
    for vault in plan.vaults:
        if vault.encryption == "none":
            continue
        record = records.get(vault.name)  # a vault's files stay at its recorded path (reconcile.py)
        existing = host_path(root, record.path if record else vault.path)
        if path_state(root, existing) in (PathState.SYMLINK, PathState.SYMLINK_IN_PATH):
            continue  # never made there: reconcile reports it (`unsafe-path`)
        if vault.limit_bytes and choose_backing(record, state.image_path(vault.name).exists(), quota.enforced(
                nearest_directory(existing.parent))) is Backing.IMAGE:
            continue  # its own `-O encrypt` image: its filesystem is ours
        existing = nearest_directory(existing)  # what the vault's directory will be made in
        try:
            fscrypt.get_policy(str(existing))
        except fscrypt.FscryptUnsupported as exc:
            raise ApplyRefused("no-fscrypt", f"vault `{vault.name}` cannot be encrypted at `{vault.path}`: {exc.message}",
                               hint="make that filesystem with `mkfs.ext4 -O encrypt` (or `tune2fs -O encrypt`), or "
                               "give the vault a limit: on a filesystem without project quotas it then gets its own "
                               "encrypted image") from None


def check_sealing(plan: Plan, steps: list[Step], tpm) -> None:
    from enforcer.tpm import BankNotAllocated, UnmeasuredBoot

    checked = set()
    for step in steps:
        vault = plan.vault(step.vault)
        if step.action not in _SEALING or vault is None or vault.seal is None:
            continue
        selection = (vault.seal.bank, tuple(vault.seal.pcrs))
        if (selection, vault.seal.attestation) in checked:
            continue
        checked.add((selection, vault.seal.attestation))
        try:
            tpm.check_sealable(*selection, allow_unmeasured_boot=plan.device.allow_unmeasured_boot)
            if (why := unallowed_boot(plan, vault, tpm)) is not None:
                raise ApplyRefused("boot-not-allowed", f"the key of vault `{vault.name}` cannot be sealed: {why}",
                                   hint=BOOT_NOT_ALLOWED_HINT)
        except UnmeasuredBoot as exc:
            raise ApplyRefused("unmeasured-boot", f"the key of vault `{vault.name}` cannot be sealed: {exc.message}",
                               hint=_UNMEASURED_HINT) from None
        except BankNotAllocated as exc:
            raise ApplyRefused("bank-not-allocated", f"the key of vault `{vault.name}` cannot be sealed: {exc.message}",
                               hint=exc.hint or "choose an allocated bank in the policy, or allocate it "
                               "(tpm2_pcrallocate)") from None


BOOT_NOT_ALLOWED_HINT = ("boot into a state the attestation allows, or, if this one is legitimate (a firmware "
                         "update), add its values to the attestation's `allow` lists in a new plan")


def unallowed_boot(plan: Plan, vault, tpm) -> str | None:
    """Why the TPM's current PCR values are not a boot the vault's attestation allows (its `allow`
    lists; a PCR it lists no value for takes any), or None when they are, or the vault is sealed to
    explicit PCRs. A release re-seals without this check: the controller has verified that boot."""
    if vault.seal is None or vault.seal.attestation is None:
        return None
    attestation = plan.attestation(vault.seal.attestation)  # the plan's consistency check: it is there
    problems = attestation.not_allowed(tpm.read_pcrs(attestation.bank, attestation.pcrs), unlisted_allowed=True)
    if not problems:
        return None
    return f"this boot is not one attestation `{attestation.name}` allows: " + "; ".join(problems.values())


def check_image_room(plan: Plan, steps: list[Step], state: StateDir) -> None:
    by_filesystem: dict[int, tuple[Path, list[tuple[str, int, int]]]] = {}  # st_dev -> (a directory, images)
    for name in dict.fromkeys(s.vault for s in steps if s.action in _ALLOCATING):
        image = state.image_path(name)
        limit = plan.vault(name).limit_bytes
        needed = blockdev.bytes_to_allocate(image, limit)
        if needed:
            home = nearest_directory(image.parent)
            by_filesystem.setdefault(os.stat(home).st_dev, (home, []))[1].append((name, limit, needed))
    for home, images in by_filesystem.values():
        stats = os.statvfs(home)
        free = stats.f_bavail * stats.f_frsize
        total = sum(needed for _, _, needed in images)
        if total + blockdev.STATE_RESERVE_BYTES <= free:
            continue
        each = ", ".join(f"`{name}` {format_measured(needed)} (limit {format_size(limit)})" for name, limit, needed in images)
        raise ApplyRefused("storage-no-room", f"the vault images this plan makes or grows need {format_measured(total)} on "
                           f"the filesystem of `{home}`, which has {format_measured(free)} free and keeps "
                           f"{format_measured(blockdev.STATE_RESERVE_BYTES)} for the state files: {each}",
                           hint="images are allocated in full: free space there (or move the state dir to a larger "
                           "filesystem), or lower the vaults' limits")
