"""Fixtures for attestation tests: independent swtpm instances (two devices need two TPMs), a
controller store, and `escrowed_device`: a device whose vault keys an enrolled controller holds in escrow.
The shared `swtpm` fixture in tests/conftest.py serves the single-TPM enforcer tests; here `make_tpm()`
starts as many as a test needs, each stopped afterwards.

For the store's failures and races: `at_once(function, calls)` runs each call in its own process,
all released together by a barrier; `cli_at_once(argvs)` does so with the real CLI; `read_only_dir`
and `small_disk` are real mounts (a read-only bind mount, a 1 MiB tmpfs a test can fill).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from compiler.plan import Attestation, Device, Plan, Seal, Vault, encode_plan, format_time
from compiler.signing import PLAN_PAYLOAD_TYPE, generate_key, public_key_pem, sign
from controller.store import Store
from enforcer.attest import AttestationTpm
from enforcer.state import StateDir
from vaultpolicy.cli import main

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
        """Stop swtpm and remove the lock file our connections to it made (/run/vaultpolicy): its ports,
        so its TCTI, never come again."""
        from enforcer.tcti import remove_tpm_lock

        self.process.terminate()
        self.process.wait(timeout=10)
        remove_tpm_lock(self.tcti)

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


def at_once(function, calls: list[tuple]) -> list:
    """`function(*call)` for every call, each in its own process, all started at one barrier; their
    results in the order of `calls` (an exception comes back as `"<type>: <message>"`)."""
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(len(calls)), context.Queue()

    def run(index: int, call: tuple) -> None:
        barrier.wait()
        try:
            results.put((index, function(*call)))
        except Exception as exc:  # noqa: BLE001 - the test reads what went wrong
            results.put((index, f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"))

    processes = [context.Process(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for process in processes:
        process.start()
    collected = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join()
    return [collected[i] for i in range(len(calls))]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the real CLI in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def cli_at_once(argvs: list[list[str]]) -> list[tuple[int, str, str]]:
    return at_once(run_cli, [(argv,) for argv in argvs])


@pytest.fixture
def read_only_dir(needs_device, tmp_path):
    """(writable, read_only): the same directory, and a read-only bind mount of it (a file there is
    read-only even to root, as on a read-only file system)."""
    writable, read_only = tmp_path / "rw", tmp_path / "ro"
    writable.mkdir()
    read_only.mkdir()
    subprocess.run(["mount", "--bind", str(writable), str(read_only)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(read_only)], check=True)
        yield writable, read_only
    finally:
        _unmount(read_only)


class SmallDisk:
    """A 1 MiB tmpfs at `.path`: `.fill()` takes every free byte, `.free()` gives them back."""

    def __init__(self, path: Path):
        self.path = path
        self._filler = path / ".filler"

    def fill(self) -> None:
        with open(self._filler, "ab", buffering=0) as out, contextlib.suppress(OSError):  # until ENOSPC
            while True:
                out.write(b"\0" * 512)

    def free(self) -> None:
        self._filler.unlink()


@pytest.fixture
def small_disk(needs_device, tmp_path):
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield SmallDisk(mountpoint)
    finally:
        _unmount(mountpoint)


def _unmount(mountpoint: Path) -> None:
    """Lazily when busy: a failed test may have left a store open there."""
    if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


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


ESCROWED_PCRS = (0, 2, 4, 7)


def escrowed_plan(allowed: dict[int, str], escrow_public: str, persist: str) -> Plan:
    """Vaults `config` and `notes`, sealed to the attestation `boot` (which allows `allowed`) and escrowed."""
    now = datetime.now(timezone.utc)
    return Plan(
        plan_version=1, issued_at=format_time(now - timedelta(minutes=1)), expires=format_time(now + timedelta(days=1)),
        source_sha256="00" * 32, device=Device(persist=persist, escrow_public_key=escrow_public),
        vaults=tuple(Vault(name=name, path=f"{persist}/vault/{name}", encryption="aes-256-xts", limit_bytes=0,
                           seal=Seal(bank="sha256", pcrs=ESCROWED_PCRS, attestation="boot"), on_remove="retain")
                     for name in ("config", "notes")),
        attestations=(Attestation(name="boot", bank="sha256", pcrs=ESCROWED_PCRS,
                                  allowed={str(i): (v,) for i, v in allowed.items()},
                                  nonce_bytes=32, nonce_lifetime_seconds=300, escrow_required=True),),
    )


@dataclass
class EscrowedDevice:
    """Device `gw-1` (a real swtpm, a loop-mounted ext4 under `root`) that applied `escrowed_plan`, both
    vaults unlocked, enrolled with a controller that holds both keys in escrow. `cli` runs the real CLI
    in-process and returns (stdout, stderr); `device` are the device commands' --state-dir and --tpm."""

    root: Path
    persist: str
    state: StateDir
    work: Path
    device: list[str]
    store: list[str]
    capsys: object

    def cli(self, *argv: str, code: int = 0) -> tuple[str, str]:
        self.capsys.readouterr()
        result = main(list(argv))
        out, err = self.capsys.readouterr()
        assert result == code, f"{argv[:2]} -> {result}\n{out}\n{err}"
        return out, err

    def vault_path(self, name: str) -> Path:
        return self.root / self.persist.lstrip("/") / "vault" / name

    def release(self, *vaults: str, name: str = "release.json") -> Path:
        """A release file for `vaults`, after a fresh nonce, quote and verification."""
        plan = str(self.work / "plan.json")
        nonce = self.cli("controller", "nonce", "--device-id", "gw-1", "--plan", plan, *self.store)[0].strip()
        self.cli("device", "quote", "--nonce", nonce, "-o", str(self.work / "quote.json"), *self.device)
        self.cli("controller", "verify-quote", str(self.work / "quote.json"), "--plan", plan, *self.store)
        chosen = [option for vault in vaults for option in ("--vault", vault)]
        self.cli("controller", "release", str(self.work / "quote.json"), *chosen, "--escrow-key",
                 str(self.work / "escrow.key"), "-o", str(self.work / name), *self.store)
        return self.work / name


@pytest.fixture
def escrowed_device(swtpm, ext4_image, tmp_path, capsys) -> EscrowedDevice:
    root = Path(ext4_image).parent
    state = StateDir(tmp_path / "state")
    made = EscrowedDevice(root, "/" + Path(ext4_image).name, state, tmp_path,
                          ["--state-dir", str(state.root), "--tpm", swtpm.tcti],
                          ["--store", str(tmp_path / "controller.db")], capsys)
    key = generate_key()
    (tmp_path / "plan.pub").write_bytes(public_key_pem(key.public_key()))
    made.cli("controller", "escrow-keygen", "-o", str(tmp_path / "escrow.key"))
    swtpm.measure_boot()
    with AttestationTpm(swtpm.tcti) as tpm:
        values = {i: v.hex() for i, v in tpm.read_pcrs("sha256", ESCROWED_PCRS)[1].items()}
    payload = encode_plan(escrowed_plan(values, (tmp_path / "escrow.key.pub").read_text().strip(), made.persist))
    (tmp_path / "plan.json").write_bytes(payload)
    (tmp_path / "plan.signed").write_bytes(sign(PLAN_PAYLOAD_TYPE, payload, [key]).to_bytes())
    made.cli("device", "apply", str(tmp_path / "plan.signed"), "--trust", str(tmp_path / "plan.pub"), "--root", str(root),
             "--device-id", "gw-1", *made.device)
    identity, _ = made.cli("device", "identity", "--device-id", "gw-1", *made.device)
    (tmp_path / "identity.json").write_text(identity)
    made.cli("controller", "enroll", str(tmp_path / "identity.json"), *made.store)
    made.cli("device", "escrow-deposit", "-o", str(tmp_path / "deposit.json"), *made.device)
    made.cli("controller", "escrow", str(tmp_path / "deposit.json"), "--ack-dir", str(tmp_path / "acks"), *made.store)
    return made
