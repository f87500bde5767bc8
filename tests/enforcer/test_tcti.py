"""enforcer.tcti: choosing the TPM, and the embedded swtpm started under the state dir."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from enforcer import tcti
from enforcer.tpm import Tpm


@pytest.fixture
def state_dir(needs_device, tmp_path):
    """A state dir whose embedded swtpm the tests start with `--tpm embedded` (tcti.EMBEDDED), which
    takes it whether or not the machine has a /dev/tpmrm0 (test_kernel_tpm_vm boots one that has)."""
    state = tmp_path / "state"
    yield state
    tcti.stop_embedded(state)


def _record(state: Path) -> dict:
    return json.loads((state / "swtpm" / "instance.json").read_text())


def _running(pid: int) -> bool:
    try:
        is_swtpm = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"swtpm")
    except OSError:
        return False
    return is_swtpm and tcti._running(pid)


def test_explicit_option_wins(tmp_path):
    assert tcti.resolve_tcti("mssim:host=tpm.example,port=2321", tmp_path) == "mssim:host=tpm.example,port=2321"
    assert not (tmp_path / "swtpm").exists(), "an explicit TCTI starts nothing"


def test_the_default_is_the_kernels_tpm_else_the_embedded_swtpm(state_dir):
    """On this machine as it is; the kernel's /dev/tpmrm0 is the default in test_kernel_tpm_vm's guest."""
    chosen = tcti.resolve_tcti(None, state_dir)
    if os.path.exists(tcti.TPMRM_DEVICE):
        assert chosen == f"device:{tcti.TPMRM_DEVICE}" and not state_dir.exists()
    else:
        assert chosen == f"swtpm:host=127.0.0.1,port={_record(state_dir)['port']}"


def test_embedded_swtpm_is_started_once_reused_and_stopped(state_dir):
    started = []
    first = tcti.resolve_tcti(tcti.EMBEDDED, state_dir, on_start=lambda *announced: started.append(announced))
    record = _record(state_dir)
    assert first == f"swtpm:host=127.0.0.1,port={record['port']}"
    assert started == [(first, state_dir / "swtpm")], "the caller hears of the start, once"
    assert record["ctrl_port"] == record["port"] + 1 and _running(record["pid"])
    with Tpm(first) as device:  # Startup(CLEAR) was sent: the TPM answers and PCRs start at zero
        assert device.read_pcrs("sha256", [0]) == {0: bytes(32)}

    assert tcti.resolve_tcti(tcti.EMBEDDED, state_dir, on_start=lambda *announced: started.append(announced)) == first
    assert _record(state_dir)["pid"] == record["pid"], "a living instance is reused"
    assert len(started) == 1, "reusing the instance announces nothing"

    assert tcti.stop_embedded(state_dir) is True
    assert not _running(record["pid"])
    assert not (state_dir / "swtpm" / "instance.json").exists()
    assert not tcti.tpm_lock_path(first).exists(), "the stopped swtpm's lock file stays behind"
    assert tcti.stop_embedded(state_dir) is False


def test_embedded_state_survives_a_restart_like_a_reboot(state_dir):
    secret = os.urandom(64)
    with Tpm(tcti.resolve_tcti(tcti.EMBEDDED, state_dir)) as device:
        for index in (0, 4, 7):
            device.extend_pcr(index, "sha256", b"firmware %d" % index)
        blob = device.seal(secret, "sha256", (0, 4, 7))
    tcti.stop_embedded(state_dir)

    with Tpm(tcti.resolve_tcti(tcti.EMBEDDED, state_dir)) as device:
        assert device.read_pcrs("sha256", [0]) == {0: bytes(32)}, "a new instance starts with reset PCRs"
        for index in (0, 4, 7):
            device.extend_pcr(index, "sha256", b"firmware %d" % index)
        assert device.unseal(blob) == bytearray(secret), "the sealing seed persisted in the state dir"


def test_stale_or_foreign_records_are_not_trusted(state_dir):
    directory = state_dir / "swtpm"
    directory.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:  # a living pid that is not our swtpm (pid reuse) must not be taken for it
        (directory / "instance.json").write_text(json.dumps({"pid": sleeper.pid, "port": 1, "ctrl_port": 2}))
        chosen = tcti.resolve_tcti(tcti.EMBEDDED, state_dir)
        assert _record(state_dir)["pid"] != sleeper.pid and chosen != "swtpm:host=127.0.0.1,port=1"
        assert sleeper.poll() is None, "the foreign process is left alone"
    finally:
        sleeper.kill()
        sleeper.wait()
    tcti.stop_embedded(state_dir)

    (directory / "instance.json").write_text("{not json")
    assert tcti.resolve_tcti(tcti.EMBEDDED, state_dir).startswith("swtpm:host=127.0.0.1,port=")
    assert _running(_record(state_dir)["pid"])


def test_concurrent_commands_share_one_instance(state_dir):
    script = (
        "import sys; from enforcer import tcti; print(tcti.resolve_tcti(tcti.EMBEDDED, sys.argv[1]))"
    )
    commands = [subprocess.Popen([sys.executable, "-c", script, str(state_dir)],
                                 stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
                for _ in range(3)]
    answers = {command.communicate(timeout=60)[0].strip() for command in commands}
    assert len(answers) == 1 and answers.pop().startswith("swtpm:")
    swtpm_processes = subprocess.run(["pgrep", "-f", f"dir={state_dir / 'swtpm'}"], capture_output=True, text=True)
    assert len(swtpm_processes.stdout.split()) == 1


def test_missing_swtpm_binary_is_backend_unavailable(state_dir, monkeypatch):
    monkeypatch.setenv("PATH", str(state_dir / "empty-bin"))
    with pytest.raises(tcti.BackendUnavailable, match="`swtpm` program is not installed"):
        tcti.resolve_tcti(tcti.EMBEDDED, state_dir)


def test_relative_and_absolute_state_paths_find_the_same_instance(state_dir, monkeypatch):
    absolute = tcti.resolve_tcti(tcti.EMBEDDED, state_dir)
    monkeypatch.chdir(state_dir.parent)
    assert tcti.resolve_tcti(tcti.EMBEDDED, state_dir.name) == absolute
    assert tcti.stop_embedded(state_dir.name) is True


def test_the_tpm_lock_lives_where_only_this_user_writes(tmp_path):
    """In /run/lock (mode 1777) any local user could hold a TPM's lock and stall every device command,
    or plant a symlink where the lock file goes."""
    made = tcti.private_directory(tmp_path / "locks")
    assert stat.S_IMODE(os.lstat(made).st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (tmp_path / "link").symlink_to(made)
    for refused in (shared, tmp_path / "link"):
        with pytest.raises(tcti.BackendUnavailable, match="is not a directory of this user's alone"):
            tcti.private_directory(refused)
    directory = tcti._own_lock_dir()  # /run/vaultpolicy for root
    assert directory.name.startswith("vaultpolicy") and stat.S_IMODE(os.lstat(directory).st_mode) & 0o077 == 0


def _open_here(path: Path) -> int:
    """How many of this process's file descriptors are open on `path`."""
    return sum(os.readlink(f"/proc/self/fd/{fd}") == str(path) for fd in os.listdir("/proc/self/fd")
               if os.path.islink(f"/proc/self/fd/{fd}"))


def test_the_suites_swtpm_leaves_no_lock_file_behind(swtpm):
    """/run/vaultpolicy held one empty lock file per TCTI ever used, 1,792 of them, mostly from this suite:
    each of its swtpms listens on fresh ports. Stopping one, as the fixture does, removes its file."""
    lock = tcti.tpm_lock_path(swtpm.tcti)
    swtpm.measure_boot()  # a connection, as every test makes
    assert lock.exists()
    swtpm.restart()  # a reboot keeps the TCTI: the next connection makes the file again
    with Tpm(swtpm.tcti) as device:
        assert device.read_pcrs("sha256", [0]) == {0: bytes(32)}
        swtpm_users = tcti.TpmUsers(swtpm.tcti)
    tcti.remove_tpm_lock(swtpm.tcti)
    assert lock.exists(), "a lock file a connection holds is removed"
    swtpm_users.release()
    swtpm.stop()  # what the fixture does when the test ends
    assert not lock.exists()


def test_a_connection_that_locked_a_removed_lock_file_takes_the_one_in_its_place(tmp_path):
    """A connection waiting on the lock file while it is removed must not hold a file nobody else sees:
    a flush alone on the new file would then take its handles."""
    import threading

    tcti_string = f"swtpm:host=127.0.0.1,port=0,test={tmp_path.name}"  # never connected to: the lock alone
    lock = tcti.tpm_lock_path(tcti_string)
    holder = tcti.TpmUsers(tcti_string)
    assert holder.alone()  # a flush holds it alone; the next connection waits
    waiting: list[tcti.TpmUsers] = []
    thread = threading.Thread(target=lambda: waiting.append(tcti.TpmUsers(tcti_string)))
    thread.start()
    while _open_here(lock) < 2:  # the waiting connection has opened the file (and waits for its lock)
        thread.join(0.01)
    lock.unlink()  # as `remove_tpm_lock` does, holding it alone
    holder.release()
    thread.join()
    assert tcti._is_at(waiting[0]._fd, lock), "the waiting connection holds a file that is no longer the lock"
    flush = tcti.TpmUsers(tcti_string)
    assert not flush.alone(), "a flush could take the TPM alone while a connection holds it"
    flush.release()
    waiting[0].release()
    tcti.remove_tpm_lock(tcti_string)
    assert not lock.exists()
