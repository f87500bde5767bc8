"""Execute reconcile's steps against the kernel and the TPM, each one written ahead to the journal.

One handler per `Action`; none reads `Step.reason`. A step that fails stops the remaining steps of
its vault only (recorded as the vault's condition); the other vaults go on. Data rules:
- A key is generated straight into a bytearray (read from /dev/urandom with `readinto`, so no
  immutable copy exists), sealed (the TPM test-unseals it), added to the kernel, and only the sealed
  blob is written (atomically). The bytearray is zeroed in `finally`.
- Plaintext found where a vault belongs (S5) is moved aside (a rename on the same filesystem, after a
  space check against the free blocks and inodes of the filesystem the vault will have: a vault whose
  limit is an image gets its image made first, to measure it; one whose limit is a project quota is
  measured against that limit and the persist filesystem's free space), the vault is made, and then every file is
  copied in, fsynced and verified by SHA-256 before the plaintext copy is removed. A crash anywhere
  leaves the original staged and intact, and the next run copies again. Files that cannot be carried
  (device nodes, files with names outside the directory, immutable or append-only entries) stop the
  migration before anything moves. The vault directory takes the plaintext directory's mode, owner and mtime. The plaintext is then renamed to
  `.<name>.vp-erase`, deleted, its freed blocks discarded, and that directory removed last: a crash
  before the discard leaves it, so the next run finishes the erase.
- A key is created only for a directory without an encryption policy: an encrypted directory whose
  sealed key is gone is `key-lost` (reconcile finds it; `_create_key` refuses it again), never
  re-keyed, and its escrow blob, the only copy of its key, is never overwritten (S20).
- A key is escrowed (wrapped for the plan's escrow key, `_escrow`) when it is created, rotated, or, for
  a vault that has one already, by ESCROW_KEY (`reconcile.escrow_steps`): unsealed into a bytearray,
  checked against the recorded identifier, wrapped, zeroed; only while the vault's files are under
  that key, so a blob that may be the only copy of another key is never replaced (S20).
- Unlocking computes the unsealed key's identifier before adding it (`fscrypt.key_identifier`): a
  key that is not the vault's never reaches the keyring, where it could have joined another vault's
  key and a removal would have locked that vault.
- Nothing is destroyed as a fallback (S20): DESTROY runs only for a vault that left the signed plan
  whose record says `destroy`. It removes the key from the kernel (when it is there: a locked vault
  is erased too), deletes the sealed blob and the escrow blob (the key wrapped for the controller)
  with its acknowledgement (from then on the files are unreadable: crypto-erase), then the files and
  the image.
- A vault's limit is enforced by its image or by a project quota (`Backing`, recorded at its first
  mutation and kept for life). A quota vault's project id is allocated and recorded before its
  directory gets it; the kernel exempts root from quota limits, so the enforcer's own copies are
  checked against the quota's room first (`free_room`). Destroy sets its project's limits to zero.
- Vault records are read once per run: reading every record for every step made a run over N
  vaults read N² files (a boot unlock of 100 vaults was 2x the bare unseals).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import stat
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from compiler.plan import Plan, Vault, format_time
from compiler.units import format_measured, format_size
from enforcer import blockdev, fscrypt, quota
from enforcer.fscrypt import KeyStatus
from enforcer.journal import Journal
from enforcer.observe import (Layout, is_mount, keyring_dir, layout, nearest_directory, open_below, open_parent,
                              path_state)
from enforcer.reconcile import Action, Backing, Step, choose_backing
from enforcer.state import StateDir, VaultRecord, fsync_dir
from enforcer.verify import record_for
from vaultpolicy.errors import DeviceError

_COPY_CHUNK = 1 << 20
_XATTR_BLOCK_SHARERS = 1024  # ext4's most inodes sharing one block of identical extended attributes
_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _AT_SYMLINK_NOFOLLOW = -100, 0x100
_STATX_SIZE, _STATX_ATTRIBUTES = 256, slice(8, 16)  # struct statx and its stx_attributes (linux/stat.h)
_UNDELETABLE = {0x10: ("immutable", "i"), 0x20: ("append-only", "a")}  # STATX_ATTR_IMMUTABLE, _APPEND


class MigrationError(DeviceError):
    """Plaintext files could not be moved into the vault; the originals are untouched."""


class UncopyableFile(MigrationError):
    """A file under a tree to copy (a migration's plaintext, a vault to rotate or re-encrypt) cannot be
    carried into the vault as it is; found before anything moved, and nothing did."""

    reason = "uncopyable-file"


class SourceChanged(MigrationError):
    """Files changed, appeared or went away while they were copied (an app still writing): the copy is not
    used, and the originals are as the app left them."""

    reason = "changed-during-copy"


class KeyMismatch(DeviceError):
    """The unsealed key is not the one the vault was encrypted with."""


class KeyLost(DeviceError):
    """The vault directory is encrypted but no sealed key is recorded: no new key is made (S20)."""

    reason = "key-lost"


class EscrowPostponed(DeviceError):
    """The vault's existing key cannot be escrowed now: the TPM does not unseal it, its PCRs changed
    since it was sealed. Its escrow stays as it was (the drift report says `escrow-missing`)."""

    reason = "escrow-unsealable"


class UnsafePath(DeviceError):
    """A symlink is, or is on the way to, the path of a vault to destroy: removing there would delete
    what the link leads to, which no plan named (S20)."""

    reason = "unsafe-path"


@dataclass
class Outcome:
    vault: str
    done: list[Step] = field(default_factory=list)
    failed: Step | None = None
    error: DeviceError | None = None


class Applier:
    """Runs steps for one plan; `tpm` is an open enforcer.tpm.Tpm; `now` is the run's one clock reading."""

    def __init__(self, plan: Plan, state: StateDir, root: Path | None, tpm, now: datetime,
                 device_id: str | None = None, journal: Journal | None = None,
                 records: dict[str, VaultRecord] | None = None):
        """`records`: the vault records the caller read already (once per run); kept current below."""
        self.plan, self.state, self.root, self.tpm = plan, state, root, tpm
        self.now, self.device_id, self.journal = now, device_id, journal
        self._records: dict[str, VaultRecord] = dict(state.records() if records is None else records)
        self._handlers = {
            Action.STAGE_PLAINTEXT: self._stage_plaintext,
            Action.CREATE_DIRECTORY: self._create_directory,
            Action.CREATE_STORAGE: self._mount_storage,
            Action.MOUNT_STORAGE: self._mount_storage,
            Action.GROW_STORAGE: self._grow_storage,
            Action.CREATE_PROJECT: self._set_quota,
            Action.SET_QUOTA: self._set_quota,
            Action.CREATE_KEY: self._create_key,
            Action.ESCROW_KEY: self._escrow_key,
            Action.UNLOCK: self._unlock,
            Action.RESEAL: self._reseal,
            Action.SET_POLICY: self._set_policy,
            Action.MIGRATE: self._migrate,
            Action.RE_ENCRYPT: self._re_encrypt,
            Action.ORPHAN: self._orphan,
            Action.DESTROY: self._destroy,
        }
        assert set(self._handlers) == set(Action), "every Action needs exactly one handler"

    def run(self, steps: list[Step]) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        for step in steps:
            outcome = outcomes.setdefault(step.vault, Outcome(step.vault))
            if outcome.failed is not None:
                continue
            try:
                if self.journal is None:
                    self._handlers[step.action](step.vault)
                else:
                    with self.journal.step({"action": step.action.value, "vault": step.vault}):
                        self._handlers[step.action](step.vault)
            except DeviceError as exc:
                outcome.failed, outcome.error = step, exc
                continue
            except OSError as exc:  # a filesystem call of the step itself: report it, keep the other vaults going
                where = f" `{exc.filename}`" if exc.filename else ""
                outcome.failed = step
                outcome.error = DeviceError(f"{step.action.value} failed on{where}: {exc.strerror or exc}", vault=step.vault)
                continue
            outcome.done.append(step)
        return outcomes

    # --- helpers -------------------------------------------------------------------------------
    def _vault(self, name: str) -> Vault:
        vault = self.plan.vault(name)
        assert vault is not None, f"step for vault `{name}` outside the plan"
        return vault

    def _layout(self, name: str) -> Layout:
        """Where the vault's files are: its recorded path (a plan cannot move a vault), else the plan's."""
        record = self._records.get(name)
        return layout(self.state, self.root, name, record.path if record else self._vault(name).path)

    def remember(self, vault: Vault) -> None:
        """Record the vault before its first mutation, so a later plan can still retain or destroy it; a
        vault with a limit gets its backing recorded then too, so a crash cannot change it."""
        record = record_for(self.plan, vault, self._records.get(vault.name))
        if vault.limit_bytes and record.backing is None:
            record = replace(record, backing=self._backing(vault.name).value)
        self.state.save_record(record)
        self._records[vault.name] = record

    def _backing(self, name: str) -> Backing:
        """What `reconcile.backing_of` decided from the observation, decided again from the same facts."""
        where = self._layout(name)
        return choose_backing(self._records.get(name), where.image.exists(),
                              quota.enforced(nearest_directory(where.path.parent)))

    def _checkpoint(self, label: str) -> None:
        """A crash point inside a step, for the crash test (journal.py)."""
        if self.journal is not None:
            self.journal.checkpoint(label)

    # --- handlers ------------------------------------------------------------------------------
    def _stage_plaintext(self, name: str) -> None:
        """Check the copy fits where the vault's files will be, then move the plaintext aside."""
        vault = self._vault(name)
        where = self._layout(name)
        refuse_uncopyable(where.path, name)
        needs = copy_needs(where.path, vault.encryption != "none")
        made = False
        if vault.limit_bytes and self._backing(name) is Backing.PROJECT_QUOTA:
            # the copy lands beside the staged files, in a project that will be the vault's alone
            stats = os.statvfs(where.path)
            limit_bytes, limit_inodes = quota.limits_for(vault.limit_bytes)
            room = (min(stats.f_bavail * stats.f_frsize, limit_bytes - blockdev.BLOCK_SIZE),
                    min(stats.f_favail, limit_inodes - 1))  # less the vault directory itself
            home = f"the vault's {format_size(vault.limit_bytes)} project quota on the filesystem of `{where.path}`"
        elif vault.limit_bytes:  # the vault's own filesystem, measured: made now when it does not exist yet
            if not where.image.exists():
                where.image.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                blockdev.make_image(where.image, vault.limit_bytes)
                made = True
                self._checkpoint("image-made-plaintext-in-place")
            room = _image_room(where)
            home = f"the vault's own {format_size(vault.limit_bytes)} filesystem"
        else:
            stats = os.statvfs(where.path)
            room = (stats.f_bavail * stats.f_frsize, stats.f_favail)
            home = f"the filesystem of `{where.path}`"
        if needs.bytes > room[0] or needs.inodes > room[1]:
            if made:
                where.image.unlink()
            raise MigrationError(f"migrating `{where.path}` needs {format_measured(needs.bytes)} and {needs.inodes} "
                                 f"inodes free on {home}, which has {format_measured(room[0])} and {room[1]} inodes "
                                 "free; nothing was moved", vault=name,
                                 hint="raise the vault's limit or remove files first")
        self.remember(vault)
        os.rename(where.path, where.staging)
        fsync_dir(where.path.parent)

    def _create_directory(self, name: str) -> None:
        vault = self._vault(name)
        self.remember(vault)
        path = self._layout(name).path
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fsync_dir(path.parent)

    def _mount_storage(self, name: str) -> None:
        """Create (when missing) and mount the vault's image; blockdev binds its `vault` dir at the vault path."""
        vault = self._vault(name)
        where = self._layout(name)
        where.image.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not where.image.exists():  # a vault the state filesystem has no room for leaves nothing, not a record
            blockdev.check_room(where.image, vault.limit_bytes)
        self.remember(vault)
        remounted = blockdev.attach_image(where.image, where.path, vault.limit_bytes, self._checkpoint)
        self._rekey_if_remounted(name, remounted)

    def _set_quota(self, name: str) -> None:
        """The vault's directory (made when missing) carries its project with PROJINHERIT, and the
        project's hard limits are the vault's limit: one quotactl, nothing unmounted. The project id is
        allocated and recorded before the directory gets it, so a crash never leaves an id no record names."""
        vault = self._vault(name)
        where = self._layout(name)
        self.remember(vault)
        record = self._records[name]
        where.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if record.project_id is None:
            taken = {r.project_id for r in self._records.values() if r.project_id is not None}
            record = replace(record, project_id=quota.free_project(where.path.parent, taken))
            self.state.save_record(record)
            self._records[name] = record
        if not where.path.is_dir():
            where.path.mkdir(mode=0o700)
            fsync_dir(where.path.parent)
        quota.set_limit(where.path.parent, record.project_id, vault.limit_bytes)
        quota.assign(where.path, record.project_id)

    def _grow_storage(self, name: str) -> None:
        vault = self._vault(name)
        where = self._layout(name)
        self._rekey_if_remounted(name, blockdev.grow(where.image, where.path, vault.limit_bytes, self._checkpoint))

    def _rekey_if_remounted(self, name: str, remounted: bool) -> None:
        """An offline resize unmounts the vault, which drops its key from the kernel: add it again."""
        if remounted and self.state.sealed(name) is not None:
            unlock_key(self.state, self.tpm, name, self._key_home(name), self.now)

    def _key_home(self, name: str) -> str:
        """The directory whose filesystem's keyring gets the vault's key. A vault with its own image
        whose image is not mounted at its path gets none: the key would go to the keyring of the
        filesystem underneath, where it unlocks nothing and `lock` of the image would not find it."""
        where = self._layout(name)
        record, vault = self._records.get(name), self.plan.vault(name)
        limited = bool((vault and vault.limit_bytes) or (record and record.limit_bytes))
        # a lost image leaves its empty mount point; an encrypted directory there is a vault that never had one
        has_image = where.image.exists() or (limited and self._backing(name) is Backing.IMAGE
                                             and fscrypt.get_policy(str(where.path)) is None)
        if has_image and not is_mount(where.path):
            raise DeviceError(f"its image `{where.image}` is not mounted at `{where.path}`; its key was not added",
                              vault=name)
        return keyring_dir(where.path)

    def _create_key(self, name: str) -> None:
        vault = self._vault(name)
        self.remember(vault)
        path = self._layout(name).path
        home = self._key_home(name)
        if fscrypt.get_policy(str(path)) is not None:  # reconcile says key-lost; this keeps the rule here too
            raise KeyLost("the directory is encrypted but no sealed key is recorded for it; no new key was made "
                          "(its data would be lost) and its escrow blob is kept", vault=name,
                          hint="have the controller release the escrowed key (`vaultpolicy device unlock --release`)")
        key = bytearray(fscrypt.RAW_KEY_SIZE)
        try:
            blob = seal_new_key(self.tpm, self.plan, vault, key)
            identifier = fscrypt.add_key(home, key)
            if self.plan.device.escrow_public_key:
                self._escrow(name, identifier, key)
            self._checkpoint("sealed-and-added-not-saved")
            self.state.save_sealed(name, blob.to_json(), identifier, rotated_at=format_time(self.now))
        finally:
            key[:] = bytes(len(key))

    def _escrow_key(self, name: str) -> None:
        """Escrow the vault's existing key for the plan's escrow key (a plan that adds escrow, or changes
        the escrow key): unsealed by the TPM, so only while the PCRs are those it is sealed to."""
        sealed = self.state.sealed(name)
        if sealed is None:
            raise DeviceError("no sealed key is recorded", vault=name)
        identifier = bytes.fromhex(sealed["key_identifier"])
        policy = fscrypt.get_policy(str(self._layout(name).path))
        if policy is None or policy.key_identifier != identifier:  # reconcile's rule, again where the blob is replaced
            raise DeviceError("its files are not under its sealed key, so its key was not escrowed and its escrow "
                              "blob is kept (it may be the only copy of their key)", vault=name)
        self.escrow_sealed(name, identifier, sealed["blob"])

    def escrow_sealed(self, name: str, identifier: bytes, blob: object) -> None:
        """Escrow the key sealed in `blob` (a sealed record's blob object), the vault's key `identifier`,
        for the plan's escrow key, unless the device holds its blob for that escrow key already
        (`escrow.escrow_gap`): unsealed, checked to be that key, wrapped (`_escrow`), zeroed. Existing keys (ESCROW_KEY) and rotated ones
        (enforcer/rotate.py, at commit) are escrowed through here."""
        from enforcer import escrow
        from enforcer.tpm import PcrMismatch, SealedBlob

        wanted = escrow.escrow_public_raw(self.plan.device.escrow_public_key, "plan device.escrow_public_key")
        if escrow.escrow_gap(escrow.held_blob(self.state.root, name), identifier, wanted) is None:
            return  # a re-encryption earlier in this run, or a rotation's commit before a crash, escrowed it
        try:
            key = self.tpm.unseal(SealedBlob.from_record(blob))
        except PcrMismatch as exc:
            raise EscrowPostponed(
                f"its key cannot be escrowed now: PCR {exc.bank}:{','.join(map(str, exc.pcrs))} changed since it was "
                "sealed, so the TPM does not unseal it; its escrow stays as it was", vault=name,
                hint="apply the plan again once the device runs in the state the key is sealed to; if this state is "
                     f"legitimate (a firmware update) and the vault is unlocked, `vaultpolicy device rotate {name}` "
                     "gives it a new key, sealed to the PCRs as they are now, and escrows that (a vault sealed to an "
                     "attestation: once a plan allowing the new values is applied)") from None
        try:
            if fscrypt.key_identifier(key) != identifier:
                raise KeyMismatch("the unsealed key is not the vault's key; it was not escrowed", vault=name)
            self._checkpoint("escrow-unsealed")  # the key is in memory only: a kill here leaves nothing of it
            self._escrow(name, identifier, key)
        finally:
            key[:] = bytes(len(key))

    def _escrow(self, name: str, identifier: bytes, key: bytearray) -> None:
        from enforcer import escrow
        from enforcer.attest import resolve_device_id

        # the id quotes and reports will carry, or the controller cannot match the blob to the device
        device_id = resolve_device_id(self.device_id, self.state.root)
        public = escrow.load_escrow_public(self.plan.device.escrow_public_key, "plan device.escrow_public_key")
        escrow.record_escrow(self.state.root, escrow.wrap_key(public, device_id, name, identifier, bytes(key)))

    def _unlock(self, name: str) -> None:
        unlock_key(self.state, self.tpm, name, self._key_home(name), self.now)

    def _reseal(self, name: str) -> None:
        from enforcer.tpm import SealedBlob

        vault = self._vault(name)
        sealed = self.state.sealed(name)
        identifier = bytes.fromhex(sealed["key_identifier"])
        key = self.tpm.unseal(SealedBlob.from_record(sealed["blob"]))
        try:
            if fscrypt.key_identifier(key) != identifier:  # never sealed anew, never added to the kernel
                raise KeyMismatch("the unsealed key is not the vault's key; it is not resealed", vault=name)
            blob = self.tpm.seal(key, vault.seal.bank, vault.seal.pcrs,
                                 allow_unmeasured_boot=self.plan.device.allow_unmeasured_boot)
            self.state.save_sealed(name, blob.to_json(), identifier)
            mountpoint = self._key_home(name)
            if fscrypt.key_status(mountpoint, identifier) is not KeyStatus.PRESENT:
                fscrypt.add_key(mountpoint, key)
        finally:
            key[:] = bytes(len(key))

    def _set_policy(self, name: str) -> None:
        vault = self._vault(name)
        where = self._layout(name)
        path = str(where.path)
        identifier = bytes.fromhex(self.state.sealed(name)["key_identifier"])
        existing = fscrypt.get_policy(path)
        if existing is None:
            fscrypt.check_cipher(str(where.cipher_probe), identifier, vault.encryption, self._checkpoint)
            fscrypt.set_policy(path, identifier, vault.encryption)
        elif existing != fscrypt.policy_for(identifier, vault.encryption):
            raise DeviceError(f"`{path}` is already encrypted under another key or policy ({fscrypt.describe(existing)})",
                              vault=name)

    def _migrate(self, name: str) -> None:
        """Copy the staged plaintext in, then erase it (`.vp-erase`: delete, discard, remove)."""
        where = self._layout(name)
        if where.staging.is_dir():
            self._copy_staged(name, where)
            os.rename(where.staging, where.erasing)  # copied and verified: from here on it is only erased
            fsync_dir(where.staging.parent)
            self._checkpoint("copied-not-erased")
        if where.erasing.is_dir():  # also what a crash before the discard left
            for entry in os.scandir(where.erasing):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            fsync_dir(where.erasing)
            self._checkpoint("between-delete-and-discard")
            blockdev.discard_free(where.erasing.parent)  # the plaintext's freed blocks
            where.erasing.rmdir()
            fsync_dir(where.erasing.parent)

    def _copy_staged(self, name: str, where: Layout) -> None:
        encrypted = self._vault(name).encryption != "none"
        refuse_uncopyable(where.staging, name)
        needs = copy_needs(where.staging, encrypted).minus(copy_needs(where.path, encrypted))
        room = free_room(where.path)
        if needs.bytes > room[0] or needs.inodes > room[1]:
            raise MigrationError(f"the vault has {format_measured(room[0])} and {room[1]} inodes free, the staged "
                                 f"plaintext at `{where.staging}` needs {format_measured(needs.bytes)} and {needs.inodes} "
                                 "inodes more; it stays there, intact", vault=name)
        copied: list[Path] = []
        try:
            copy_tree(where.staging, where.path, copied, name, self._checkpoint)
        except (OSError, MigrationError) as exc:
            for path in reversed(copied):  # S21: a failed migration leaves no partial copy behind
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()  # emptied already: its entries come after it in `copied`
                else:
                    path.unlink(missing_ok=True)
            if isinstance(exc, MigrationError):
                raise
            raise MigrationError(f"copying `{exc.filename}` into the vault failed ({exc.strerror}); the staged "
                                 f"plaintext at `{where.staging}` stays intact", vault=name) from None

    def _re_encrypt(self, name: str) -> None:
        """Copy the files into a tree under the plan's encryption and swap it in (enforcer/rotate.py), as
        nested journaled steps; a crash is finished or undone by `Rotator.recover`."""
        from enforcer.rotate import Rotator

        where = self._layout(name)
        if not where.image.exists():  # a directory that vanished carries nothing: an empty tree is re-encrypted
            where.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        Rotator(self.plan, self.state, self.root, self.tpm, self.now, self.device_id, self.journal).rekey(
            name, "re-encrypt")
        self._records = self.state.records()  # the re-encryption recorded the vault's new encryption

    def _orphan(self, name: str) -> None:
        record = self._records[name]
        where = self._layout(name)
        sealed = self.state.sealed(name)
        if sealed is not None and where.path.is_dir():
            lock_key(bytes.fromhex(sealed["key_identifier"]), where)
        self.state.save_record(replace(record, orphaned=True))
        self._records[name] = replace(record, orphaned=True)

    def _destroy(self, name: str) -> None:
        from enforcer import escrow

        record = self._records[name]
        if record.on_remove != "destroy":  # the record, written from a signed plan, is the only licence
            raise DeviceError("refusing to destroy a vault whose plan did not say `destroy`", vault=name)
        if record.protected:  # verify refuses such a plan; this keeps the rule where the data dies too (S16)
            raise DeviceError("refusing to destroy a protected vault", vault=name)
        where = self._layout(name)
        kind = path_state(self.root, where.path)  # again where the data dies: reconcile looked before earlier steps
        if kind.through_symlink:
            raise UnsafePath(f"`{where.path}` is a {kind.value}; nothing was destroyed", vault=name,
                             hint="remove the symlink or put the vault's directory back at its path, then apply again")
        sealed = self.state.sealed(name)
        if sealed is not None and where.path.is_dir():
            # a key already out of the kernel (a locked vault, a reboot) is what destroy wants
            lock_key(bytes.fromhex(sealed["key_identifier"]), where)
        self.state.remove_sealed(name)  # from here on the files are unreadable: crypto-erased
        escrow.remove_escrow(self.state.root, name)  # the key wrapped for the controller, and its ack
        blockdev.detach(where.path)
        blockdev.detach(where.store)  # an image mounted but not bound at its path (a rotation cut short)
        _remove_directory(self.state.root, where.store, name)
        _remove_directory(self.root, where.path, name)
        where.image.unlink(missing_ok=True)
        if record.project_id is not None:  # its files are gone: its project's limit goes too
            home = nearest_directory(where.path.parent)
            if quota.enforced(home):
                quota.set_limit(home, record.project_id, 0)
        self.state.remove_record(name)
        del self._records[name]


def _remove_directory(root: Path | None, path: Path, vault: str) -> None:
    """Remove the directory `path` (reached from `root`, trusted) and everything in it; nothing when it
    is not there or is not a directory.

    `path_state` looked a moment ago, but a symlink can be put on the way since. So the parent is opened
    one component at a time with O_NOFOLLOW (`open_parent`) and shutil.rmtree removes `path` by name
    relative to that descriptor: it lstat's the name, opens it, refuses it unless both are the same
    directory (no link swapped in), and walks by descriptor below. A path-based rmtree would follow any
    symlink on the way: its own guard covers only the last component."""
    refusal = UnsafePath(f"a symlink was put at or on the way to `{path}` while the vault was destroyed; its "
                         "key is erased, its files were not removed", vault=vault,
                         hint="remove the symlink: the next apply removes the files")
    try:
        parent_fd = open_parent(root, path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise
        if path_state(root, path).through_symlink:  # only to tell a symlink from a file: nothing is followed
            raise refusal from None
        return  # a directory on the way is not there, so neither is `path`
    try:
        try:
            kind = os.stat(path.name, dir_fd=parent_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISLNK(kind):
            raise refusal
        if stat.S_ISDIR(kind):
            shutil.rmtree(path.name, dir_fd=parent_fd)
            os.fsync(parent_fd)
    finally:
        os.close(parent_fd)


def seal_new_key(tpm, plan: Plan, vault: Vault, key: bytearray):
    """Fill the caller's `key` from /dev/urandom (`readinto`: no immutable copy; the caller zeroes it)
    and seal it to the vault's selection (the TPM test-unseals); returns the SealedBlob."""
    with open("/dev/urandom", "rb", buffering=0) as source:
        if source.readinto(key) != len(key):
            raise DeviceError("short read from /dev/urandom", vault=vault.name)
    return tpm.seal(key, vault.seal.bank, vault.seal.pcrs, allow_unmeasured_boot=plan.device.allow_unmeasured_boot)


def unlock_key(state: StateDir, tpm, name: str, mountpoint: str, now: datetime) -> None:
    """Unseal the vault's key, add it to the keyring of the filesystem holding `mountpoint`
    (`Applier._key_home`), check it is the recorded key and that it took; record `tpm-sealed` as the
    vault's last unlock method (the drift report shows it)."""
    from enforcer.release import record_unlock
    from enforcer.tpm import SealedBlob

    sealed = state.sealed(name)
    if sealed is None:
        raise DeviceError("no sealed key is recorded", vault=name)
    recorded = bytes.fromhex(sealed["key_identifier"])
    try:
        key = tpm.unseal(SealedBlob.from_record(sealed["blob"]))
    except DeviceError as exc:
        raise _for_vault(exc, name) from None
    try:
        # checked before the key reaches the kernel: a wrong key added there could join a key another
        # vault already has in, and taking it out again would lock that vault
        identifier = fscrypt.key_identifier(key)
        if identifier != recorded:
            raise KeyMismatch(f"the unsealed key has identifier {identifier.hex()}, the vault records "
                              f"{recorded.hex()}; it was not added to the kernel", vault=name)
        fscrypt.add_key(mountpoint, key)
    finally:
        key[:] = bytes(len(key))
    status = fscrypt.key_status(mountpoint, recorded)
    if status is not KeyStatus.PRESENT:
        raise DeviceError(f"the kernel reports the key {status.name.lower()} right after adding it", vault=name)
    record_unlock(state, name, "tpm-sealed", now)


def key_homes(where: Layout) -> list[str]:
    """A directory of each filesystem whose keyring may hold the vault's key: its image's, when it is
    mounted, and the one its path is on (for a vault with an image, the one under its mount point too:
    a key added while the image was not mounted went there). One per filesystem."""
    candidates = [str(where.store)] if blockdev.is_mounted(where.store) else []
    candidates += [fscrypt.mountpoint_of(str(where.path)), str(where.path.parent)]
    homes: dict[int, str] = {}
    for candidate in candidates:
        homes.setdefault(os.stat(candidate).st_dev, candidate)
    return list(homes.values())


def key_in_kernel(identifier: bytes, where: Layout) -> bool:
    """Whether any keyring the vault's key may be in (`key_homes`) has it, even incompletely removed."""
    return any(fscrypt.key_status(home, identifier) is not KeyStatus.ABSENT for home in key_homes(where))


def lock_key(identifier: bytes, where: Layout) -> fscrypt.RemovalResult | None:
    """Remove the key from every keyring it is in (`key_homes`; every user's claim); None when it was in
    none.

    A vault with its own image is the root of a bind mount, and a mount pins its root directory's
    inode: the kernel could never evict it and would leave the key "incompletely removed". So the
    bind mount is taken down first, the key removed, and the (now locked) directory bound again so
    the vault path shows the encrypted names. When the unmount is refused because files are open,
    the key is removed anyway and the kernel reports the vault busy (S7).
    """
    homes = [home for home in key_homes(where) if fscrypt.key_status(home, identifier) is not KeyStatus.ABSENT]
    if not homes:
        return None
    unbound = False
    if str(where.store) in homes and blockdev.is_mounted(where.path):
        result = subprocess.run(["umount", str(where.path)], capture_output=True, text=True)
        unbound = result.returncode == 0  # refused when files are open: the kernel will say busy
    try:
        removals = [fscrypt.remove_key(home, identifier, all_users=True) for home in homes]
    finally:
        if unbound:
            _mount(["--bind", str(where.store_data), str(where.path)])
    return fscrypt.RemovalResult(files_busy=any(r.files_busy for r in removals),
                                 other_users=any(r.other_users for r in removals))


def _for_vault(exc: DeviceError, name: str) -> DeviceError:
    """The same error, with the vault named in its message."""
    if exc.vault is None:
        exc.vault = name
        exc.message = f"vault `{name}`: {exc.message}"
        exc.args = (exc.message,)
    return exc


def _mount(arguments: list[str]) -> None:
    result = subprocess.run(["mount", *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise DeviceError(f"mount {' '.join(arguments)} failed: {result.stderr.strip()}")


def free_room(path: Path) -> tuple[int, int]:
    """(free bytes, free inodes) for a copy into the directory `path`: its filesystem's, and no more than
    its project's quota leaves when it carries a project under an enforced quota. The enforcer runs as
    root, which the kernel exempts from quota limits, so this check is what keeps its copies within the
    vault's limit (S21)."""
    stats = os.statvfs(path)
    room = (stats.f_bavail * stats.f_frsize, stats.f_favail)
    project = quota.project_of(path)
    if project is not None and project[0] != 0 and quota.enforced(path):
        counted = quota.get(path, project[0])
        if counted.limit_bytes or counted.inode_limit:
            left = counted.room()
            room = (min(room[0], left[0]) if counted.limit_bytes else room[0],
                    min(room[1], left[1]) if counted.inode_limit else room[1])
    return room


def _image_room(where: Layout) -> tuple[int, int]:
    """(free bytes, free inodes) of the vault's own filesystem, less its vault directory."""
    if blockdev.is_mounted(where.store):
        stats = os.statvfs(where.store)
        free, inodes = stats.f_bavail * stats.f_frsize, stats.f_favail
    else:  # an image just made: its superblock's counts are exact
        block = blockdev.superblock(where.image)
        free, inodes = block.free_bytes, block.free_inodes
    return free - blockdev.BLOCK_SIZE, inodes - 1


@dataclass(frozen=True)
class CopyNeeds:
    bytes: int
    inodes: int

    def minus(self, other: "CopyNeeds") -> "CopyNeeds":
        return CopyNeeds(max(self.bytes - other.bytes, 0), max(self.inodes - other.inodes, 0))


def copy_needs(root: Path, encrypted: bool) -> CopyNeeds:
    """What a copy of the tree under `root` (the top directory included) takes on an ext4 filesystem
    with 4 KiB blocks, counted from names, sizes and allocated blocks (lstat: symlinks are not
    followed): per regular file the blocks it has (a sparse file's holes take none in the copy
    either), and an extent block for a file above 1 MiB; per directory the blocks its entries take,
    twice over for a directory past one block (hashed directories split half-full blocks), under
    encryption with names padded to 32 bytes; a block per symlink too long to sit in its inode; an
    inode per file. A file with several names (hard links) is one inode and its blocks once, as
    `copy_tree` copies it. Extended attributes take a block per set of them (an encrypted inode's
    spare room holds its encryption context, so a 1 KiB attribute does not fit there), which ext4
    shares among up to 1024 inodes with the very same set. Shared by migration and rotation (S21)."""
    block = blockdev.BLOCK_SIZE
    inline_link = 59 - 2 if encrypted else 59  # an encrypted target carries its length

    def blocks(size: int) -> int:
        return -(-size // block)

    def attributes(path: str) -> tuple:
        return tuple(sorted((name, os.getxattr(path, name, follow_symlinks=False))
                            for name in os.listxattr(path, follow_symlinks=False)))

    total, inodes = 0, 0
    if not root.is_dir():
        return CopyNeeds(0, 0)
    counted: set[tuple[int, int]] = set()  # (device, inode) of the files with several names met so far
    attribute_sets: Counter[tuple] = Counter()  # how many inodes have each set of extended attributes
    for directory, dirs, files in os.walk(root):
        names = dirs + files
        entry_bytes = 24 + sum(8 + (-(-len(os.fsencode(n)) // 32) * 32 if encrypted else -(-len(os.fsencode(n)) // 4) * 4)
                               for n in names)
        total += (1 if entry_bytes <= block else 2 * blocks(entry_bytes)) * block
        inodes += 1
        attribute_sets[attributes(directory)] += 1
        for entry in names:  # os.walk lists a link to a directory with the directories, and does not enter it
            path = os.path.join(directory, entry)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                continue  # counted when the walk enters it
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in counted:
                    continue  # another name of a file counted already: its directory entry is all it adds
                counted.add((st.st_dev, st.st_ino))
            inodes += 1
            attribute_sets[attributes(path)] += 1
            if stat.S_ISREG(st.st_mode):  # its allocated blocks: a sparse file's holes stay holes
                total += (blocks(min(st.st_size, st.st_blocks * 512)) + (st.st_size > 2**20)) * block
            elif stat.S_ISLNK(st.st_mode):
                target = len(os.fsencode(os.readlink(path)))
                total += block if (-(-target // 32) * 32 if encrypted else target) > inline_link else 0
    total += sum(-(-count // _XATTR_BLOCK_SHARERS) for found, count in attribute_sets.items() if found) * block
    return CopyNeeds(total, inodes)


def refuse_uncopyable(root: Path, vault: str, known_as: Path | None = None) -> None:
    """Raise UncopyableFile, naming the vault, the file (under `known_as`, where people see `root`: an
    image vault's files are at its path through a bind mount) and why, for the first file under `root`
    that a copy cannot carry, so the copy is refused before anything moves: a device node; a file
    with names outside `root` (hard links: the copy would be another file than the one those names
    show, and the plaintext would stay readable there); an immutable or append-only entry, which could
    not be removed once copied (a migration would leave its plaintext behind, a rotation its old tree
    and key)."""
    def shown(path: str) -> Path:
        return (known_as or root) / os.path.relpath(path, root)

    names_in_tree: dict[tuple[int, int], list] = {}  # (device, inode) -> [a path, its names met, its link count]
    for directory, dirs, files in os.walk(root):
        _refuse_undeletable(directory, shown(directory), vault)
        for entry in dirs + files:
            path = os.path.join(directory, entry)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                continue
            _refuse_undeletable(path, shown(path), vault)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                raise _device_node(shown(path), st, vault)
            if st.st_nlink > 1:
                names_in_tree.setdefault((st.st_dev, st.st_ino), [path, 0, st.st_nlink])[1] += 1
    for path, found, count in names_in_tree.values():
        if found < count:
            raise UncopyableFile(
                f"`{shown(path)}` has {count - found} more name{'s' if count - found > 1 else ''} outside "
                f"`{known_as or root}` (hard links): its copy in the vault would be another file than those names "
                "show, and its plaintext would stay readable there; nothing was changed", vault=vault,
                hint="remove the other names, or replace them with copies (`cp`), and run the command again")


def _refuse_undeletable(path: str, shown: Path, vault: str) -> None:
    """Raise UncopyableFile when `path` is immutable or append-only (`chattr +i`, `+a`), asked with statx,
    which opens nothing (opening a device or a FIFO can act on it)."""
    buffer = ctypes.create_string_buffer(_STATX_SIZE)
    if _libc.statx(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, 0, buffer) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), path)
    attributes = int.from_bytes(buffer.raw[_STATX_ATTRIBUTES], "little")
    for flag, (name, letter) in _UNDELETABLE.items():
        if attributes & flag:
            raise UncopyableFile(f"`{shown}` is {name} (chattr +{letter}): once copied, it could not be removed; "
                                 "nothing was changed", vault=vault,
                                 hint=f"clear the flag (`chattr -{letter}`), run the command again, and set it again "
                                      "on the copy if it is still wanted")


def _device_node(path: Path, st: os.stat_result, vault: str) -> UncopyableFile:
    kind = "character" if stat.S_ISCHR(st.st_mode) else "block"
    return UncopyableFile(f"`{path}` is a {kind} device: a vault holds no device nodes (what is written through "
                          "one goes to the device, never encrypted); nothing was changed", vault=vault,
                          hint="move it out of the directory and run the command again")


def copy_metadata(st: os.stat_result, source: int | str, target: int | str) -> None:
    """Give `target` the owner, extended attributes, mode and times of `source`, whose lstat is `st`.
    Each is an open descriptor of a file or directory, or, for a symlink, FIFO or socket, its path in
    an open directory (`_in_directory`), never followed: a path of its own could lead through a
    symlink to something outside the vault. The owner first: a chown clears setuid and setgid bits
    and file capabilities. The extended attributes then, exactly the source's: `user.*`, POSIX ACLs
    (`system.posix_acl_*`), file capabilities (`security.capability`), ...; one the target has and
    the source has not (an ACL inherited from a default ACL) goes. The mode after them (an ACL sets
    the mode's group bits; they are one), the mtime last: nothing is added after."""
    by_path = {} if isinstance(target, int) else {"follow_symlinks": False}
    os.chown(target, st.st_uid, st.st_gid, **by_path)
    wanted = {name: os.getxattr(source, name, **by_path) for name in os.listxattr(source, **by_path)}
    for name in set(os.listxattr(target, **by_path)) - set(wanted):
        os.removexattr(target, name, **by_path)
    for name, value in wanted.items():
        os.setxattr(target, name, value, **by_path)
    if not stat.S_ISLNK(st.st_mode):  # Linux keeps no mode for a link
        os.chmod(target, stat.S_IMODE(st.st_mode), **by_path)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), **by_path)


def copy_tree(source: Path, target: Path, copied: list[Path], vault: str,
              checkpoint: Callable[[str], None] | None = None) -> None:
    """Copy everything under the directory `source` into the existing directory `target`, which takes
    `source`'s own metadata last: regular files (their data ranges: holes stay holes), directories,
    symlinks, FIFOs and sockets, each with its owner, mode, extended attributes and times
    (`copy_metadata`); a file's other names become hard links to its copy, so they stay one file. Each
    file is fsynced and verified by SHA-256. A device node raises UncopyableFile (`refuse_uncopyable`
    refuses it before anything moves). Shared by migration, rotation and re-encryption (enforcer/rotate.py).

    Then `source` is looked at again, and SourceChanged is raised for an entry that changed, appeared or
    went away while the copy ran (an app still writing): the copy is not what is there, and the caller
    would otherwise erase or swap out what the app wrote.

    No symlink is ever followed: an app writes its vault's links, and the copy runs as root. Each
    directory is opened with O_NOFOLLOW relative to its parent's descriptor and every entry is read,
    made and changed relative to that descriptor, so a link is copied as a link with its own owner and
    times (Linux keeps no mode for a link), and what it points to is never read, written or changed,
    even when an app swaps a link in during the copy. `copied` gets every entry this call creates, each
    directory before its entries, so a caller can undo a failed copy in reverse order. `checkpoint`
    (the crash test's hook) is called once, after the first file."""
    first_copies: dict[tuple[int, int], Path] = {}  # (device, inode) of a file with several names -> its copy
    as_copied: dict[Path, tuple] = {}  # each entry (relative to `source`) as it was when it was copied

    def copy_directory(source_fd: int, target_fd: int, relative: Path) -> None:
        nonlocal checkpoint
        with os.scandir(source_fd) as listing:
            names = sorted(entry.name for entry in listing)
        for name in names:
            path = target / relative / name
            try:
                st = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
                as_copied[relative / name] = _what_changes(st)
                if stat.S_ISDIR(st.st_mode):
                    try:
                        os.mkdir(name, 0o700, dir_fd=target_fd)
                        copied.append(path)
                    except FileExistsError:  # a copy a crash cut short: carried on into it
                        pass
                    with _directory(name, source_fd) as inner_source, _directory(name, target_fd) as inner_target:
                        copy_directory(inner_source, inner_target, relative / name)
                        copy_metadata(st, inner_source, inner_target)  # last: its entries are all in
                elif (st.st_dev, st.st_ino) in first_copies:
                    _remove_leftover(name, target_fd)
                    copied.append(path)
                    link_to_first_copy(first_copies[st.st_dev, st.st_ino], name, target_fd)
                elif stat.S_ISREG(st.st_mode):
                    _remove_leftover(name, target_fd)
                    copied.append(path)
                    _copy_file(name, source_fd, target_fd, st, path, vault)
                    if checkpoint is not None:
                        checkpoint("mid-copy")
                        checkpoint = None
                elif stat.S_ISLNK(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                    _remove_leftover(name, target_fd)
                    if stat.S_ISLNK(st.st_mode):
                        os.symlink(os.readlink(name, dir_fd=source_fd), name, dir_fd=target_fd)
                    else:  # a FIFO or a socket is only its name: nothing is in it
                        os.mknod(name, stat.S_IFMT(st.st_mode) | 0o600, dir_fd=target_fd)
                    copied.append(path)
                    copy_metadata(st, _in_directory(source_fd, name), _in_directory(target_fd, name))
                else:
                    raise _device_node(source / relative / name, st, vault)
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    first_copies.setdefault((st.st_dev, st.st_ino), path)
            except OSError as exc:  # named relative to a descriptor: say where
                if not os.path.isabs(exc.filename or ""):
                    exc.filename = str(path)
                raise
        os.fsync(target_fd)

    def link_to_first_copy(first: Path, name: str, target_fd: int) -> None:
        """Name the copy `first` (a path under `target`) `name` in `target_fd` too; each directory on the
        way to it is opened with O_NOFOLLOW from `target`'s descriptor, as the copy made them."""
        with _directory_below(top_target_fd, first.parent.relative_to(target)) as parent_fd:
            os.link(first.name, name, src_dir_fd=parent_fd, dst_dir_fd=target_fd, follow_symlinks=False)

    with _directory(source) as source_fd, _directory(target) as top_target_fd:
        top = os.fstat(source_fd)
        as_copied[Path()] = _what_changes(top)
        copy_directory(source_fd, top_target_fd, Path())
        copy_metadata(top, source_fd, top_target_fd)
        os.fsync(top_target_fd)
        changed = _first_change(source_fd, as_copied)
    if changed is not None:
        relative, what = changed
        raise SourceChanged(f"`{source / relative}` {what} while the vault's files were copied (an app still "
                            "writing?): the copy is not used, and the original stays as the app left it", vault=vault,
                            hint="stop the apps that write there (`vaultpolicy device gate` keeps them stopped) and "
                                 "run the command again")


def _what_changes(st: os.stat_result) -> tuple:
    """What of an entry's lstat differs once it is written to, renamed over, or (a directory) gains or loses
    an entry: ctime changes with any change of the inode, mtime with its data."""
    return st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _first_change(top_fd: int, as_copied: dict[Path, tuple]) -> tuple[Path, str] | None:
    """An entry under the open directory `top_fd` (relative to it) that is not as `as_copied` has it, and
    what happened to it (changed, appeared, went away); None when every entry is as it was copied. A
    directory changes with what is added to or removed from it, so the deepest entry is named."""
    now = {Path(): _what_changes(os.fstat(top_fd))}

    def look(directory_fd: int, relative: Path) -> None:
        with os.scandir(directory_fd) as listing:
            names = sorted(entry.name for entry in listing)
        for name in names:
            st = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
            now[relative / name] = _what_changes(st)
            if stat.S_ISDIR(st.st_mode):
                with _directory(name, directory_fd) as inner:
                    look(inner, relative / name)

    look(top_fd, Path())
    differing = [path for path in as_copied.keys() | now.keys() if as_copied.get(path) != now.get(path)]
    if not differing:
        return None
    path = max(differing, key=lambda p: (len(p.parts), str(p)))
    return path, "appeared" if path not in as_copied else "went away" if path not in now else "changed"


@contextmanager
def _directory(path: str | Path, parent_fd: int | None = None) -> Iterator[int]:
    """A descriptor of the directory `path` (relative to `parent_fd` when given); ELOOP when it is a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _in_directory(directory_fd: int, name: str) -> str:
    """A path to the entry `name` of the open directory `directory_fd`, for calls that take no descriptor
    of the directory: the directory is the one open, whatever is renamed meanwhile."""
    return f"/proc/self/fd/{directory_fd}/{name}"


@contextmanager
def _directory_below(top_fd: int, relative: Path) -> Iterator[int]:
    """A descriptor of the directory `relative` below `top_fd` (`open_below`: a symlink put on the way
    fails it instead of leading elsewhere), closed on leaving."""
    fd = open_below(top_fd, relative.parts)
    try:
        yield fd
    finally:
        os.close(fd)


def _remove_leftover(name: str, directory_fd: int) -> None:
    """What a copy a crash cut short left where a file or a link goes (unlink never follows a link)."""
    try:
        os.unlink(name, dir_fd=directory_fd)
    except FileNotFoundError:
        pass


def _copy_file(name: str, source_fd: int, target_fd: int, st: os.stat_result, path: Path, vault: str) -> None:
    """Copy the regular file `name` of the directory `source_fd` into `target_fd`, where it must not exist.
    O_NOFOLLOW: a link an app swapped in since `st` was taken is neither read nor written through;
    O_NONBLOCK: a FIFO swapped in does not hang the copy. Either is then not the file `st` describes.
    Only the ranges that hold data are copied, so a sparse file's holes stay holes (a 1 GiB disk image
    holding 12 KiB takes 12 KiB in the vault, not 1 GiB of encrypted zeros); each range is verified by
    SHA-256 as read back from the copy."""
    reader_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=source_fd)
    try:
        if not os.path.samestat(st, os.fstat(reader_fd)):
            raise SourceChanged(f"`{path}` was replaced while it was copied; the original stays where it was",
                                vault=vault)
        writer_fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                            dir_fd=target_fd)
        try:
            ranges = _data_ranges(reader_fd, st.st_size)
            expected = _digest(reader_fd, ranges, copy_to=writer_fd)
            os.ftruncate(writer_fd, st.st_size)  # a hole at the end has no range to write
            os.fsync(writer_fd)
            copy_metadata(st, reader_fd, writer_fd)
            actual = _digest(writer_fd, ranges)
        finally:
            os.close(writer_fd)
    finally:
        os.close(reader_fd)
    if actual != expected:
        raise MigrationError(f"`{path}` does not read back as written (SHA-256 differs); the original stays as it "
                             "was", vault=vault)


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of each range of the open file `fd` that holds data (SEEK_DATA, SEEK_HOLE), up to `size`."""
    ranges, offset = [], 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from `offset` on
                break
            raise
        offset = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if start < offset:
            ranges.append((start, offset))
    return ranges


def _digest(fd: int, ranges: list[tuple[int, int]], copy_to: int | None = None) -> bytes:
    """SHA-256 over each range of `fd` and where it starts; with `copy_to`, each range written there too."""
    digest = hashlib.sha256()
    for start, end in ranges:
        digest.update(start.to_bytes(8, "little"))
        for offset in range(start, end, _COPY_CHUNK):
            chunk = os.pread(fd, min(_COPY_CHUNK, end - offset), offset)
            if copy_to is not None:
                _write_all(copy_to, chunk, offset)
            digest.update(chunk)
    return digest.digest()


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
