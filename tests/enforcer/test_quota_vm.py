"""Project-quota vaults, tested on a kernel that has quota support: the host's has none, so this boots
the Debian kernel `make vmkernel` unpacked under qemu (tests/vm/harness.py: KVM when it works, else
TCG) and runs tests/enforcer/quota_guest.py inside it, on the host's own files. One boot for all of
them; the guest's pytest output is shown when it fails."""

from __future__ import annotations

import shlex
import sys

import pytest

from vp_helpers import REPO, guest_skip_or_fail

pytestmark = pytest.mark.device

sys.path.insert(0, str(REPO / "tests" / "vm"))

import harness  # noqa: E402

GUEST_TESTS = "tests/enforcer/quota_guest.py"


def test_project_quota_vaults_on_a_kernel_with_quota_support():
    reason = harness.unavailable_reason()
    if reason:
        guest_skip_or_fail(reason)
    command = (f"cd {shlex.quote(str(REPO))} && PYTHONPATH={shlex.quote(str(REPO))} VAULTPOLICY_REQUIRE_DEVICE=1 "
               f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider -rfE --durations=5 {GUEST_TESTS}")
    try:
        result = harness.run(command, timeout=1200)
    except harness.VmUnavailable as exc:
        guest_skip_or_fail(str(exc))
    print(f"guest ({result.accelerator}, {result.seconds:.0f} s):\n{result.output}")
    assert "passed" in result.output and result.returncode == 0, f"the guest's tests failed:\n{result.output}"
