"""Sealing vault keys in a TPM 2.0 under a PCR policy, with tpm2-pytss (ESAPI).

A vault key is sealed as a KeyedHash object under an ECC P-256 storage primary created from a
fixed template (so the same TPM always derives the same primary). The primary is created on first
use, cached for the lifetime of the `Tpm` object and flushed on close. The sealed object's
authPolicy is the PolicyPCR digest over the vault's PCR selection; its attributes are
FIXEDTPM|FIXEDPARENT|NODA and nothing else: never USERWITHAUTH (a password session could unseal
it regardless of the PCRs), no SIGN_ENCRYPT/DECRYPT/SENSITIVEDATAORIGIN (it holds our data).

Deviations from the first interface sketch, on purpose:
- `seal` refuses when PCR 0 *or* PCR 4 of the bank is all zero (the sketch said "both"): either one
  at zero means the firmware never measured that stage, so the policy would not bind the boot
  (fail closed, as the edge OS this grew from does). `allow_unmeasured_boot=True` lifts it.
- `extend_pcr(index, bank, data)` measures `data`: it extends the bank with hash(data), as
  firmware measures a blob. `data` may be any length.
- `unseal` checks the blob's recorded PCR values against its recorded policy digest before
  using the TPM, so a tampered blob file is a `TpmPolicyFailure`, not a confusing TPM error.

tpm2-pytss is imported lazily: a machine without it gets `BackendUnavailable`, not an ImportError.
Every transient object and session this module creates is flushed on success and on failure.
Added to the sketch: `Tpm.flush_leftovers()` clears what a killed command left in a TPM without a
resource manager (swtpm), `Tpm.allocated_banks()`, and `storage_primary_template()` for tests and attest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Sequence

from compiler.plan import BANK_DIGEST_BYTES
from enforcer.journal import crash_point
from enforcer.tcti import TCTI_HINT, TpmUsers
from vaultpolicy.encoding import b64decode_exact
from vaultpolicy.errors import BackendUnavailable, DeviceError

# TPM 2.0 part 2: the command code PolicyPCR folds into a policy digest.
_TPM_CC_POLICY_PCR = 0x0000017F
_POLICY_HASH = "sha256"  # the policy session's and the sealed object's name algorithm
_PCR_COUNT = 24
_BOOT_PCRS = (0, 4)  # firmware code and boot loader: all zero means nothing was measured
_PCR_READ_BATCH = 8  # a TPM returns at most 8 digests per PCR_Read


class TpmError(DeviceError):
    """Base of every TPM failure; `rc` is the TPM response code when the TPM gave one."""

    def __init__(self, message: str, rc: int | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.rc = rc


class PcrMismatch(TpmError):
    """Unseal refused: the PCRs in `pcrs` differ from the values recorded at seal time."""

    def __init__(self, pcrs: Sequence[int], bank: str, rc: int | None = None):
        self.pcrs = sorted(pcrs)
        self.bank = bank
        names = ", ".join(str(index) for index in self.pcrs)
        super().__init__(
            f"PCR {bank}:{names} changed since the key was sealed (the boot measured something else)",
            rc,
            hint="boot as when the key was sealed; `vaultpolicy device unlock` names what a changed boot needs",
        )


class PcrChangedDuringOperation(TpmError):
    """A PCR changed between PolicyPCR and Unseal, twice in a row."""


class TpmLockout(TpmError):
    """The TPM is in dictionary-attack lockout. Lockout refuses authorizations by a DA-protected
    authValue; vault keys are authorized by their PCR policy alone, so it does not keep them sealed
    (tests/enforcer/test_tpm.py shows it on swtpm): this names a lockout met on any other command, such
    as a quote, which the attestation key (USERWITHAUTH, not NODA) signs (`lockout_error`)."""


_LOCKOUT_HINT = ("wait for the TPM's lockout recovery time to pass, or clear the lockout with the lockout "
                 "authorization (`tpm2_dictionarylockout --clear-lockout`)")


def lockout_error(exc: Exception, refused: str) -> TpmLockout | None:
    """A `TpmLockout` saying what the TPM refused (`refused`), when `exc` (a TSS2_Exception) is a lockout."""
    if _response_code(exc) != _tss().TPM2_RC.LOCKOUT:
        return None
    return TpmLockout(f"the TPM is in dictionary-attack lockout (too many wrong authorization values were tried): "
                      f"{refused}", int(exc.rc), hint=_LOCKOUT_HINT)


class TpmPolicyFailure(TpmError):
    """The policy did not authorize the operation for a reason other than changed PCRs."""


class TpmFailure(TpmError):
    """Any other TPM or TSS failure (the TPM's own response code is in the message)."""


class ForeignSealedBlob(TpmFailure):
    """The TPM refuses to load a sealed object (integrity check failed): another TPM sealed it, this TPM
    was cleared since (a new storage seed), or its private part was altered."""


class BankNotAllocated(TpmError):
    """The TPM has no such PCR bank, or the bank does not include the requested PCRs."""


class UnmeasuredBoot(TpmError):
    """PCR 0 or 4 is all zero: nothing was measured, so a PCR policy would bind nothing."""


class InvalidSealedBlob(TpmError):
    """A sealed-blob file that cannot be parsed."""


@dataclass(frozen=True)
class SealedBlob:
    """What is kept on disk for a sealed key: public and private TPM2B (marshaled) plus the policy.

    `pcr_values` are the PCR values at seal time, kept to name the PCRs that changed when unseal
    is refused; they are not secret (a TPM quote reveals them too).
    """

    bank: str
    pcrs: tuple[int, ...]
    public: bytes
    private: bytes
    policy_digest: bytes
    pcr_values: dict[int, bytes] = field(hash=False)

    def to_json(self) -> str:
        return json.dumps(
            {
                "bank": self.bank,
                "pcrs": list(self.pcrs),
                "public": base64.b64encode(self.public).decode(),
                "private": base64.b64encode(self.private).decode(),
                "policy_digest": self.policy_digest.hex(),
                "pcr_values": {str(index): value.hex() for index, value in sorted(self.pcr_values.items())},
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "SealedBlob":
        try:
            record = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise InvalidSealedBlob(f"sealed blob is not valid: {exc}") from None
        return cls.from_record(record)

    @classmethod
    def from_record(cls, record: object) -> "SealedBlob":
        """The blob from its JSON object as `to_json` writes it (a sealed record's `blob`, already parsed)."""
        try:
            blob = cls(
                bank=str(record["bank"]),
                pcrs=tuple(int(index) for index in record["pcrs"]),
                public=b64decode_exact(record["public"]),
                private=b64decode_exact(record["private"]),
                policy_digest=bytes.fromhex(record["policy_digest"]),
                pcr_values={int(index): bytes.fromhex(value) for index, value in record["pcr_values"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidSealedBlob(f"sealed blob is not valid: {exc}") from None
        _check_selection(blob.bank, blob.pcrs)
        if set(blob.pcr_values) != set(blob.pcrs):
            raise InvalidSealedBlob("sealed blob is not valid: recorded PCR values do not match its PCR selection")
        return blob


def _check_selection(bank: str, pcrs: Sequence[int]) -> None:
    if bank not in BANK_DIGEST_BYTES:
        raise BankNotAllocated(f"unknown PCR bank `{bank}` (expected one of {', '.join(BANK_DIGEST_BYTES)})")
    if not pcrs:
        raise TpmPolicyFailure("a PCR policy needs at least one PCR (an empty selection binds nothing)")
    bad = [index for index in pcrs if not 0 <= index < _PCR_COUNT]
    if bad:
        raise BankNotAllocated(f"PCR index out of range 0..{_PCR_COUNT - 1}: {bad}")


def _tss():
    """tpm2-pytss, imported on first use.

    The TSS logs every TPM error response to stderr; refusals here are expected outcomes that
    become specific exceptions, so its logging is off unless TSS2_LOG is set by the user.
    """
    os.environ.setdefault("TSS2_LOG", "all+none")
    try:
        import tpm2_pytss
    except ImportError as exc:  # missing package or missing libtss2 shared libraries
        raise BackendUnavailable(
            f"the TPM library is unavailable: {exc}",
            hint="install the Python package `tpm2-pytss` and the Debian package `libtss2-dev`",
        ) from None
    return tpm2_pytss


def _selection_bytes(bank: str, pcrs: Sequence[int]) -> bytes:
    """TPML_PCR_SELECTION marshaled as the TPM does: one bank, 3-byte bitmap."""
    bitmap = bytearray(3)
    for index in pcrs:
        bitmap[index // 8] |= 1 << (index % 8)
    algorithm = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}[bank]
    return (1).to_bytes(4, "big") + algorithm.to_bytes(2, "big") + bytes([3]) + bytes(bitmap)


def policy_pcr_digest(pcrs: Sequence[int], values: dict[int, bytes]) -> bytes:
    """PolicyPCR's pcrDigest: the values of `pcrs` in index order hashed with the policy session's hash,
    whatever their bank. Not a quote's pcrDigest, which the signing scheme's hash makes
    (controller/quote_verify.py): both are SHA-256 here, by two separate choices."""
    return hashlib.new(_POLICY_HASH, b"".join(values[index] for index in sorted(set(pcrs)))).digest()


def policy_digest(bank: str, pcrs: Sequence[int], values: dict[int, bytes]) -> bytes:
    """The PolicyPCR digest a fresh policy session reaches when `pcrs` hold `values`.

    policyDigest = H(0…0 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || H(values in index order)).
    Pure: no TPM needed (the tests check it against the TPM's own PolicyGetDigest).
    """
    _check_selection(bank, pcrs)
    ordered = sorted(set(pcrs))
    start = bytes(hashlib.new(_POLICY_HASH).digest_size)
    return hashlib.new(
        _POLICY_HASH,
        start + _TPM_CC_POLICY_PCR.to_bytes(4, "big") + _selection_bytes(bank, ordered) + policy_pcr_digest(ordered, values),
    ).digest()


def storage_primary_template() -> Any:
    """The fixed ECC P-256 storage primary template (TPM2B_PUBLIC) sealed objects live under, a new
    object each call: a restricted decryption key, AES-128-CFB, no signing scheme, no KDF, no
    authPolicy, an empty unique point. It is the template tpm2-pytss's
    `TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=...)` makes, byte for byte (test_tpm
    checks it: another template would derive another primary, under which no sealed key loads), but
    unmarshaled from its TPM wire form: parse reads the string in Python, 0.12 ms of every command that
    unseals, seals or loads."""
    tss = _tss()
    alg, attributes = tss.TPM2_ALG, tss.TPMA_OBJECT
    area = struct.pack(
        ">HHIH" "HHH" "H" "H" "H" "HH",
        alg.ECC, alg.SHA256,
        attributes.RESTRICTED | attributes.DECRYPT | attributes.FIXEDTPM | attributes.FIXEDPARENT
        | attributes.SENSITIVEDATAORIGIN | attributes.USERWITHAUTH | attributes.NODA,
        0,  # authPolicy: empty
        alg.AES, 128, alg.CFB,  # symmetric: the parent's protection of its children
        alg.NULL,  # scheme
        tss.TPM2_ECC.NIST_P256,
        alg.NULL,  # kdf
        0, 0,  # unique: an empty point (x, y)
    )
    template, _ = tss.TPM2B_PUBLIC.unmarshal(len(area).to_bytes(2, "big") + area)
    return template


def _response_code(exc: Exception) -> int:
    """The TPM response code without the handle/session/parameter index bits of format-one codes."""
    rc = int(getattr(exc, "rc", 0))
    return rc & 0xFFFF00BF if rc & 0x80 else rc


class Tpm:
    """One ESAPI connection to the TPM behind `tcti` (e.g. "swtpm:host=127.0.0.1,port=2321")."""

    def __init__(self, tcti: str):
        self._tss = _tss()
        self.tcti = tcti
        self._users = TpmUsers(tcti)
        try:
            self._esys = self._tss.ESAPI(tcti)
        except Exception as exc:  # TSS raises its own types for "cannot connect"/"no such module"
            self._users.release()
            raise BackendUnavailable(f"cannot open the TPM `{tcti}`: {exc}", hint=TCTI_HINT) from None
        self._primary_handle = None

    def __enter__(self) -> "Tpm":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Flush the cached primary and close the connection."""
        if self._esys is None:
            return
        try:
            if self._primary_handle is not None:
                self._flush(self._primary_handle)
                self._primary_handle = None
        finally:
            self._esys.close()
            self._esys = None
            self._users.release()

    # -- PCRs -------------------------------------------------------------------------------------

    def allocated_banks(self) -> dict[str, frozenset[int]]:
        """Each allocated bank and the PCR indexes it covers."""
        tss = self._tss
        _, capability = self._call(self._esys.get_capability, tss.TPM2_CAP.PCRS, 0)
        names = {tss.TPM2_ALG.SHA1: "sha1", tss.TPM2_ALG.SHA256: "sha256",
                 tss.TPM2_ALG.SHA384: "sha384", tss.TPM2_ALG.SHA512: "sha512"}
        banks = {}
        for selection in capability.data.assignedPCR:
            bitmap = bytes(selection.pcrSelect)[: selection.sizeofSelect]
            covered = frozenset(i for i in range(len(bitmap) * 8) if bitmap[i // 8] & (1 << (i % 8)))
            if selection.hash in names and covered:
                banks[names[selection.hash]] = covered
        return banks

    def read_pcrs(self, bank: str, pcrs: Sequence[int]) -> dict[int, bytes]:
        """Current values of `pcrs` in `bank`."""
        _check_selection(bank, pcrs)
        wanted = sorted(set(pcrs))
        values: dict[int, bytes] = {}
        for start in range(0, len(wanted), _PCR_READ_BATCH):
            batch = wanted[start:start + _PCR_READ_BATCH]
            _, selected, digests = self._call(self._esys.pcr_read, self._selection(bank, batch))
            returned = [index for index in batch if _selected(selected, index)]
            if len(returned) != len(batch):
                raise BankNotAllocated(f"the TPM did not return PCR {bank}:{sorted(set(batch) - set(returned))}")
            values.update(zip(returned, (bytes(digest) for digest in digests)))
        return values

    def extend_pcr(self, index: int, bank: str, data: bytes) -> None:
        """Measure `data` into PCR `index` of `bank` (extend with hash(data)), as firmware would."""
        _check_selection(bank, [index])
        tss = self._tss
        measurement = tss.TPMT_HA(hashAlg=getattr(tss.TPM2_ALG, bank.upper()))
        setattr(measurement.digest, bank, hashlib.new(bank, data).digest())
        self._call(self._esys.pcr_extend, tss.ESYS_TR(index), tss.TPML_DIGEST_VALUES([measurement]),
                   session1=tss.ESYS_TR.PASSWORD)

    def policy_digest(self, bank: str, pcrs: Sequence[int], values: dict[int, bytes]) -> bytes:
        """The authPolicy a blob sealed to `pcrs` at `values` carries (see module `policy_digest`)."""
        return policy_digest(bank, pcrs, values)

    # -- sealing ----------------------------------------------------------------------------------

    def seal(self, secret: bytes | bytearray, bank: str, pcrs: Sequence[int], *,
             allow_unmeasured_boot: bool = False) -> SealedBlob:
        """Seal `secret` to the current values of `pcrs`; test-unseal it before returning."""
        if not 0 < len(secret) <= 128:
            raise ValueError(f"a sealed secret has 1..128 bytes, got {len(secret)}")
        self.check_sealable(bank, pcrs, allow_unmeasured_boot=allow_unmeasured_boot)
        selection = tuple(sorted(set(pcrs)))
        values = self.read_pcrs(bank, selection)
        digest = policy_digest(bank, selection, values)
        tss = self._tss
        template = tss.TPM2B_PUBLIC(tss.TPMT_PUBLIC(
            type=tss.TPM2_ALG.KEYEDHASH,
            nameAlg=tss.TPM2_ALG.SHA256,
            objectAttributes=tss.TPMA_OBJECT.FIXEDTPM | tss.TPMA_OBJECT.FIXEDPARENT | tss.TPMA_OBJECT.NODA,
            authPolicy=digest,
        ))
        template.publicArea.parameters.keyedHashDetail.scheme.scheme = tss.TPM2_ALG.NULL
        sensitive = tss.TPM2B_SENSITIVE_CREATE()
        data = sensitive._cdata.sensitive.data
        _ffi().memmove(data.buffer, secret, len(secret))  # straight from the caller's buffer: no bytes copy
        data.size = len(secret)
        try:
            private, public, *_ = self._call(self._esys.create, self._primary(), sensitive, template)
        finally:
            _wipe(sensitive)
        blob = SealedBlob(bank, selection, public.marshal(), private.marshal(), digest, values)
        recovered = self.unseal(blob)
        try:
            if not hmac.compare_digest(recovered, secret):
                raise TpmFailure("test-unseal returned different bytes than were sealed")
        finally:
            recovered[:] = bytes(len(recovered))
        return blob

    def check_sealable(self, bank: str, pcrs: Sequence[int], *, allow_unmeasured_boot: bool = False) -> None:
        """What `seal` refuses, asked without sealing (`device apply` checks it before changing anything):
        `BankNotAllocated` when the bank is missing or does not cover `pcrs`, `UnmeasuredBoot` when PCR 0
        or 4 is all zero and the plan does not allow it."""
        _check_selection(bank, pcrs)
        self._require_bank(bank, tuple(sorted(set(pcrs))))
        if not allow_unmeasured_boot:
            self._require_measured_boot(bank)

    def unseal(self, blob: SealedBlob) -> bytearray:
        """The sealed secret, if the PCRs hold the values recorded at seal time.

        Retries once when a PCR changed between PolicyPCR and Unseal (a measurement landed in
        between). The caller owns the returned bytearray and should zero it after use.
        """
        if not hmac.compare_digest(policy_digest(blob.bank, blob.pcrs, blob.pcr_values), blob.policy_digest):
            raise TpmPolicyFailure("sealed blob is inconsistent: its PCR values do not give its policy digest")
        tss = self._tss
        try:
            public, _ = tss.TPM2B_PUBLIC.unmarshal(blob.public)
            private, _ = tss.TPM2B_PRIVATE.unmarshal(blob.private)
        except Exception as exc:
            raise InvalidSealedBlob(f"sealed blob is not valid: {exc}") from None
        auth_policy = public._cdata.publicArea.authPolicy  # the C structure: no Python conversion of the area
        if _ffi().buffer(auth_policy.buffer, auth_policy.size)[:] != blob.policy_digest:
            raise TpmPolicyFailure("sealed blob is inconsistent: the object's authPolicy is not its policy digest")
        for attempt in (1, 2):
            try:
                return self._unseal_once(public, private, blob)
            except tss.TSS2_Exception as exc:
                code = _response_code(exc)
                if code == tss.TPM2_RC.PCR_CHANGED and attempt == 1:
                    continue
                raise self._unseal_error(exc, code, blob) from None
        raise AssertionError("unreachable")

    def _unseal_once(self, public, private, blob: SealedBlob) -> bytearray:
        tss = self._tss
        obj = session = None
        try:
            obj = self._esys.load(self._primary(), private, public)
            session = self._esys.start_auth_session(
                tpm_key=tss.ESYS_TR.NONE, bind=tss.ESYS_TR.NONE, session_type=tss.TPM2_SE.POLICY,
                symmetric=tss.TPMT_SYM_DEF(algorithm=tss.TPM2_ALG.NULL), auth_hash=tss.TPM2_ALG.SHA256,
            )
            # without continueSession the TPM flushes the session itself once Unseal succeeds: one round
            # trip fewer per vault; a refused Unseal leaves it loaded, and `finally` flushes it
            self._esys.trsess_set_attributes(session, 0, tss.TPMA_SESSION.CONTINUESESSION)
            self._esys.policy_pcr(session, b"", self._selection(blob.bank, blob.pcrs))
            crash_point("unseal-loaded")  # the test hook: a kill leaves both loaded in a TPM without a manager
            sealed = self._esys.unseal(obj, session1=session)
            self._esys.tr_close(session)  # gone from the TPM: only ESAPI's record of it is left
            session = None
            try:
                return bytearray(_ffi().buffer(sealed._cdata.buffer, sealed.size))
            finally:
                _wipe(sealed)
        finally:
            for handle in (session, obj):
                if handle is not None:
                    self._flush(handle)

    def _unseal_error(self, exc: Exception, code: int, blob: SealedBlob) -> TpmError:
        rc = self._tss.TPM2_RC
        if code == rc.POLICY_FAIL:
            current = self.read_pcrs(blob.bank, blob.pcrs)
            changed = [index for index in blob.pcrs if current[index] != blob.pcr_values[index]]
            if changed:
                return PcrMismatch(changed, blob.bank, int(exc.rc))
            return TpmPolicyFailure(f"the TPM refused the PCR policy although the PCRs match: {exc}", int(exc.rc))
        if code == rc.PCR_CHANGED:
            return PcrChangedDuringOperation("PCRs kept changing during unseal (tried twice)", int(exc.rc))
        if code == rc.LOCKOUT:
            return lockout_error(exc, "it refused the unseal")
        if code == rc.INTEGRITY:
            return ForeignSealedBlob(
                f"unseal failed: this TPM cannot load the sealed key ({exc}): it was sealed by another TPM, or "
                "this TPM was cleared since, or the sealed record was altered", int(exc.rc),
                hint="use the same --tpm as `device apply` did; else recover the key with a controller release "
                "(`vaultpolicy device unlock --release FILE`)")
        return TpmFailure(f"unseal failed: {exc}", int(getattr(exc, "rc", 0)) or None)

    # -- hygiene ----------------------------------------------------------------------------------

    def loaded_handles(self) -> dict[str, int]:
        """Counts of transient objects, loaded sessions and saved (context-swapped) sessions."""
        tss = self._tss
        return {name: len(self._handles(kind)) for name, kind in (
            ("transient", tss.TPM2_HT.TRANSIENT), ("loaded_sessions", tss.TPM2_HT.LOADED_SESSION),
            ("saved_sessions", tss.TPM2_HT.SAVED_SESSION))}

    def _handles(self, kind) -> list[int]:
        """The handles of `kind` (a TPM2_HT) the TPM lists. Read from the C structure: tpm2-pytss's
        wrappers convert a capability field by field in Python, which cost `flush_leftovers` (every
        mutating command, every boot unlock) more than its two TPM round trips."""
        _, capability = self._call(self._esys.get_capability, self._tss.TPM2_CAP.HANDLES, int(kind) << 24, 256)
        listed = capability._cdata.data.handles
        return list(listed.handle[0:listed.count])

    def flush_leftovers(self) -> int:
        """On a TPM without a resource manager, flush objects and sessions no live client owns.

        /dev/tpmrm0 flushes a client's handles when it disconnects; a bare TPM (swtpm, /dev/tpm0)
        keeps what a killed command left loaded until its few slots run out. Call this at the start
        of a mutating command; the cached primary of this `Tpm` is kept. It flushes only when no
        other live connection of ours uses the TPM (`TpmUsers.alone`), else it leaves the flush to the
        next command: handles of a live `status` are not leftovers. Returns how many were flushed.
        """
        if not self._users.alone():  # a managed TPM, or live users: nothing of theirs may go
            return 0
        try:
            return self._flush_unowned()
        finally:
            self._users.share()

    def _flush_unowned(self) -> int:
        tss = self._tss
        own = None if self._primary_handle is None else self._esys.tr_get_tpm_handle(self._primary_handle)
        # one read tells whether any session is loaded or saved (exact counts, unlike the TPM's estimate of
        # free object slots): the session handles are listed only then, so a clean TPM costs two reads
        _, counts = self._call(self._esys.get_capability, tss.TPM2_CAP.TPM_PROPERTIES, tss.TPM2_PT_HR.LOADED, 3)
        listed = counts._cdata.data.tpmProperties  # the C structure, as `_handles` reads it
        count = {prop.property: prop.value for prop in listed.tpmProperty[0:listed.count]}
        loaded, active = count.get(tss.TPM2_PT_HR.LOADED, 1), count.get(tss.TPM2_PT_HR.ACTIVE, 1)
        kinds = [tss.TPM2_HT.TRANSIENT] + [tss.TPM2_HT.LOADED_SESSION] * (loaded > 0) + \
            [tss.TPM2_HT.SAVED_SESSION] * (active > loaded)
        flushed = 0
        for kind in kinds:
            for handle in self._handles(kind):
                if handle == own:
                    continue
                try:
                    self._esys.flush_context(self._esys.tr_from_tpmpublic(handle))
                except tss.TSS2_Exception:
                    continue  # gone meanwhile: nothing left to leak
                flushed += 1
        return flushed

    # -- internals --------------------------------------------------------------------------------

    def _selection(self, bank: str, pcrs: Sequence[int]):
        """The TPML_PCR_SELECTION of `pcrs` in `bank`, from the very bytes `policy_digest` hashes
        (`_selection_bytes`): tpm2-pytss's `TPML_PCR_SELECTION.parse` reads a selection string in
        Python, a twentieth of a millisecond per unseal."""
        selection, _ = self._tss.TPML_PCR_SELECTION.unmarshal(_selection_bytes(bank, pcrs))
        return selection

    def _primary(self):
        if self._primary_handle is None:
            tss = self._tss
            handle, *_ = self._call(self._esys.create_primary, tss.TPM2B_SENSITIVE_CREATE(),
                                    storage_primary_template(), tss.ESYS_TR.OWNER)
            self._primary_handle = handle
        return self._primary_handle

    def _require_bank(self, bank: str, pcrs: Sequence[int]) -> None:
        covered = self.allocated_banks().get(bank)
        if covered is None:
            raise BankNotAllocated(f"the TPM has no allocated `{bank}` PCR bank; refusing to seal",
                                   hint="choose an allocated bank or allocate it (tpm2_pcrallocate)")
        missing = sorted(set(pcrs) - covered)
        if missing:
            raise BankNotAllocated(f"the TPM's `{bank}` bank does not cover PCR {missing}; refusing to seal")

    def _require_measured_boot(self, bank: str) -> None:
        zero = bytes(BANK_DIGEST_BYTES[bank])
        unmeasured = [index for index, value in self.read_pcrs(bank, _BOOT_PCRS).items() if value == zero]
        if unmeasured:
            raise UnmeasuredBoot(
                f"PCR {bank}:{','.join(map(str, unmeasured))} is all zero: the boot was not measured, "
                "so sealing would bind nothing; refusing to seal",
                hint="allow unmeasured boot in the policy only for simulators",
            )

    def _flush(self, handle) -> None:
        try:
            self._esys.flush_context(handle)
        except self._tss.TSS2_Exception:
            pass  # already gone (e.g. the TPM restarted); nothing left to leak

    def _call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except self._tss.TSS2_Exception as exc:
            refused = lockout_error(exc, f"it refused {method.__name__.replace('_', ' ')}")
            if refused is not None:
                raise refused from None
            raise TpmFailure(f"{method.__name__.replace('_', ' ')} failed: {exc}", int(exc.rc)) from None

    def check_loads(self, blob: SealedBlob) -> None:
        """Raise a TpmError unless the TPM loads the sealed object under the storage primary
        (TPM2_Load checks the private part's integrity and its binding to the public part); the
        object is flushed at once and nothing is unsealed. `device status` uses it (S6)."""
        tss = self._tss
        try:
            public, _ = tss.TPM2B_PUBLIC.unmarshal(blob.public)
            private, _ = tss.TPM2B_PRIVATE.unmarshal(blob.private)
        except Exception as exc:
            raise InvalidSealedBlob(f"sealed blob is not valid: {exc}") from None
        self._flush(self._call(self._esys.load, self._primary(), private, public))


def _selected(selection, index: int) -> bool:
    for bank in selection:
        bitmap = bytes(bank.pcrSelect)[: bank.sizeofSelect]
        if index // 8 < len(bitmap) and bitmap[index // 8] & (1 << (index % 8)):
            return True
    return False


def _ffi():
    """The cffi handle of tpm2-pytss: secrets are copied in and out of its C structures with it."""
    return _tss().internal.utils.ffi


def _wipe(tpm2b) -> None:
    """Zero the C memory of a tpm2-pytss structure that held a secret."""
    ffi, cdata = _ffi(), tpm2b._cdata
    ffi.memmove(cdata, bytes(ffi.sizeof(cdata[0])), ffi.sizeof(cdata[0]))
