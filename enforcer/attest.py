"""Device attestation: the TPM-resident keys that prove who is speaking, and TPM2_Quote.

- the attestation key (AK, handle 0x81010002): an ECC P-256 primary, RESTRICTED|SIGN_ENCRYPT|FIXEDTPM|
  FIXEDPARENT|SENSITIVEDATAORIGIN|USERWITHAUTH, ECDSA-SHA256, in the *endorsement* hierarchy, made
  persistent once with EvictControl. Restricted: the TPM only signs data it produced itself (quotes),
  never an outside message dressed as one. Endorsement hierarchy: the TPM obfuscates the reset/restart
  counters in quotes by keys of the owner hierarchy, and the controller needs the real counters to see
  them go backwards.
- the storage parent: the enforcer's storage primary (`enforcer.tpm.storage_primary_template`, owner
  hierarchy, restricted decrypt, derived again from the seed whenever it is needed). The controller
  releases a vault key as a TPM duplication blob for it: a sealed object whose authPolicy is PolicyPCR
  over the quoted values, which only this TPM can import (TPM2_Import) and which unseals only while the
  PCRs hold those values. Its public area is enrolled with the AK and bound into every release quote.

Quote JSON (`format` = "vaultpolicy.quote.v1"; binary fields base64, digests hex):
  device_id, purpose ("release" | "report" | "escrow"), nonce (hex, may be empty for an unsolicited
  report and is for an escrow deposit), bound_sha256 (hex: the SHA-256 part of the storage parent's TPM
  name, the SHA-256 of the report's bytes, or `escrow.deposit_binding` of the deposit's blobs), bank, pcrs {"<index>": hex value}, attest
  (TPMS_ATTEST as the TPM marshalled it), signature (TPMT_SIGNATURE, TPM marshalling).
The quote's qualifying data (extraData) is SHA-256("vaultpolicy-quote-v1" 0 purpose 0 nonce bound),
so one signature covers the purpose, the controller's nonce and what the quote vouches for.
`tpm2_checkquote -q <that digest>` verifies these quotes unchanged (see docs/attestation.md).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass

import rfc8785

from compiler.plan import BANK_DIGEST_BYTES, MAX_PCR
from enforcer.escrow import load_json_object
from enforcer.state import StateCorrupt, StateDir
from enforcer.tcti import TCTI_HINT, TpmUsers
from vaultpolicy.encoding import b64decode_exact, hex_exact
from vaultpolicy.errors import BackendUnavailable, DeviceError, InputError

QUOTE_FORMAT = "vaultpolicy.quote.v1"
IDENTITY_FORMAT = "vaultpolicy.identity.v2"
AK_HANDLE = 0x81010002
PURPOSES = ("release", "report", "escrow")


def resolve_device_id(option: str | None, state_dir: str | os.PathLike) -> str:
    """This device's id: the one recorded in the state dir (`StateDir.device_id`), else `--device-id`,
    else the host name. Everything that names the device (plan targets, escrow blobs, quotes, reports,
    releases) uses this one answer. A `--device-id` other than the recorded one is refused naming both
    (it would fork the device's identity: blobs, quotes and reports under two names); without one, a
    damaged host record is refused too (the id it holds is unknown)."""
    try:
        recorded = StateDir(state_dir).device_id()
    except StateCorrupt as exc:
        if option:
            return option
        raise StateCorrupt(f"{exc.message}; it records this device's id", hint=f"pass --device-id; {exc.hint}") from None
    if recorded is None:
        return option or socket.gethostname()
    device_id, where = recorded
    if option and option != device_id:
        raise InputError(f"--device-id `{option}` is not this device's id: `{device_id}` (recorded in {where})",
                         hint="omit --device-id: the recorded id is the default for every device command")
    return device_id


class AttestationError(DeviceError):
    """The TPM could not produce the attestation key, the storage parent or a quote, or refused a release."""


def qualifying_data(purpose: str, nonce: bytes, bound_sha256: bytes) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown quote purpose `{purpose}`")
    return hashlib.sha256(b"vaultpolicy-quote-v1\0" + purpose.encode() + b"\0" + nonce + bound_sha256).digest()


@dataclass(frozen=True)
class Identity:
    """What the controller enrols: the AK (PEM and qualified name) and the storage parent's public area."""

    device_id: str
    ak_public_pem: str
    ak_name: str  # hex qualified name of the AK: what every quote names as its signer
    storage_public: bytes  # TPM2B_PUBLIC of the storage parent, as the TPM marshals it

    def to_bytes(self) -> bytes:
        return rfc8785.dumps(
            {
                "format": IDENTITY_FORMAT,
                "device_id": self.device_id,
                "ak_public_pem": self.ak_public_pem,
                "ak_name": self.ak_name,
                "storage_public": base64.b64encode(self.storage_public).decode(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "identity") -> "Identity":
        obj = load_json_object(data, source, IDENTITY_FORMAT)
        for name in ("device_id", "ak_public_pem", "ak_name", "storage_public"):
            if not isinstance(obj.get(name), str) or not obj[name]:
                raise InputError(f"{source}: field `{name}` must be a non-empty string")
        _require_p256_public_key(obj["ak_public_pem"], f"{source}: field `ak_public_pem`")
        if not _is_sha256_tpm_name(obj["ak_name"]):
            raise InputError(f"{source}: field `ak_name` must be a SHA-256 TPM name (68 hex digits starting 000b)")
        try:
            storage_public = b64decode_exact(obj["storage_public"])
        except ValueError:
            raise InputError(f"{source}: field `storage_public` is not valid base64") from None
        require_storage_parent(storage_public, f"{source}: field `storage_public`")
        return cls(obj["device_id"], obj["ak_public_pem"], obj["ak_name"], storage_public)


def _require_p256_public_key(pem: str, what: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise InputError(f"{what} is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InputError(f"{what} is not an ECC P-256 public key")


def _is_sha256_tpm_name(text: str) -> bool:
    try:
        name = bytes.fromhex(text)
    except ValueError:
        return False
    return len(name) == 34 and name[:2] == b"\x00\x0b"  # TPM2_ALG_SHA256 || digest


def require_storage_parent(storage_public: bytes, what: str):
    """The TPM2B_PUBLIC, parsed, if it is the enforcer's storage primary template with a point on P-256:
    exactly the key a release imports under (restricted decrypt, AES-128-CFB, fixed to its TPM)."""
    from enforcer.tpm import storage_primary_template

    expected = storage_primary_template()  # first: it loads tpm2-pytss or says why it cannot
    from tpm2_pytss import TPM2B_PUBLIC

    try:
        public, used = TPM2B_PUBLIC.unmarshal(storage_public)
    except Exception:  # noqa: BLE001 - the unmarshaller raises several types for bad bytes
        raise InputError(f"{what} is not a TPM public area") from None
    expected.publicArea.unique.ecc.x = bytes(public.publicArea.unique.ecc.x)
    expected.publicArea.unique.ecc.y = bytes(public.publicArea.unique.ecc.y)
    if used != len(storage_public) or expected.marshal() != storage_public:
        raise InputError(f"{what} is not the public area of this project's storage primary")
    try:
        public.to_pem()
    except ValueError:
        raise InputError(f"{what} holds a point that is not on the P-256 curve") from None
    return public


def storage_parent_binding(storage_public: bytes) -> bytes:
    """What a release quote binds: SHA-256 of the storage parent's TPMT_PUBLIC (the TPM2B without its
    2-byte size), which is the digest part of its TPM name."""
    return hashlib.sha256(storage_public[2:]).digest()


def read_pcr_values(obj: dict, source: str) -> tuple[str, dict[int, bytes]]:
    """The `bank` and `pcrs` fields of a quote or a release, each checked: a bank we know, PCR indexes
    0-23 in plain decimal ("07" beside "7" would name one PCR twice), and each value one digest of the
    bank (shifting bytes between neighbours would keep their concatenation, and so a quote's digest)."""
    bank = obj.get("bank")
    if bank not in BANK_DIGEST_BYTES:
        raise InputError(f"{source}: field `bank` is `{bank}`, not a PCR bank ({', '.join(BANK_DIGEST_BYTES)})")
    pcrs = obj.get("pcrs")
    if not isinstance(pcrs, dict) or not pcrs:
        raise InputError(f"{source}: field `pcrs` must map PCR indexes to hex values")
    size = BANK_DIGEST_BYTES[bank]
    values = {}
    for index, value in pcrs.items():
        if not re.fullmatch(r"0|[1-9][0-9]?", index) or int(index) > MAX_PCR:
            raise InputError(f"{source}: field `pcrs` names PCR `{index}`; PCRs are 0 to {MAX_PCR}")
        try:
            digest = hex_exact(value)
        except ValueError as exc:
            raise InputError(f"{source}: PCR {index} of field `pcrs` {exc}") from None
        if len(digest) != size:
            raise InputError(f"{source}: PCR {index} of field `pcrs` has {len(digest)} bytes; a {bank} value has {size}")
        values[int(index)] = digest
    return bank, values


@dataclass(frozen=True)
class Quote:
    device_id: str
    purpose: str
    nonce: bytes
    bound_sha256: bytes
    bank: str
    pcrs: dict[int, bytes]
    attest: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return rfc8785.dumps(
            {
                "format": QUOTE_FORMAT,
                "device_id": self.device_id,
                "purpose": self.purpose,
                "nonce": self.nonce.hex(),
                "bound_sha256": self.bound_sha256.hex(),
                "bank": self.bank,
                "pcrs": {str(i): v.hex() for i, v in sorted(self.pcrs.items())},
                "attest": base64.b64encode(self.attest).decode(),
                "signature": base64.b64encode(self.signature).decode(),
            }
        )

    def digest(self) -> str:
        """Identifies the quote by what the TPM signed (re-encoding the JSON cannot make a new quote)."""
        return hashlib.sha256(self.attest).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "quote") -> "Quote":
        return cls.from_obj(load_json_object(data, source, QUOTE_FORMAT), source)

    @classmethod
    def from_obj(cls, obj: dict, source: str) -> "Quote":
        def text(name: str) -> str:
            value = obj.get(name)
            if not isinstance(value, str):
                raise InputError(f"{source}: field `{name}` must be a string")
            return value

        def hexbytes(name: str, value: object = None) -> bytes:
            value = text(name) if value is None else value
            try:
                return hex_exact(value)
            except ValueError as exc:
                raise InputError(f"{source}: field `{name}` {exc}") from None

        def b64(name: str) -> bytes:
            try:
                return b64decode_exact(text(name))
            except ValueError:
                raise InputError(f"{source}: field `{name}` is not valid base64") from None

        if text("purpose") not in PURPOSES:
            raise InputError(f"{source}: field `purpose` must be one of {', '.join(PURPOSES)}")
        bank, values = read_pcr_values(obj, source)
        return cls(
            device_id=text("device_id"),
            purpose=text("purpose"),
            nonce=hexbytes("nonce"),
            bound_sha256=hexbytes("bound_sha256"),
            bank=bank,
            pcrs=values,
            attest=b64("attest"),
            signature=b64("signature"),
        )


class AttestationTpm:
    """One ESAPI connection used for attestation (context manager; closes the connection on exit)."""

    def __init__(self, tcti: str):
        from enforcer.tpm import _tss  # the one loader of tpm2-pytss: TSS logging off, BackendUnavailable if missing

        tss = _tss()
        self._tss_error = tss.TSS2_Exception
        self._users = TpmUsers(tcti)  # a flush by another command leaves this connection's handles alone
        try:
            self._esapi = tss.ESAPI(tcti)
        except Exception as exc:  # noqa: BLE001 - TCTI loading raises many types; all mean "no TPM here"
            self._users.release()
            raise BackendUnavailable(f"cannot open the TPM at `{tcti}`: {exc}", hint=TCTI_HINT) from None

    def __enter__(self) -> "AttestationTpm":
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self._esapi.close()
        finally:
            self._users.release()

    # --- keys ---

    def _ak_template(self):
        from tpm2_pytss import TPM2B_PUBLIC
        from tpm2_pytss.constants import TPMA_OBJECT as A

        return TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=A.FIXEDTPM | A.FIXEDPARENT
                                  | A.SENSITIVEDATAORIGIN | A.USERWITHAUTH | A.RESTRICTED | A.SIGN_ENCRYPT)

    def _persistent(self, handle: int, hierarchy, template):
        """Load the persistent key at `handle`, creating and evicting it there the first time."""
        from tpm2_pytss.constants import ESYS_TR

        if handle in self._persistent_handles():
            return self._esapi.tr_from_tpmpublic(handle)
        try:
            transient, *_ = self._esapi.create_primary(None, template, hierarchy)
            try:
                return self._esapi.evict_control(ESYS_TR.OWNER, transient, handle)
            finally:
                self._esapi.flush_context(transient)
        except self._tss_error as exc:
            raise AttestationError(f"cannot create the persistent key at {handle:#x}: {exc}") from None

    def _persistent_handles(self) -> set[int]:
        from tpm2_pytss.constants import TPM2_CAP, TPM2_HC

        _, data = self._esapi.get_capability(TPM2_CAP.HANDLES, TPM2_HC.PERSISTENT_FIRST, 64)
        return set(data.data.handles)

    def _check_attributes(self, handle, template, what: str):
        public, _, qualified_name = self._esapi.read_public(handle)
        expected = template.publicArea
        if public.publicArea.objectAttributes != expected.objectAttributes or public.publicArea.type != expected.type:
            raise AttestationError(
                f"the key at the {what} handle does not have the expected attributes",
                hint="another tool uses this persistent handle; evict it with tpm2_evictcontrol",
            )
        return public, qualified_name

    def attestation_key(self):
        from tpm2_pytss.constants import ESYS_TR

        template = self._ak_template()
        handle = self._persistent(AK_HANDLE, ESYS_TR.ENDORSEMENT, template)
        return handle, *self._check_attributes(handle, template, "attestation key")

    @contextmanager
    def _storage_parent(self):
        """(handle, TPM2B_PUBLIC) of the storage primary the enforcer seals under, flushed on exit."""
        from tpm2_pytss import TPM2B_SENSITIVE_CREATE
        from tpm2_pytss.constants import ESYS_TR

        from enforcer.tpm import storage_primary_template

        try:
            handle, public, *_ = self._esapi.create_primary(TPM2B_SENSITIVE_CREATE(), storage_primary_template(), ESYS_TR.OWNER)
        except self._tss_error as exc:
            raise AttestationError(f"cannot derive the storage primary: {exc}") from None
        try:
            yield handle, public
        finally:
            self._esapi.flush_context(handle)

    def identity(self, device_id: str) -> Identity:
        _, ak_public, ak_qualified_name = self.attestation_key()
        with self._storage_parent() as (_, storage_public):
            return Identity(
                device_id=device_id,
                ak_public_pem=ak_public.to_pem().decode(),
                ak_name=bytes(ak_qualified_name).hex(),
                storage_public=storage_public.marshal(),
            )

    # --- PCRs and quotes ---

    def read_pcrs(self, bank: str, pcrs: tuple[int, ...]) -> tuple[int, dict[int, bytes]]:
        """(update counter, values): the TPM returns at most 8 PCRs per read, so read until all are in."""
        values: dict[int, bytes] = {}
        counter = -1
        for start in range(0, len(pcrs), 8):
            chunk = sorted(pcrs)[start : start + 8]
            counter_now, selection, digests = self._esapi.pcr_read(f"{bank}:{','.join(map(str, chunk))}")
            if counter not in (-1, counter_now):
                return self.read_pcrs(bank, pcrs)  # a PCR changed between chunks: read a consistent set
            counter = counter_now
            read = [i for i in chunk if _selected(selection, i)]
            if len(read) != len(chunk):
                raise AttestationError(f"the TPM has no {bank} bank for PCRs {', '.join(map(str, chunk))}")
            values.update(zip(read, (bytes(d) for d in digests)))
        return counter, values

    def quote(self, device_id: str, purpose: str, nonce: bytes, bound_sha256: bytes, bank: str, pcrs: tuple[int, ...]) -> Quote:
        from tpm2_pytss import TPMT_SIG_SCHEME
        from tpm2_pytss.constants import TPM2_ALG

        if not pcrs:
            raise AttestationError("a quote needs at least one PCR")
        ak, _, _ = self.attestation_key()
        extra = qualifying_data(purpose, nonce, bound_sha256)
        selection = f"{bank}:{','.join(map(str, sorted(pcrs)))}"
        for _attempt in range(3):  # values are read apart from the quote: retry if a PCR moved in between
            before, values = self.read_pcrs(bank, pcrs)
            try:
                attest, signature = self._esapi.quote(ak, selection, extra, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
            except self._tss_error as exc:
                from enforcer.tpm import lockout_error

                # the attestation key is DA-protected (USERWITHAUTH, not NODA): a lockout stops every quote
                lockout = lockout_error(exc, "it refuses the attestation key until the lockout ends, so no quote "
                                             "can be signed; vault keys are not DA-protected and still unlock")
                raise lockout or AttestationError(f"TPM2_Quote failed: {exc}") from None
            after, _ = self.read_pcrs(bank, pcrs)
            if before == after:
                return Quote(device_id, purpose, nonce, bound_sha256, bank, values, bytes(attest), signature.marshal())
        raise AttestationError("PCR values kept changing while quoting; try again")

    # --- released keys ---

    def unseal_released(self, objects: dict[str, tuple[bytes, bytes, bytes]], bank: str,
                        values: dict[int, bytes]) -> dict[str, bytearray]:
        """vault -> raw key, from each vault's (TPM2B_PUBLIC, TPM2B_PRIVATE duplicate, TPM2B_ENCRYPTED_SECRET
        seed): imported under the storage parent (TPM2_Import checks the outer wrapper, which only this TPM
        can open) and unsealed in a PolicyPCR session over `values`. The object's authPolicy is the PCR
        state the controller verified, so the TPM refuses in any other state. Every object, session and
        the parent are flushed; the caller zeroes the keys."""
        from tpm2_pytss import (TPM2B_DATA, TPM2B_ENCRYPTED_SECRET, TPM2B_PRIVATE, TPM2B_PUBLIC, TPML_PCR_SELECTION,
                                TPMT_SYM_DEF, TPMT_SYM_DEF_OBJECT)
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE

        from enforcer.tpm import _ffi, _wipe  # the enforcer's way to take a secret out of a TSS structure
        from enforcer.tpm import policy_pcr_digest

        selection = TPML_PCR_SELECTION.parse(f"{bank}:{','.join(map(str, sorted(values)))}")
        expected_pcrs = policy_pcr_digest(tuple(values), values)
        opened: dict[str, bytearray] = {}
        try:
            with self._storage_parent() as (parent, _):
                for vault, (public_bytes, duplicate_bytes, seed_bytes) in objects.items():
                    what = f"the released key of vault `{vault}`"
                    try:
                        public, duplicate, seed = (
                            _unmarshal_exactly(kind, data) for kind, data in
                            ((TPM2B_PUBLIC, public_bytes), (TPM2B_PRIVATE, duplicate_bytes), (TPM2B_ENCRYPTED_SECRET, seed_bytes)))
                    except ValueError:
                        raise InputError(f"release file: {what} is not a TPM duplication blob") from None
                    try:
                        private = self._esapi.import_(parent, TPM2B_DATA(), public, duplicate, seed,
                                                      TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL))
                    except self._tss_error as exc:
                        raise AttestationError(f"{what} does not import into this TPM ({exc})",
                                               hint="the release file was altered or made for another device's TPM") from None
                    obj = session = None
                    try:
                        obj = self._esapi.load(parent, private, public)
                        session = self._esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                                                 TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
                        try:
                            self._esapi.policy_pcr(session, expected_pcrs, selection)
                            sealed = self._esapi.unseal(obj, session1=session)
                        except self._tss_error as exc:
                            raise self._refused_state(what, bank, values, exc) from None
                        try:
                            opened[vault] = bytearray(_ffi().buffer(sealed._cdata.buffer, sealed.size))
                        finally:
                            _wipe(sealed)
                    finally:
                        for handle in (session, obj):
                            if handle is not None:
                                self._esapi.flush_context(handle)
        except BaseException:
            for raw in opened.values():
                raw[:] = bytes(len(raw))
            raise
        return opened

    def _refused_state(self, what: str, bank: str, values: dict[int, bytes], exc) -> AttestationError:
        """The PolicyPCR session failed: name the PCRs that are not in the state the controller verified."""
        _, current = self.read_pcrs(bank, tuple(values))
        changed = [i for i in sorted(values) if current[i] != values[i]]
        if changed:
            return AttestationError(
                f"{what} opens only in the boot state the controller verified: PCR {bank}:{','.join(map(str, changed))} "
                "differs from it", hint="boot the approved software, or have the controller verify a new quote and release again")
        return AttestationError(f"the TPM refused the PCR policy of {what} ({exc})",
                                hint="the release file was altered: its PCR values are not the ones its keys are sealed to")


def _unmarshal_exactly(kind, data: bytes):
    """The structure `data` marshals, which must be exactly one `kind`, else ValueError."""
    try:
        structure, used = kind.unmarshal(data)
    except Exception:  # noqa: BLE001 - the unmarshallers raise several types for bad bytes
        raise ValueError(f"not a {kind.__name__}") from None
    if used != len(data):
        raise ValueError(f"trailing bytes after a {kind.__name__}")
    return structure


def _selected(selection, index: int) -> bool:
    for entry in selection.pcrSelections[: selection.count]:
        if bytes(entry.pcrSelect)[index // 8] & (1 << (index % 8)):
            return True
    return False
