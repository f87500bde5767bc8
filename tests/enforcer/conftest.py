"""Fixtures for the enforcer core tests. The device fixtures (`swtpm`, `ext4_image`) live in tests/conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib, which puts no test directory on sys.path; the plan
# builders in vp_helpers.py are shared by several test files here.
sys.path.insert(0, str(Path(__file__).parent))

from vp_helpers import REPO, mounts_under, signed  # noqa: E402

PERSIST_BYTES = 64 * 1024 * 1024


@dataclass
class Device:
    """A simulated device: --root with a loop-mounted `-O encrypt` ext4 persist partition, a state dir, a swtpm."""

    root: Path
    state: Path
    work: Path
    swtpm: object
    key: object
    trust: Path

    @property
    def tcti(self) -> str:
        return self.swtpm.tcti

    def path(self, plan_path: str) -> Path:
        return self.root / plan_path.lstrip("/")

    def sign(self, plan, name: str = "plan.signed") -> Path:
        target = self.work / name
        target.write_bytes(signed(plan, self.key))
        return target

    def cli(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """The real CLI in a subprocess, with this device's options appended."""
        options = ["--state-dir", str(self.state), "--root", str(self.root), "--tpm", self.tcti]
        return subprocess.run([sys.executable, "-m", "vaultpolicy", *args, *options], capture_output=True, text=True,
                              cwd=REPO, env={**os.environ, **(env or {})})

    def apply(self, plan, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return self.cli("device", "apply", str(self.sign(plan)), "--trust", str(self.trust), *extra, env=env)


@pytest.fixture
def device(swtpm, tmp_path):
    from compiler.signing import generate_key, public_key_pem
    from enforcer import blockdev

    root, state, work = tmp_path / "root", tmp_path / "state", tmp_path / "work"
    for directory in (root, state, work):
        directory.mkdir()
    (root / "persist").mkdir()
    blockdev.mount_image(blockdev.make_image(work / "persist.img", PERSIST_BYTES), root / "persist")
    key = generate_key()
    trust = work / "controller.pub"
    trust.write_bytes(public_key_pem(key.public_key()))
    swtpm.measure_boot()
    try:
        yield Device(root, state, work, swtpm, key, trust)
    finally:
        for mountpoint in mounts_under(root, state, work):
            if subprocess.run(["umount", mountpoint], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mountpoint], capture_output=True)
