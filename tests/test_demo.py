"""`make demo` (scripts/demo.sh) runs to the end and tells its story, so the README's Quick start cannot rot.

It runs the script as `make demo` does (the virtualenv's bin dir first on PATH) on real swtpm and a
loop-mounted ext4 image, then checks the lines that carry the story and that nothing is left behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def leftovers(work: str) -> list[str]:
    """Mounts and swtpm processes of the demo run whose work dir is `work`."""
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if f"{work}/" in line]
    swtpms = subprocess.run(["pgrep", "-af", f"swtpm.*{work}/"], capture_output=True, text=True).stdout
    return mounts + swtpms.splitlines()


def test_demo_runs_the_whole_story_and_cleans_up(needs_device):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "scripts/demo.sh"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    out = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]

    expected_in_order = [
        "enrolled device `gw-1`",
        "escrow of vault `config` acknowledged by the controller",
        "s3 credentials: AKIA-DEMO-SECRET",  # written, then read back after the TPM unlock
        "reading a file fails while locked: ok",
        "vault config: locked (pcr-mismatch, VP1201): PCR sha256:7 changed",
        "unlock refused, as it must be",
        "config: Locked (pcr-mismatch): PCR sha256:7 changed since sealing\n",  # the verified report, said once
        "quote from `gw-1` verified",
        "released config, images to `gw-1`",
        "vault config: unlocked (controller-release): re-sealed to the current PCRs",
        "== reboot into the new firmware",
        "== boot service: the re-sealed keys unlock locally",
        "vault config: unlocked\n",
        "s3 credentials: AKIA-DEMO-SECRET",
        "plan version 2: device matches the plan",
        "== done",
    ]
    position = 0
    for line in expected_in_order:
        found = out.find(line, position)
        assert found >= 0, f"missing (in this order): {line!r}\n{out[position:position + 3000]}"
        position = found + len(line)
    work = re.search(r"/tmp/vaultpolicy-demo\.\w+", out).group(0)
    assert not Path(work).exists(), "the demo left its work dir"
    assert leftovers(work) == [], "the demo left mounts or a swtpm running"
    from enforcer.tcti import tpm_lock_path

    tcti = re.search(r"--tpm (swtpm:host=127\.0\.0\.1,port=\d+)", out).group(1)
    assert not tpm_lock_path(tcti).exists(), "the demo left its swtpm's lock file in /run/vaultpolicy"
