"""The attestation tests' TPM fixture obeys VAULTPOLICY_REQUIRE_DEVICE=1 as the device fixtures do:
on a machine without swtpm it fails instead of skipping (CI machines have swtpm); and, stopped, it
leaves no TPM lock file behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_without_swtpm(require: str, tmp_path: Path) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"  # a PATH with python only: no swtpm on it
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)
    test = "tests/controller/test_report.py::test_unsolicited_report_is_refused_when_a_nonce_is_required"
    env = {**os.environ, "PATH": str(bin_dir), "VAULTPOLICY_REQUIRE_DEVICE": require}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=REPO,
                          env=env, capture_output=True, text=True)


def test_make_tpm_fails_without_swtpm_when_device_tests_are_required(tmp_path):
    required = run_without_swtpm("1", tmp_path)
    assert required.returncode == 1, required.stdout
    assert "VAULTPOLICY_REQUIRE_DEVICE=1 but this machine cannot run device tests: needs swtpm" in required.stdout
    skipped = run_without_swtpm("0", tmp_path)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout


def test_a_stopped_make_tpm_leaves_no_lock_file_behind(make_tpm):
    """Each of these swtpms listens on fresh ports, so the lock file named after its TCTI was never used
    again: /run/vaultpolicy held one per swtpm the suite ever started."""
    from enforcer.attest import AttestationTpm
    from enforcer.tcti import tpm_lock_path

    tpm = make_tpm()
    with AttestationTpm(tpm.tcti) as attesting:
        attesting.read_pcrs("sha256", (0,))
    assert tpm_lock_path(tpm.tcti).exists()
    tpm.restart()
    tpm.stop()  # what the fixture does when the test ends
    assert not tpm_lock_path(tpm.tcti).exists()
