"""Shared device fixtures: a real swtpm and a real loop-mounted ext4 image with fscrypt.

- `needs_device` (fixture) and `@pytest.mark.device` (marker) skip a test only when the machine
  truly cannot run it: not root, no /dev/loop-control, or no swtpm binary; the reason says which.
  With VAULTPOLICY_REQUIRE_DEVICE=1 (set by .ci/run) they fail instead: CI must run them for real.
- `swtpm`: a fresh swtpm per test on free ports, Startup(CLEAR) done. `.tcti` for `Tpm(...)`,
  `.restart()` reboots it (PCRs reset, sealing seed kept), `.measure_boot()` extends fixed
  "firmware" blobs into PCRs 0, 2, 4 and 7 (through an open `Tpm` when given, else its own).
  Close any `Tpm` before `restart()`: the restarted TPM has forgotten its handles.
- `ext4_image`: a 32 MiB `-O encrypt` ext4 image loop-mounted on a temporary directory; yields the
  mount point (a str). Unmounted after the test even when it fails (lazily if files stay open),
  which also frees its loop device and drops every fscrypt key added to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

BOOT_PCRS = (0, 2, 4, 7)
EXT4_IMAGE_BYTES = 32 * 1024 * 1024


def device_unavailable_reason() -> str | None:
    """Why real-device tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root: loop mounts and fscrypt keyring ioctls are privileged"
    if not os.path.exists("/dev/loop-control"):
        return "needs loop devices: /dev/loop-control is missing"
    if shutil.which("swtpm") is None:
        return "needs swtpm (Debian packages `swtpm swtpm-tools`) for a real TPM"
    return None


def skip_or_fail(reason: str) -> None:
    if os.environ.get("VAULTPOLICY_REQUIRE_DEVICE") == "1":
        pytest.fail(f"VAULTPOLICY_REQUIRE_DEVICE=1 but this machine cannot run device tests: {reason}")
    pytest.skip(reason)


def pytest_configure(config):
    config.addinivalue_line("markers", "device: needs root, loop devices and swtpm (real fscrypt and TPM)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("device"):
        reason = device_unavailable_reason()
        if reason:
            skip_or_fail(reason)


@pytest.fixture
def needs_device():
    reason = device_unavailable_reason()
    if reason:
        skip_or_fail(reason)


class SimulatedTpm:
    """A running swtpm for one test (see the module docstring)."""

    def __init__(self, process):
        self._process = process

    @property
    def tcti(self) -> str:
        return self._process.tcti

    @property
    def state_dir(self) -> Path:
        return self._process.state_dir

    def restart(self) -> None:
        self._process.restart()

    def measure_boot(self, tpm=None, bank: str = "sha256") -> None:
        """Extend fixed firmware blobs into PCRs 0, 2, 4, 7, as a measured boot does."""
        from enforcer.tpm import Tpm

        if tpm is None:
            with Tpm(self.tcti) as own:
                self.measure_boot(own, bank)
            return
        for index in BOOT_PCRS:
            tpm.extend_pcr(index, bank, f"simulated firmware stage for PCR {index}".encode())

    def stop(self) -> None:
        self._process.stop()


@pytest.fixture
def swtpm(needs_device, tmp_path_factory):
    from enforcer.tcti import Swtpm

    process = Swtpm.start(tmp_path_factory.mktemp("swtpm"))
    simulated = SimulatedTpm(process)
    try:
        yield simulated
    finally:
        simulated.stop()


@pytest.fixture
def ext4_image(needs_device, tmp_path_factory):
    from enforcer import blockdev

    scratch = tmp_path_factory.mktemp("ext4")
    mountpoint = scratch / "mnt"
    mountpoint.mkdir()
    blockdev.make_image(scratch / "fs.img", EXT4_IMAGE_BYTES)
    blockdev.mount_image(scratch / "fs.img", mountpoint)
    try:
        yield str(mountpoint)
    finally:
        if blockdev.is_mounted(mountpoint):
            # lazy when busy: the test may have left a file open; the loop device is freed when it closes
            if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mountpoint)], check=True)
        (scratch / "fs.img").unlink(missing_ok=True)


@pytest.fixture
def needs_swtpm():
    """Only swtpm (no root, no loop devices): the attestation tests' own TPMs."""
    if shutil.which("swtpm") is None:
        skip_or_fail("needs swtpm (Debian packages `swtpm swtpm-tools`) for a real TPM")
