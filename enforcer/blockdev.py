"""Storage limits enforced by the kernel: a per-vault ext4 image where there are no project quotas.

`quota_supported()` asks the running kernel (once per process) whether an ext4 filesystem made
with `-O quota,project` mounts. Where it does not (the development and CI kernels have no quota
support), a vault with a limit lives on its own fscrypt-capable ext4 image (`mkfs.ext4 -O encrypt`)
whose size is the limit, loop-mounted at the vault path: writing past the limit fails with ENOSPC
in the kernel, whoever writes.

- Images are sparse files; callers keep them under the state dir on the persist partition.
- `attach_image` is idempotent: it formats a new image, mounts an existing one, and does nothing
  when the image is already mounted there. It refuses to mount over a non-empty directory (that
  would hide plaintext files instead of migrating them).
- `grow` resizes online (loop capacity, then resize2fs). Lowering a limit is refused: below the
  current usage with `LimitBelowUsage`, otherwise with `ShrinkUnsupported` (ext4 cannot shrink
  while mounted, and unmounting would drop the vault's key from the kernel).
- `usage` reports statvfs figures: `limit_bytes` is the data capacity the filesystem offers, a
  little under the image size (journal and inode tables take the rest).
- Images are mounted `nodev,nosuid` with `-m 0` (no root reserve): the limit is the same for root.
- Unmounting frees the loop device: `mount -o loop` sets autoclear.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from vaultpolicy.errors import BackendUnavailable, DeviceError

BLOCK_SIZE = 4096
MIN_IMAGE_BYTES = 8 * 1024 * 1024  # smaller ext4 images with a journal leave almost no room
_EXT4_MAGIC_OFFSET = 1024 + 0x38
_EXT4_MAGIC = b"\x53\xef"
_MOUNT_OPTIONS = "loop,nodev,nosuid"


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
    """Create a sparse ext4 image of `size_bytes` (rounded up to 4 KiB) with `features`."""
    image = Path(image)
    if size_bytes < MIN_IMAGE_BYTES:
        raise BlockdevError(f"a vault image needs at least {MIN_IMAGE_BYTES // 2**20} MiB, got {size_bytes} bytes", image)
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "xb") as handle:
        handle.truncate(_rounded(size_bytes))
    try:
        _run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK_SIZE), "-m", "0", "-O", features,
              "-E", "nodiscard", str(image)], image, "mkfs.ext4")
    except BaseException:
        image.unlink(missing_ok=True)
        raise
    return image


def attach_image(image: str | os.PathLike, mountpoint: str | os.PathLike, size_bytes: int) -> None:
    """Make sure `image` (created when missing) is loop-mounted at `mountpoint`, at least `size_bytes`."""
    image, mountpoint = Path(image).resolve(), Path(mountpoint)
    if is_mounted(mountpoint):
        if backing_image(mountpoint) != image:
            raise BlockdevError(f"another filesystem is mounted there, not `{image}`", mountpoint)
    else:
        if not image.exists():
            make_image(image, size_bytes)
        elif not _has_ext4(image):
            raise BlockdevError("the vault image is not an ext4 filesystem; refusing to mount it", image)
        mountpoint.mkdir(parents=True, exist_ok=True)
        if any(mountpoint.iterdir()):
            raise MountpointNotEmpty(
                "the directory is not empty; mounting the vault image would hide its files", mountpoint,
                hint="migrate the files into the vault instead of mounting over them",
            )
        _run(["mount", "-t", "ext4", "-o", _MOUNT_OPTIONS, str(image), str(mountpoint)], mountpoint, "mount")
    if image.stat().st_size < _rounded(size_bytes):
        grow(image, mountpoint, size_bytes)


def grow(image: str | os.PathLike, mountpoint: str | os.PathLike, new_size: int) -> None:
    """Grow the mounted `image` to `new_size` bytes online; refuse to make it smaller."""
    image, new_size = Path(image), _rounded(new_size)
    current = image.stat().st_size
    if new_size < current:
        used, _ = usage(mountpoint)
        if new_size < used:
            raise LimitBelowUsage(f"the new limit ({new_size} bytes) is below what the vault holds ({used} bytes)",
                                  mountpoint, hint="remove data from the vault first or keep the limit")
        raise ShrinkUnsupported(f"lowering the limit from {current} to {new_size} bytes is not supported "
                                "(ext4 cannot shrink while mounted)", mountpoint)
    if new_size == current:
        return
    source = _mounts().get(os.path.realpath(mountpoint), "")
    if backing_image(mountpoint) != image.resolve():
        raise BlockdevError(f"`{image}` is not mounted there; cannot grow it online", mountpoint)
    with open(image, "r+b") as handle:
        handle.truncate(new_size)
    _run(["losetup", "--set-capacity", source], source, "losetup --set-capacity")
    _run(["resize2fs", source], source, "resize2fs")


def detach(mountpoint: str | os.PathLike) -> None:
    """Unmount `mountpoint` (the loop device goes with it); no-op when nothing is mounted there."""
    if not is_mounted(mountpoint):
        return
    result = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        if "busy" in result.stderr:
            raise MountpointBusy("files are still open in the vault; cannot unmount it", mountpoint)
        raise BlockdevError(f"umount failed: {result.stderr.strip()}", mountpoint)


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
