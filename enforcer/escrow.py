"""Key escrow: a vault key wrapped for the controller, and the signed deposit that carries it there.

Wrapping (ECIES-style, `cryptography` only):
  ephemeral X25519 key E; shared = X25519(E, controller public key)
  key = HKDF-SHA256(shared, salt = E.public || recipient public, info = "vaultpolicy escrow v1")
  ciphertext = AES-256-GCM(key, random 96-bit nonce, raw vault key, AAD)
The AAD is the canonical JSON (RFC 8785) of every header field: format, device id, vault name, the
kernel's key identifier, the ephemeral public key and the recipient (the escrow public key wrapped
for). A blob moved to another device or vault, or any byte changed, fails to unwrap (InvalidTag). A
fresh ephemeral key and nonce per wrap means the same key wrapped twice gives different ciphertexts
(never a fixed IV, unlike the source system's AES-CFB). Blobs made before blobs named their recipient
have no `recipient` field; they unwrap as before.

Escrow state on the device (`STATE/escrow/<vault>.json` + `<vault>.ack.json`): `pending` until the
controller's acknowledgement naming the blob's SHA-256 is recorded, then `acknowledged`; `missing`
when no blob exists, or the blob is of another key or for another escrow key than the ones asked
about. The device holds one blob per vault, of its current key for the plan's escrow key:
`record_escrow` writes it when the enforcer creates or rotates a vault key, or escrows an existing one
(`escrow_gap` says when); `remove_escrow` is part of destroying a vault.

Anyone with the controller's public key can build a blob for a vault (its key identifier is public, in
the directory's fscrypt policy), so the controller takes blobs only in a deposit the device signed
(`vaultpolicy.escrow-deposit.v1`: the blobs' exact bytes, base64, and an `escrow` quote from the
device's attestation key whose qualifying data binds `deposit_binding(blobs)`), as reports are signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import rfc8785
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from compiler.signing import json_document_kind, non_json_kind
from enforcer.state import atomic_remove, atomic_write, read_state_file
from vaultpolicy.encoding import b64decode_exact, json_problem, load_json
from vaultpolicy.errors import InputError, VaultpolicyError

if TYPE_CHECKING:
    from enforcer.attest import Quote  # attest imports this module

ESCROW_FORMAT = "vaultpolicy.escrow.v1"
ACK_FORMAT = "vaultpolicy.escrow-ack.v1"
DEPOSIT_FORMAT = "vaultpolicy.escrow-deposit.v1"


class EscrowError(VaultpolicyError):
    """An escrow blob cannot be unwrapped: wrong key, wrong binding or altered bytes (one opaque reason)."""


def derive_key(shared_secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(shared_secret)


def aead_seal(key: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """AES-256-GCM with a fresh random 96-bit nonce; returns (nonce, ciphertext+tag)."""
    nonce = secrets.token_bytes(12)
    return nonce, AESGCM(key).encrypt(nonce, bytes(plaintext), aad)


def aead_open(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes, what: str) -> bytearray:
    try:
        return bytearray(AESGCM(key).decrypt(nonce, ciphertext, aad))
    except (InvalidTag, ValueError):
        raise EscrowError(f"{what} does not open: wrong key, wrong binding or altered bytes") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: object, field: str, source: str) -> bytes:
    if not isinstance(text, str):
        raise InputError(f"{source}: field `{field}` must be a base64 string")
    try:
        return b64decode_exact(text)
    except binascii.Error:
        raise InputError(f"{source}: field `{field}` is not valid base64") from None


def load_json_object(data: bytes, source: str, expected_format: str) -> dict:
    try:
        obj = load_json(data)
    except json.JSONDecodeError as exc:
        if (kind := non_json_kind(data)) is not None:  # a policy or a key given here: named as every command names it
            raise InputError(f"`{source}` is {kind}, not a `{expected_format}` document") from None
        raise InputError(f"{source}: not JSON ({json_problem(exc)})") from None
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        found = obj.get("format") if isinstance(obj, dict) else None
        family, _, wanted = expected_format.rpartition(".v")
        found_family, _, version = found.rpartition(".v") if isinstance(found, str) else (None, "", "")
        if found_family == family:  # another version of this very document
            newer = version.isdigit() and int(version) > int(wanted)
            raise InputError(f"{source}: a `{found}` document; this vaultpolicy reads `{expected_format}`",
                             hint="upgrade vaultpolicy here to the version that made it" if newer
                             else "make it again with this version of vaultpolicy")
        if (kind := json_document_kind(obj)) is not None:  # the wrong file: named for what it is
            raise InputError(f"`{source}` is {kind}, not a `{expected_format}` document")
        raise InputError(f"{source}: not a `{expected_format}` document")
    return obj


def require_str(obj: dict, field: str, source: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        raise InputError(f"{source}: field `{field}` must be a non-empty string")
    return value


# --- controller escrow key pair -------------------------------------------------------------------


def generate_escrow_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def escrow_public_text(key: X25519PrivateKey) -> str:
    """The form a plan's `device.escrow_public_key` holds: base64 of the raw 32-byte public key."""
    return b64(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def escrow_public_raw(text: str, source: str) -> bytes:
    """The 32 raw bytes of the escrow public key `text` (a plan's `device.escrow_public_key`)."""
    raw = unb64(text.strip(), "escrow public key", source)
    if len(raw) != 32:
        raise InputError(f"{source}: an X25519 escrow public key is 32 bytes, got {len(raw)}")
    return raw


def load_escrow_public(text: str, source: str) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(escrow_public_raw(text, source))


def escrow_private_pem(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_escrow_private(pem: bytes, source: str) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{source}: not a PEM private key ({exc})") from None
    if not isinstance(key, X25519PrivateKey):
        raise InputError(f"{source}: not an X25519 private key (make one with `vaultpolicy controller escrow-keygen`)")
    return key


# --- the blob -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EscrowBlob:
    device_id: str
    vault: str
    key_identifier: bytes  # the kernel's fscrypt key identifier (16 bytes)
    ephemeral_public: bytes
    nonce: bytes
    ciphertext: bytes
    recipient: bytes | None = None  # the escrow public key (raw) it is wrapped for; None: made before blobs said

    def header(self) -> dict:
        header = {
            "format": ESCROW_FORMAT,
            "device_id": self.device_id,
            "vault": self.vault,
            "key_identifier": self.key_identifier.hex(),
            "ephemeral_public": b64(self.ephemeral_public),
        }
        if self.recipient is not None:
            header["recipient"] = b64(self.recipient)
        return header

    def aad(self) -> bytes:
        return rfc8785.dumps(self.header())

    def to_bytes(self) -> bytes:
        return rfc8785.dumps({**self.header(), "nonce": b64(self.nonce), "ciphertext": b64(self.ciphertext)})

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "escrow blob") -> "EscrowBlob":
        obj = load_json_object(data, source, ESCROW_FORMAT)
        try:
            key_identifier = bytes.fromhex(require_str(obj, "key_identifier", source))
        except ValueError:
            raise InputError(f"{source}: field `key_identifier` is not hex") from None
        blob = cls(
            device_id=require_str(obj, "device_id", source),
            vault=require_str(obj, "vault", source),
            key_identifier=key_identifier,
            ephemeral_public=unb64(obj.get("ephemeral_public"), "ephemeral_public", source),
            nonce=unb64(obj.get("nonce"), "nonce", source),
            ciphertext=unb64(obj.get("ciphertext"), "ciphertext", source),
            recipient=unb64(obj["recipient"], "recipient", source) if "recipient" in obj else None,
        )
        # Only the canonical bytes are a blob: upper-case hex or a loose base64 tail decode to the same
        # fields, and would let an altered file unwrap and be acknowledged under another digest.
        if blob.to_bytes() != data:
            raise InputError(f"{source}: not the exact bytes a device writes (edited or re-formatted?)")
        return blob


_ESCROW_INFO = b"vaultpolicy escrow v1"


def _raw(public_key: X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def wrap_key(controller_public: X25519PublicKey, device_id: str, vault: str, key_identifier: bytes, raw_key: bytes) -> EscrowBlob:
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public, recipient = _raw(ephemeral.public_key()), _raw(controller_public)
    key = derive_key(ephemeral.exchange(controller_public), ephemeral_public + recipient, _ESCROW_INFO)
    header_only = EscrowBlob(device_id, vault, key_identifier, ephemeral_public, b"", b"", recipient)
    nonce, ciphertext = aead_seal(key, raw_key, header_only.aad())
    return EscrowBlob(device_id, vault, key_identifier, ephemeral_public, nonce, ciphertext, recipient)


def unwrap_key(controller_private: X25519PrivateKey, blob: EscrowBlob) -> bytearray:
    if len(blob.ephemeral_public) != 32 or len(blob.nonce) != 12:
        raise EscrowError(f"escrow blob for vault `{blob.vault}` is malformed (ephemeral key or nonce length)")
    ephemeral_public = X25519PublicKey.from_public_bytes(blob.ephemeral_public)
    recipient = _raw(controller_private.public_key())
    if blob.recipient is not None and blob.recipient != recipient:
        raise EscrowError(f"escrow blob for vault `{blob.vault}` is wrapped for another escrow key")
    key = derive_key(controller_private.exchange(ephemeral_public), blob.ephemeral_public + recipient, _ESCROW_INFO)
    return aead_open(key, blob.nonce, blob.ciphertext, blob.aad(), f"escrow blob for vault `{blob.vault}`")


# --- acknowledgement and device-side state --------------------------------------------------------


def make_ack(blob: EscrowBlob) -> bytes:
    """What the controller returns once it has stored a blob: names the exact blob by its digest."""
    return rfc8785.dumps(
        {"format": ACK_FORMAT, "device_id": blob.device_id, "vault": blob.vault, "blob_sha256": blob.sha256()}
    )


def escrow_dir(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / "escrow"


def record_escrow(state_dir: str | os.PathLike, blob: EscrowBlob) -> Path:
    """Keep the blob (state `pending`) until the controller acknowledges it; it replaces the vault's
    earlier blob. A crash between the two writes leaves the earlier blob's ack, which names another
    digest: `escrow_state` says `pending` all the same."""
    path = escrow_dir(state_dir) / f"{blob.vault}.json"
    atomic_write(path, blob.to_bytes())
    stale_ack = path.with_name(f"{blob.vault}.ack.json")
    stale_ack.unlink(missing_ok=True)  # an ack for an earlier blob does not cover this one
    return path


def held_blob(state_dir: str | os.PathLike, vault: str) -> EscrowBlob | None:
    """The blob the device holds for the vault; None when it holds none, or a file that is no blob
    (damaged: it escrows nothing)."""
    path = escrow_dir(state_dir) / f"{vault}.json"
    try:
        return EscrowBlob.from_bytes(read_state_file(path), str(path))
    except (OSError, InputError):
        return None


def escrow_gap(blob: EscrowBlob | None, key_identifier: bytes, escrow_public: bytes) -> str | None:
    """Why the held `blob` does not escrow the key `key_identifier` for the escrow key `escrow_public`
    (raw), for people; None when it does. A blob that does not name its escrow key (made before blobs
    did) is not taken on trust: the plan's key may have changed since it was made."""
    if blob is None:
        return "the key is not escrowed"
    if blob.key_identifier != key_identifier:
        return "its escrow blob is of an earlier key"
    if blob.recipient is None:
        return "its escrow blob does not name the escrow key it is wrapped for (made by an earlier version)"
    if blob.recipient != escrow_public:
        return "the key is escrowed for another escrow key than the plan's"
    return None


def remove_escrow(state_dir: str | os.PathLike, vault: str) -> None:
    """Part of a vault's crypto-erase (`on_remove destroy`): its escrow blob, the key wrapped for the
    controller, and the acknowledgement of it are deleted."""
    blob_path = escrow_dir(state_dir) / f"{vault}.json"
    atomic_remove(blob_path.with_name(f"{vault}.ack.json"))
    atomic_remove(blob_path)


def record_ack(state_dir: str | os.PathLike, ack: bytes, source: str = "acknowledgement") -> str:
    """Store the controller's acknowledgement if it names the blob this device holds; returns the vault."""
    obj = load_json_object(ack, source, ACK_FORMAT)
    vault = require_str(obj, "vault", source)
    blob_path = escrow_dir(state_dir) / f"{vault}.json"
    if not blob_path.is_file():
        raise InputError(f"{source}: this device holds no escrow blob for vault `{vault}`")
    blob = EscrowBlob.from_bytes(blob_path.read_bytes(), str(blob_path))
    if obj.get("blob_sha256") != blob.sha256() or obj.get("device_id") != blob.device_id:
        raise InputError(f"{source}: acknowledges a different escrow blob than the one held for vault `{vault}`")
    atomic_write(blob_path.with_name(f"{vault}.ack.json"), ack)
    return vault


def escrow_state(state_dir: str | os.PathLike, vault: str, key_identifier: bytes | None = None,
                 escrow_public: bytes | None = None) -> str:
    """`missing`, `pending` or `acknowledged` (S9: escrow is observable state). Given the vault's key
    and the plan's escrow key (raw), a blob known to be of another key, or wrapped for another escrow
    key, is `missing`: the controller cannot release this key with that escrow key from it. A blob that
    does not name its escrow key is taken at its word here (`device apply` wraps its key again)."""
    blob = held_blob(state_dir, vault)
    if blob is None:
        return "missing"
    if (key_identifier is not None and blob.key_identifier != key_identifier) or \
            (escrow_public is not None and blob.recipient not in (None, escrow_public)):
        return "missing"
    ack_path = escrow_dir(state_dir) / f"{vault}.ack.json"
    try:
        ack = json.loads(ack_path.read_bytes())
    except (OSError, ValueError):
        return "pending"
    return "acknowledged" if isinstance(ack, dict) and ack.get("blob_sha256") == blob.sha256() else "pending"


# --- signed deposits --------------------------------------------------------------------------------


def held_blobs(state_dir: str | os.PathLike, vaults: list[str] | None = None) -> list[bytes]:
    """The exact bytes of the escrow blobs this device holds (those of `vaults` only, when given), by vault."""
    directory = escrow_dir(state_dir)
    held = {path.name.removesuffix(".json"): path for path in directory.glob("*.json") if not path.name.endswith(".ack.json")}
    if vaults:
        missing = sorted(set(vaults) - set(held))
        if missing:
            raise InputError(f"this device holds no escrow blob for vault `{missing[0]}`",
                             hint="`device apply` of a plan with an escrow key makes one, while the vault's key unseals")
        held = {vault: held[vault] for vault in vaults}
    if not held:
        raise InputError(f"this device holds no escrow blob (none in {directory})",
                         hint="`device apply` of a plan with an escrow key makes one per vault key, while the key unseals")
    return [held[vault].read_bytes() for vault in sorted(held)]


def deposit_binding(blobs: list[bytes]) -> bytes:
    """What a deposit's quote binds: SHA-256 of the canonical JSON list of the blobs' SHA-256 (hex), in order."""
    return hashlib.sha256(rfc8785.dumps([hashlib.sha256(blob).hexdigest() for blob in blobs])).digest()


def sign_deposit(tcti: str, device_id: str, blobs: list[bytes], bank: str, pcrs: tuple[int, ...]) -> bytes:
    """The deposit of `blobs` for the controller, vouched for by this TPM's attestation key."""
    from enforcer.attest import AttestationTpm

    with AttestationTpm(tcti) as tpm:
        quote = tpm.quote(device_id, "escrow", b"", deposit_binding(blobs), bank, pcrs)
    return rfc8785.dumps({"format": DEPOSIT_FORMAT, "blobs": [b64(blob) for blob in blobs],
                          "quote": json.loads(quote.to_bytes())})


def split_deposit(data: bytes, source: str = "escrow deposit") -> tuple[list[bytes], Quote]:
    """(exact blob bytes, quote); no check here: `controller.release.accept_deposit` does that."""
    from enforcer.attest import Quote

    try:
        kind = load_json(data).get("format")
    except (ValueError, AttributeError):
        kind = None  # load_json_object says what is wrong with it
    if kind == ESCROW_FORMAT:
        raise InputError(f"{source}: an escrow blob as the device wrote it, not a deposit the device signed",
                         hint="on the device, `vaultpolicy device escrow-deposit -o deposit.json` signs its blobs; give that file")
    obj = load_json_object(data, source, DEPOSIT_FORMAT)
    if not isinstance(obj.get("blobs"), list) or not obj["blobs"] or not isinstance(obj.get("quote"), dict):
        raise InputError(f"{source}: needs `blobs` (a non-empty list of base64 blobs) and `quote` (object)")
    blobs = [unb64(blob, "blobs", source) for blob in obj["blobs"]]
    return blobs, Quote.from_obj(obj["quote"], f"{source}: quote")
