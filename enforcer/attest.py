"""Device attestation: the TPM-resident keys that prove who is speaking, and TPM2_Quote.

Two keys, both ECC P-256, both primaries derived from a TPM hierarchy seed (so they never leave the
TPM and are the same every time they are derived), each made persistent once with EvictControl:

- the attestation key (AK, handle 0x81010002): RESTRICTED|SIGN_ENCRYPT|FIXEDTPM|FIXEDPARENT|
  SENSITIVEDATAORIGIN|USERWITHAUTH, ECDSA-SHA256, in the *endorsement* hierarchy. Restricted: the TPM
  only signs data it produced itself (quotes), never an outside message dressed as one. Endorsement
  hierarchy: the TPM obfuscates the reset/restart counters in quotes by keys of the owner hierarchy,
  and the controller needs the real counters to see them go backwards.
- the release key (handle 0x81010003): an ECDH key (DECRYPT, not restricted) in the owner hierarchy.
  The controller wraps a released vault key to it; only TPM2_ECDH_ZGen inside this TPM can recover the
  shared secret. Its public part is enrolled with the AK and bound into every quote (below).

Quote JSON (`format` = "vaultpolicy.quote.v1"; binary fields base64, digests hex):
  device_id, purpose ("release" | "report"), nonce (hex, may be empty for an unsolicited report),
  bound_sha256 (hex: SHA-256 of the release key's DER public key, or of the report's canonical bytes),
  bank, pcrs {"<index>": hex value}, attest (TPMS_ATTEST as the TPM marshalled it),
  signature (TPMT_SIGNATURE, TPM marshalling).
The quote's qualifying data (extraData) is SHA-256("vaultpolicy-quote-v1" 0 purpose 0 nonce bound),
so one signature covers the controller's nonce and what the quote vouches for. `tpm2_checkquote
-q <that digest>` verifies these quotes unchanged (see docs/attestation.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import rfc8785

from enforcer.escrow import load_json_object
from enforcer.tcti import TCTI_HINT
from vaultpolicy.encoding import b64decode_exact
from vaultpolicy.errors import BackendUnavailable, DeviceError, InputError

QUOTE_FORMAT = "vaultpolicy.quote.v1"
IDENTITY_FORMAT = "vaultpolicy.identity.v1"
AK_HANDLE = 0x81010002
RELEASE_KEY_HANDLE = 0x81010003
PURPOSES = ("release", "report")


def identity_file(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / "attest" / "identity.json"


def resolve_device_id(option: str | None, state_dir: str | os.PathLike) -> str:
    """This device's id: `--device-id`, else the one `device identity` recorded, else the host name.
    Everything that names the device (escrow blobs, quotes, reports) uses this one answer."""
    if option:
        return option
    try:
        recorded = json.loads(identity_file(state_dir).read_bytes())["device_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return socket.gethostname()
    return recorded if isinstance(recorded, str) and recorded else socket.gethostname()


class AttestationError(DeviceError):
    """The TPM could not produce the attestation key, the release key or a quote."""


def qualifying_data(purpose: str, nonce: bytes, bound_sha256: bytes) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown quote purpose `{purpose}`")
    return hashlib.sha256(b"vaultpolicy-quote-v1\0" + purpose.encode() + b"\0" + nonce + bound_sha256).digest()


def pcr_digest(values: dict[int, bytes], pcrs: tuple[int, ...], hash_name: str = "sha256") -> bytes:
    """TPM2_Quote's pcrDigest: the hash of the selected PCR values concatenated in index order."""
    return hashlib.new(hash_name, b"".join(values[i] for i in sorted(pcrs))).digest()


@dataclass(frozen=True)
class Identity:
    """What the controller enrols: the AK and release key public parts (PEM) and the AK's qualified name."""

    device_id: str
    ak_public_pem: str
    ak_name: str  # hex qualified name of the AK: what every quote names as its signer
    release_public_pem: str

    def to_bytes(self) -> bytes:
        return rfc8785.dumps(
            {
                "format": IDENTITY_FORMAT,
                "device_id": self.device_id,
                "ak_public_pem": self.ak_public_pem,
                "ak_name": self.ak_name,
                "release_public_pem": self.release_public_pem,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "identity") -> "Identity":
        obj = load_json_object(data, source, IDENTITY_FORMAT)
        fields = ("device_id", "ak_public_pem", "ak_name", "release_public_pem")
        for name in fields:
            if not isinstance(obj.get(name), str) or not obj[name]:
                raise InputError(f"{source}: field `{name}` must be a non-empty string")
        for name in ("ak_public_pem", "release_public_pem"):
            _require_p256_public_key(obj[name], f"{source}: field `{name}`")
        if not _is_sha256_tpm_name(obj["ak_name"]):
            raise InputError(f"{source}: field `ak_name` must be a SHA-256 TPM name (68 hex digits starting 000b)")
        return cls(*(obj[name] for name in fields))


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


def release_key_binding(release_public_pem: str) -> bytes:
    """SHA-256 of the release key's DER SubjectPublicKeyInfo: what a release quote binds."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(release_public_pem.encode())
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


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
                return bytes.fromhex(value)
            except (TypeError, ValueError):
                raise InputError(f"{source}: field `{name}` is not hex") from None

        def b64(name: str) -> bytes:
            try:
                return b64decode_exact(text(name))
            except ValueError:
                raise InputError(f"{source}: field `{name}` is not valid base64") from None

        pcrs = obj.get("pcrs")
        if not isinstance(pcrs, dict) or not all(isinstance(k, str) and k.isdigit() for k in pcrs):
            raise InputError(f"{source}: field `pcrs` must map PCR indexes to hex values")
        if text("purpose") not in PURPOSES:
            raise InputError(f"{source}: field `purpose` must be one of {', '.join(PURPOSES)}")
        return cls(
            device_id=text("device_id"),
            purpose=text("purpose"),
            nonce=hexbytes("nonce"),
            bound_sha256=hexbytes("bound_sha256"),
            bank=text("bank"),
            pcrs={int(k): hexbytes(f"pcrs.{k}", v) for k, v in pcrs.items()},
            attest=b64("attest"),
            signature=b64("signature"),
        )


class AttestationTpm:
    """One ESAPI connection used for attestation (context manager; closes the connection on exit)."""

    def __init__(self, tcti: str):
        try:
            from tpm2_pytss import ESAPI, TSS2_Exception
        except ImportError as exc:  # the device stack is optional for compile-only installs
            raise BackendUnavailable(f"tpm2-pytss is not usable: {exc}") from None
        self._tss_error = TSS2_Exception
        try:
            self._esapi = ESAPI(tcti)
        except Exception as exc:  # noqa: BLE001 - TCTI loading raises many types; all mean "no TPM here"
            raise BackendUnavailable(f"cannot open the TPM at `{tcti}`: {exc}", hint=TCTI_HINT) from None

    def __enter__(self) -> "AttestationTpm":
        return self

    def __exit__(self, *exc_info) -> None:
        self._esapi.close()

    # --- keys ---

    def _templates(self):
        from tpm2_pytss import TPM2B_PUBLIC
        from tpm2_pytss.constants import TPMA_OBJECT as A

        common = A.FIXEDTPM | A.FIXEDPARENT | A.SENSITIVEDATAORIGIN | A.USERWITHAUTH
        ak = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=common | A.RESTRICTED | A.SIGN_ENCRYPT)
        release = TPM2B_PUBLIC.parse("ecc256:null:null", objectAttributes=common | A.DECRYPT)
        return ak, release

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

        template, _ = self._templates()
        handle = self._persistent(AK_HANDLE, ESYS_TR.ENDORSEMENT, template)
        return handle, *self._check_attributes(handle, template, "attestation key")

    def release_key(self):
        from tpm2_pytss.constants import ESYS_TR

        _, template = self._templates()
        handle = self._persistent(RELEASE_KEY_HANDLE, ESYS_TR.OWNER, template)
        return handle, *self._check_attributes(handle, template, "release key")

    def identity(self, device_id: str) -> Identity:
        _, ak_public, ak_qualified_name = self.attestation_key()
        _, release_public, _ = self.release_key()
        return Identity(
            device_id=device_id,
            ak_public_pem=ak_public.to_pem().decode(),
            ak_name=bytes(ak_qualified_name).hex(),
            release_public_pem=release_public.to_pem().decode(),
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
                raise AttestationError(f"TPM2_Quote failed: {exc}") from None
            after, _ = self.read_pcrs(bank, pcrs)
            if before == after:
                return Quote(device_id, purpose, nonce, bound_sha256, bank, values, bytes(attest), signature.marshal())
        raise AttestationError("PCR values kept changing while quoting; try again")

    def ecdh_zgen(self, peer_point_x: bytes, peer_point_y: bytes) -> bytearray:
        """The release key's ECDH shared secret with the controller's ephemeral point (x coordinate)."""
        from tpm2_pytss import TPM2B_ECC_POINT, TPMS_ECC_POINT

        handle, _, _ = self.release_key()
        point = TPM2B_ECC_POINT(TPMS_ECC_POINT(x=peer_point_x, y=peer_point_y))
        try:
            shared = self._esapi.ecdh_zgen(handle, point)
        except self._tss_error as exc:
            raise AttestationError(f"the release key cannot derive the shared secret: {exc}") from None
        return bytearray(bytes(shared.point.x))


def _selected(selection, index: int) -> bool:
    for entry in selection.pcrSelections[: selection.count]:
        if bytes(entry.pcrSelect)[index // 8] & (1 << (index % 8)):
            return True
    return False
