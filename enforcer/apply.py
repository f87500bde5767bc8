"""Execute reconcile's steps against the kernel and the TPM, each one written ahead to the journal.

One handler per `Action`; none reads `Step.reason`. A step that fails stops the remaining steps of
its vault only (recorded as the vault's condition); the other vaults go on. Data rules:
- A key is generated straight into a bytearray (read from /dev/urandom with `readinto`, so no
  immutable copy exists), sealed (the TPM test-unseals it), added to the kernel, and only the sealed
  blob is written (atomically). The bytearray is zeroed in `finally`.
- Plaintext found where a vault belongs (S5) is moved aside (a rename on the same filesystem, after a
  space check), the vault is made, and then every file is copied in, fsynced and verified by SHA-256
  before the plaintext copy is removed. A crash anywhere leaves the original staged and intact, and
  the next run copies again. Files whose kind cannot be carried (devices, sockets, FIFOs) stop the
  migration before anything moves.
- Nothing is destroyed as a fallback (S20): DESTROY runs only for a vault that left the signed plan
  whose record says `destroy`. It removes the key from the kernel, deletes the sealed blob (from then
  on the files are unreadable: crypto-erase), then the files and the image.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from compiler.plan import Plan, Vault, format_time
from enforcer import blockdev, fscrypt
from enforcer.fscrypt import KeyStatus
from enforcer.journal import Journal
from enforcer.observe import Layout, keyring_dir, layout
from enforcer.reconcile import Action, Step
from enforcer.state import StateDir, fsync_dir
from enforcer.verify import record_for
from vaultpolicy.errors import DeviceError

_COPY_CHUNK = 1 << 20
# ext4 keeps part of an image for its journal and inode tables; a migration must fit in the rest.
_IMAGE_OVERHEAD_FRACTION = 0.1


class MigrationError(DeviceError):
    """Plaintext files could not be moved into the vault; the originals are untouched."""


class KeyMismatch(DeviceError):
    """The unsealed key is not the one the vault was encrypted with."""


@dataclass
class Outcome:
    vault: str
    done: list[Step] = field(default_factory=list)
    failed: Step | None = None
    error: DeviceError | None = None


class Applier:
    """Runs steps for one plan; `tpm` is an open enforcer.tpm.Tpm; `now` is the run's one clock reading."""

    def __init__(self, plan: Plan, state: StateDir, root: Path | None, tpm, now: datetime,
                 device_id: str | None = None, journal: Journal | None = None):
        self.plan, self.state, self.root, self.tpm = plan, state, root, tpm
        self.now, self.device_id, self.journal = now, device_id, journal
        self._handlers = {
            Action.STAGE_PLAINTEXT: self._stage_plaintext,
            Action.CREATE_DIRECTORY: self._create_directory,
            Action.CREATE_STORAGE: self._mount_storage,
            Action.MOUNT_STORAGE: self._mount_storage,
            Action.GROW_STORAGE: self._grow_storage,
            Action.CREATE_KEY: self._create_key,
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
        record = self.state.records().get(name)
        return layout(self.state, self.root, name, record.path if record else self._vault(name).path)

    def remember(self, vault: Vault) -> None:
        """Record the vault before its first mutation, so a later plan can still retain or destroy it."""
        self.state.save_record(record_for(self.plan, vault, self.state.records().get(vault.name)))

    # --- handlers ------------------------------------------------------------------------------
    def _stage_plaintext(self, name: str) -> None:
        vault = self._vault(name)
        where = self._layout(name)
        needed = _tree_bytes(where.path)
        if vault.limit_bytes:
            room = int(vault.limit_bytes * (1 - _IMAGE_OVERHEAD_FRACTION))
            if needed > room:
                raise MigrationError(f"`{where.path}` holds {needed} bytes, more than fits the vault's limit "
                                     f"({vault.limit_bytes} bytes); nothing was moved", vault=name,
                                     hint="raise the vault's limit or remove files first")
        else:
            stats = os.statvfs(where.path)
            if needed > stats.f_bavail * stats.f_frsize:
                raise MigrationError(f"migrating `{where.path}` needs {needed} free bytes for the encrypted copy, "
                                     f"the filesystem has {stats.f_bavail * stats.f_frsize}; nothing was moved", vault=name)
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
        self.remember(vault)
        where = self._layout(name)
        where.image.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._rekey_if_remounted(name, blockdev.attach_image(where.image, where.path, vault.limit_bytes), where)

    def _grow_storage(self, name: str) -> None:
        vault = self._vault(name)
        where = self._layout(name)
        self._rekey_if_remounted(name, blockdev.grow(where.image, where.path, vault.limit_bytes), where)

    def _rekey_if_remounted(self, name: str, remounted: bool, where: Layout) -> None:
        """An offline resize unmounts the vault, which drops its key from the kernel: add it again."""
        if remounted and self.state.sealed(name) is not None:
            unlock_key(self.state, self.tpm, name, where.path, self.now)

    def _create_key(self, name: str) -> None:
        vault = self._vault(name)
        self.remember(vault)
        path = self._layout(name).path
        key = bytearray(fscrypt.RAW_KEY_SIZE)
        try:
            blob = seal_new_key(self.tpm, self.plan, vault, key)
            identifier = fscrypt.add_key(keyring_dir(path), key)
            if self.plan.device.escrow_public_key:
                self._escrow(name, identifier, key)
            self.state.save_sealed(name, blob.to_json(), identifier, rotated_at=format_time(self.now))
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
        unlock_key(self.state, self.tpm, name, self._layout(name).path, self.now)

    def _reseal(self, name: str) -> None:
        from enforcer.tpm import SealedBlob

        vault = self._vault(name)
        sealed = self.state.sealed(name)
        identifier = bytes.fromhex(sealed["key_identifier"])
        key = self.tpm.unseal(SealedBlob.from_json(_json(sealed["blob"])))
        try:
            blob = self.tpm.seal(key, vault.seal.bank, vault.seal.pcrs,
                                 allow_unmeasured_boot=self.plan.device.allow_unmeasured_boot)
            self.state.save_sealed(name, blob.to_json(), identifier)
            mountpoint = keyring_dir(self._layout(name).path)
            if fscrypt.key_status(mountpoint, identifier) is not KeyStatus.PRESENT:
                if fscrypt.add_key(mountpoint, key) != identifier:
                    raise KeyMismatch("the resealed key is not the vault's key", vault=name)
        finally:
            key[:] = bytes(len(key))

    def _set_policy(self, name: str) -> None:
        vault = self._vault(name)
        path = str(self._layout(name).path)
        identifier = bytes.fromhex(self.state.sealed(name)["key_identifier"])
        existing = fscrypt.get_policy(path)
        if existing is None:
            fscrypt.check_cipher(path, identifier, vault.encryption)
            fscrypt.set_policy(path, identifier, vault.encryption)
        elif (existing.key_identifier, existing.contents_mode) != (identifier, vault.encryption):
            raise DeviceError(f"`{path}` is already encrypted under another key or mode", vault=name)

    def _migrate(self, name: str) -> None:
        where = self._layout(name)
        needed = _tree_bytes(where.staging) - _tree_bytes(where.path)
        stats = os.statvfs(where.path)
        if needed > stats.f_bavail * stats.f_frsize:
            raise MigrationError(f"the vault has {stats.f_bavail * stats.f_frsize} free bytes, the staged plaintext "
                                 f"at `{where.staging}` needs {needed} more; it stays there, intact", vault=name)
        copied: list[Path] = []
        try:
            copy_tree(where.staging, where.path, copied)
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
        shutil.rmtree(where.staging)
        fsync_dir(where.staging.parent)
        blockdev.discard_free(where.staging.parent)  # the plaintext's freed blocks

    def _re_encrypt(self, name: str) -> None:
        """Copy the files into a tree under the plan's encryption and swap it in (enforcer/rotate.py), as
        nested journaled steps; a crash is finished or undone by `Rotator.recover`."""
        from enforcer.rotate import Rotator

        where = self._layout(name)
        if not where.image.exists():  # a directory that vanished carries nothing: an empty tree is re-encrypted
            where.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        Rotator(self.plan, self.state, self.root, self.tpm, self.now, self.device_id, self.journal).rekey(
            name, "re-encrypt")

    def _orphan(self, name: str) -> None:
        record = self.state.records()[name]
        where = self._layout(name)
        sealed = self.state.sealed(name)
        if sealed is not None and where.path.is_dir():
            lock_key(bytes.fromhex(sealed["key_identifier"]), where)
        self.state.save_record(replace(record, orphaned=True))

    def _destroy(self, name: str) -> None:
        record = self.state.records()[name]
        if record.on_remove != "destroy":  # the record, written from a signed plan, is the only licence
            raise DeviceError("refusing to destroy a vault whose plan did not say `destroy`", vault=name)
        if record.protected:  # verify refuses such a plan; this keeps the rule where the data dies too (S16)
            raise DeviceError("refusing to destroy a protected vault", vault=name)
        where = self._layout(name)
        sealed = self.state.sealed(name)
        if sealed is not None and where.path.is_dir():
            fscrypt.remove_key(fscrypt.mountpoint_of(str(where.path)), bytes.fromhex(sealed["key_identifier"]),
                               all_users=True)
        self.state.remove_sealed(name)  # from here on the files are unreadable: crypto-erased
        blockdev.detach(where.path)
        for leftover in (where.store, where.path):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
        where.image.unlink(missing_ok=True)
        fsync_dir(where.path.parent)
        self.state.remove_record(name)


def seal_new_key(tpm, plan: Plan, vault: Vault, key: bytearray):
    """Fill the caller's `key` from /dev/urandom (`readinto`: no immutable copy; the caller zeroes it)
    and seal it to the vault's selection (the TPM test-unseals); returns the SealedBlob."""
    with open("/dev/urandom", "rb", buffering=0) as source:
        if source.readinto(key) != len(key):
            raise DeviceError("short read from /dev/urandom", vault=vault.name)
    return tpm.seal(key, vault.seal.bank, vault.seal.pcrs, allow_unmeasured_boot=plan.device.allow_unmeasured_boot)


def unlock_key(state: StateDir, tpm, name: str, path: Path, now: datetime) -> None:
    """Unseal the vault's key, add it to the kernel, check it is the recorded key and that it took;
    record `tpm-sealed` as the vault's last unlock method (the drift report shows it)."""
    from enforcer.release import record_unlock
    from enforcer.tpm import SealedBlob

    sealed = state.sealed(name)
    if sealed is None:
        raise DeviceError("no sealed key is recorded", vault=name)
    recorded = bytes.fromhex(sealed["key_identifier"])
    mountpoint = keyring_dir(path)
    try:
        key = tpm.unseal(SealedBlob.from_json(_json(sealed["blob"])))
    except DeviceError as exc:
        raise _for_vault(exc, name) from None
    try:
        identifier = fscrypt.add_key(mountpoint, key)
    finally:
        key[:] = bytes(len(key))
    if identifier != recorded:
        fscrypt.remove_key(mountpoint, identifier)
        raise KeyMismatch(f"the unsealed key has identifier {identifier.hex()}, the vault records {recorded.hex()}",
                          vault=name)
    status = fscrypt.key_status(mountpoint, recorded)
    if status is not KeyStatus.PRESENT:
        raise DeviceError(f"the kernel reports the key {status.name.lower()} right after adding it", vault=name)
    record_unlock(state, name, "tpm-sealed", now)


def lock_key(identifier: bytes, where: Layout) -> fscrypt.RemovalResult | None:
    """Remove the key from the kernel (every user's claim); None when it was not there.

    A vault with its own image is the root of a bind mount, and a mount pins its root directory's
    inode: the kernel could never evict it and would leave the key "incompletely removed". So the
    bind mount is taken down first, the key removed, and the (now locked) directory bound again so
    the vault path shows the encrypted names. When the unmount is refused because files are open,
    the key is removed anyway and the kernel reports the vault busy (S7).
    """
    storage = blockdev.is_mounted(where.store)
    key_home = str(where.store if storage else fscrypt.mountpoint_of(str(where.path)))
    if fscrypt.key_status(key_home, identifier) is KeyStatus.ABSENT:
        return None
    unbound = False
    if storage and blockdev.is_mounted(where.path):
        result = subprocess.run(["umount", str(where.path)], capture_output=True, text=True)
        unbound = result.returncode == 0  # refused when files are open: the kernel will say busy
    try:
        return fscrypt.remove_key(key_home, identifier, all_users=True)
    finally:
        if unbound:
            _mount(["--bind", str(where.store_data), str(where.path)])


def _for_vault(exc: DeviceError, name: str) -> DeviceError:
    """The same error, with the vault named in its message."""
    if exc.vault is None:
        exc.vault = name
        exc.message = f"vault `{name}`: {exc.message}"
        exc.args = (exc.message,)
    return exc


def _json(obj) -> str:
    return json.dumps(obj)


def _mount(arguments: list[str]) -> None:
    result = subprocess.run(["mount", *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise DeviceError(f"mount {' '.join(arguments)} failed: {result.stderr.strip()}")


def _tree_bytes(root: Path) -> int:
    """Bytes of the regular files under `root` (lstat: symlinks are not followed).

    Raises MigrationError for a file kind a migration cannot carry, so it is refused before anything moves.
    """
    total = 0
    if not root.is_dir():
        return 0
    for directory, _, files in os.walk(root):
        for entry in files:
            path = os.path.join(directory, entry)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
            elif not stat.S_ISLNK(st.st_mode):
                raise MigrationError(f"`{path}` is neither a file, a directory nor a symlink; it cannot be migrated")
    return total


def copy_tree(source: Path, target: Path, copied: list[Path]) -> None:
    """Copy regular files, directories and symlinks with their modes, owners and mtimes; fsync each
    file and verify it by SHA-256. Shared by migration and key rotation (enforcer/rotate.py).
    `copied` gets every entry this call creates, each directory before its entries, so a caller can
    undo a failed copy in reverse order."""
    for directory, dirs, files in os.walk(source):
        relative = Path(directory).relative_to(source)
        destination = target / relative
        if not destination.is_dir():
            destination.mkdir(mode=0o700)
            copied.append(destination)
        for entry in sorted(dirs + files):
            src = Path(directory, entry)
            st = os.lstat(src)
            if stat.S_ISDIR(st.st_mode):
                continue
            dst = destination / entry
            if stat.S_ISLNK(st.st_mode):
                if dst.is_symlink() or dst.exists():
                    dst.unlink()
                os.symlink(os.readlink(src), dst)
                os.lchown(dst, st.st_uid, st.st_gid)
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
                copied.append(dst)
            elif stat.S_ISREG(st.st_mode):
                copied.append(dst)
                _copy_file(src, dst, st)
            else:
                raise MigrationError(f"`{src}` is neither a file, a directory nor a symlink; it cannot be migrated")
        fsync_dir(destination)
    for directory, dirs, _ in os.walk(source):
        for entry in dirs:
            st = os.lstat(Path(directory, entry))
            copied_dir = target / Path(directory, entry).relative_to(source)
            os.chmod(copied_dir, stat.S_IMODE(st.st_mode))
            os.chown(copied_dir, st.st_uid, st.st_gid)
            os.utime(copied_dir, ns=(st.st_atime_ns, st.st_mtime_ns))  # last: its entries are all in


def _copy_file(src: Path, dst: Path, st: os.stat_result) -> None:
    expected = hashlib.sha256()
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        while chunk := reader.read(_COPY_CHUNK):
            expected.update(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.chown(dst, st.st_uid, st.st_gid)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    actual = hashlib.sha256()
    with open(dst, "rb") as reader:
        while chunk := reader.read(_COPY_CHUNK):
            actual.update(chunk)
    if actual.digest() != expected.digest():
        raise MigrationError(f"`{dst}` does not read back as written (SHA-256 differs); the original stays staged")
