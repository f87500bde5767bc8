"""The kernel's fscrypt v2 interface, through ioctl (Documentation/filesystems/fscrypt.rst).

Only what the enforcer needs: add, remove and query a raw 64-byte master key in a filesystem's
keyring, and set or read a directory's v2 encryption policy. Everything here reads from or writes
to the kernel; nothing is cached.

Choices this module makes (callers rely on them):
- `set_policy(directory, identifier, contents="aes-256-xts")` uses names `aes-256-cts`; with
  `contents="adiantum"` names are `adiantum` too and the policy carries DIRECT_KEY, which the
  kernel documentation recommends for Adiantum (per-file keys add nothing to a wide-block cipher,
  and it avoids a key derivation per file on slow CPUs). Names are always padded to 32 bytes.
- `set_policy` requires the key to be PRESENT in the keyring and raises `KeyRequired` otherwise. The
  kernel checks this only for unprivileged callers (root, with CAP_FOWNER, may set a policy for a
  key it never added); checking it for everyone keeps a wrong identifier from making a directory
  that nothing can ever unlock.
- `remove_key` returns what the kernel reported; a key whose files are still open stays
  "incompletely removed" (`RemovalResult.files_busy`), which callers must report, not hide.
- Raw keys are copied once into a ctypes buffer handed to the kernel and zeroed right after the
  ioctl; a `bytearray` argument is left to its owner to wipe, a `bytes` argument cannot be wiped.
- `key_identifier` derives a key's identifier as the kernel does (HKDF-SHA512), without adding the
  key: the caller can refuse a wrong key before it reaches the keyring (test_fscrypt checks it
  against the kernel).
- `check_cipher(probe, …)` makes and removes the scratch directory `probe`, which the caller places
  outside the vault's files.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from enforcer.blockdev import mount_points
from vaultpolicy.errors import BackendUnavailable, DeviceError

# Request numbers from <linux/fscrypt.h>, checked on the target machines.
FS_IOC_SET_ENCRYPTION_POLICY = 0x800C6613
FS_IOC_GET_ENCRYPTION_POLICY_EX = 0xC0096616
FS_IOC_ADD_ENCRYPTION_KEY = 0xC0506617
FS_IOC_REMOVE_ENCRYPTION_KEY = 0xC0406618
FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS = 0xC0406619
FS_IOC_GET_ENCRYPTION_KEY_STATUS = 0xC080661A

RAW_KEY_SIZE = 64
KEY_IDENTIFIER_SIZE = 16
_KEY_SPEC_TYPE_IDENTIFIER = 2
_POLICY_V2 = 2
_POLICY_VERSION_NAMES = {0: "v1", 2: "v2"}  # the v1 struct's version byte is 0

_MODES = {"aes-256-xts": 1, "aes-256-cts": 4, "adiantum": 9}
_MODE_NAMES = {number: name for name, number in _MODES.items()}
_MODE_NAMES.update({5: "aes-128-cbc", 6: "aes-128-cts", 7: "sm4-xts", 8: "sm4-cts", 10: "aes-256-hctr2"})
_NAMES_FOR_CONTENTS = {"aes-256-xts": "aes-256-cts", "adiantum": "adiantum"}

POLICY_FLAG_PAD_32 = 0x03
POLICY_FLAG_DIRECT_KEY = 0x04
_PAD_MASK = 0x03  # PAD_4, _8, _16, _32: names padded to 4 << (flags & 3) bytes
_FLAG_NAMES = {POLICY_FLAG_DIRECT_KEY: "DIRECT_KEY", 0x08: "IV_INO_LBLK_64", 0x10: "IV_INO_LBLK_32"}

_REMOVAL_FILES_BUSY = 0x1
_REMOVAL_OTHER_USERS = 0x2


class FscryptError(DeviceError):
    """An fscrypt ioctl failed; `errno` is the kernel's answer, `path` where it was asked."""

    def __init__(self, message: str, path: str, err: int | None = None, hint: str | None = None):
        super().__init__(f"{path}: {message}", hint=hint)
        self.path = path
        self.errno = err


class FscryptUnsupported(FscryptError, BackendUnavailable):
    """The filesystem has no fscrypt (EOPNOTSUPP/ENOTTY): e.g. ext4 made without `-O encrypt`."""


class DirectoryNotEmpty(FscryptError):
    """A policy can only be set on an empty directory (ENOTEMPTY)."""


class PolicyConflict(FscryptError):
    """The directory already has a different encryption policy (EEXIST)."""


class KeyRequired(FscryptError):
    """The key the operation needs is not in the filesystem keyring (ENOKEY)."""


class UnsupportedPolicyVersion(FscryptError):
    """The directory has a v1 policy, which vaultpolicy never sets and does not manage."""


class CipherUnavailable(FscryptError):
    """The kernel takes a policy for the mode but was built without its cipher: new files fail (ENOPKG)."""

    reason = "cipher-unsupported"


class KeyStatus(enum.Enum):
    ABSENT = 1
    PRESENT = 2
    INCOMPLETELY_REMOVED = 3


@dataclass(frozen=True)
class EncryptionPolicy:
    version: int
    contents_mode: str
    filenames_mode: str
    flags: int
    key_identifier: bytes


@dataclass(frozen=True)
class RemovalResult:
    files_busy: bool  # the key is gone but files still open keep it "incompletely removed"
    other_users: bool  # other users still hold the key: only our claim was removed


class _KeySpecifier(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("u", ctypes.c_uint8 * 32)]


class _AddKeyArg(ctypes.Structure):
    _fields_ = [
        ("key_spec", _KeySpecifier),
        ("raw_size", ctypes.c_uint32),
        ("key_id", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 8),
        ("raw", ctypes.c_uint8 * RAW_KEY_SIZE),
    ]


class _RemoveKeyArg(ctypes.Structure):
    _fields_ = [("key_spec", _KeySpecifier), ("removal_status_flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32 * 5)]


class _KeyStatusArg(ctypes.Structure):
    _fields_ = [
        ("key_spec", _KeySpecifier),
        ("reserved", ctypes.c_uint32 * 6),
        ("status", ctypes.c_uint32),
        ("status_flags", ctypes.c_uint32),
        ("user_count", ctypes.c_uint32),
        ("out_reserved", ctypes.c_uint32 * 13),
    ]


class _PolicyV2(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint8),
        ("contents_encryption_mode", ctypes.c_uint8),
        ("filenames_encryption_mode", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("log2_data_unit_size", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8 * 3),
        ("master_key_identifier", ctypes.c_uint8 * KEY_IDENTIFIER_SIZE),
    ]


class _GetPolicyExArg(ctypes.Structure):
    _fields_ = [("policy_size", ctypes.c_uint64), ("policy", _PolicyV2)]


assert ctypes.sizeof(_AddKeyArg) == 0x50 + RAW_KEY_SIZE
assert ctypes.sizeof(_RemoveKeyArg) == 0x40
assert ctypes.sizeof(_KeyStatusArg) == 0x80

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


def _ioctl(path: str, request: int, arg: ctypes.Structure, *, directory: bool = True) -> None:
    """Run one ioctl on `path`; raise OSError with the kernel's errno on failure.

    ctypes rather than fcntl.ioctl: fcntl copies small buffers into a stack array it never wipes,
    and the add-key argument holds the raw key.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        if _libc.ioctl(fd, request, ctypes.byref(arg)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def _raise_for(exc: OSError, path: str, action: str) -> None:
    """Translate the kernel's errno for `action` on `path` into a specific DeviceError."""
    err = exc.errno
    reason = os.strerror(err) if err else str(exc)
    if err in (errno.EOPNOTSUPP, errno.ENOTTY):
        raise FscryptUnsupported(
            f"{action}: the filesystem does not support fscrypt ({reason})", path, err,
            hint="use an ext4 filesystem made with `mkfs.ext4 -O encrypt` (or `tune2fs -O encrypt`)",
        ) from None
    if err == errno.ENOTEMPTY:
        raise DirectoryNotEmpty(f"{action}: the directory is not empty", path, err) from None
    if err == errno.EEXIST:
        raise PolicyConflict(f"{action}: the directory already has a different encryption policy", path, err) from None
    if err == errno.ENOKEY:
        raise KeyRequired(f"{action}: the key is not in the filesystem keyring", path, err) from None
    raise FscryptError(f"{action}: {reason}", path, err) from None


def _identifier_spec(identifier: bytes) -> _KeySpecifier:
    if len(identifier) != KEY_IDENTIFIER_SIZE:
        raise ValueError(f"a key identifier has {KEY_IDENTIFIER_SIZE} bytes, got {len(identifier)}")
    spec = _KeySpecifier(type=_KEY_SPEC_TYPE_IDENTIFIER)
    ctypes.memmove(spec.u, identifier, KEY_IDENTIFIER_SIZE)
    return spec


def _copy_key(destination: ctypes.Array, raw_key: bytes | bytearray) -> None:
    if isinstance(raw_key, bytearray):  # read in place: no intermediate bytes copy to leave behind
        source = (ctypes.c_uint8 * RAW_KEY_SIZE).from_buffer(raw_key)
        ctypes.memmove(destination, source, RAW_KEY_SIZE)
        del source
    else:
        ctypes.memmove(destination, raw_key, RAW_KEY_SIZE)


def key_identifier(raw_key: bytes | bytearray) -> bytes:
    """The identifier the kernel derives for a v2 master key, computed without adding it:
    HKDF-SHA512(key, salt none, info "fscrypt\\0" + HKDF_CONTEXT_KEY_IDENTIFIER), 16 bytes
    (fs/crypto/keyring.c). So a caller can tell a wrong key before it reaches the keyring, where
    it might join (and a removal would take away) a key another vault already uses."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if len(raw_key) != RAW_KEY_SIZE:
        raise ValueError(f"an fscrypt master key has {RAW_KEY_SIZE} bytes, got {len(raw_key)}")
    return HKDF(hashes.SHA512(), KEY_IDENTIFIER_SIZE, salt=None, info=b"fscrypt\0\x01").derive(raw_key)


def add_key(mountpoint: str, raw_key: bytes | bytearray) -> bytes:
    """Add a raw 64-byte master key to the keyring of the filesystem at `mountpoint`.

    Returns the 16-byte key identifier the kernel derived from the key. Adding a key that is
    already present is not an error (the kernel counts one more claim for this user).
    """
    if len(raw_key) != RAW_KEY_SIZE:
        raise ValueError(f"an fscrypt master key has {RAW_KEY_SIZE} bytes, got {len(raw_key)}")
    arg = _AddKeyArg(key_spec=_KeySpecifier(type=_KEY_SPEC_TYPE_IDENTIFIER), raw_size=RAW_KEY_SIZE)
    try:
        _copy_key(arg.raw, raw_key)
        try:
            _ioctl(mountpoint, FS_IOC_ADD_ENCRYPTION_KEY, arg)
        except OSError as exc:
            _raise_for(exc, mountpoint, "add key")
        return bytes(arg.key_spec.u[:KEY_IDENTIFIER_SIZE])
    finally:
        ctypes.memset(ctypes.byref(arg), 0, ctypes.sizeof(arg))


def remove_key(mountpoint: str, identifier: bytes, *, all_users: bool = False) -> RemovalResult:
    """Remove this user's claim to the key (or every user's, with `all_users`, root only).

    The kernel wipes the key and evicts unused inodes; files still open keep the key
    "incompletely removed" until they close, which `files_busy` reports.
    """
    arg = _RemoveKeyArg(key_spec=_identifier_spec(identifier))
    request = FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS if all_users else FS_IOC_REMOVE_ENCRYPTION_KEY
    try:
        _ioctl(mountpoint, request, arg)
    except OSError as exc:
        _raise_for(exc, mountpoint, "remove key")
    flags = arg.removal_status_flags
    return RemovalResult(files_busy=bool(flags & _REMOVAL_FILES_BUSY), other_users=bool(flags & _REMOVAL_OTHER_USERS))


def key_status(mountpoint: str, identifier: bytes) -> KeyStatus:
    """What the kernel says about the key with `identifier` in this filesystem's keyring."""
    arg = _KeyStatusArg(key_spec=_identifier_spec(identifier))
    try:
        _ioctl(mountpoint, FS_IOC_GET_ENCRYPTION_KEY_STATUS, arg)
    except OSError as exc:
        _raise_for(exc, mountpoint, "get key status")
    return KeyStatus(arg.status)


def policy_for(identifier: bytes, contents: str) -> EncryptionPolicy:
    """The whole policy `set_policy` gives a directory for `contents` under the key `identifier` (see the
    module docstring): what a vault's policy is compared with, flags included."""
    if contents not in _NAMES_FOR_CONTENTS:
        raise ValueError(f"unknown contents mode `{contents}` (expected one of {sorted(_NAMES_FOR_CONTENTS)})")
    return EncryptionPolicy(_POLICY_V2, contents, _NAMES_FOR_CONTENTS[contents],
                            POLICY_FLAG_PAD_32 | (POLICY_FLAG_DIRECT_KEY if contents == "adiantum" else 0), identifier)


def policy_difference(policy: EncryptionPolicy, contents: str) -> str | None:
    """How `policy` differs from the one `set_policy` sets for `contents` under the same key, in words;
    None when it is that policy."""
    wanted = policy_for(policy.key_identifier, contents)
    return None if policy == wanted else f"the directory's encryption policy is {describe(policy)}; the plan's is " \
        f"{describe(wanted)}"


def describe(policy: EncryptionPolicy) -> str:
    """`aes-256-xts contents, aes-256-cts names padded to 32 bytes`, and the other flags by name."""
    flags = [name for bit, name in _FLAG_NAMES.items() if policy.flags & bit]
    return (f"{policy.contents_mode} contents, {policy.filenames_mode} names padded to "
            f"{4 << (policy.flags & _PAD_MASK)} bytes" + "".join(f", {flag}" for flag in flags))


def set_policy(directory: str, identifier: bytes, contents: str = "aes-256-xts") -> None:
    """Give the empty `directory` a v2 policy under the key `identifier` (already added): `policy_for`.

    Setting the same policy again is a no-op in the kernel; a different one raises PolicyConflict.
    """
    wanted = policy_for(identifier, contents)
    if key_status(mountpoint_of(directory), identifier) is not KeyStatus.PRESENT:
        raise KeyRequired("set encryption policy: the key is not in the filesystem keyring", directory, errno.ENOKEY)
    policy = _PolicyV2(
        version=wanted.version,
        contents_encryption_mode=_MODES[wanted.contents_mode],
        filenames_encryption_mode=_MODES[wanted.filenames_mode],
        flags=wanted.flags,
    )
    ctypes.memmove(policy.master_key_identifier, _identifier_spec(identifier).u, KEY_IDENTIFIER_SIZE)
    try:
        _ioctl(directory, FS_IOC_SET_ENCRYPTION_POLICY, policy)
    except OSError as exc:
        _raise_for(exc, directory, "set encryption policy")


def check_cipher(probe: str, identifier: bytes, contents: str, checkpoint: Callable[[str], None] | None = None) -> None:
    """Raise CipherUnavailable unless a file can be made under `contents` with the key `identifier`.

    A kernel built without a cipher (often Adiantum) accepts the policy and then refuses every new
    file with ENOPKG, so a vault set up that way looks encrypted and nothing can be written to it.
    `probe` is a scratch directory to make on the vault's filesystem (same keyring) and remove again;
    the caller picks it outside the vault's files, so a crash mid-probe leaves nothing that could be
    taken for the user's data (it is removed by the next probe). `checkpoint` is the crash test's hook.
    """
    shutil.rmtree(probe, ignore_errors=True)  # left by a crash mid-probe
    os.mkdir(probe, 0o700)
    try:
        set_policy(probe, identifier, contents)
        os.close(os.open(os.path.join(probe, "file"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        if checkpoint is not None:
            checkpoint("cipher-probe")
    except OSError as exc:
        if exc.errno != errno.ENOPKG:
            raise
        raise CipherUnavailable(f"this kernel cannot encrypt with {contents} (it was built without that cipher)",
                                os.path.dirname(probe), exc.errno, hint="choose another `encryption` for the vault, "
                                "or a kernel with the cipher") from None
    finally:
        shutil.rmtree(probe)


def get_policy(path: str) -> EncryptionPolicy | None:
    """The v2 policy of `path` (file or directory), or None when it is not encrypted."""
    arg = _GetPolicyExArg(policy_size=ctypes.sizeof(_PolicyV2))
    try:
        _ioctl(path, FS_IOC_GET_ENCRYPTION_POLICY_EX, arg, directory=os.path.isdir(path))
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        _raise_for(exc, path, "get encryption policy")
    policy = arg.policy
    if policy.version != _POLICY_V2:
        raise UnsupportedPolicyVersion(
            f"has a {_POLICY_VERSION_NAMES.get(policy.version, f'version {policy.version}')} encryption policy; "
            "vaultpolicy manages v2 policies only", path
        )
    return EncryptionPolicy(
        version=policy.version,
        contents_mode=_MODE_NAMES.get(policy.contents_encryption_mode, f"mode-{policy.contents_encryption_mode}"),
        filenames_mode=_MODE_NAMES.get(policy.filenames_encryption_mode, f"mode-{policy.filenames_encryption_mode}"),
        flags=policy.flags,
        key_identifier=bytes(policy.master_key_identifier),
    )


def mountpoint_of(path: str) -> str:
    """The mount point of the filesystem holding `path` (symlinks resolved).

    Read from the kernel's mount table, so bind mounts within one filesystem count too.
    """
    current, mounted = os.path.realpath(path), mount_points()
    while current not in mounted and current != "/":
        current = os.path.dirname(current)
    return current
