"""Storage limits enforced by the kernel: a per-vault ext4 image where there are no project quotas.

Where the persist filesystem does not enforce project quotas (`quota.enforced`, enforcer/quota.py:
the development and CI kernels have no quota support at all), a vault with a limit lives on its own
fscrypt-capable ext4 image (`mkfs.ext4 -O encrypt`) whose size is the limit, mounted at the vault
path: writing past the limit fails with ENOSPC in the kernel, whoever writes. Where it does, new
vaults get a project quota instead; a vault keeps its image for life (enforcer/reconcile.py).

Layout: ext4 refuses an encryption policy on a filesystem's root directory (EPERM), so the image
is loop-mounted at `<image>.mnt` (next to the image, under the state dir) and its `vault`
subdirectory is bind-mounted at the vault path. The vault path is then an ordinary empty
directory of the image's filesystem: `fscrypt.set_policy(vault_path, …)` and
`fscrypt.add_key(vault_path, …)` work on it directly.

- Images are allocated in full (`posix_fallocate`) when made and when grown, and again after a
  discard punched their free blocks out: a sparse image takes its blocks from the state filesystem
  only as the vault is written, so a full state filesystem failed writes under the vault's limit,
  and ext4 lost data converting its unwritten extents. Making or growing an image the state
  filesystem has no room for is refused before anything changes (`NoRoomForImage`), keeping
  `STATE_RESERVE_BYTES` free for the state files. Callers keep images under the state dir.
- An image is made to give close to its limit (an 8 MiB limit writes ~7.8 MiB; the defaults gave
  3.5 MiB): `-m 0` (no root reserve: the limit is the same for root), one inode per 16 KiB (`-i
  16384`, ext4's ratio for ordinary filesystems; mkfs's "small" profile takes 4 KiB, 6% of a small
  image), and no journal below `JOURNAL_FROM_BYTES` (128 MiB): with 4 KiB blocks the smallest
  journal is 4 MiB, half an 8 MiB image. From 128 MiB on the image gets that 4 MiB journal (at
  most 3%). A journal-less image is checked (`e2fsck -p`) before every mount, which repairs what a
  power loss left; a filesystem e2fsck cannot repair on its own is not mounted. The journal is
  chosen when the image is made: a small image grown past 128 MiB stays without one. mkfs writes
  the inode tables itself (`lazy_itable_init=0`): no background zeroing writes to a mounted vault.
- `image_bytes_for(limit)` is the exact size of the image and of its filesystem: the limit in
  4 KiB blocks, less a last block group too small to hold its own metadata (mkfs and resize2fs
  would drop it, and the filesystem would never reach the file's size). So the filesystem's size,
  read from its superblock (`filesystem_bytes`), says whether a resize finished: `grow` writes
  the larger file first and a crash before resize2fs leaves a filesystem smaller than it, which
  the next run grows.
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
  little under the image size (inode tables and bitmaps take the rest).
- Images are mounted `nodev,nosuid`.
- Unmounting frees the loop device: `mount -o loop` sets autoclear.
- `vault_encrypted_offline` reads from an unmounted image (debugfs) whether its vault directory
  has an fscrypt policy: after a reboot the kernel cannot say so until the image is mounted, and a
  vault that is encrypted but has lost its sealed key must never get a new one (S20).
- `discard_free` asks a filesystem to discard its free blocks (FITRIM). On a loop image that punches
  them out of the image file, so plaintext a re-encryption or migration unlinked leaves no trace in
  it (the file is then allocated again: the new blocks read as zeroes); on flash it is a hint the
  device may honour. Best effort: a device without discard says no.
- A mount pins its root directory, so the kernel cannot evict the vault directory's inode while
  the bind mount stands: removing the key then leaves it "incompletely removed". To lock such a
  vault fully, unmount the bind first, remove the key, and bind again (enforcer/apply.py does).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compiler.plan import MIN_VAULT_LIMIT_BYTES
from compiler.units import format_measured, format_size
from vaultpolicy.errors import BackendUnavailable, DeviceError

BLOCK_SIZE = 4096
MIN_IMAGE_BYTES = MIN_VAULT_LIMIT_BYTES  # one constant with the compiler, which refuses smaller limits
JOURNAL_FROM_BYTES = 128 * 2**20  # smaller images have no journal: the smallest one is 4 MiB
_JOURNAL_MIB = 4
_BYTES_PER_INODE = 16384
_BLOCKS_PER_GROUP = 8 * BLOCK_SIZE  # one block of bitmap per group
# mkfs and resize2fs drop a last group with fewer blocks than its metadata + 50 (a few hundred
# blocks with these settings); a last group below this many blocks is left out of the image instead
_LAST_GROUP_MIN_BLOCKS = 4096
_SUPERBLOCK_OFFSET = 1024
_EXT4_MAGIC_OFFSET = _SUPERBLOCK_OFFSET + 0x38
_EXT4_MAGIC = b"\x53\xef"
_INCOMPAT_64BIT = 0x80
_EXT4_ENCRYPT_FL = 0x800
_MOUNT_OPTIONS = "loop,nodev,nosuid"
_VAULT_DIR = "vault"
_CAP_SYS_RESOURCE = 24
_FITRIM = 0xC0185879  # _IOWR('X', 121, struct fstrim_range {u64 start, len, minlen})
_LOOP_MAJOR = 7
# kept free on the state filesystem beside the images: records, conditions, journal and sealed keys
# (a few KiB each)
STATE_RESERVE_BYTES = 2**20


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


class NoRoomForImage(BlockdevError):
    """The state filesystem cannot allocate a vault's image (made or grown); nothing was changed."""

    reason = "storage-no-room"


def _run(argv: list[str], path: str | os.PathLike, action: str, env: dict | None = None) -> str:
    if shutil.which(argv[0]) is None:
        raise BackendUnavailable(f"`{argv[0]}` is not installed", hint="install the Debian packages `e2fsprogs mount`")
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
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


def image_bytes_for(limit_bytes: int) -> int:
    """The size of the image, and of its filesystem, for a vault limit (see the module docstring)."""
    blocks = -(-limit_bytes // BLOCK_SIZE)
    last_group = blocks % _BLOCKS_PER_GROUP
    if blocks > _BLOCKS_PER_GROUP and last_group < _LAST_GROUP_MIN_BLOCKS:
        blocks -= last_group
    return blocks * BLOCK_SIZE


@dataclass(frozen=True)
class Superblock:
    size_bytes: int  # the filesystem's size: what resize2fs last grew it to
    free_bytes: int  # free counts are exact on an image that is not mounted (the kernel updates
    free_inodes: int  # them on disk only now and then)


def superblock(image: str | os.PathLike) -> Superblock:
    """The image's ext4 superblock: from its loop device when mounted (the kernel's live copy: ext4
    keeps its superblock in that device's page cache), else from the image file."""
    image = Path(image)
    source = _mounts().get(os.path.realpath(backing_mountpoint(image)), "")
    with open(source if source.startswith("/dev/loop") else image, "rb") as handle:
        handle.seek(_SUPERBLOCK_OFFSET)
        raw = handle.read(1024)
    if raw[0x38:0x3A] != _EXT4_MAGIC:
        raise BlockdevError("the image is not an ext4 filesystem", image)
    block_size = 1024 << struct.unpack_from("<I", raw, 0x18)[0]
    wide = struct.unpack_from("<I", raw, 0x60)[0] & _INCOMPAT_64BIT

    def count(lo: int, hi: int) -> int:
        return struct.unpack_from("<I", raw, lo)[0] | (struct.unpack_from("<I", raw, hi)[0] << 32 if wide else 0)

    return Superblock(count(0x04, 0x150) * block_size, count(0x0C, 0x158) * block_size,
                      struct.unpack_from("<I", raw, 0x10)[0])


def vault_encrypted_offline(image: str | os.PathLike) -> bool:
    """Whether the vault directory of the unmounted `image` has an fscrypt policy (its inode carries
    ext4's encrypt flag), read with debugfs in read-only catastrophic mode (which exits 0 even when it
    cannot open the filesystem: a damaged superblock is refused first)."""
    if not _has_ext4(Path(image)):
        raise BlockdevError("the image is not an ext4 filesystem", image)
    out = _run(["debugfs", "-c", "-R", f"stat /{_VAULT_DIR}", str(image)], image, "debugfs",
               env={**os.environ, "DEBUGFS_PAGER": "__none__"})
    flags = re.search(r"Flags: 0x([0-9a-fA-F]+)", out)
    return bool(flags and int(flags.group(1), 16) & _EXT4_ENCRYPT_FL)


def make_image(image: str | os.PathLike, size_bytes: int, *, features: str = "encrypt") -> Path:
    """Create a sparse ext4 image of `image_bytes_for(size_bytes)` with `features`, laid out to give
    close to its size (see the module docstring).

    Formatted under a temporary name and renamed into place, so a crash never leaves a
    half-made image at `image` that a later run would refuse to mount.
    """
    image = Path(image)
    if size_bytes < MIN_IMAGE_BYTES:
        raise BlockdevError(f"a vault image needs at least {MIN_IMAGE_BYTES // 2**20} MiB, got {format_size(size_bytes)}",
                            image)
    size = image_bytes_for(size_bytes)
    journal = ["-J", f"size={_JOURNAL_MIB}"] if size >= JOURNAL_FROM_BYTES else []
    image.parent.mkdir(parents=True, exist_ok=True)
    partial = image.with_name(image.name + ".partial")
    partial.unlink(missing_ok=True)  # a crash's leftover takes room the check must count as free
    check_room(image, size_bytes)
    try:
        with open(partial, "wb") as handle:
            _allocate(handle, image, size)
        _run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK_SIZE), "-m", "0", "-i", str(_BYTES_PER_INODE),
              "-O", features if journal else f"{features},^has_journal", *journal,
              "-E", "nodiscard,lazy_itable_init=0", str(partial)], image, "mkfs.ext4")
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
    """Check the ext4 `image` (`e2fsck -p`: what a power loss left on a journal-less image is
    repaired) and loop-mount it on the existing `mountpoint` (nodev, nosuid)."""
    if not _has_ext4(Path(image)):
        raise BlockdevError("the image is not an ext4 filesystem; refusing to mount it", image)
    _fsck(Path(image), "before mounting", force=False)
    _run(["mount", "-t", "ext4", "-o", _MOUNT_OPTIONS, str(image), str(mountpoint)], mountpoint, "mount")


def attach_image(image: str | os.PathLike, mountpoint: str | os.PathLike, size_bytes: int,
                 checkpoint: Callable[[str], None] | None = None) -> bool:
    """Make sure the vault directory of `image` (created when missing) is mounted at `mountpoint`.

    ext4 refuses an encryption policy on a filesystem's root directory, so the image is mounted
    at `backing_mountpoint(image)` and its `vault` subdirectory is bind-mounted at `mountpoint`:
    the vault path is then an ordinary (empty, encryptable) directory on the image's filesystem.
    The filesystem grows to `image_bytes_for(size_bytes)` when it is smaller and the state filesystem
    has the room (else it is mounted at its size, and `grow` names the refusal): before mounting when
    it was not mounted, else through `grow`. Returns True only when a mounted vault had to be
    remounted (see `grow`). `checkpoint` (the crash test's hook) is called inside a resize.
    """
    image, mountpoint = Path(image).resolve(), Path(mountpoint)
    target = image_bytes_for(size_bytes)
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
        elif (superblock(image).size_bytes < target and not is_mounted(backing_mountpoint(image))
              and _room_short(image, target) is None):
            _resize_offline(image, target, checkpoint)  # before mounting: no key to drop yet
        _mount_vault(image, mountpoint)
    # without the room the vault is mounted at its size: `grow` refuses then, and mounting must not
    if superblock(image).size_bytes < target and _room_short(image, target) is None:
        return grow(image, mountpoint, size_bytes, checkpoint)
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


def grow(image: str | os.PathLike, mountpoint: str | os.PathLike, new_size: int,
         checkpoint: Callable[[str], None] | None = None) -> bool:
    """Grow the filesystem of the `image` attached at `mountpoint` to `image_bytes_for(new_size)`;
    refuse to make it smaller.

    Online (loop capacity, then resize2fs on the mounted filesystem) when the process has
    CAP_SYS_RESOURCE. Without it the vault is unmounted, resized offline and mounted again, which
    needs no file open in it (`MountpointBusy` otherwise, before anything changed) and drops the
    vault's fscrypt key from the kernel. Returns True when that happened: the caller must add the
    key again. Returns False when nothing was remounted. The filesystem's size, not the file's,
    decides: a resize a crash cut short (the file grown, the filesystem not) is finished.
    """
    image, mountpoint, new_size = Path(image).resolve(), Path(mountpoint), image_bytes_for(new_size)
    current = superblock(image).size_bytes
    if new_size < current:
        used, _ = usage(mountpoint)
        if new_size < used:
            raise LimitBelowUsage(f"the new limit ({format_size(new_size)}) is below what the vault holds "
                                  f"({format_measured(used)})", mountpoint, hint="remove data from the vault first or keep the limit")
        raise ShrinkUnsupported(f"lowering the limit from {format_size(current)} to {format_size(new_size)} is not "
                                "supported (ext4 cannot shrink while mounted)", mountpoint)
    if new_size == current:
        return False
    if backing_image(mountpoint) != image:
        raise BlockdevError(f"`{image}` is not mounted there; cannot grow it", mountpoint)
    check_room(image, new_size)  # before the offline path unmounts the vault
    if can_resize_online():
        source = _mounts()[os.path.realpath(mountpoint)]
        _grow_file(image, new_size)
        _run(["losetup", "--set-capacity", source], source, "losetup --set-capacity")
        if checkpoint is not None:
            checkpoint("mid-resize")
        _run(["resize2fs", source, f"{new_size // BLOCK_SIZE}"], source, "resize2fs")
        return False
    detach(mountpoint)
    try:
        _resize_offline(image, new_size, checkpoint)
    finally:
        _mount_vault(image, mountpoint)  # never leave the vault detached, even when resizing failed
    return True


def _resize_offline(image: Path, new_size: int, checkpoint: Callable[[str], None] | None = None) -> None:
    """Grow an unmounted image file, then its filesystem, to `new_size` bytes."""
    _grow_file(image, new_size)
    if checkpoint is not None:
        checkpoint("mid-resize")
    _fsck(image, "before resizing", force=True)
    _run(["resize2fs", str(image), f"{new_size // BLOCK_SIZE}"], image, "resize2fs")


def _fsck(image: Path, when: str, *, force: bool) -> None:
    """`e2fsck -p` (with `-f` even when the filesystem says it is clean); 1 and 2 mean it repaired
    something, 4 and above that it needs a person."""
    fsck = subprocess.run(["e2fsck", *(["-f"] if force else []), "-p", str(image)], capture_output=True, text=True)
    if fsck.returncode not in (0, 1, 2):
        detail = (fsck.stderr or fsck.stdout).strip().splitlines()
        raise BlockdevError(f"e2fsck {when} failed: {detail[-1] if detail else f'exit {fsck.returncode}'}", image,
                            hint=f"repair it by hand (`e2fsck {image}`), then run the command again")


def _grow_file(image: Path, size: int) -> None:
    """The image file at least `size` bytes, all allocated (an interrupted resize may have grown it
    already); on failure the file keeps its size."""
    with open(image, "r+b") as handle:
        before = os.fstat(handle.fileno()).st_size
        try:
            _allocate(handle, image, max(size, before))
        except NoRoomForImage:
            handle.truncate(before)  # frees what was allocated past the old end
            raise
        os.fsync(handle.fileno())


def bytes_to_allocate(image: str | os.PathLike, size: int) -> int:
    """The free space making or growing `image` to `image_bytes_for(size)` takes from the filesystem
    holding it: images are allocated in full, and a crash's `.partial` leftover, removed first
    (`make_image`), gives its blocks back."""
    image = Path(image)
    allocated = 0
    for path in (image, image.with_name(image.name + ".partial")):
        try:
            allocated += path.stat().st_blocks * 512
        except FileNotFoundError:
            pass
    return max(image_bytes_for(size) - allocated, 0)


def _room_short(image: Path, size: int) -> tuple[int, int] | None:
    """(bytes still to allocate, bytes free) when the filesystem holding `image` cannot allocate it up
    to `image_bytes_for(size)` and keep `STATE_RESERVE_BYTES` free; None when it can."""
    needed = bytes_to_allocate(image, size)
    stats = os.statvfs(image.parent)
    free = stats.f_bavail * stats.f_frsize
    return None if needed == 0 or needed + STATE_RESERVE_BYTES <= free else (needed, free)


def check_room(image: str | os.PathLike, size_bytes: int) -> None:
    """Refuse (`NoRoomForImage`, nothing changed) to make or grow `image` for a `size_bytes` limit when
    the state filesystem cannot allocate it."""
    short = _room_short(Path(image), size_bytes)
    if short is not None:
        needed, free = short
        raise NoRoomForImage(
            f"the state dir's filesystem has {format_measured(free)} free, the vault's image needs {format_measured(needed)} more and "
            f"{format_measured(STATE_RESERVE_BYTES)} stays free for the state files; nothing was changed", image,
            hint="free space on the state dir's filesystem (or move the state dir to a larger one), or lower the "
            "vault's limit")


def _allocate(handle, image: Path, size: int) -> None:
    """Allocate every block of the open image file up to `size` (its new size when larger)."""
    try:
        os.posix_fallocate(handle.fileno(), 0, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise BlockdevError(f"allocating the image failed: {exc.strerror}", image) from None
        raise NoRoomForImage(f"the state dir's filesystem has no room left for the vault's image "
                             f"({exc.strerror}); nothing was changed", image,
                             hint="free space on the state dir's filesystem, or lower the vault's limit") from None


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


def discard_free(path: str | os.PathLike) -> bool:
    """Discard the free blocks of the filesystem holding `path`; False when its device cannot. A loop
    image punched so is allocated again in full (`NoRoomForImage` when that fails): see the module
    docstring."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, _FITRIM, bytearray(struct.pack("QQQ", 0, 2**64 - 1, 0)))
        device = os.fstat(fd).st_dev
    except OSError:  # EOPNOTSUPP and the like: nothing discards here; the blocks are only freed
        return False
    finally:
        os.close(fd)
    if os.major(device) == _LOOP_MAJOR:
        try:
            backing = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/loop/backing_file").read_text()
        except OSError:
            return True
        image = Path(backing.strip().removesuffix(" (deleted)"))
        with open(image, "r+b") as handle:
            _allocate(handle, image, os.fstat(handle.fileno()).st_size)
    return True
