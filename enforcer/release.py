"""Device side of key release: open a controller's release file with the TPM, then unlock and re-seal.

`open_release` recomputes the ECDH secret inside the TPM (TPM2_ECDH_ZGen with the release key; see
controller/release.py for why this wrapping) and opens each key with AES-256-GCM. `unlock_released`
is the hook `device unlock --release FILE` calls: for each released vault it adds the key to the
kernel, checks the kernel's key identifier is the one recorded for the vault (a wrong key never
replaces a vault), re-seals the key to the *current* PCRs (so the next boot unlocks locally) and
writes the new sealed blob atomically. It records how the vault was unlocked for the drift report
and clears the vault's refused-unlock condition.

Release file JSON: see `Release` (`format` = "vaultpolicy.release.v1").
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import rfc8785

from compiler.plan import Plan, format_time
from enforcer.attest import AttestationTpm, release_key_binding
from enforcer.escrow import EscrowError, aead_open, b64, derive_key, load_json_object, require_str, unb64
from enforcer.state import StateDir
from vaultpolicy.errors import DeviceError, InputError

RELEASE_FORMAT = "vaultpolicy.release.v1"
RELEASE_INFO = b"vaultpolicy release v1"
UNLOCK_METHODS = ("tpm-sealed", "controller-release", "none")


@dataclass(frozen=True)
class ReleasedKey:
    vault: str
    key_identifier: bytes
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class Release:
    device_id: str
    quote_sha256: str
    ephemeral_public: bytes  # the controller's ephemeral P-256 point, uncompressed SEC1
    keys: tuple[ReleasedKey, ...]

    def aad(self, vault: str, key_identifier: bytes) -> bytes:
        return rfc8785.dumps(
            {
                "format": RELEASE_FORMAT,
                "device_id": self.device_id,
                "quote_sha256": self.quote_sha256,
                "ephemeral_public": b64(self.ephemeral_public),
                "vault": vault,
                "key_identifier": key_identifier.hex(),
            }
        )

    def to_bytes(self) -> bytes:
        return rfc8785.dumps(
            {
                "format": RELEASE_FORMAT,
                "device_id": self.device_id,
                "quote_sha256": self.quote_sha256,
                "ephemeral_public": b64(self.ephemeral_public),
                "keys": [
                    {"vault": k.vault, "key_identifier": k.key_identifier.hex(), "nonce": b64(k.nonce), "ciphertext": b64(k.ciphertext)}
                    for k in self.keys
                ],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "release") -> "Release":
        obj = load_json_object(data, source, RELEASE_FORMAT)
        entries = obj.get("keys")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InputError(f"{source}: field `keys` must be a list of objects")
        keys = []
        for entry in entries:
            try:
                key_identifier = bytes.fromhex(require_str(entry, "key_identifier", source))
            except ValueError:
                raise InputError(f"{source}: a `key_identifier` is not hex") from None
            keys.append(
                ReleasedKey(
                    require_str(entry, "vault", source), key_identifier,
                    unb64(entry.get("nonce"), "nonce", source), unb64(entry.get("ciphertext"), "ciphertext", source),
                )
            )
        return cls(
            require_str(obj, "device_id", source),
            require_str(obj, "quote_sha256", source),
            unb64(obj.get("ephemeral_public"), "ephemeral_public", source),
            tuple(keys),
        )


def release_wrapping_key(shared_x: bytes | bytearray, ephemeral_public: bytes, release_public_pem: str) -> bytes:
    """Both sides: HKDF-SHA256 over the ECDH x coordinate, salted with both public keys."""
    return derive_key(bytes(shared_x), ephemeral_public + release_key_binding(release_public_pem), RELEASE_INFO)


def open_release(tcti: str, release: Release, device_id: str) -> dict[str, tuple[bytes, bytearray]]:
    """vault -> (key identifier, raw key). Only this device's TPM can open it; any change fails."""
    if release.device_id != device_id:
        raise DeviceError(f"release file is for device `{release.device_id}`, this is `{device_id}`")
    point = release.ephemeral_public
    if len(point) != 65 or point[0] != 4:
        raise InputError("release file: `ephemeral_public` is not an uncompressed P-256 point")
    with AttestationTpm(tcti) as tpm:
        _, public, _ = tpm.release_key()
        shared = tpm.ecdh_zgen(point[1:33], point[33:])
    try:
        key = release_wrapping_key(shared, point, public.to_pem().decode())
    finally:
        shared[:] = bytes(len(shared))
    opened: dict[str, tuple[bytes, bytearray]] = {}
    try:
        for entry in release.keys:
            what = f"released key for vault `{entry.vault}`"
            opened[entry.vault] = (entry.key_identifier, aead_open(key, entry.nonce, entry.ciphertext, release.aad(entry.vault, entry.key_identifier), what))
    except EscrowError as exc:
        for _, raw in opened.values():
            raw[:] = bytes(len(raw))
        raise DeviceError(exc.message, hint="the release file was altered or made for another device's TPM") from None
    return opened


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
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, record, 0)
            os.ftruncate(fd, len(record))
        finally:
            os.close(fd)
    except OSError as exc:
        state.warnings.append(f"cannot write state file {path}: {exc.strerror or exc}")


def last_unlocks(state: StateDir) -> dict[str, dict]:
    """vault -> {"method", "at"}; a missing or unreadable record only loses history."""
    records = {}
    for path in sorted(_unlock_record_dir(state).glob("*.json")):
        try:
            records[path.stem] = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
    return records


# --- unlock with released keys -----------------------------------------------------------------------


def unlock_released(
    state: StateDir, plan: Plan, root: Path | None, tcti: str, release: Release, device_id: str, now: datetime
) -> list[str]:
    """Add each released key to the kernel, re-seal it to the current PCRs; returns the vaults unlocked.

    A reboot may have left a vault's image unmounted: the enforcer's own MOUNT_STORAGE steps run first,
    so the key goes into the vault's filesystem, not the one underneath.
    """
    from enforcer import fscrypt
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
                where = observed.records.get(name) or vault  # the recorded path: a plan cannot move a vault
                path = host_path(root, where.path)
                created_with = _created_with(state, name, path)
                if created_with is None:
                    raise DeviceError(f"nothing says which key this vault was created with: no readable sealed "
                                      f"record, and {path} has no encryption policy", vault=name)
                if not hmac.compare_digest(created_with, key_identifier):
                    raise DeviceError("released key is not the key this vault was created with", vault=name)
                mountpoint = fscrypt.mountpoint_of(str(path))
                added = fscrypt.add_key(mountpoint, raw)
                if not hmac.compare_digest(added, key_identifier):
                    fscrypt.remove_key(mountpoint, added)
                    raise DeviceError("the kernel derived another key identifier from the released key", vault=name)
                blob = tpm.seal(raw, vault.seal.bank, vault.seal.pcrs, allow_unmeasured_boot=plan.device.allow_unmeasured_boot)
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
    from enforcer import fscrypt
    from enforcer.state import StateCorrupt

    try:
        recorded = state.sealed(name)
        return None if recorded is None else bytes.fromhex(recorded["key_identifier"])
    except (StateCorrupt, KeyError, TypeError, ValueError):
        policy = fscrypt.get_policy(str(path)) if path.is_dir() else None
        return None if policy is None else policy.key_identifier
