"""Which TPM to talk to, and the embedded swtpm used when the machine has none.

`resolve_tcti(option, state_dir)`: an explicit `--tpm TCTI` string wins; else `device:/dev/tpmrm0`
when the kernel's resource manager exists; else (or with `--tpm embedded`) the embedded default, a
`swtpm socket --tpm2` with its state under STATE_DIR/swtpm. The embedded instance outlives the command that started it (its pid
and ports are in STATE_DIR/swtpm/instance.json) so later commands reuse it while it lives; a new
instance gets Startup(CLEAR) from swtpm itself (`--flags startup-clear`), which is what a reboot
does to a real TPM: PCRs reset, the sealing seed in the state directory stays.

`Swtpm` is the launcher shared by the embedded default and the test fixtures. Several `Tpm`
connections to one swtpm work at once, but swtpm has no resource manager: all clients share its
few transient-object slots (three), and nothing flushes what a killed client left loaded (the
kernel's /dev/tpmrm0 does; `Tpm.flush_leftovers()` does it for unmanaged TPMs).

`TpmUsers`: on such a TPM every open connection of ours holds a shared flock on a lock file named
after the TCTI (in /run/vaultpolicy, root's alone), and `flush_leftovers` flushes only when it can take that lock
alone. A live command's handles (a `status` or `quote` that takes no state-dir lock) are then never
flushed from under it; what a killed command left is, since the kernel drops a dead process's flock.
`Swtpm.stop` removes its TPM's lock file once the swtpm has exited (each swtpm the tests start listens
on fresh ports, so its TCTI, and the file named after it, would never come again): it unlinks it while
it holds it alone, and a connection that locked a file no longer at its path locks the one there now,
so two connections never hold different files of one TPM.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vaultpolicy.errors import BackendUnavailable

TPMRM_DEVICE = "/dev/tpmrm0"
EMBEDDED = "embedded"  # `--tpm embedded`: the state dir's swtpm even where /dev/tpmrm0 exists
_SHARE_TIMEOUT_S = 30.0  # a flush holds the lock alone for a few TPM round trips
TCTI_HINT = ("`--tpm` takes a TCTI string: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, "
             "`mssim:host=127.0.0.1,port=2321`, `tabrmd:`, or `embedded` for the state dir's swtpm; check that "
             "this TPM is there")
_HOST = "127.0.0.1"
_START_ATTEMPTS = 5
_READY_TIMEOUT_S = 10.0
_ALIVE_TIMEOUT_S = 5.0


def has_resource_manager(tcti: str) -> bool:
    """Whether the TPM behind `tcti` flushes a client's handles when it disconnects."""
    return tcti.startswith(("device:/dev/tpmrm", "tabrmd"))


class TpmUsers:
    """This process's share of a TPM without a resource manager, held while a connection is open
    (see the module docstring); on a managed TPM it holds nothing."""

    def __init__(self, tcti: str):
        self._fd = None
        if has_resource_manager(tcti):
            return
        path = tpm_lock_path(tcti)
        deadline = time.monotonic() + _SHARE_TIMEOUT_S
        while True:
            self._fd = _open_lock(path)
            while not self._take(fcntl.LOCK_SH):
                if time.monotonic() >= deadline:
                    self.release()
                    raise BackendUnavailable(f"another command has held the TPM `{tcti}` alone for "
                                             f"{_SHARE_TIMEOUT_S:.0f}s ({path})", hint=f"find it with `fuser -v {path}`")
                time.sleep(0.01)
            if _is_at(self._fd, path):
                return
            self.release()  # removed while we waited (its swtpm stopped): lock the file at the path now

    def alone(self) -> bool:
        """Take the lock alone if no other connection holds it (never waits); `share` gives it back."""
        return self._fd is not None and self._take(fcntl.LOCK_EX)

    def share(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_SH)  # from alone: only waits for nobody (we held it alone)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _take(self, mode: int) -> bool:
        try:
            fcntl.flock(self._fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False


def tpm_lock_path(tcti: str) -> Path:
    """The lock file `TpmUsers` shares for the TPM behind `tcti`."""
    return _own_lock_dir() / f"tpm-{hashlib.sha256(tcti.encode()).hexdigest()[:16]}.lock"


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackendUnavailable(f"cannot open the TPM's lock file {path}: {exc.strerror or exc}") from None


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the file at `path`."""
    try:
        found = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)


def remove_tpm_lock(tcti: str) -> None:
    """Remove the lock file of a TPM that is gone (its swtpm exited), if no connection holds it: a
    connection still open to it keeps the file, which the TPM's next instance on that TCTI then uses."""
    if has_resource_manager(tcti):
        return
    path = tpm_lock_path(tcti)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # none was made (no connection of ours), or it is not ours to remove
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _is_at(fd, path):
            path.unlink()
    except OSError:
        pass  # held by a connection (BlockingIOError), or removed meanwhile: nothing to do
    finally:
        os.close(fd)


def _own_lock_dir() -> Path:
    """A directory only this user can write (/run/vaultpolicy for root): in a world-writable one such as
    /run/lock, any local user could hold a TPM's lock and stall every device command, boot unlock
    included, or plant a symlink where the lock file goes."""
    euid = os.geteuid()
    return private_directory(Path("/run/vaultpolicy") if euid == 0 else
                             Path(tempfile.gettempdir()) / f"vaultpolicy-{euid}")


def private_directory(directory: Path) -> Path:
    """`directory`, made 0700 when missing; refused unless it is a real directory (no symlink) of this
    user that nobody else can write."""
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        found = os.lstat(directory)
    except OSError as exc:
        raise BackendUnavailable(f"cannot make the lock directory {directory}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid() or found.st_mode & 0o022:
        raise BackendUnavailable(f"the lock directory {directory} is not a directory of this user's alone",
                                 hint="remove it: vaultpolicy makes it again (mode 0700)")
    return directory


@dataclass
class Swtpm:
    """A running `swtpm socket --tpm2` on 127.0.0.1: `port` for commands, `port + 1` for control."""

    state_dir: Path
    port: int
    pid: int
    process: subprocess.Popen | None = None  # only when this process started it

    @property
    def ctrl_port(self) -> int:
        return self.port + 1

    @property
    def tcti(self) -> str:
        return f"swtpm:host={_HOST},port={self.port}"

    @classmethod
    def start(cls, state_dir: str | os.PathLike, port: int | None = None, *, detached: bool = False) -> "Swtpm":
        """Start swtpm with its state in `state_dir` on `port` (free ports when None).

        `detached` daemonizes it so it survives the command that started it.
        """
        binary = shutil.which("swtpm")
        if binary is None:
            raise BackendUnavailable(
                "no TPM: /dev/tpmrm0 is absent and the `swtpm` program is not installed",
                hint="install the Debian packages `swtpm swtpm-tools`, or pass `--tpm TCTI`",
            )
        state = Path(state_dir).resolve()  # absolute: `alive` matches it in swtpm's command line
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        last_error: list[str] = []
        for _ in range(_START_ATTEMPTS if port is None else 1):
            chosen = port if port is not None else _free_port_pair()
            instance = cls._launch(binary, state, chosen, detached)
            if instance is not None and instance._wait_ready():
                return instance
            if instance is not None:
                instance.stop()
            last_error = (state / "swtpm.log").read_text(errors="replace").strip().splitlines()[-1:]
        raise BackendUnavailable(f"swtpm did not start: {' '.join(last_error) or 'no output'}")

    @classmethod
    def _launch(cls, binary: str, state: Path, port: int, detached: bool) -> "Swtpm | None":
        """Run swtpm; detached, it daemonizes (re-parented to init, so no zombie is left behind)."""
        argv = [
            binary, "socket", "--tpm2",
            "--tpmstate", f"dir={state}",
            "--server", f"type=tcp,port={port},bindaddr={_HOST}",
            "--ctrl", f"type=tcp,port={port + 1},bindaddr={_HOST}",
            "--flags", "not-need-init,startup-clear",
        ]
        pid_file = state / "swtpm.pid"
        if detached:
            pid_file.unlink(missing_ok=True)
            argv += ["--daemon", "--pid", f"file={pid_file}"]
        with open(state / "swtpm.log", "ab") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=detached)
        if not detached:
            return cls(state, port, process.pid, process)
        try:
            if process.wait(timeout=_READY_TIMEOUT_S) != 0:
                return None
            return cls(state, port, int(pid_file.read_text().strip()))
        except (subprocess.TimeoutExpired, OSError, ValueError):
            process.kill()
            process.wait()
            return None

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            if self.alive():
                return True
            time.sleep(0.01)
        return False

    def alive(self) -> bool:
        """The process exists, is swtpm on our state directory, and answers on its control port."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if not cmdline or not cmdline[0].endswith(b"swtpm") or f"dir={self.state_dir}".encode() not in cmdline:
            return False  # the pid was reused by another process
        try:
            # Generous: on a loaded machine swtpm may take a while to accept; a false "dead" here
            # would start a second instance on the same state.
            with socket.create_connection((_HOST, self.ctrl_port), timeout=_ALIVE_TIMEOUT_S):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate swtpm and wait for it to exit (its state directory stays), then remove its TPM's
        lock file (`remove_tpm_lock`)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        else:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 5
            while _running(self.pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if _running(self.pid):
                return  # still running: its lock file is still in use
        remove_tpm_lock(self.tcti)

    def restart(self) -> None:
        """Stop and start again on the same state and ports: a reboot (PCRs reset, seed kept)."""
        self.stop()
        started = Swtpm.start(self.state_dir, self.port, detached=self.process is None)
        self.pid, self.process = started.pid, started.process


def _running(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting for init to reap it has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _free_port_pair() -> int:
    """A port P such that P and P + 1 are both free now (swtpm's TCTI uses P + 1 for control)."""
    while True:
        with socket.socket() as first:
            first.bind((_HOST, 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind((_HOST, port + 1))
                except OSError:
                    continue
        return port


def _embedded_dir(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir).resolve() / "swtpm"


def _recorded_instance(directory: Path) -> Swtpm | None:
    try:
        record = json.loads((directory / "instance.json").read_text())
        instance = Swtpm(directory, int(record["port"]), int(record["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return instance if instance.alive() else None


def _write_record(directory: Path, instance: Swtpm) -> None:
    temporary = directory / "instance.json.tmp"
    with open(temporary, "w") as handle:
        json.dump({"pid": instance.pid, "port": instance.port, "ctrl_port": instance.ctrl_port}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, directory / "instance.json")


class _DirectoryLock:
    """An exclusive flock so two commands starting at once share one embedded instance."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def __enter__(self) -> "_DirectoryLock":
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info) -> None:
        os.close(self._fd)  # closing releases the lock


def resolve_tcti(option: str | None, state_dir: str | os.PathLike,
                 on_start: Callable[[str, Path], None] | None = None) -> str:
    """The TCTI string for this command: `option` (`embedded` names the state dir's swtpm), else
    /dev/tpmrm0, else the embedded swtpm.
    `on_start(tcti, directory)` is called when this call started the embedded swtpm, which outlives
    the command (docs/enforcer.md), so the caller can say so once, where it starts."""
    if option and option != EMBEDDED:
        return option
    if option is None and os.path.exists(TPMRM_DEVICE):
        return f"device:{TPMRM_DEVICE}"
    directory = _embedded_dir(state_dir)
    try:
        with _DirectoryLock(directory):
            instance = _recorded_instance(directory)
            if instance is None:
                instance = Swtpm.start(directory, detached=True)
                _write_record(directory, instance)
                if on_start is not None:
                    on_start(instance.tcti, directory)
    except OSError as exc:  # e.g. a read-only state dir: swtpm keeps its state there
        raise BackendUnavailable(f"cannot run the embedded swtpm in {directory}: {exc.strerror or exc}",
                                 hint="pass --tpm TCTI, or make the state dir writable") from None
    return instance.tcti


def stop_embedded(state_dir: str | os.PathLike) -> bool:
    """Stop the embedded swtpm of `state_dir` if it runs; True when one was stopped."""
    directory = _embedded_dir(state_dir)
    if not directory.is_dir():
        return False
    with _DirectoryLock(directory):
        instance = _recorded_instance(directory)
        (directory / "instance.json").unlink(missing_ok=True)
        if instance is None:
            return False
        instance.stop()
        return True
