"""Fixtures for attestation tests: independent swtpm instances (two devices need two TPMs) and a
controller store. The shared `swtpm` fixture in tests/conftest.py serves the single-TPM enforcer tests;
here `make_tpm()` starts as many as a test needs, each stopped afterwards.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from compiler.plan import Attestation
from controller.store import Store

ATTESTED_PCRS = (0, 2, 4, 7)  # what the simulated boot measures and the test policy attests


def _free_port_pair() -> tuple[int, int]:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            with socket.socket() as a, socket.socket() as b:
                try:
                    a.bind(("127.0.0.1", port))
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port, port + 1


class SoftTpm:
    """A running swtpm: `.tcti`, `.extend(pcr, data)`, `.restart()` (a reboot: PCRs back to zero),
    `.allocate(*banks)` (has those PCR banks allocated, and restarts for them to take effect)."""

    def __init__(self, state: Path):
        self.state = state
        self.port, self.ctrl = _free_port_pair()
        self.tcti = f"swtpm:host=127.0.0.1,port={self.port}"
        self._start()

    def _start(self) -> None:
        self.process = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
             "--server", f"type=tcp,port={self.port}", "--ctrl", f"type=tcp,port={self.ctrl}",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.01)
        raise RuntimeError("swtpm did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self._start()

    def extend(self, pcr: int, data: bytes) -> None:
        """Measure `data` into every allocated bank (TPM2_PCR_Event), as firmware does: a quote over any
        bank then sees the boot."""
        from tpm2_pytss import ESAPI
        from tpm2_pytss.constants import ESYS_TR

        with ESAPI(self.tcti) as esapi:
            esapi.pcr_event(getattr(ESYS_TR, f"PCR{pcr}"), data)

    def allocate(self, *banks: str) -> None:
        """Allocate every PCR of `banks` (TPM2_PCR_Allocate; other banks keep theirs), whatever libtpms
        allocates by default. The allocation takes effect at the next reset, so this restarts the TPM."""
        from tpm2_pytss import ESAPI

        with ESAPI(self.tcti) as esapi:
            allocated, *_ = esapi.pcr_allocate("+".join(f"{bank}:all" for bank in banks))
        if not allocated:
            raise RuntimeError(f"swtpm refused to allocate the PCR banks {', '.join(banks)}")
        self.restart()

    def measure_boot(self) -> None:
        for pcr in ATTESTED_PCRS:
            self.extend(pcr, f"firmware blob for PCR {pcr}".encode())


@pytest.fixture
def make_tpm(needs_swtpm, tmp_path):
    started: list[SoftTpm] = []

    def make() -> SoftTpm:
        state = tmp_path / f"swtpm{len(started)}"
        state.mkdir()
        started.append(SoftTpm(state))
        return started[-1]

    yield make
    for tpm in started:
        tpm.stop()


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "controller.db") as opened:
        yield opened


@pytest.fixture
def attested_pcrs() -> tuple[int, ...]:
    return ATTESTED_PCRS


@pytest.fixture
def make_policy():
    """`make_policy({pcr: [hex, ...]}, bank=...)` -> the plan's attestation requirement allowing those values."""
    return _attestation


def _attestation(allowed: dict[int, list[str]] | None = None, lifetime: int = 300, bank: str = "sha256") -> Attestation:
    return Attestation(
        name="boot",
        bank=bank,
        pcrs=ATTESTED_PCRS,
        allowed={str(k): tuple(v) for k, v in (allowed or {}).items()},
        nonce_bytes=32,
        nonce_lifetime_seconds=lifetime,
        escrow_required=True,
    )
