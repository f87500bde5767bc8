"""Observed state, read from the kernel and the TPM only — never from the enforcer's own logs (S6).

For each vault the plan names (and each vault the device still manages after it left the plan):
- the path: exists, is a directory, is not a symlink and has no symlink on its way from --root
- whether it is its own mount (the per-vault image) and usage against the limit (`statvfs`: O(1),
  never a walk of the files, so status costs the same for 100,000 files as for none)
- whether the filesystem the vault is (or would be) made on enforces project quotas, and for a
  directory that carries a project id, that id, its PROJINHERIT flag, and the project's usage and
  limits as the kernel counts them (quotactl Q_GETQUOTA: O(1) too)
- its fscrypt policy (FS_IOC_GET_ENCRYPTION_POLICY_EX) and the status in the kernel
  (FS_IOC_GET_ENCRYPTION_KEY_STATUS) of the key that policy names (else of the sealed key)
- the sealed blob: present, sealed to the plan's bank and PCRs, its policy digest recomputed in
  software from the recorded PCR values (`tpm.policy_digest`: the PolicyPCR digest a policy session
  would reach, which tests/enforcer/test_tpm.py checks against the TPM's own), which of those PCRs now
  differ in the TPM, and whether the TPM still loads it (TPM2_Load under the storage primary, flushed
  at once; nothing is unsealed): a blob whose private part was damaged matches on every other count
  and fails the next unlock
- the size of a vault image's filesystem, from its superblock (not the image file's size: a resize
  cut short grew the file only), or why the image cannot be read (that fails its own vault only),
  and for an image that is not mounted whose vault has no sealed key, whether its vault directory is
  encrypted (read from the image: the kernel cannot say until it is mounted, and such a vault has
  lost its key, S20)
- a staged plaintext copy waiting to migrate into the vault (S5), or one migrated and not yet erased
- the escrow blob the device holds for the vault (the key wrapped for the controller): which key, and
  for which escrow key

Storage layout of a vault with a limit, by its backing (`VaultRecord.backing`):
- project quota (the persist filesystem enforces project quotas, enforcer/quota.py): the vault path
  is a plain directory there with a project id of its own and PROJINHERIT, and the fscrypt policy
  is on that directory itself; the project's hard limit is the vault's limit.
- image (no project quotas, enforcer/blockdev.py): its image STATE/images/<vault>.img is mounted at
  STATE/images/<vault>.img.mnt and the image's `vault` subdirectory — the one with the fscrypt
  policy; ext4 refuses a policy on a filesystem's root — is bind-mounted at the vault path, so the
  vault path itself is the encrypted directory apps use.
A vault without a limit is a plain directory on the persist filesystem.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from compiler.plan import Plan
from enforcer import blockdev, fscrypt, quota
from enforcer.escrow import EscrowBlob, held_blob
from enforcer.fscrypt import EncryptionPolicy, KeyStatus
from enforcer.quota import ProjectQuota
from enforcer.state import StateDir, VaultRecord
from vaultpolicy.errors import DeviceError, InputError


class PathState(StrEnum):
    MISSING = "missing"
    DIRECTORY = "directory"
    SYMLINK = "symlink"  # the vault path itself is a symlink
    SYMLINK_IN_PATH = "symlink-in-path"  # a directory on the way to it is a symlink
    NOT_DIRECTORY = "not-directory"

    @property
    def through_symlink(self) -> bool:
        """What is done at the path would land wherever a symlink points, not in the vault."""
        return self in (PathState.SYMLINK, PathState.SYMLINK_IN_PATH)


@dataclass(frozen=True)
class Layout:
    """Where a vault's pieces live on this host."""

    path: Path  # the vault directory apps use (the plan's path under --root)
    image: Path  # the vault's own ext4 image, when it has a limit
    staging: Path  # a plaintext directory moved aside, waiting to migrate into the vault

    @property
    def store(self) -> Path:
        """Where blockdev mounts the whole image; its `vault` subdirectory is bound at `path`."""
        return blockdev.backing_mountpoint(self.image)

    @property
    def store_data(self) -> Path:
        return self.store / "vault"

    @property
    def erasing(self) -> Path:
        """Migrated plaintext being deleted and its blocks discarded (the staging dir, renamed)."""
        return self.staging.with_name(f".{self.path.name}.vp-erase")

    @property
    def cipher_probe(self) -> Path:
        """A scratch directory on the vault's filesystem, outside the vault's files: a crash mid-probe
        must leave nothing a later run could take for the user's data (fscrypt.check_cipher)."""
        if self.image.exists():
            return self.store / ".vp-cipher-probe"
        return self.path.with_name(f".{self.path.name}.vp-cipher-probe")


def host_path(root: Path | None, plan_path: str) -> Path:
    """The plan's absolute path on this host: under --root when given."""
    if not plan_path.startswith("/") or ".." in plan_path.split("/"):
        raise InputError(f"plan path `{plan_path}` is not a normalized absolute path")
    return Path(os.path.join(root, plan_path.lstrip("/"))) if root else Path(plan_path)


def keyring_dir(vault_path: Path, mounted: bool | None = None) -> str:
    """An unencrypted directory on the filesystem whose keyring holds the vault's key.

    The fscrypt key ioctls work on any directory of a filesystem. A vault with its own image is a
    mount, so it is its own filesystem; otherwise its parent is on the same filesystem. This avoids
    reading the whole mount table for every vault (unlock stays within a few percent of bare unseals).
    `mounted`: what `is_mount` answered for the path in this same observation, else it is asked.
    """
    if mounted is None:
        mounted = is_mount(vault_path)
    return str(vault_path if mounted else vault_path.parent)


def is_mount(path: Path | str) -> bool:
    """`os.path.ismount` without its `realpath` of the parent, which lstat's every component of the path
    again in Python (five times per vault in a boot unlock): the kernel resolves `path/..` itself, to
    the same directory. A mount is on another device than its parent, or is its own parent (`/`)."""
    try:
        own = os.lstat(path)
        if stat.S_ISLNK(own.st_mode):
            return False
        parent = os.lstat(os.path.join(path, ".."))
    except (OSError, ValueError):
        return False
    return own.st_dev != parent.st_dev or own.st_ino == parent.st_ino


def layout(state: StateDir, root: Path | None, name: str, plan_path: str) -> Layout:
    path = host_path(root, plan_path)
    return Layout(path=path, image=state.image_path(name), staging=staging_path(path))


def staging_path(vault_path: Path) -> Path:
    """Where plaintext found at the vault path waits to migrate into the vault (beside it)."""
    return vault_path.with_name(f".{vault_path.name}.vp-plaintext")


@dataclass(frozen=True)
class ObservedSeal:
    key_identifier: bytes
    bank: str
    pcrs: tuple[int, ...]
    digest_ok: bool  # the blob's policy digest is the PolicyPCR digest of its recorded values, computed here
    changed_pcrs: tuple[int, ...]  # PCRs whose current value differs from the value at seal time


@dataclass(frozen=True)
class ObservedVault:
    name: str
    path: str
    path_state: PathState
    image: str = ""  # where the vault's own image is, when it has one
    mounted: bool = False
    image_bytes: int | None = None  # size of the filesystem of the vault's own image, when it has one
    image_encrypted: bool | None = None  # an unmounted image's vault directory has a policy (only
    # looked at when no sealed key is recorded)
    storage_damaged: str | None = None  # why the vault's image cannot be read (its superblock, its vault dir)
    quota_enforced: bool = False  # the filesystem the vault's directory is (or would be) on enforces project quotas
    project_id: int | None = None  # the vault directory's project id, when it has one (not 0)
    project_inherit: bool = False  # ... and PROJINHERIT: what is made in it gets that id
    quota: ProjectQuota | None = None  # that project's usage and limits, where quotas are enforced
    used_bytes: int | None = None  # of its image, or its project
    capacity_bytes: int | None = None
    empty: bool | None = None  # looked at for a directory without an encryption policy, or with staged plaintext
    staged_plaintext: bool = False
    erasing_plaintext: bool = False  # a migration copied its plaintext in but had not erased it yet
    policy: EncryptionPolicy | None = None
    key_status: KeyStatus | None = None
    seal: ObservedSeal | None = None
    escrow: EscrowBlob | None = None  # the blob held for it (None: none, or a damaged file)
    errors: tuple[str, ...] = ()  # what could not be read, and why


@dataclass(frozen=True)
class Observed:
    vaults: dict[str, ObservedVault]
    records: dict[str, VaultRecord] = field(default_factory=dict)
    # an apply started and did not finish (its journal is there): it was interrupted, or it runs now.
    # Read-only commands read it; `device apply` itself is the run that finishes it, and sets it False
    apply_unfinished: bool = False


def _below_root(root: Path | None, path: Path) -> tuple[str, tuple[str, ...]]:
    """The directory `path` is reached from (--root, else `/`; trusted) and the components below it.
    Read off the paths' strings, which Path keeps normalized (as lexical as `relative_to`, without the
    three Paths it builds: a boot unlock asks twice per vault)."""
    text = str(path)
    for base in (str(root) if root else "/", "/"):
        if text == base:
            return base, ()
        below = base if base.endswith("/") else base + "/"
        if text.startswith(below):
            return base, tuple(text[len(below):].split("/"))
    return "/", path.relative_to("/").parts  # a relative path: relative_to raises ValueError, as it did


def path_state(root: Path | None, path: Path) -> PathState:
    """lstat every component below --root: a symlink anywhere could redirect the vault. What removes
    data does not rely on this alone: it reaches the path through `open_parent`."""
    current, parts = _below_root(root, path)
    for index, part in enumerate(parts):
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return PathState.MISSING
        last = index == len(parts) - 1
        if stat.S_ISLNK(mode):
            return PathState.SYMLINK if last else PathState.SYMLINK_IN_PATH
        if not stat.S_ISDIR(mode):
            return PathState.NOT_DIRECTORY
    return PathState.DIRECTORY


def open_parent(root: Path | None, path: Path) -> int:
    """A descriptor of `path`'s parent (the caller closes it), opened one component at a time below
    --root with O_NOFOLLOW: a symlink on the way fails (ENOTDIR, as O_DIRECTORY is checked first), even
    one put there after `path_state` looked, and what is named relative to the descriptor stays in that
    very directory whatever is renamed meanwhile."""
    base, parts = _below_root(root, path)
    base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_below(base_fd, parts[:-1])
    finally:
        os.close(base_fd)


def open_below(directory_fd: int, parts) -> int:
    """A new descriptor (the caller closes it) of the directory `parts` below the open directory
    `directory_fd`, opened one component at a time with O_NOFOLLOW: a symlink on the way fails it
    (ENOTDIR or ELOOP) instead of leading elsewhere."""
    fd = os.dup(directory_fd)
    try:
        for part in parts:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = inner
    except OSError:
        os.close(fd)
        raise
    return fd


def nearest_directory(path: Path) -> Path:
    """`path`, or its closest ancestor that exists: where a vault's directory will be made."""
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def is_empty(path: Path) -> bool:
    with os.scandir(path) as entries:
        return next(entries, None) is None


def observe_vault(state: StateDir, root: Path | None, name: str, plan_path: str, tpm,
                  shared: dict | None = None) -> ObservedVault:
    """`shared` holds the reads the vaults of one observation have in common: the PCRs of each selection,
    and whether the filesystem of each directory vaults are made in enforces project quotas."""
    shared = {} if shared is None else shared
    where = layout(state, root, name, plan_path)
    kind = path_state(root, where.path)
    errors: list[str] = []
    values: dict = {"name": name, "path": str(where.path), "path_state": kind, "image": str(where.image)}
    values["staged_plaintext"] = where.staging.is_dir() and not where.staging.is_symlink()
    values["erasing_plaintext"] = where.erasing.is_dir() and not where.erasing.is_symlink()
    if where.image.exists():
        try:
            values["image_bytes"] = blockdev.superblock(where.image).size_bytes
        except (blockdev.BlockdevError, OSError) as exc:  # this vault's storage only: the others go on
            values["storage_damaged"] = _damage(where.image, exc)
    if not kind.through_symlink:
        home = nearest_directory(where.path.parent)
        if ("quota", home) not in shared:
            shared["quota", home] = quota.enforced(home)
        values["quota_enforced"] = shared["quota", home]
    if kind is PathState.DIRECTORY:
        mounted = is_mount(where.path)
        values["mounted"] = mounted
        if mounted:  # a vault with a limit: usage of its own image
            st = os.statvfs(where.path)
            values["used_bytes"] = (st.f_blocks - st.f_bfree) * st.f_frsize
            values["capacity_bytes"] = st.f_blocks * st.f_frsize
        else:
            try:
                _observe_project(where.path, values)
            except DeviceError as exc:
                errors.append(exc.message)
        try:
            values["policy"] = fscrypt.get_policy(str(where.path))
        except DeviceError as exc:  # e.g. a filesystem without fscrypt: the files are in the clear
            errors.append(exc.message)
        if values.get("policy") is None or values["staged_plaintext"]:  # a staged migration: is a copy in?
            values["empty"] = is_empty(where.path)

    sealed = state.sealed(name)
    if sealed is None and "image_bytes" in values and not values.get("mounted"):  # is the image's vault encrypted?
        try:
            if blockdev.is_mounted(where.store):  # mounted, its vault not bound at the path: the kernel says
                values["image_encrypted"] = (where.store_data.is_dir()
                                             and fscrypt.get_policy(str(where.store_data)) is not None)
            else:
                values["image_encrypted"] = blockdev.vault_encrypted_offline(where.image)
        except blockdev.BlockdevError as exc:
            values["storage_damaged"] = _damage(where.image, exc)
    identifier = None
    if sealed is not None:
        values["seal"] = _observe_seal(state, name, sealed, tpm, errors, shared)
        identifier = values["seal"].key_identifier
        values["escrow"] = held_blob(state.root, name)
    # The key the directory is encrypted under decides whether its files are readable, sealed blob or
    # not (S6): a key added or left in the kernel behind the tool's back shows as unlocked.
    if values.get("policy") is not None:
        identifier = values["policy"].key_identifier
    if identifier is not None and kind is PathState.DIRECTORY:
        try:
            values["key_status"] = fscrypt.key_status(keyring_dir(where.path, values["mounted"]), identifier)
        except DeviceError as exc:
            errors.append(exc.message)
    return ObservedVault(**values, errors=tuple(errors))


def _observe_project(path: Path, values: dict) -> None:
    """The project the directory carries and, where its filesystem enforces project quotas, that
    project's usage and limits, as the kernel counts them."""
    project = quota.project_of(path)
    if project is None or project[0] == 0:  # 0: ext4's default project, no vault's
        return
    values["project_id"], values["project_inherit"] = project
    if values["quota_enforced"]:  # not a mount: the directory is on its parent's filesystem
        counted = quota.get(path, project[0])
        values["quota"] = counted
        values["used_bytes"], values["capacity_bytes"] = counted.used_bytes, counted.limit_bytes


def _damage(image: Path, exc: Exception) -> str:
    detail = exc.message.removeprefix(f"{image}: ") if isinstance(exc, DeviceError) else (exc.strerror or str(exc))
    return f"its image `{image}` cannot be read: {detail}"


def _observe_seal(state: StateDir, name: str, sealed: dict, tpm, errors: list[str], shared: dict) -> ObservedSeal:
    from enforcer.state import StateCorrupt
    from enforcer.tpm import InvalidSealedBlob, SealedBlob  # lazily: tpm2-pytss loads only when a vault is sealed

    # A damaged record stops the run with its file named: never taken for "no key yet" (S20)
    try:
        identifier = bytes.fromhex(sealed["key_identifier"])
        blob = SealedBlob.from_record(sealed["blob"])
    except (InvalidSealedBlob, KeyError, TypeError, ValueError) as exc:
        message = exc.message if isinstance(exc, InvalidSealedBlob) else f"{exc.__class__.__name__}: {exc}"
        raise StateCorrupt(f"the sealed key record {state.sealed_path(name)} is damaged ({message}); nothing "
                           "was changed", vault=name, hint="restore it from a backup, or have the controller "
                           "release the escrowed key (`device unlock --release`)") from None
    digest_ok, changed = False, ()
    if tpm is not None:
        try:
            digest_ok = tpm.policy_digest(blob.bank, blob.pcrs, blob.pcr_values) == blob.policy_digest
            selection = ("pcrs", blob.bank, tuple(blob.pcrs))
            if selection not in shared:
                shared[selection] = tpm.read_pcrs(blob.bank, blob.pcrs)
            current = shared[selection]
            changed = tuple(i for i in blob.pcrs if current.get(i) != blob.pcr_values.get(i))
        except DeviceError as exc:
            errors.append(f"TPM: {exc.message}")
        try:
            tpm.check_loads(blob)
        except DeviceError as exc:
            errors.append(f"the TPM does not load the sealed key ({exc.message}): unlocking the vault will fail")
    return ObservedSeal(identifier, blob.bank, tuple(blob.pcrs), digest_ok, changed)


def observe(plan: Plan | None, state: StateDir, root: Path | None, tpm) -> Observed:
    """Observe every vault in the plan and every vault the device still manages, the latter where
    their files are (the recorded path: a plan that moves a vault does not move its files)."""
    records = state.records()
    wanted: dict[str, str] = {v.name: v.path for v in plan.vaults} if plan is not None else {}
    wanted.update({r.name: r.path for r in records.values()})
    shared: dict = {}
    vaults = {name: observe_vault(state, root, name, path, tpm, shared) for name, path in sorted(wanted.items())}
    return Observed(vaults=vaults, records=records, apply_unfinished=state.journal_path.exists())
