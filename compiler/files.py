"""File handling for the compiler's commands: read what the user named, write outputs atomically,
and tell plans from signed envelopes. Every failure is an `InputError` naming the file."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from policy_lang.load import UnreadableInput, read_input_file
from vaultpolicy.encoding import json_message, load_json
from vaultpolicy.errors import InputError, PlanRejected, UsageError

from .plan import Plan, PlanFormatError, decode_plan
from .signing import PLAN_PAYLOAD_TYPE, TRUST_ROOT_PAYLOAD_TYPE, Envelope, non_json_kind, raw_public_bytes

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def read_input(path: str | Path, what: str) -> bytes:
    try:
        return read_input_file(path)
    except OSError as exc:
        raise InputError(f"cannot read {what} `{path}`: {exc.strerror or exc}") from None
    except UnreadableInput as exc:
        raise InputError(f"cannot read {what} `{path}`: it {exc}") from None


def check_private_mode(path: str | Path, what: str) -> None:
    """Refuse (as ssh refuses one) a private key file whose mode lets the group or others read or write
    it: whoever can read it holds the key, and whoever can write it can swap it. Asked once the file
    has loaded as the private key it should be, so a wrong file is named for what it is first."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError as exc:  # removed or replaced since it was read
        raise InputError(f"cannot read {what} `{path}`: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise InputError(f"{what} `{path}` is open to others (mode {mode:04o}): a private key must be its owner's alone",
                         hint=f"chmod 600 {path}")


def write_output(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write, fsync, rename: a reader never sees half a file, a failure leaves the old one.

    A symlink is written through to its target. An existing device or FIFO (`-o /dev/null`, a pipe)
    is written to in place: renaming over it would replace the node itself with a regular file."""
    target = Path(os.path.realpath(path))
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise InputError(f"cannot write `{path}`: {exc.strerror or exc}") from None
    try:
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            with open(target, "wb") as out:
                out.write(data)
            return
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise InputError(f"cannot write `{path}`: {exc.strerror or exc}") from None


def refuse_overwriting_inputs(output: str | Path, inputs: dict[str, str]) -> None:
    """UsageError when `output` is one of `inputs` (file -> what it is), by device and inode, so that
    `-o` through another name, a symlink or a hard link is caught too: writing would destroy it."""
    try:
        written = os.stat(output)
    except OSError:
        return  # not there yet (or unreachable: writing will say so)
    for path, what in inputs.items():
        try:
            read = os.stat(path)
        except OSError:
            continue
        if (read.st_dev, read.st_ino) == (written.st_dev, written.st_ino):
            same = "" if os.path.abspath(path) == os.path.abspath(output) else f" (`{path}`)"
            raise UsageError(f"-o `{output}` is {what}{same}: writing it would destroy an input",
                             hint="name another file for the output")


def refuse_replacing_key(private_path: str | Path, force: bool, hint: str) -> Path:
    """The public key's path (`KEY.pub`) for a key pair about to be written to `private_path`, once
    neither is a directory nor, unless `force`, exists (named, whichever it is): a lost private key
    cannot be had back. `hint` says what --force would cost."""
    public_path = Path(f"{private_path}.pub")
    for path in (Path(private_path), public_path):
        if os.path.isdir(path):  # --force cannot replace a directory with a key
            raise InputError(f"`{path}` is a directory",
                             hint="name a file for the private key; its public key is written next to it as KEY.pub")
    existing = [path for path in (Path(private_path), public_path) if os.path.exists(path)]
    if existing and not force:
        named = " and ".join(f"`{path}`" for path in existing)
        raise InputError(f"{named} already exist{'s' if len(existing) == 1 else ''}", hint=hint)
    return public_path


def refuse_repeated_keys(option: str, keys: list[tuple[str, Ed25519PublicKey]], hint: str) -> None:
    """UsageError when two of the `(file, public key)` given with `option` are one key: the same file
    twice, or the same key in two files (a copy is the same signer, whatever its name)."""
    given_by: dict[bytes, str] = {}
    for path, key in keys:
        if (first := given_by.get(raw_public_bytes(key))) is not None:
            said = "is given twice" if first == path else f"holds the same key as {option} `{first}`"
            raise UsageError(f"{option} `{path}` {said}", hint=hint)
        given_by[raw_public_bytes(key)] = path


def parse_duration(text: str) -> int:
    """`30d`, `12h`, `90m`, `2w`, `45s` -> seconds (the policy language's duration units)."""
    match = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if not match:
        raise InputError(f"`{text}` is not a duration", hint="write a number and a unit s, m, h, d or w, e.g. `30d`")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def is_envelope(data: bytes) -> bool:
    try:
        obj = load_json(data)
    except json.JSONDecodeError:
        return False
    return _names_a_payload_type(obj)


def _names_a_payload_type(document: object) -> bool:
    return isinstance(document, dict) and "payload_type" in document


def load_plan_envelope(data: bytes, source: str) -> Envelope:
    """A signed plan's envelope, parsed but NOT verified (that is `TrustRoot.verify`'s job)."""
    try:
        envelope = Envelope.from_bytes(data)
    except PlanRejected as exc:
        raise InputError(f"{source}: {exc.message}") from None
    if envelope.payload_type != PLAN_PAYLOAD_TYPE:
        if envelope.payload_type == TRUST_ROOT_PAYLOAD_TYPE:  # named as `verify` names it
            raise InputError(f"`{source}` is a trust root, not a plan",
                             hint="a plan is what `vaultpolicy compile POLICY -o PLAN` writes")
        raise InputError(f"{source}: envelope holds `{envelope.payload_type}`, not a plan")
    return envelope


def _plan_json(data: bytes, source: str) -> object:
    """The JSON of a file that must be a plan or a signed plan; one error at the place it goes wrong."""
    try:
        return load_json(data)
    except json.JSONDecodeError as exc:
        if (kind := non_json_kind(data)) is not None:  # a policy or a key where the plan goes
            raise InputError(f"`{source}` is {kind}, not a plan",
                             hint="a plan is what `vaultpolicy compile POLICY -o PLAN` writes") from None
        ends_early = not exc.doc[exc.pos :].strip()
        reason = "JSON ends early" if ends_early else f"invalid JSON: {json_message(exc)}"
        raise InputError(
            f"{source}:{exc.lineno}:{exc.colno}: not a plan: {reason}",
            hint="a plan is the JSON `vaultpolicy compile` writes; a signed plan, what `vaultpolicy sign` writes",
        ) from None


def plan_payload(data: bytes, source: str) -> bytes:
    """The plan bytes of a plan file or of a signed plan (whose signatures are NOT checked here)."""
    signed = _names_a_payload_type(_plan_json(data, source))
    return load_plan_envelope(data, source).payload if signed else data


def load_plan(payload: bytes, source: str) -> Plan:
    try:
        return decode_plan(payload)
    except PlanFormatError as exc:
        raise InputError(f"{source}: {exc}") from None
