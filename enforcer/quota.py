"""ext4 project quotas, through the kernel's interfaces (quotactl_fd and FS_IOC_FS[GS]ETXATTR).

A vault with a limit on a filesystem that enforces project quotas is a plain directory there, with
a project id of its own and FS_XFLAG_PROJINHERIT (so everything made under it gets that id), and
a hard limit on that project's blocks and inodes. The kernel then fails a write past the limit with
EDQUOT, as it fails one past an image's size with ENOSPC (enforcer/blockdev.py). Only what the
enforcer needs is here; nothing is cached.

Choices this module makes (callers rely on them):
- `enforced(path)` is the one way of asking whether project quotas can back a vault: the kernel is
  asked (Q_XGETQSTAT for PRJQUOTA) whether the filesystem holding `path` accounts *and* enforces
  project quotas (ext4 made with `-O quota,project` and mounted with `prjquota`, or turned on with
  `quotaon -P`). A kernel built without quota support answers ENOSYS, a filesystem without project
  quotas says neither: both are "no", and the caller uses an image. Accounting without enforcement
  is "no" too: limits would be recorded and never applied.
- quotactl_fd (Linux 5.14) takes a descriptor of any file on the filesystem, so no block device has
  to be found (a loop device, a device-mapper name, a bind mount: the descriptor is the filesystem).
  Older kernels answer ENOSYS: "no", as above.
- `limits_for(limit_bytes)` is the hard limit set for a vault limit: its blocks in whole KiB (the
  quota interface's unit), rounded down, and one inode per 16 KiB, the ratio a vault image gets
  (`blockdev._BYTES_PER_INODE`). The persist filesystem's inodes are shared by every vault: without
  an inode limit one vault of empty files could take them all. No soft limits, so no grace periods.
- The kernel exempts a process with CAP_SYS_RESOURCE (root, normally) from hard limits; the limit
  binds the apps that run without it. The enforcer runs as root, so its own copies (migration,
  rotation) are checked against `room()` before they start (apply.py).
- `assign(directory, project)` sets the project id and PROJINHERIT on a directory; files already in
  it keep their project (the kernel does not walk the tree). Callers give it empty directories.
- Errors are `QuotaError` naming the path or the project and the kernel's reason.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from vaultpolicy.errors import DeviceError

PRJQUOTA = 2
_SYS_QUOTACTL_FD = 443  # one number on every architecture (the unified syscall table)
_Q_GETQUOTA = 0x800007
_Q_SETQUOTA = 0x800008
_Q_XGETQSTAT = (ord("X") << 8) + 5
_FS_QUOTA_PDQ_ACCT = 1 << 4
_FS_QUOTA_PDQ_ENFD = 1 << 5
_QIF_BLIMITS = 1
_QIF_ILIMITS = 4
_QIF_DQBLKSIZE = 1024  # the unit of if_dqblk's block limits
_FS_IOC_FSGETXATTR = 0x801C581F  # _IOR('X', 31, struct fsxattr)
_FS_IOC_FSSETXATTR = 0x401C5820  # _IOW('X', 32, struct fsxattr)
_FS_XFLAG_PROJINHERIT = 0x200
BYTES_PER_INODE = 16384  # as a vault image: one inode per 16 KiB of limit
# project ids the enforcer hands out: above the small numbers people pick by hand (/etc/projid)
FIRST_PROJECT_ID = 0x7650_0000
_LAST_PROJECT_ID = 0x7650_FFFF


class QuotaError(DeviceError):
    """A project quota could not be read or set; the message names where and why."""


class _Dqblk(ctypes.Structure):
    _fields_ = [("bhardlimit", ctypes.c_uint64), ("bsoftlimit", ctypes.c_uint64), ("curspace", ctypes.c_uint64),
                ("ihardlimit", ctypes.c_uint64), ("isoftlimit", ctypes.c_uint64), ("curinodes", ctypes.c_uint64),
                ("btime", ctypes.c_uint64), ("itime", ctypes.c_uint64), ("valid", ctypes.c_uint32)]


class _FsXattr(ctypes.Structure):
    _fields_ = [("xflags", ctypes.c_uint32), ("extsize", ctypes.c_uint32), ("nextents", ctypes.c_uint32),
                ("projid", ctypes.c_uint32), ("cowextsize", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 8)]


class _QuotaStat(ctypes.Structure):  # struct fs_quota_stat: only the flags are read
    _fields_ = [("version", ctypes.c_int8), ("flags", ctypes.c_uint16), ("pad", ctypes.c_int8),
                ("rest", ctypes.c_uint8 * 76)]


assert ctypes.sizeof(_Dqblk) == 72 and ctypes.sizeof(_FsXattr) == 28

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


@dataclass(frozen=True)
class ProjectQuota:
    """What the kernel says of one project on one filesystem."""

    project_id: int
    used_bytes: int
    used_inodes: int
    limit_bytes: int  # the hard block limit; 0: none
    inode_limit: int  # the hard inode limit; 0: none

    def room(self) -> tuple[int, int]:
        """(bytes, inodes) still allowed under the limits."""
        return max(self.limit_bytes - self.used_bytes, 0), max(self.inode_limit - self.used_inodes, 0)

    @property
    def unused(self) -> bool:
        """Nothing counted and no limit: the project is no one's."""
        return not (self.used_bytes or self.used_inodes or self.limit_bytes or self.inode_limit)


def limits_for(limit_bytes: int) -> tuple[int, int]:
    """(block limit in bytes, inode limit) of a vault limit (see the module docstring)."""
    return limit_bytes // _QIF_DQBLKSIZE * _QIF_DQBLKSIZE, limit_bytes // BYTES_PER_INODE


def _quotactl(path: str, command: int, project: int, arg) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.syscall(_SYS_QUOTACTL_FD, ctypes.c_uint(fd), ctypes.c_uint((command << 8) | PRJQUOTA),
                         ctypes.c_int(project), ctypes.byref(arg)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def enforced(path: str | os.PathLike) -> bool:
    """Whether the filesystem holding `path` accounts and enforces project quotas (see the module docstring)."""
    stat = _QuotaStat()
    try:
        _quotactl(os.fspath(path), _Q_XGETQSTAT, 0, stat)
    except OSError:  # ENOSYS: no quota support in the kernel; ENOTTY, EINVAL, ESRCH: none on this filesystem
        return False
    wanted = _FS_QUOTA_PDQ_ACCT | _FS_QUOTA_PDQ_ENFD
    return stat.flags & wanted == wanted


def get(path: str | os.PathLike, project: int) -> ProjectQuota:
    """The usage and limits of `project` on the filesystem holding `path`."""
    block = _Dqblk()
    try:
        _quotactl(os.fspath(path), _Q_GETQUOTA, project, block)
    except OSError as exc:
        raise QuotaError(f"reading the quota of project {project} on the filesystem of `{path}` failed: "
                         f"{exc.strerror}") from None
    return ProjectQuota(project, block.curspace, block.curinodes, block.bhardlimit * _QIF_DQBLKSIZE, block.ihardlimit)


def set_limit(path: str | os.PathLike, project: int, limit_bytes: int) -> None:
    """Give `project` the hard limits of a vault limit of `limit_bytes` (`limits_for`); 0 removes them."""
    blocks, inodes = limits_for(limit_bytes)
    block = _Dqblk(bhardlimit=blocks // _QIF_DQBLKSIZE, ihardlimit=inodes, valid=_QIF_BLIMITS | _QIF_ILIMITS)
    try:
        _quotactl(os.fspath(path), _Q_SETQUOTA, project, block)
    except OSError as exc:
        raise QuotaError(f"setting the quota of project {project} on the filesystem of `{path}` failed: "
                         f"{exc.strerror}") from None


def _xattr(directory: str, request: int, arg: _FsXattr) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if _libc.ioctl(fd, request, ctypes.byref(arg)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), directory)
    finally:
        os.close(fd)


def project_of(directory: str | os.PathLike) -> tuple[int, bool] | None:
    """(project id, PROJINHERIT set) of `directory`; None where the filesystem has no such attributes."""
    attributes = _FsXattr()
    try:
        _xattr(os.fspath(directory), _FS_IOC_FSGETXATTR, attributes)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise QuotaError(f"reading the project of `{directory}` failed: {exc.strerror}") from None
    return attributes.projid, bool(attributes.xflags & _FS_XFLAG_PROJINHERIT)


def assign(directory: str | os.PathLike, project: int) -> None:
    """Give `directory` the project id `project` and PROJINHERIT (its new entries get the id too)."""
    attributes = _FsXattr()
    try:
        _xattr(os.fspath(directory), _FS_IOC_FSGETXATTR, attributes)
        attributes.projid = project
        attributes.xflags |= _FS_XFLAG_PROJINHERIT
        _xattr(os.fspath(directory), _FS_IOC_FSSETXATTR, attributes)
    except OSError as exc:
        raise QuotaError(f"giving `{directory}` the project {project} failed: {exc.strerror}") from None


def free_project(path: str | os.PathLike, taken: set[int]) -> int:
    """The first project id from `FIRST_PROJECT_ID` on that is not in `taken` (the ids the device's
    vault records hold) and that the kernel reports unused on the filesystem holding `path` (nothing
    counted, no limit): a vault never shares its project with another vault or with anything else."""
    for project in range(FIRST_PROJECT_ID, _LAST_PROJECT_ID + 1):
        if project not in taken and get(path, project).unused:
            return project
    raise QuotaError(f"no free project id left between {FIRST_PROJECT_ID} and {_LAST_PROJECT_ID} on the "
                     f"filesystem of `{path}`")
