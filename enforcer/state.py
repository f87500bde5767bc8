"""The device's state directory: what the enforcer must remember between runs, written atomically.

Layout under STATE (`--state-dir`):

    applied/plan.signed      exact envelope bytes of the last applied plan (re-verified at boot, S12)
    applied/floor.json       {"plan_version", "plan_sha256"}: no plan at or below this version is taken
                             again, except the applied plan's own bytes (that reconciles, it is no rollback)
    applied/trust            the trust root the applied plan was verified with (PEM key or root envelope).
                             The three are committed together (`commit_plan`): written to `applied.next/`,
                             which is then swapped with `applied/` in one rename. Enforcers before that kept
                             the trust root in STATE/trust, which is still read until the next commit
    host.json                {"root", "tpm", "device_id"}: the --root ("/" without one) and the TPM (a
                             TCTI, or "embedded") `device apply` used, and the device's id; commands
                             given another root or id are refused. `root` and `tpm` are null until the
                             first apply (a `device identity` before it records the id alone); files
                             written before the id was recorded here lack `device_id`, which was then
                             in attest/identity.json (read while host.json records none)
    sealed/<vault>.json      the sealed key blob (TPM public/private areas) + the kernel key identifier
                             + `rotated_at` (RFC 3339 UTC, when that key was created); the raw key never
                             touches disk. Records written before `rotated_at` existed lack it
    vaults/<vault>.json      what the device manages for a vault: path and encryption (where its files
                             are and how they are encrypted: verify.record_for), on_remove, protected,
                             orphaned, and how its limit is enforced (`backing`: its image, or a project
                             quota with its `project_id`). Kept after the vault leaves the plan, so `retain` and `destroy`
                             still know what to do and a protected vault stays protected (S16)
    images/<vault>.img       the vault's own ext4 image when its limit is enforced by an image (see apply.py)
    rotating/<vault>.json    a rotation or re-encryption in progress: the target encryption and the new
                             key's sealed blob (see rotate.py)
    conditions.json          conditions with reasons: the last refusal, per-vault unlock failures
    journal.jsonl            the write-ahead journal of the apply in progress (journal.py)

`apply`, `unlock`, `lock` and `rotate` flock the state dir itself: one mutating command at a time.

Every write goes through `atomic_write`: write a temp file, fsync it, rename over the target, fsync the
directory (S19). A failed write raises `StateWriteError` naming the file; callers report it, never loop.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

from compiler.plan import format_time, parse_time
from vaultpolicy.encoding import json_problem, load_json
from vaultpolicy.errors import DeviceError

# what a mutating command needs free in the state dir before it starts: its records, conditions,
# journal and sealed keys are a few KiB each, and each atomic write takes an inode for its temp file
_MIN_FREE_BYTES = 64 * 1024
_MIN_FREE_INODES = 32
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
# a vault name or device id that becomes part of a file name as it is (fullmatch: `$` would let a
# trailing newline through): no separator, no leading dot, so never `..`
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class StateWriteError(DeviceError):
    """A state file could not be written; the previous version of that file is still in place."""


class StateCorrupt(DeviceError):
    """A state file exists but cannot be read; never silently replaced."""


SEALED_DAMAGED_HINT = ("restore it from a backup, or have the controller release the escrowed key "
                       "(`vaultpolicy device unlock --release FILE`)")
# a vault record says where the vault's files are, how they are encrypted and whether they are protected:
# nothing on the device can rebuild it safely
RECORD_DAMAGED_HINT = ("restore it from a backup; until then `device apply` and `device status` refuse, and "
                       "`device unlock` and `device lock` go on with every other vault")


FLOOR_DAMAGED_HINT = ("restore it from a backup; until then `device apply` refuses (it cannot tell a rollback), "
                      "while `device unlock`, `status` and `gate` go on with a warning")
HOST_DAMAGED_HINT = ("remove it: the next `device apply` records its --root and --tpm again, and the device id "
                     "(give it the device's --device-id)")


class StateBusy(DeviceError):
    """Another vaultpolicy command holds the state dir."""


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write, fsync, rename, fsync the directory: readers see the old bytes or the new, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StateWriteError(f"cannot write state file {path}: {exc.strerror or exc}") from None


def exchange(a: Path, b: Path) -> None:
    """Swap two directories of one filesystem in one step (renameat2 RENAME_EXCHANGE), then fsync their
    parent: a crash leaves either both names as they were or both swapped."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))
    fsync_dir(a.parent)


def atomic_remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StateWriteError(f"cannot remove state file {path}: {exc.strerror or exc}") from None


def read_state_file(path: Path) -> bytes:
    """The bytes of a state file, read with os.read: Python's buffered file objects cost an fstat, an
    isatty ioctl and two lseeks more per file, and a boot unlock reads about ten. Raises OSError as
    `Path.read_bytes` does."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_json(path: Path, what: str = "state file", hint: str | None = None):
    try:
        return load_json(read_state_file(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateCorrupt(f"{what} {path} is unreadable: {exc.strerror or exc}", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise StateCorrupt(f"{what} {path} is unreadable: {json_problem(exc)}", hint=hint) from None


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class VaultRecord:
    """What the device remembers about a vault it created (not observed state: the device's memory)."""

    name: str
    path: str  # the plan's absolute path (before --root)
    encryption: str
    on_remove: str
    protected: bool
    limit_bytes: int
    orphaned: bool = False
    # how the kernel enforces its limit, chosen when the vault first needs one and kept for life:
    # "image" (its own ext4 image) or "project-quota" (a project of its own on the persist filesystem);
    # None for a vault that never had a limit, or one recorded before backings were (an image, then)
    backing: str | None = None
    project_id: int | None = None  # its project, for "project-quota": never another vault's


@dataclass(frozen=True)
class HostRecord:
    """Where this device's vaults and keys are, what `device apply` was given, and who the device is."""

    root: str | None  # --root, resolved; "/" without one; None before the first apply
    tpm: str | None  # the TCTI keys were sealed through, or "embedded" (the state dir's own swtpm)
    # the device's id: every command that names the device uses it (docs/enforcer.md says when it is
    # recorded); None until then, and in records written before it was recorded here
    device_id: str | None = None


@dataclass(frozen=True)
class Condition:
    """Kubernetes-style: `ok` false means the subject is not as the plan wants; `reason` is a kebab word."""

    subject: str  # "plan" or "vault/<name>"
    ok: bool
    reason: str
    message: str
    since: str


class StateDir:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        # what the command must report without failing, each naming its file: best-effort writes that
        # failed (`best_effort`), a damaged conditions file read as empty (`conditions`)
        self.warnings: list[str] = []

    @contextmanager
    def best_effort(self) -> Iterator[None]:
        """A write whose failure must not undo what the command did (a boot unlock that unlocked the
        vaults must not fail because a condition could not be recorded): a `StateWriteError` is kept in
        `warnings` for the command to report, never raised."""
        try:
            yield
        except StateWriteError as exc:
            self.warnings.append(exc.message)

    # --- layout --------------------------------------------------------------------------------
    @property
    def applied_dir(self) -> Path:
        return self.root / "applied"

    @property
    def plan_path(self) -> Path:
        return self.applied_dir / "plan.signed"

    @property
    def floor_path(self) -> Path:
        return self.applied_dir / "floor.json"

    @property
    def trust_path(self) -> Path:
        return self.applied_dir / "trust"

    @property
    def host_path(self) -> Path:
        return self.root / "host.json"

    @property
    def legacy_identity_path(self) -> Path:
        """Where `device identity` recorded the device id before host.json did."""
        return self.root / "attest" / "identity.json"

    @property
    def journal_path(self) -> Path:
        return self.root / "journal.jsonl"

    @property
    def conditions_path(self) -> Path:
        return self.root / "conditions.json"

    def sealed_path(self, vault: str) -> Path:
        return self.root / "sealed" / f"{_checked(vault)}.json"

    def record_path(self, vault: str) -> Path:
        return self.root / "vaults" / f"{_checked(vault)}.json"

    def image_path(self, vault: str) -> Path:
        return self.root / "images" / f"{_checked(vault)}.img"

    @contextmanager
    def exclusive(self, timeout_s: float = 60.0) -> Iterator[None]:
        """One mutating device command at a time (a boot unlock and a manual apply must not interleave).

        The lock is the state dir itself, opened read-only: a read-only or full state dir can still be
        locked, so a boot unlock works there (its failed writes are reported, `best_effort`)."""
        self.ensure()
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StateCorrupt(f"cannot open the state dir {self.root}: {exc.strerror or exc}") from None
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StateBusy(f"another vaultpolicy command has held {self.root} for {timeout_s:.0f}s",
                                        hint=f"wait for it to finish, or find it with `fuser -v {self.root}`") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    def check_writable(self) -> None:
        """Refuse before a mutating command changes anything when the state dir cannot take writes
        (read-only, or full). Asked of the filesystem (`statvfs`), so the check itself writes nothing and
        a repeated apply does no filesystem mutation."""
        try:
            fs = os.statvfs(self.root)
        except OSError as exc:
            raise StateCorrupt(f"cannot read the state dir {self.root}: {exc.strerror or exc}") from None
        # root may use the blocks and inodes a filesystem reserves for it, as every write here does
        privileged = os.geteuid() == 0
        free_bytes = (fs.f_bfree if privileged else fs.f_bavail) * fs.f_frsize
        free_inodes = fs.f_ffree if privileged else fs.f_favail
        why = None
        if fs.f_flag & os.ST_RDONLY:
            why = os.strerror(errno.EROFS)
        elif free_bytes < _MIN_FREE_BYTES or (fs.f_files and free_inodes < _MIN_FREE_INODES):
            why = os.strerror(errno.ENOSPC)  # f_files 0: a filesystem that does not count inodes
        if why is not None:
            raise StateWriteError(f"the state dir {self.root} cannot be written ({why}); nothing was changed",
                                  hint="make it writable (remount it read-write, or free space on it) and run the "
                                  "command again")

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateWriteError(f"cannot create state dir {self.root}: {exc.strerror or exc}") from None

    # --- applied plan --------------------------------------------------------------------------
    def applied_envelope(self) -> bytes | None:
        try:
            return read_state_file(self.plan_path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateCorrupt(f"the stored applied plan {self.plan_path} is unreadable: {exc.strerror or exc}") from None

    def checked_floor(self) -> tuple[int, str] | None:
        """(plan_version, plan_sha256) no offered plan may go below; a damaged floor raises `StateCorrupt`
        naming the file: without it an apply cannot tell a rollback from a new plan."""
        data = _read_json(self.floor_path, "the version floor", FLOOR_DAMAGED_HINT)
        if data is None:
            return None
        if (not isinstance(data, dict) or type(data.get("plan_version")) is not int
                or not isinstance(data.get("plan_sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", data["plan_sha256"])):
            raise StateCorrupt(f"the version floor {self.floor_path} is unreadable: not an object with an integer "
                               "`plan_version` and a SHA-256 `plan_sha256`", hint=FLOOR_DAMAGED_HINT)
        return data["plan_version"], data["plan_sha256"]

    def floor(self) -> tuple[int, str] | None:
        """The floor as the boot commands read it, to check the stored plan is the one applied. A damaged
        floor must not keep every vault locked: the stored plan's signature is still checked against the
        trust root, so it is reported in `warnings` and read as absent (docs/enforcer.md)."""
        try:
            return self.checked_floor()
        except StateCorrupt as exc:
            warning = f"{exc.message}; the stored applied plan was checked against the trust root only"
            if warning not in self.warnings:
                self.warnings.append(warning)
            return None

    def commit_plan(self, envelope: bytes, plan_version: int, plan_sha256: str, trust: bytes | None = None,
                    checkpoint: Callable[[str], None] | None = None) -> None:
        """Record the applied plan, its floor and the trust root it verified under (`None`: the recorded
        one) in one step. They are written to `applied.next/`, which is then swapped with `applied/`
        (RENAME_EXCHANGE): a crash leaves the three old files or the three new ones, each set verifying
        (a kill between two files left a plan the floor called not the applied one, and a rotated root
        beside a plan signed by its successor). `checkpoint` is the crash-test hook (journal.py)."""
        trust = self.trust_bytes() if trust is None else trust
        staged = self.root / "applied.next"
        _remove_tree(staged)  # what a crash left: an unfinished commit, or the plan a finished one replaced
        atomic_write(staged / "plan.signed", envelope)
        atomic_write(staged / "floor.json", _json_bytes({"plan_version": plan_version, "plan_sha256": plan_sha256}))
        if trust is not None:
            atomic_write(staged / "trust", trust, 0o644)
        if checkpoint is not None:
            checkpoint("commit-staged")
        try:
            if self.applied_dir.exists():
                exchange(staged, self.applied_dir)
            else:
                os.rename(staged, self.applied_dir)
                fsync_dir(self.root)
        except OSError as exc:
            raise StateWriteError(f"cannot write state file {self.applied_dir}: {exc.strerror or exc}") from None
        _remove_tree(staged)
        atomic_remove(self.root / "trust")  # where enforcers before the joint commit kept it

    def trust_bytes(self) -> bytes | None:
        for path in (self.trust_path, self.root / "trust"):  # STATE/trust: written by enforcers before the joint commit
            try:
                return read_state_file(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StateCorrupt(f"the recorded trust root {path} is unreadable: {exc.strerror or exc}") from None
        return None

    # --- where the vaults and keys are -----------------------------------------------------------
    def host(self) -> HostRecord | None:
        """`checked_host` as every command but apply reads it: a damaged host record must not keep a boot
        unlock or a lock from running, so it is reported in `warnings` and read as absent (the vaults are
        then looked for under the given --root only)."""
        try:
            return self.checked_host()
        except StateCorrupt as exc:
            warning = f"{exc.message}; --root and --tpm were not checked against it ({exc.hint})"
            if warning not in self.warnings:
                self.warnings.append(warning)
            return None

    def checked_host(self) -> HostRecord | None:
        """The --root and TPM `device apply` used and the device id; None before anything recorded them.
        A damaged record raises `StateCorrupt` naming the file: `apply` refuses on it."""
        data = _read_json(self.host_path, "the host record", HOST_DAMAGED_HINT)
        if data is None:
            return None
        if (not isinstance(data, dict) or not {"root", "tpm"} <= set(data) <= {"root", "tpm", "device_id"}
                or not all(v is None or (isinstance(v, str) and v) for v in data.values())):
            raise StateCorrupt(f"the host record {self.host_path} is unreadable: not an object with a `root` and a "
                               "`tpm` string (null before the first apply) and a `device_id` string",
                               hint=HOST_DAMAGED_HINT)
        return HostRecord(**data)

    def save_host(self, record: HostRecord) -> None:
        if self.checked_host() != record:  # unchanged: no write, so a repeated apply does no filesystem mutation
            atomic_write(self.host_path, _json_bytes(asdict(record)))
            if record.device_id is not None and self.legacy_identity_path.exists():
                atomic_remove(self.legacy_identity_path)  # the id it held is in host.json now: one record of it

    def device_id(self) -> tuple[str, Path] | None:
        """(the recorded device id, the file that records it): host.json's, else the one `device
        identity` recorded in attest/identity.json before host.json held it; None when neither does. A
        damaged host record raises `StateCorrupt` (the id it holds is unknown); an unreadable
        identity.json was always read as no id."""
        host = self.checked_host()
        if host is not None and host.device_id is not None:
            return host.device_id, self.host_path
        try:
            legacy = json.loads(self.legacy_identity_path.read_bytes())["device_id"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (legacy, self.legacy_identity_path) if isinstance(legacy, str) and legacy else None

    def record_device_id(self, device_id: str) -> None:
        """Record the device id in host.json, beside what `device apply` recorded there (if anything)."""
        self.save_host(replace(self.checked_host() or HostRecord(None, None), device_id=device_id))

    # --- sealed blobs --------------------------------------------------------------------------
    def sealed(self, vault: str) -> dict | None:
        """{"blob": SealedBlob JSON, "key_identifier": hex, "rotated_at"}, or None when the vault has no
        sealed key.

        A damaged record raises `StateCorrupt`: it is never taken for "no key yet" (S20). A `rotated_at`
        that is not an RFC 3339 time only loses the key's age: it is left out, as in a record written
        before it existed (rotation takes such a key as due), with a warning naming the file."""
        path = self.sealed_path(vault)
        data = _read_json(path, "the sealed key record", SEALED_DAMAGED_HINT)
        if data is not None and not isinstance(data, dict):
            raise StateCorrupt(f"the sealed key record {path} is unreadable: not a JSON object", hint=SEALED_DAMAGED_HINT)
        if data is not None and "rotated_at" in data:
            try:
                parse_time(data["rotated_at"])
            except (TypeError, ValueError):
                warning = (f"the sealed key record {path} has a `rotated_at` that is not an RFC 3339 UTC time; the "
                           "key's age is unknown, so rotation takes it as due")
                if warning not in self.warnings:
                    self.warnings.append(warning)
                data = {k: v for k, v in data.items() if k != "rotated_at"}
        return data

    def save_sealed(self, vault: str, blob_json: str, key_identifier: bytes, rotated_at: str | None = None) -> None:
        """`rotated_at` is given when the key is new; a re-seal of the same key keeps the recorded one."""
        if rotated_at is None:
            try:
                current = self.sealed(vault)
            except StateCorrupt:
                current = None  # a damaged record being replaced (a release): when its key was made is lost
            if current is not None and current.get("key_identifier") == key_identifier.hex():
                rotated_at = current.get("rotated_at")
        record = {"blob": json.loads(blob_json), "key_identifier": key_identifier.hex()}
        if rotated_at is not None:
            record["rotated_at"] = rotated_at
        atomic_write(self.sealed_path(vault), _json_bytes(record))

    def remove_sealed(self, vault: str) -> None:
        atomic_remove(self.sealed_path(vault))

    # --- vault records -------------------------------------------------------------------------
    def records(self) -> dict[str, VaultRecord]:
        """Every vault record; a damaged one stops the caller with its file named."""
        records, damaged = self.read_records()
        if damaged:
            raise next(iter(damaged.values()))
        return records

    def read_records(self) -> tuple[dict[str, VaultRecord], dict[str, StateCorrupt]]:
        """(the readable vault records, file stem -> why a record is damaged): for commands that go on
        with every other vault (`lock`)."""
        directory = self.root / "vaults"
        try:  # listdir, not glob: the same names, without glob's pattern machinery in every boot unlock
            names = sorted(name for name in os.listdir(directory) if name.endswith(".json"))
        except (FileNotFoundError, NotADirectoryError, PermissionError):  # glob, too, found none there
            return {}, {}
        out, damaged = {}, {}
        for path in (directory / name for name in names):
            try:
                record = _read_record(path)
            except StateCorrupt as exc:
                damaged[path.stem] = exc
                continue
            if record is not None:  # else removed meanwhile (a destroy)
                out[record.name] = record
        return out, damaged

    def record(self, vault: str) -> VaultRecord | None:
        """One vault's record (None when the device has none); a damaged one raises `StateCorrupt`."""
        return _read_record(self.record_path(vault))

    def save_record(self, record: VaultRecord) -> None:
        path = self.record_path(record.name)
        data = _json_bytes(asdict(record))
        try:
            if read_state_file(path) == data:
                return  # unchanged: no write, so a repeated apply does no filesystem mutation
        except FileNotFoundError:
            pass
        atomic_write(path, data)

    def remove_record(self, vault: str) -> None:
        atomic_remove(self.record_path(vault))

    # --- conditions ----------------------------------------------------------------------------
    def conditions(self) -> dict[str, Condition]:
        """The recorded conditions. They are the device's account of what went wrong, not something to
        act on, so a damaged file must not stop a boot unlock (S19): it is reported in `warnings`, read
        as empty, and the next condition recorded writes the file anew."""
        try:
            data = _read_json(self.conditions_path) or {}
            return {k: Condition(**v) for k, v in data.items()}
        except (StateCorrupt, AttributeError, TypeError) as exc:
            why = exc.message if isinstance(exc, StateCorrupt) else f"state file {self.conditions_path} is not a conditions file"
            warning = f"{why}; read as empty, earlier conditions are lost"
            if warning not in self.warnings:
                self.warnings.append(warning)
            return {}

    def set_condition(self, subject: str, ok: bool, reason: str, message: str, now: datetime) -> None:
        conditions = self.conditions()
        old = conditions.get(subject)
        if old and (old.ok, old.reason, old.message) == (ok, reason, message):
            return
        conditions[subject] = Condition(subject, ok, reason, message, format_time(now))
        atomic_write(self.conditions_path, _json_bytes({k: asdict(v) for k, v in sorted(conditions.items())}))

    def clear_condition(self, subject: str) -> None:
        conditions = self.conditions()
        if subject in conditions:
            del conditions[subject]
            atomic_write(self.conditions_path, _json_bytes({k: asdict(v) for k, v in sorted(conditions.items())}))


def _read_record(path: Path) -> VaultRecord | None:
    data = _read_json(path, "the vault record", RECORD_DAMAGED_HINT)
    try:
        return None if data is None else VaultRecord(**data)
    except TypeError as exc:  # not a JSON object, or other fields than a record has
        raise StateCorrupt(f"the vault record {path} is unreadable: not a vault record ({exc})",
                           hint=RECORD_DAMAGED_HINT) from None


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateWriteError(f"cannot remove state file {path}: {exc.strerror or exc}") from None
    fsync_dir(path.parent)


def _checked(vault: str) -> str:
    """Vault names become file names: refuse anything that could escape the state dir."""
    if not PLAIN_NAME.fullmatch(vault):
        raise DeviceError(f"vault name `{vault}` cannot be used as a state file name")
    return vault
