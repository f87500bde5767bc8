"""Keep key material in this process's memory out of files: no core dump, no debugger of another user.

Vault keys, the escrow private key and signing keys pass through vaultpolicy's memory. A crash dump
(a core file, or systemd-coredump's copy of one) would write them to disk in the clear, which the
product promises never happens. So every command starts with core dumps off (RLIMIT_CORE 0) and
the process marked non-dumpable (PR_SET_DUMPABLE 0), which also keeps other users' ptrace and
/proc/<pid>/mem out. The process itself can still read its own /proc/self.
"""

from __future__ import annotations

import ctypes
import resource

_PR_SET_DUMPABLE = 4


def keep_memory_off_disk() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
