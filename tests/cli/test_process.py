"""Every command runs with core dumps off and the process non-dumpable: vault keys, the escrow key and
signing keys pass through its memory, and a crash dump would write them to disk in the clear."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_command_cannot_dump_its_memory():
    script = (
        "import ctypes, resource\n"
        "from vaultpolicy.cli import main\n"
        "main(['explain', 'VP0101'])\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE), ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))\n"  # PR_GET_DUMPABLE
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.splitlines()[-1] == "(0, 0) 0"
