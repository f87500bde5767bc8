"""Device side of key release: open a controller's release file in the TPM, then unlock and re-seal.

A release carries each vault key as a TPM duplication blob for this device's storage parent (the
storage primary the enforcer seals under; see controller/release.py for why): a sealed object whose
authPolicy is PolicyPCR over the PCR values the controller verified in the device's quote.
`open_release` imports it (TPM2_Import: only this TPM opens the outer wrapper) and unseals it in a
PolicyPCR session, so the TPM itself refuses the release in any other PCR state, to this software and
to anyone with root alike. The wrapper covers the key, not the entry's `vault` and `key_identifier`
labels, so `open_release` also computes each key's identifier and refuses a file in which one is not
the identifier its entry names, before any key reaches the kernel (where another vault's key would
join the claim that vault has, and a removal would lock it). `unlock_released` is the hook `device
unlock --release FILE` calls: for each released vault it checks the key is the one the vault was
created with, re-seals it to the current PCRs, which must still be the verified values (so the next
boot unlocks locally, and only in that state), adds it to the kernel and writes the new sealed blob
atomically. It records how the vault was unlocked for the drift report and clears the vault's
refused-unlock condition.

Release file JSON: see `Release` (`format` = "vaultpolicy.release.v2").
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import rfc8785

from compiler.plan import Plan, format_time, parse_time
from enforcer import fscrypt
from enforcer.attest import AttestationTpm, read_pcr_values
from enforcer.escrow import b64, load_json_object, require_str, unb64
from enforcer.state import StateDir
from vaultpolicy.errors import DeviceError, InputError

RELEASE_FORMAT = "vaultpolicy.release.v2"
UNLOCK_METHODS = ("tpm-sealed", "controller-release", "none")


@dataclass(frozen=True)
class ReleasedKey:
    vault: str
    key_identifier: bytes
    public: bytes  # TPM2B_PUBLIC of the sealed object (its authPolicy: PolicyPCR over the verified values)
    duplicate: bytes  # TPM2B_PRIVATE, the outer-wrapped sensitive area
    seed: bytes  # TPM2B_ENCRYPTED_SECRET: the wrapper's seed, for the storage parent's key


@dataclass(frozen=True)
class Release:
    device_id: str
    quote_sha256: str
    bank: str
    pcrs: dict[int, bytes]  # the values the controller verified: what the keys unseal under
    keys: tuple[ReleasedKey, ...]
    source: str = field(default="release file", compare=False)  # the file it was read from, for messages

    def to_bytes(self) -> bytes:
        return rfc8785.dumps(
            {
                "format": RELEASE_FORMAT,
                "device_id": self.device_id,
                "quote_sha256": self.quote_sha256,
                "bank": self.bank,
                "pcrs": {str(i): v.hex() for i, v in sorted(self.pcrs.items())},
                "keys": [
                    {"vault": k.vault, "key_identifier": k.key_identifier.hex(),
                     "public": b64(k.public), "duplicate": b64(k.duplicate), "seed": b64(k.seed)}
                    for k in self.keys
                ],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "release file") -> "Release":
        """Every field checked here, so a bad file is refused, naming the field, before anything opens
        the TPM or changes the device."""
        obj = load_json_object(data, source, RELEASE_FORMAT)
        bank, values = read_pcr_values(obj, source)
        entries = obj.get("keys")
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise InputError(f"{source}: field `keys` must be a non-empty list of objects")
        keys: list[ReleasedKey] = []
        for entry in entries:
            vault = require_str(entry, "vault", source)
            if any(k.vault == vault for k in keys):
                raise InputError(f"{source}: vault `{vault}` is released twice")
            try:
                key_identifier = bytes.fromhex(require_str(entry, "key_identifier", source))
            except ValueError:
                raise InputError(f"{source}: the `key_identifier` of vault `{vault}` is not hex") from None
            if len(key_identifier) != fscrypt.KEY_IDENTIFIER_SIZE:
                raise InputError(f"{source}: the `key_identifier` of vault `{vault}` has {len(key_identifier)} bytes; "
                                 f"a key identifier has {fscrypt.KEY_IDENTIFIER_SIZE}")
            keys.append(ReleasedKey(vault, key_identifier,
                                    *(unb64(entry.get(name), name, source) for name in ("public", "duplicate", "seed"))))
        return cls(require_str(obj, "device_id", source), require_str(obj, "quote_sha256", source), bank, values,
                   tuple(keys), source)

    def require_device(self, device_id: str) -> None:
        if self.device_id != device_id:
            raise DeviceError(f"{self.source} is for device `{self.device_id}`, this is `{device_id}`")


def open_release(tcti: str, release: Release, device_id: str) -> dict[str, tuple[bytes, bytearray]]:
    """vault -> (key identifier, raw key). Only this device's TPM, in the PCR state the controller
    verified, can open it; any change to the file fails: to what the TPM wraps in the TPM, to an
    entry's labels here."""
    release.require_device(device_id)
    with AttestationTpm(tcti) as tpm:
        raws = tpm.unseal_released({k.vault: (k.public, k.duplicate, k.seed) for k in release.keys},
                                   release.bank, release.pcrs)
    try:
        for entry in release.keys:
            raw = raws[entry.vault]
            if len(raw) != fscrypt.RAW_KEY_SIZE:  # what the wrapper holds is only known once unsealed
                raise InputError(f"{release.source}: the key released for vault `{entry.vault}` has {len(raw)} bytes, "
                                 f"an fscrypt key has {fscrypt.RAW_KEY_SIZE}: nothing was unlocked")
            identifier = fscrypt.key_identifier(raw)
            if not hmac.compare_digest(identifier, entry.key_identifier):
                raise InputError(f"{release.source}: the key released for vault `{entry.vault}` is not the key its "
                                 f"entry names ({entry.key_identifier.hex()}) but {identifier.hex()}; nothing was "
                                 "unlocked", hint="the release file was altered: ask the controller for a new one")
    except BaseException:
        for key in raws.values():
            key[:] = bytes(len(key))
        raise
    return {k.vault: (k.key_identifier, raws[k.vault]) for k in release.keys}


# --- how each vault was last unlocked (read by the drift report) -----------------------------------


def _unlock_record_dir(state: StateDir) -> Path:
    return state.root / "attest" / "last-unlock"


def record_unlock(state: StateDir, vault: str, method: str, now: datetime) -> None:
    """Hook for every unlock path: `tpm-sealed` (local unseal) or `controller-release`.

    One small file per vault, overwritten in place: no fsync, no rename and no truncation to zero (on
    ext4 each of those costs a flush, which made a boot unlock 3x the bare unseals in bench/unlock.py).
    This is history for the report, not state (the kernel says whether a key is in): a crash or a
    concurrent reader can at worst find a torn record, which `last_unlocks` skips. A failed write (a
    read-only or full state dir) goes to `state.warnings`: the vault is unlocked all the same.
    """
    if method not in UNLOCK_METHODS:
        raise ValueError(f"unknown unlock method `{method}`")
    path = _unlock_record_dir(state) / f"{vault}.json"
    record = json.dumps({"method": method, "at": format_time(now)}).encode()
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        except FileNotFoundError:  # the first unlock recorded: its directory is made then
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, record, 0)
            if os.fstat(fd).st_size > len(record):  # a longer record before it (another method): cut
                os.ftruncate(fd, len(record))
        finally:
            os.close(fd)
    except OSError as exc:
        state.warnings.append(f"cannot write state file {path}: {exc.strerror or exc}")


def last_unlocks(state: StateDir) -> dict[str, dict]:
    """vault -> {"method", "at"}; a missing or unreadable record only loses history. A torn one (a crash,
    or a read while it is written) is skipped; one that reads but is not what `record_unlock` writes was
    written by someone else, so it is skipped with a warning naming the file (`state.warnings`)."""
    records = {}
    for path in sorted(_unlock_record_dir(state).glob("*.json")):
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if _is_unlock_record(record):
            records[path.stem] = record
        else:
            state.warnings.append(f"state file {path} is not a record of how the vault was last unlocked (an object "
                                  f"with a `method` of {', '.join(UNLOCK_METHODS)} and an RFC 3339 `at`); "
                                  "read as no record")
    return records


def _is_unlock_record(record: object) -> bool:
    """What `record_unlock` writes."""
    if not isinstance(record, dict) or set(record) != {"method", "at"} or record["method"] not in UNLOCK_METHODS:
        return False
    try:
        parse_time(record["at"])
    except (TypeError, ValueError):
        return False
    return True


# --- unlock with released keys -----------------------------------------------------------------------


def unlock_released(
    state: StateDir, plan: Plan, root: Path | None, tcti: str, release: Release, device_id: str, now: datetime
) -> list[str]:
    """Add each released key to the kernel, re-seal it to the current PCRs; returns the vaults unlocked.

    A reboot may have left a vault's image unmounted: the enforcer's own MOUNT_STORAGE steps run first,
    so the key goes into the vault's filesystem, not the one underneath.
    """
    from enforcer.apply import Applier
    from enforcer.observe import host_path
    from enforcer.reconcile import Action, reconcile
    from enforcer.tpm import Tpm
    from enforcer.unlock import observe_each

    opened = open_release(tcti, release, device_id)
    unlocked = []
    try:
        with Tpm(tcti) as tpm:
            observed, damaged = observe_each(plan, state, root)  # a damaged sealed record is what a release repairs
            usable = plan.model_copy(update={"vaults": tuple(v for v in plan.vaults if v.name not in damaged)})
            mounts = [s for s in reconcile(usable, observed).steps if s.action is Action.MOUNT_STORAGE and s.vault in opened]
            for outcome in Applier(usable, state, root, tpm, now, device_id, records=observed.records).run(mounts).values():
                if outcome.error is not None:
                    raise outcome.error
            for name, (key_identifier, raw) in sorted(opened.items()):
                vault = plan.vault(name)
                if vault is None or vault.seal is None:
                    raise DeviceError("the applied plan has no sealed vault by this name", vault=name)
                if vault.seal.bank != release.bank or not set(vault.seal.pcrs) <= set(release.pcrs):
                    raise DeviceError(f"the vault is sealed to {_selection(vault.seal.bank, vault.seal.pcrs)}; the release "
                                      f"vouches for {_selection(release.bank, release.pcrs)} only", vault=name)
                where = observed.records.get(name) or vault  # the recorded path: a plan cannot move a vault
                path = host_path(root, where.path)
                created_with = _created_with(state, name, path)
                if created_with is None:
                    raise DeviceError(f"nothing says which key this vault was created with: no readable sealed "
                                      f"record, and {path} has no encryption policy", vault=name)
                if not hmac.compare_digest(created_with, key_identifier):
                    raise DeviceError("released key is not the key this vault was created with", vault=name)
                # sealed first: the next boot unlocks locally only in the verified state, so a PCR that
                # moved since the release opened is refused before the key reaches the kernel
                blob = tpm.seal(raw, vault.seal.bank, vault.seal.pcrs, allow_unmeasured_boot=plan.device.allow_unmeasured_boot)
                moved = [i for i in blob.pcrs if blob.pcr_values[i] != release.pcrs[i]]
                if moved:
                    raise DeviceError(f"PCR {blob.bank}:{','.join(map(str, moved))} changed after the release opened; "
                                      "the key is not re-sealed to an unverified state", vault=name)
                fscrypt.add_key(fscrypt.mountpoint_of(str(path)), raw)  # `open_release` checked its identifier
                state.save_sealed(name, blob.to_json(), key_identifier)
                record_unlock(state, name, "controller-release", now)
                state.clear_condition(f"vault/{name}")  # the refused boot unlock is resolved
                unlocked.append(name)
    finally:
        for _, raw in opened.values():
            raw[:] = bytes(len(raw))
    return unlocked


def _created_with(state: StateDir, name: str, path: Path) -> bytes | None:
    """The identifier of the key the vault was created with: its sealed record's, or, when that record
    is damaged, the one the vault directory's fscrypt policy names (what the kernel says its files are
    under)."""
    from enforcer.state import StateCorrupt

    try:
        recorded = state.sealed(name)
        return None if recorded is None else bytes.fromhex(recorded["key_identifier"])
    except (StateCorrupt, KeyError, TypeError, ValueError):
        policy = fscrypt.get_policy(str(path)) if path.is_dir() else None
        return None if policy is None else policy.key_identifier


def _selection(bank: str, pcrs) -> str:
    return f"PCRs {bank}:{','.join(map(str, sorted(pcrs)))}"
