"""The kernel's TPM: the default TPM is /dev/tpmrm0 where the kernel has one, and `--tpm embedded` still
names the state dir's swtpm there. The host has no TPM, so this boots the Debian kernel `make vmkernel`
unpacked under qemu (tests/vm/harness.py) with a TPM TIS device that a swtpm on the host backs: the
guest's own kernel drives it and makes /dev/tpm0 and /dev/tpmrm0. Inside, it runs
tests/enforcer/kernel_tpm_guest.py; the guest's pytest output is shown when it fails."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import pytest

from vp_helpers import REPO, guest_skip_or_fail

pytestmark = pytest.mark.device

sys.path.insert(0, str(REPO / "tests" / "vm"))

import harness  # noqa: E402

GUEST_TESTS = "tests/enforcer/kernel_tpm_guest.py"


def test_the_kernels_tpm_is_the_default_and_embedded_still_names_the_swtpm(tmp_path):
    reason = harness.unavailable_reason() or (None if shutil.which("swtpm") else "swtpm is not installed")
    if reason:
        guest_skip_or_fail(reason)
    socket = tmp_path / "swtpm.sock"
    swtpm = subprocess.Popen(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tmp_path}",
                              "--ctrl", f"type=unixio,path={socket}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        command = (f"cd {shlex.quote(str(REPO))} && PYTHONPATH={shlex.quote(str(REPO))} VAULTPOLICY_REQUIRE_DEVICE=1 "
                   f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider -rfE {GUEST_TESTS}")
        try:
            result = harness.run(command, timeout=1200, tpm_socket=socket)
        except harness.VmUnavailable as exc:
            guest_skip_or_fail(str(exc))
    finally:
        swtpm.terminate()
        swtpm.wait(timeout=30)
    print(f"guest ({result.accelerator}, {result.seconds:.0f} s):\n{result.output}")
    assert "passed" in result.output and result.returncode == 0, f"the guest's tests failed:\n{result.output}"
