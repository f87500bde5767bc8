"""Storage limits enforced by the kernel: a per-vault ext4 image where there are no project quotas.

`quota_supported()` asks the running kernel (once per process) whether an ext4 filesystem made
with `-O quota,project` mounts. Where it does not (the development and CI kernels have no quota
support), a vault with a limit lives on its own fscrypt-capable ext4 image (`mkfs.ext4 -O encrypt`)
whose size is the limit, mounted at the vault path: writing past the limit fails with ENOSPC in
the kernel, whoever writes. The project-quota alternative is not implemented: no kernel here can
test it, so images are used everywhere for now and `quota_supported` only reports the capability.

Layout: ext4 refuses an encryption policy on a filesystem's root directory (EPERM), so the image
is loop-mounted at `<image>.mnt` (next to the image, under the state dir) and its `vault`
subdirectory is bind-mounted at the vault path. The vault path is then an ordinary empty
directory of the image's filesystem: `fscrypt.set_policy(vault_path, …)` and
`fscrypt.add_key(vault_path, …)` work on it directly.

- Images are sparse files; callers keep them under the state dir on the persist partition.
- `attach_image` is idempotent: it formats a new image, mounts an existing one, and does nothing
  when the image's vault is already mounted there. It refuses to mount over a non-empty
  directory (that would hide plaintext files instead of migrating them).
- `grow` resizes online (loop capacity, then resize2fs) when the process holds CAP_SYS_RESOURCE,
  which ext4 requires for online resizing. Without it (the development and CI containers drop
  it) the vault is briefly unmounted and resized offline: `grow` and `attach_image` then return
  True, because unmounting dropped the vault's fscrypt key and the caller must add it again.
- Lowering a limit is refused: below the current usage with `LimitBelowUsage`, otherwise with
  `ShrinkUnsupported` (ext4 cannot shrink while mounted).
- `usage` reports statvfs figures: `limit_bytes` is the data capacity the filesystem offers, a
  little under the image size (journal and inode tables take the rest).
- Images are mounted `nodev,nosuid` with `-m 0` (no root reserve): the limit is the same for root.
- Unmounting frees the loop device: `mount -o loop` sets autoclear.
- `discard_free` asks a filesystem to discard its free blocks (FITRIM). On a loop image that punches
  them out of the image file, so plaintext a re-encryption or migration unlinked leaves no trace in
  it; on flash it is a hint the device may honour. Best effort: a device without discard says no.
- A mount pins its root directory, so the kernel cannot evict the vault directory's inode while
  the bind mount stands: removing the key then leaves it "incompletely removed". To lock such a
  vault fully, unmount the bind first, remove the key, and bind again (enforcer/apply.py does).
"""

from __future__ import annotations

import fcntl
import functools
import os
import struct
import shutil
import subprocess
import tempfile
from pathlib import Path

from compiler.plan import MIN_VAULT_LIMIT_BYTES
from vaultpolicy.errors import BackendUnavailable, DeviceError

BLOCK_SIZE = 4096
MIN_IMAGE_BYTES = MIN_VAULT_LIMIT_BYTES  # one constant with the compiler, which refuses smaller limits
_EXT4_MAGIC_OFFSET = 1024 + 0x38
_EXT4_MAGIC = b"\x53\xef"
_MOUNT_OPTIONS = "loop,nodev,nosuid"
_VAULT_DIR = "vault"
_CAP_SYS_RESOURCE = 24
_FITRIM = 0xC0185879  # _IOWR('X', 121, struct fstrim_range {u64 start, len, minlen})


class BlockdevError(DeviceError):
    """A loop image could not be made, mounted, resized or unmounted; `path` names it."""

    def __init__(self, message: str, path: str | os.PathLike, hint: str | None = None):
        super().__init__(f"{path}: {message}", hint=hint)
        self.path = str(path)


class MountpointNotEmpty(BlockdevError):
    """Mounting would hide files already in the directory."""


class MountpointBusy(BlockdevError):
    """Files are still open under the mount point, so it cannot be unmounted."""


class LimitBelowUsage(BlockdevError):
    """A new limit is smaller than what the vault already holds."""


class ShrinkUnsupported(BlockdevError):
    """A new limit is smaller than the image (but above usage): ext4 cannot shrink online."""


def _run(argv: list[str], path: str | os.PathLike, action: str) -> str:
    if shutil.which(argv[0]) is None:
        raise BackendUnavailable(f"`{argv[0]}` is not installed", hint="install the Debian packages `e2fsprogs mount`")
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BlockdevError(f"{action} failed: {detail[-1] if detail else f'exit {result.returncode}'}", path)
    return result.stdout


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 …)."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def _mounts() -> dict[str, str]:
    """Mount point -> mount source, from the kernel (the last mount on a point wins)."""
    table = {}
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            separator = fields.index("-")
            table[_unescape_mountinfo(fields[4])] = _unescape_mountinfo(fields[separator + 2])
    return table


def mount_points() -> set[str]:
    """Every mount point of this mount namespace."""
    return set(_mounts())


def is_mounted(path: str | os.PathLike) -> bool:
    """Whether a filesystem is mounted exactly at `path`."""
    return os.path.realpath(path) in _mounts()


def backing_image(mountpoint: str | os.PathLike) -> Path | None:
    """The image file behind the loop device mounted at `mountpoint`, or None."""
    source = _mounts().get(os.path.realpath(mountpoint), "")
    if not source.startswith("/dev/loop"):
        return None
    try:
        backing = Path(f"/sys/block/{os.path.basename(source)}/loop/backing_file").read_text().strip()
    except OSError:
        return None
    return Path(backing.removesuffix(" (deleted)"))


def _has_ext4(image: Path) -> bool:
    with open(image, "rb") as handle:
        handle.seek(_EXT4_MAGIC_OFFSET)
        return handle.read(2) == _EXT4_MAGIC


def _rounded(size_bytes: int) -> int:
    return -(-size_bytes // BLOCK_SIZE) * BLOCK_SIZE


def make_image(image: str | os.PathLike, size_bytes: int, *, features: str = "encrypt") -> Path:
    """Create a sparse ext4 image of `size_bytes` (rounded up to 4 KiB) with `features`.

    Formatted under a temporary name and renamed into place, so a crash never leaves a
    half-made image at `image` that a later run would refuse to mount.
    """
    image = Path(image)
    if size_bytes < MIN_IMAGE_BYTES:
        raise BlockdevError(f"a vault image needs at least {MIN_IMAGE_BYTES // 2**20} MiB, got {size_bytes} bytes", image)
    image.parent.mkdir(parents=True, exist_ok=True)
    partial = image.with_name(image.name + ".partial")
    try:
        with open(partial, "wb") as handle:
            handle.truncate(_rounded(size_bytes))
        _run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK_SIZE), "-m", "0", "-O", features,
              "-E", "nodiscard", str(partial)], image, "mkfs.ext4")
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, image)
    finally:
        partial.unlink(missing_ok=True)
    return image


def backing_mountpoint(image: str | os.PathLike) -> Path:
    """Where `attach_image` mounts the whole image: next to it, `<image>.mnt`."""
    image = Path(image)
    return image.with_name(image.name + ".mnt")


def mount_image(image: str | os.PathLike, mountpoint: str | os.PathLike) -> None:
    """Loop-mount the ext4 `image` on the existing `mountpoint` (nodev, nosuid)."""
    if not _has_ext4(Path(image)):
        raise BlockdevError("the image is not an ext4 filesystem; refusing to mount it", image)
    _run(["mount", "-t", "ext4", "-o", _MOUNT_OPTIONS, str(image), str(mountpoint)], mountpoint, "mount")


def attach_image(image: str | os.PathLike, mountpoint: str | os.PathLike, size_bytes: int) -> bool:
    """Make sure the vault directory of `image` (created when missing) is mounted at `mountpoint`.

    ext4 refuses an encryption policy on a filesystem's root directory, so the image is mounted
    at `backing_mountpoint(image)` and its `vault` subdirectory is bind-mounted at `mountpoint`:
    the vault path is then an ordinary (empty, encryptable) directory on the image's filesystem.
    The image grows to `size_bytes` when it is smaller: before mounting when it was not mounted,
    else through `grow`. Returns True only when a mounted vault had to be remounted (see `grow`).
    """
    image, mountpoint = Path(image).resolve(), Path(mountpoint)
    if is_mounted(mountpoint):
        if backing_image(mountpoint) != image:
            raise BlockdevError(f"another filesystem is mounted there, not `{image}`", mountpoint)
    else:
        mountpoint.mkdir(parents=True, exist_ok=True)
        if any(mountpoint.iterdir()):
            raise MountpointNotEmpty(
                "the directory is not empty; mounting the vault image would hide its files", mountpoint,
                hint="migrate the files into the vault instead of mounting over them",
            )
        if not image.exists():
            make_image(image, size_bytes)
        elif not _has_ext4(image):
            raise BlockdevError("the image is not an ext4 filesystem; refusing to mount it", image)
        elif image.stat().st_size < _rounded(size_bytes) and not is_mounted(backing_mountpoint(image)):
            _resize_offline(image, _rounded(size_bytes))  # before mounting: no key to drop yet
        _mount_vault(image, mountpoint)
    if image.stat().st_size < _rounded(size_bytes):
        return grow(image, mountpoint, size_bytes)
    return False


def _mount_vault(image: Path, mountpoint: Path) -> None:
    backing = backing_mountpoint(image)
    if not is_mounted(backing):
        backing.mkdir(mode=0o700, exist_ok=True)
        mount_image(image, backing)
    (backing / _VAULT_DIR).mkdir(exist_ok=True)
    _run(["mount", "--bind", str(backing / _VAULT_DIR), str(mountpoint)], mountpoint, "bind mount")


def can_resize_online() -> bool:
    """ext4 online resize needs CAP_SYS_RESOURCE (containers often drop it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << _CAP_SYS_RESOURCE))
    return False


def grow(image: str | os.PathLike, mountpoint: str | os.PathLike, new_size: int) -> bool:
    """Grow the `image` attached at `mountpoint` to `new_size` bytes; refuse to make it smaller.

    Online (loop capacity, then resize2fs on the mounted filesystem) when the process has
    CAP_SYS_RESOURCE. Without it the vault is unmounted, resized offline and mounted again, which
    needs no file open in it (`MountpointBusy` otherwise, before anything changed) and drops the
    vault's fscrypt key from the kernel. Returns True when that happened: the caller must add the
    key again. Returns False when nothing was remounted.
    """
    image, mountpoint, new_size = Path(image).resolve(), Path(mountpoint), _rounded(new_size)
    current = image.stat().st_size
    if new_size < current:
        used, _ = usage(mountpoint)
        if new_size < used:
            raise LimitBelowUsage(f"the new limit ({new_size} bytes) is below what the vault holds ({used} bytes)",
                                  mountpoint, hint="remove data from the vault first or keep the limit")
        raise ShrinkUnsupported(f"lowering the limit from {current} to {new_size} bytes is not supported "
                                "(ext4 cannot shrink while mounted)", mountpoint)
    if new_size == current:
        return False
    if backing_image(mountpoint) != image:
        raise BlockdevError(f"`{image}` is not mounted there; cannot grow it", mountpoint)
    if can_resize_online():
        source = _mounts()[os.path.realpath(mountpoint)]
        _truncate(image, new_size)
        _run(["losetup", "--set-capacity", source], source, "losetup --set-capacity")
        _run(["resize2fs", source], source, "resize2fs")
        return False
    detach(mountpoint)
    try:
        _resize_offline(image, new_size)
    finally:
        _mount_vault(image, mountpoint)  # never leave the vault detached, even when resizing failed
    return True


def _resize_offline(image: Path, new_size: int) -> None:
    """Grow an unmounted image file and its filesystem to `new_size` bytes."""
    _truncate(image, new_size)
    fsck = subprocess.run(["e2fsck", "-f", "-p", str(image)], capture_output=True, text=True)
    if fsck.returncode not in (0, 1):  # 1: errors found and corrected
        detail = (fsck.stderr or fsck.stdout).strip().splitlines()
        raise BlockdevError(f"e2fsck before resizing failed: {detail[-1] if detail else f'exit {fsck.returncode}'}",
                            image)
    _run(["resize2fs", str(image)], image, "resize2fs")


def _truncate(image: Path, size: int) -> None:
    with open(image, "r+b") as handle:
        handle.truncate(size)
        os.fsync(handle.fileno())


def _unmount(mountpoint: str | os.PathLike) -> None:
    result = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        if "busy" in result.stderr:
            raise MountpointBusy("files are still open in the vault; cannot unmount it", mountpoint)
        raise BlockdevError(f"umount failed: {result.stderr.strip()}", mountpoint)


def detach(mountpoint: str | os.PathLike) -> None:
    """Unmount the vault at `mountpoint` and its image's backing mount; the loop device goes too.

    No-op when nothing is mounted there. Works as well for a plain `mount_image` mount point.
    """
    if not is_mounted(mountpoint):
        return
    image = backing_image(mountpoint)
    _unmount(mountpoint)
    if image is not None and is_mounted(backing_mountpoint(image)):
        _unmount(backing_mountpoint(image))


def usage(path: str | os.PathLike) -> tuple[int, int]:
    """(used_bytes, limit_bytes) of the filesystem holding `path`, from statvfs."""
    stats = os.statvfs(path)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize, stats.f_blocks * stats.f_frsize


@functools.cache
def quota_supported() -> bool:
    """Whether this kernel mounts ext4 with project quotas (tried once on a tiny image)."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        return False
    with tempfile.TemporaryDirectory(prefix="vaultpolicy-quota-probe-") as scratch:
        image, mountpoint = Path(scratch, "probe.img"), Path(scratch, "mnt")
        mountpoint.mkdir()
        try:
            make_image(image, MIN_IMAGE_BYTES, features="quota,project")
            _run(["mount", "-t", "ext4", "-o", "loop,prjquota", str(image), str(mountpoint)], mountpoint, "mount")
        except DeviceError:
            return False
        detach(mountpoint)
        return True


def discard_free(path: str | os.PathLike) -> bool:
    """Discard the free blocks of the filesystem holding `path`; False when its device cannot."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, _FITRIM, bytearray(struct.pack("QQQ", 0, 2**64 - 1, 0)))
        return True
    except OSError:  # EOPNOTSUPP and the like: nothing discards here; the blocks are only freed
        return False
    finally:
        os.close(fd)
