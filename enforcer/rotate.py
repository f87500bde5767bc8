"""Key rotation (`vaultpolicy device rotate`): a vault's files re-encrypted under a fresh key, the old key erased.
The same machinery carries out an encryption change of a signed plan (apply's `re-encrypt` step,
`Rotator.rekey(name, "re-encrypt")`): the new tree gets the plan's encryption, a fresh key, or no
policy and no key for `none`; the source may be plaintext (a vault that had `none`). The steps are then
named `re-encrypt-*`, commit also records the new encryption (and for `none` deletes the sealed blob),
and erase discards the freed blocks of a plaintext source.

fscrypt v2 cannot change the key of a directory in place, so a rotation builds a second directory
and swaps it in. Per vault, each mutating step written ahead to the journal:

    rotate-key     64 fresh bytes (a bytearray, zeroed after), sealed to the plan's selection (the TPM
                   test-unseals), the sealed blob written as the pending rotation
                   STATE/rotating/<vault>.json, the key added to the kernel, its identifier recorded
    rotate-copy    a vault with its own image is unbound from its path (refused when files are open:
                   nothing changed); a new directory beside the data on the same filesystem
                   (`<image>.mnt/vault.vp-rotate`, or `.<name>.vp-rotate` beside a plain vault) gets a
                   v2 policy under the new key; every file, directory, symlink, FIFO and socket is
                   copied with its owner, mode, extended attributes and times, fsynced and verified
                   by SHA-256 (apply.copy_tree, the migration's copy)
    rotate-swap    renameat2(RENAME_EXCHANGE): the new tree takes the data's name in one atomic step.
                   This is the commit point
    rotate-commit  the sealed record becomes the new key's (with `rotated_at`); the new key is escrowed
                   when the plan has an escrow key; the image's vault is bound at the path again
    rotate-erase   the old tree removed, the old key removed from the kernel, the pending record deleted.
                   The old key's sealed blob was replaced at commit: whatever is left under it is
                   unreadable (crypto-erase)

Before anything: the vault must be unlocked (its key PRESENT in the kernel: the files must be
readable) and encrypted under its sealed key, and the copy must fit (S21): the regular files' blocks,
one block per other entry, and an inode each, against the filesystem's free space. A refusal names
the vault and the bytes needed, and changes nothing.

Crash recovery (`Rotator.recover`, run first by `device rotate`, `device apply` and `device unlock`):
a pending record means a rotation was interrupted. If the data directory is already encrypted under
the pending key (for a decryption: has no policy), the swap happened: commit and erase are finished (roll forward). Otherwise the rotation is undone:
the partial copy removed (deleting files needs no key), the new key removed from the kernel (when
its identifier was not recorded yet, the blob is unsealed first to compute it), the image bound again,
the pending record deleted. Every step is idempotent, so a crash during recovery converges too. No
raw key is written at any point, and no plaintext unless the plan decrypts the vault: the copy is
encrypted as it is written. A recovery that can be neither (a damaged pending record, a new key that no
longer unseals) fails its own vault only (`RecoveryFailed`): the record and the files it names are
left for a person, and the commands go on with every other vault.

Limits: a rotation copies the whole vault, so it needs that much free space on the vault's own
filesystem and time proportional to its size; a file apps write during the copy of a vault without
its own image fails it (apply.SourceChanged), and one written between the copy's last look and the
swap is not carried over (stop its apps first: `device gate` keeps them stopped).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import get_args

from compiler.plan import Encryption, Plan, Vault, format_time, parse_time
from enforcer import blockdev, fscrypt, quota
from enforcer.apply import Applier, copy_needs, copy_tree, free_room, refuse_uncopyable, seal_new_key
from enforcer.preflight import BOOT_NOT_ALLOWED_HINT, unallowed_boot
from enforcer.fscrypt import KeyStatus
from enforcer.journal import Journal
from enforcer.observe import Layout, layout
from enforcer.reconcile import Problem, Reconciliation
from enforcer.state import StateCorrupt, StateDir, VaultRecord, atomic_remove, atomic_write, exchange, fsync_dir
from vaultpolicy.errors import DeviceError, InputError

ROTATING_DIR = "rotating"
_NEW_SUFFIX = ".vp-rotate"
_KEY_IDENTIFIER = re.compile(r"[0-9a-f]{32}")
PENDING_DAMAGED_HINT = ("restore it from a backup: the vault's files and its partial copy (`*.vp-rotate`) are kept; "
                        "until then this vault is left as it is and every other vault goes on")
RECOVERY_FAILED_HINT = ("fix what stops it (a changed PCR: boot the state the new key was sealed in) and run the command "
                        "again; until then this vault is left as it is and every other vault goes on")


class RotationRefused(DeviceError):
    """The vault cannot be rotated or re-encrypted now; nothing was changed. `reason` is a stable
    kebab word with a `vaultpolicy explain` code (enforcer/codes.py)."""

    def __init__(self, reason: str, message: str, **kwargs):
        super().__init__(message, **kwargs)
        self.reason = reason


class RecoveryFailed(DeviceError):
    """An interrupted rotation or re-encryption of the vault could be neither finished nor undone; its
    pending record and the files it names are left as they are, for a person. `reason`: `state-damaged`
    (the record cannot be read) or `recovery-failed` (reading or acting on it failed)."""

    def __init__(self, reason: str, message: str, vault: str, hint: str):
        super().__init__(message, vault=vault, hint=hint)
        self.reason = reason


@dataclass(frozen=True)
class Rotated:
    vault: str
    outcome: str  # rotated | not-due | failed
    reason: str = ""  # for `failed`: a RotationRefused reason, or rotate-failed
    old_key: str = ""
    new_key: str = ""
    rotated_at: str = ""
    message: str = ""


@dataclass(frozen=True)
class Recovered:
    """A rotation or re-encryption a crash interrupted, finished by `Rotator.recover`."""

    vault: str
    operation: str  # rotation | re-encryption
    outcome: str  # completed: the swap had happened | undone: the vault keeps its previous key and files

    def describe(self) -> str:
        if self.outcome == "completed":
            return f"interrupted {self.operation} completed (its files had been swapped in)"
        return f"interrupted {self.operation} undone (its files had not been swapped in: the vault is as before)"


@dataclass(frozen=True)
class _Where:
    """The pieces of one vault a rotation touches."""

    layout: Layout
    data: Path  # the encrypted directory holding the vault's files
    fresh: Path  # the new directory beside it, on the same filesystem
    key_home: str  # a directory of that filesystem: the key ioctls go there
    bound: bool  # the vault path is a bind mount of `data` (a vault with its own image)
    project: int | None = None  # the vault's project (a project-quota vault): the new tree gets it too


def overdue(sealed: dict | None, rotate_seconds: int | None, now: datetime) -> bool | None:
    """Whether the key is older than the rotation period; None only for a key sealed before
    `rotated_at` was recorded (its age is unknown)."""
    if sealed is None or not rotate_seconds:
        return False
    if "rotated_at" not in sealed:
        return None
    return (now - parse_time(sealed["rotated_at"])).total_seconds() > rotate_seconds


def pending_path(state: StateDir, vault: str) -> Path:
    state.sealed_path(vault)  # refuses a vault name that could escape the state dir
    return state.root / ROTATING_DIR / f"{vault}.json"


class Rotator:
    """Rotates vault keys of the applied `plan`; `tpm` is an open enforcer.tpm.Tpm."""

    def __init__(self, plan: Plan, state: StateDir, root: Path | None, tpm, now: datetime,
                 device_id: str | None = None, journal: Journal | None = None):
        self.plan, self.state, self.root, self.tpm = plan, state, root, tpm
        self.now, self.device_id, self.journal = now, device_id, journal

    # --- the journal -----------------------------------------------------------------------------
    def _step(self, action: str, vault: str):
        if self.journal is None:
            return nullcontext()
        return self.journal.step({"action": action, "vault": vault})

    # --- selection -------------------------------------------------------------------------------
    def select(self, names: list[str], due_only: bool) -> list[str]:
        """The encrypted vaults to rotate: `names` (all when empty), only overdue ones with `due_only`."""
        encrypted = [v.name for v in self.plan.vaults if v.encryption != "none"]
        for name in names:
            if name not in encrypted:
                from vaultpolicy.suggest import did_you_mean

                what = "is not encrypted" if self.plan.vault(name) else "is not in the applied plan"
                raise InputError(f"vault `{name}` {what}: nothing to rotate", hint=did_you_mean(name, encrypted))
        chosen = names or encrypted
        if due_only:
            chosen = [n for n in chosen if overdue(self.state.sealed(n), self.plan.vault(n).rotate_seconds, self.now)
                      is not False]
        return chosen

    # --- rotation and re-encryption -------------------------------------------------------------
    def rotate(self, name: str) -> Rotated:
        """`device rotate`: a fresh key for the vault's files."""
        if self.state.sealed(name) is None:
            raise RotationRefused("not-created", "the vault has no key yet; run `vaultpolicy device apply` first",
                                  vault=name)
        return self.rekey(name, "rotate")

    def rekey(self, name: str, verb: str) -> Rotated:
        """Copy the vault's files into a new tree under the plan's encryption (a fresh key, or none)
        and swap it in; `verb` names the journaled steps (`rotate-copy`, `re-encrypt-copy`, ...).

        The source may be encrypted under the sealed key (then it must be unlocked) or plaintext
        (a vault that had `encryption none`, or an empty directory apply just made)."""
        vault = self.plan.vault(name)
        sealed = self.state.sealed(name)
        where = self._where(name, self.state.records()[name])
        policy = fscrypt.get_policy(str(where.data)) if where.data.is_dir() else None
        if policy is not None:
            if sealed is None or policy.key_identifier.hex() != sealed["key_identifier"]:
                raise RotationRefused("not-encrypted", "the vault is not encrypted under its sealed key; run "
                                      "`vaultpolicy device apply` first", vault=name)
            if fscrypt.key_status(where.key_home, policy.key_identifier) is not KeyStatus.PRESENT:
                raise RotationRefused("vault-locked", f"the vault is locked: its files must be readable to {verb} them",
                                      vault=name, hint="run `vaultpolicy device unlock` first")
        elif not where.data.is_dir() or verb == "rotate":
            raise RotationRefused("not-encrypted", "the vault is not encrypted under its sealed key; run "
                                  "`vaultpolicy device apply` first", vault=name)
        _check_copy(name, where, vault.encryption != "none")
        if vault.encryption != "none" and (why := unallowed_boot(self.plan, vault, self.tpm)) is not None:
            raise RotationRefused("boot-not-allowed", f"the new key cannot be sealed: {why}; nothing was changed",
                                  vault=name, hint=BOOT_NOT_ALLOWED_HINT)
        # the key the files leave: the directory's, or a sealed key whose files are gone (still erased)
        old = policy.key_identifier if policy is not None else bytes.fromhex(sealed["key_identifier"]) if sealed else None

        try:
            with self._step(f"{verb}-key", name):
                self._new_key(name, vault, where, old)
            with self._step(f"{verb}-copy", name):
                self._copy(vault, where, _read_pending(self.state, name), verb)
        except (DeviceError, OSError) as exc:
            if pending_path(self.state, name).exists():
                self._undo(name, where, _read_pending(self.state, name), verb)
            if isinstance(exc, DeviceError):
                raise
            raise DeviceError(f"`{exc.filename}`: {exc.strerror or exc}; the {verb} was undone, "
                              "the vault keeps its key", vault=name) from None
        pending = _read_pending(self.state, name)
        with self._step(f"{verb}-swap", name):
            exchange(where.data, where.fresh)
        busy = self._finish(name, where, pending, verb)
        return Rotated(name, "rotated", "", old.hex() if old else "", pending["key_identifier"] or "",
                       pending["rotated_at"],
                       "files still open kept the old key incompletely removed until they close" if busy else "")

    def _new_key(self, name: str, vault: Vault, where: _Where, old: bytes | None) -> None:
        """Write the pending record: the target encryption and, unless it is `none`, a fresh sealed key."""
        pending = {"blob": None, "key_identifier": None, "previous_key_identifier": old.hex() if old else None,
                   "encryption": vault.encryption, "rotated_at": format_time(self.now),
                   "plaintext_source": fscrypt.get_policy(str(where.data)) is None}
        if vault.encryption == "none":
            _write_pending(self.state, name, pending)
            return
        key = bytearray(fscrypt.RAW_KEY_SIZE)
        try:
            blob = seal_new_key(self.tpm, self.plan, vault, key)
            # recorded before the key reaches the kernel, so an undo can always find and remove it
            pending["blob"] = json.loads(blob.to_json())
            _write_pending(self.state, name, pending)
            pending["key_identifier"] = fscrypt.add_key(where.key_home, key).hex()
            _write_pending(self.state, name, pending)
        finally:
            key[:] = bytes(len(key))

    def _copy(self, vault: Vault, where: _Where, pending: dict, verb: str) -> None:
        if where.bound and blockdev.is_mounted(where.layout.path):
            _unbind(vault.name, where.layout.path, verb)
        if where.fresh.exists():
            shutil.rmtree(where.fresh)
        where.fresh.mkdir(mode=0o700)
        if where.project is not None:  # the copy counts against the vault's quota, and keeps its project after the swap
            quota.assign(where.fresh, where.project)
        if pending["key_identifier"] is not None:
            new = bytes.fromhex(pending["key_identifier"])
            try:
                fscrypt.check_cipher(str(where.fresh / ".vp-cipher-probe"), new, pending["encryption"])
            except fscrypt.CipherUnavailable as exc:
                raise RotationRefused(exc.reason, f"the kernel cannot encrypt with {pending['encryption']}; nothing "
                                      "was changed", vault=vault.name, hint=exc.hint) from None
            fscrypt.set_policy(str(where.fresh), new, pending["encryption"])
        copy_tree(where.data, where.fresh, [], vault.name)
        fsync_dir(where.fresh.parent)

    def _finish(self, name: str, where: _Where, pending: dict, verb: str) -> bool:
        """Roll a swapped rotation or re-encryption forward; True when open files keep the old key
        incompletely removed."""
        new = pending["key_identifier"]
        with self._step(f"{verb}-commit", name):
            sealed = self.state.sealed(name)
            if new is None:  # decrypted: from here on the old key's blob is gone (crypto-erase)
                self.state.remove_sealed(name)
            elif sealed is None or sealed["key_identifier"] != new:
                self.state.save_sealed(name, json.dumps(pending["blob"]), bytes.fromhex(new),
                                       rotated_at=pending["rotated_at"])
            if new is not None and self.plan.device.escrow_public_key:
                Applier(self.plan, self.state, self.root, self.tpm, self.now, self.device_id).escrow_sealed(
                    name, bytes.fromhex(new), pending["blob"])
            record = self.state.records()[name]
            # pending records of rotations written before re-encryption existed carry no `encryption`
            self.state.save_record(replace(record, encryption=pending.get("encryption", record.encryption)))
            self._bind(where)
        with self._step(f"{verb}-erase", name):
            if where.fresh.exists():  # after the swap it holds the old tree
                shutil.rmtree(where.fresh)
                fsync_dir(where.fresh.parent)
            if pending.get("plaintext_source"):  # the old tree's freed blocks held plaintext
                blockdev.discard_free(where.key_home)
            busy = False
            old = pending["previous_key_identifier"]
            if old is not None and fscrypt.key_status(where.key_home, bytes.fromhex(old)) is not KeyStatus.ABSENT:
                busy = fscrypt.remove_key(where.key_home, bytes.fromhex(old), all_users=True).files_busy
            atomic_remove(pending_path(self.state, name))
        return busy

    def _undo(self, name: str, where: _Where, pending: dict, verb: str) -> None:
        new = pending["key_identifier"]
        if new is None and pending["blob"] is not None:
            # the key may have reached the kernel before its identifier was recorded; learnt before anything
            # is removed, so a key that no longer unseals leaves the partial copy and the record as they were
            new = self._identifier_of(pending)
        with self._step(f"{verb}-undo", name):
            if where.fresh.exists():  # the partial copy: unlinking needs no key
                shutil.rmtree(where.fresh)
                fsync_dir(where.fresh.parent)
            if new is not None and fscrypt.key_status(where.key_home, bytes.fromhex(new)) is not KeyStatus.ABSENT:
                fscrypt.remove_key(where.key_home, bytes.fromhex(new), all_users=True)
            self._bind(where)
            atomic_remove(pending_path(self.state, name))

    def _identifier_of(self, pending: dict) -> str:
        """The kernel's identifier for the pending key, computed from the unsealed key: nothing is added."""
        from enforcer.tpm import SealedBlob

        key = self.tpm.unseal(SealedBlob.from_record(pending["blob"]))
        try:
            return fscrypt.key_identifier(key).hex()
        finally:
            key[:] = bytes(len(key))

    # --- recovery --------------------------------------------------------------------------------
    def recover(self) -> tuple[list[Recovered], dict[str, RecoveryFailed]]:
        """Finish (swapped) or undo (not swapped) every rotation or re-encryption a crash interrupted:
        (what was recovered, vault -> why its recovery failed). A failure is its own vault's only, so a
        damaged record or a key that no longer unseals does not stop every vault at boot."""
        directory = self.state.root / ROTATING_DIR
        names = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
        recovered, failed = [], {}
        for name in names:
            try:
                recovered.append(self._recover(name))
            except (DeviceError, OSError) as exc:
                failed[name] = _failed(name, directory / f"{name}.json", exc)
        return recovered, failed

    def _recover(self, name: str) -> Recovered:
        record = self.state.record(name)  # only its own record: a damaged other one is not this one's concern
        if record is None:
            raise DeviceError("an interrupted rotation is recorded for a vault the device does not manage", vault=name)
        pending = _read_pending(self.state, name)  # checked before anything is touched
        where = self._where(name, record)
        verb = "rotate" if pending.get("encryption", record.encryption) == record.encryption else "re-encrypt"
        policy = fscrypt.get_policy(str(where.data)) if where.data.is_dir() else None
        # swapped: the data directory is already what the new tree was made as
        swapped = policy is None if pending["key_identifier"] is None else (
            policy is not None and pending["key_identifier"] == policy.key_identifier.hex())
        if swapped:
            self._finish(name, where, pending, verb)
        else:
            self._undo(name, where, pending, verb)
        return Recovered(name, "rotation" if verb == "rotate" else "re-encryption", "completed" if swapped else "undone")

    # --- layout ----------------------------------------------------------------------------------
    def _where(self, name: str, record: VaultRecord) -> _Where:
        """The vault's data directory; a vault with its own image gets its image mounted when a
        reboot (or a crash mid-rotation) left it unmounted."""
        where = layout(self.state, self.root, name, record.path)
        if not where.image.exists():
            path = where.path
            return _Where(where, path, path.with_name(f".{path.name}{_NEW_SUFFIX}"), str(path.parent), False,
                          record.project_id)
        if not blockdev.is_mounted(where.store):
            where.store.mkdir(mode=0o700, exist_ok=True)
            blockdev.mount_image(where.image, where.store)
        return _Where(where, where.store_data, where.store / f"{where.store_data.name}{_NEW_SUFFIX}",
                      str(where.store), True)

    def _bind(self, where: _Where) -> None:
        if where.bound and not blockdev.is_mounted(where.layout.path):
            blockdev.attach_image(where.layout.image, where.layout.path, where.layout.image.stat().st_size)


def rotate_vaults(rotator: Rotator, names: list[str], due_only: bool,
                  unrecovered: dict[str, RecoveryFailed] | None = None) -> list[Rotated]:
    """Rotate each chosen vault; one vault's failure is reported and the others still rotate. A vault
    whose interrupted rotation could not be recovered (`Rotator.recover`) is reported failed, chosen or
    not, and never rotated: a new rotation would overwrite its pending record."""
    unrecovered = unrecovered or {}
    chosen = rotator.select(names, due_only)
    results = [Rotated(name, "failed", failure.reason, message=failure.detail)
               for name, failure in sorted(unrecovered.items())]
    for vault in rotator.plan.vaults:
        if vault.name in unrecovered or vault.encryption == "none" or (names and vault.name not in names):
            continue
        if vault.name not in chosen:
            why = "its key is younger than the rotation period" if vault.rotate_seconds else "the plan sets no rotation period"
            results.append(Rotated(vault.name, "not-due", message=why))
            continue
        try:
            results.append(rotator.rotate(vault.name))
        except DeviceError as exc:
            message = exc.detail + (f"; {exc.hint}" if exc.hint else "")
            # the reason of a refusal (RotationRefused) or of a file the copy cannot carry (UncopyableFile)
            results.append(Rotated(vault.name, "failed", exc.reason or "rotate-failed", message=message))
        except OSError as exc:  # the filesystem refused a step (e.g. EBUSY: a mount inside the old tree)
            results.append(Rotated(vault.name, "failed", "rotate-failed", message=(
                f"{exc.strerror or exc}: `{exc.filename}`; once that is resolved, the next `device rotate`, `apply` "
                "or `unlock` finishes or undoes the rotation (its pending record is kept)")))
    return results


def _unbind(name: str, path: Path, verb: str) -> None:
    """Take the image's bind mount off the vault path, so no app writes during the copy; refused when
    files are open (the rotation is then undone)."""
    result = subprocess.run(["umount", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RotationRefused("vault-busy", f"files are open in the vault; close them (stop its apps) to {verb} "
                              f"({result.stderr.strip()})", vault=name)


def _check_copy(name: str, where: _Where, encrypted: bool) -> None:
    """S21: every file must be one a copy carries, and the re-encrypted copy must fit beside the data,
    within the vault's quota when it has one (the copy gets the vault's project); refuse before
    changing anything."""
    refuse_uncopyable(where.data, name, where.layout.path)
    free, inodes = free_room(where.data)
    needs = copy_needs(where.data, encrypted)
    if needs.bytes > free or needs.inodes > inodes:
        raise RotationRefused("no-room", f"copying the vault needs {needs.bytes} free bytes and {needs.inodes} inodes on "
                              f"its filesystem (and within its quota); it has {free} bytes and {inodes} inodes free. "
                              "Nothing was changed", vault=name, hint="raise the vault's limit or remove files first")


def leave_unrecovered(rec: Reconciliation, unrecovered: dict[str, RecoveryFailed]) -> Reconciliation:
    """`rec` without a step for a vault whose interrupted rotation could not be recovered, and that as
    its one problem: nothing of it changes (not even a `destroy`) until a person has looked."""
    return Reconciliation([s for s in rec.steps if s.vault not in unrecovered],
                          [p for p in rec.problems if p.vault not in unrecovered]
                          + [Problem(name, failure.reason, failure.detail) for name, failure in sorted(unrecovered.items())])


def _failed(name: str, path: Path, exc: DeviceError | OSError) -> RecoveryFailed:
    kept = "the interrupted rotation and the vault's files are left as they are"
    if isinstance(exc, DeviceError):
        why = exc.detail
    else:
        why = f"`{exc.filename}`: {exc.strerror or exc}"
    reason = "state-damaged" if isinstance(exc, StateCorrupt) else "recovery-failed"
    if reason == "state-damaged":
        return RecoveryFailed(reason, f"{why}; {kept}", name, exc.hint or PENDING_DAMAGED_HINT)
    return RecoveryFailed(reason, f"the interrupted rotation recorded in {path} could be neither finished nor undone: "
                          f"{why}; {kept}", name, RECOVERY_FAILED_HINT)


def _read_pending(state: StateDir, vault: str) -> dict:
    """The pending record; `StateCorrupt` naming the file and what is wrong with it."""
    path = pending_path(state, vault)
    try:
        pending = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise StateCorrupt(f"the interrupted rotation's record {path} is unreadable: {exc}", vault=vault,
                           hint=PENDING_DAMAGED_HINT) from None
    wrong = _wrong_in_pending(pending)
    if wrong is not None:
        raise StateCorrupt(f"the interrupted rotation's record {path} is damaged: {wrong}", vault=vault,
                           hint=PENDING_DAMAGED_HINT)
    return pending


def _wrong_in_pending(pending: object) -> str | None:
    """What in a pending record is not as `_new_key` writes it, or None. `encryption` and
    `plaintext_source` came with re-encryption: older records lack them."""
    from enforcer.tpm import SealedBlob

    if not isinstance(pending, dict):
        return "not a JSON object"
    wrong = [name for name in ("key_identifier", "previous_key_identifier") if name not in pending or not (
        pending[name] is None or isinstance(pending[name], str) and _KEY_IDENTIFIER.fullmatch(pending[name]))]
    if "blob" not in pending or (pending["blob"] is None and pending.get("key_identifier") is not None):
        wrong.append("blob")  # a new key in the kernel needs its sealed blob
    elif pending["blob"] is not None:
        try:
            SealedBlob.from_record(pending["blob"])
        except DeviceError:
            wrong.append("blob")
    try:
        parse_time(pending.get("rotated_at"))
    except (TypeError, ValueError):
        wrong.append("rotated_at")
    if pending.get("encryption", "aes-256-xts") not in get_args(Encryption):
        wrong.append("encryption")
    if not isinstance(pending.get("plaintext_source", False), bool):
        wrong.append("plaintext_source")
    return f"field {', '.join(f'`{name}`' for name in wrong)} missing or not what a rotation writes" if wrong else None


def _write_pending(state: StateDir, vault: str, pending: dict) -> None:
    atomic_write(pending_path(state, vault), json.dumps(pending, indent=2, sort_keys=True).encode() + b"\n")
