"""Signed envelopes and trust roots: the sign/verify recipe (an import leaf, like `plan`).

Envelope (JSON): {"payload_type", "payload": base64 of the exact bytes, "signatures": [{"keyid", "sig"}]}.
Signatures cover DSSE's pre-authentication encoding of (payload_type, payload), so a plan's bytes can
never be passed off as a trust root or the other way round. The payload bytes are what is stored and
verified; nothing is re-serialized before verifying (S12).

A trust root is itself an envelope whose payload lists Ed25519 public keys, a threshold and a version.
Thresholds count distinct public keys, never key ids (S13). A new root is accepted only when it is
signed by a threshold of the current root and by its own threshold (rotation N -> N+1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vaultpolicy.errors import PlanRejected

PLAN_PAYLOAD_TYPE = "application/vnd.vaultpolicy.plan.v1+json"
TRUST_ROOT_PAYLOAD_TYPE = "application/vnd.vaultpolicy.trust-root.v1+json"
_ENVELOPE_FIELDS = ("payload_type", "payload", "signatures")
_TRUST_ROOT_FIELDS = ("version", "threshold", "keys")


def _field_problem(obj: dict, fields: tuple[str, ...], what: str) -> str | None:
    """The first missing or unexpected field of a JSON object that must have exactly `fields`, by name."""
    has = ", ".join(fields)
    if missing := [f for f in fields if f not in obj]:
        return f"no `{missing[0]}` field ({what} has exactly {has})"
    if extra := sorted(set(obj) - set(fields)):
        return f"unexpected field `{extra[0]}` ({what} has exactly {has})"
    return None


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public_bytes(public_key)).hexdigest()[:16]


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(pem: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PlanRejected("malformed-key", f"{source}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PlanRejected("malformed-key", f"{source}: not an Ed25519 private key")
    return key


def load_public_key(pem: bytes, source: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise PlanRejected("malformed-key", f"{source}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PlanRejected("malformed-key", f"{source}: not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, signature)

    def to_bytes(self) -> bytes:
        return rfc8785.dumps(
            {
                "payload_type": self.payload_type,
                "payload": base64.b64encode(self.payload).decode(),
                "signatures": [{"keyid": k, "sig": base64.b64encode(s).decode()} for k, s in self.signatures],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "Envelope":
        def malformed(why: str) -> PlanRejected:
            return PlanRejected("malformed-envelope", f"malformed envelope: {why}")

        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise malformed(f"not JSON ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(obj, dict):
            raise malformed("not a JSON object")
        if problem := _field_problem(obj, _ENVELOPE_FIELDS, "an envelope"):
            raise malformed(problem)
        if not isinstance(obj["payload_type"], str) or not isinstance(obj["payload"], str):
            raise malformed("payload_type and payload must be strings")
        if not isinstance(obj["signatures"], list):
            raise malformed("signatures must be a list")
        try:
            payload = base64.b64decode(obj["payload"], validate=True)
            signatures = []
            for entry in obj["signatures"]:
                if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"} or not isinstance(entry["keyid"], str):
                    raise malformed("each signature needs exactly keyid and sig")
                signatures.append((entry["keyid"], base64.b64decode(entry["sig"], validate=True)))
        except (binascii.Error, TypeError):
            raise malformed("payload or a signature is not valid base64") from None
        return cls(obj["payload_type"], payload, tuple(signatures))


def sign(payload_type: str, payload: bytes, keys: list[Ed25519PrivateKey]) -> Envelope:
    message = pae(payload_type, payload)
    return Envelope(payload_type, payload, tuple((key_id(k.public_key()), k.sign(message)) for k in keys))


def add_signature(envelope: Envelope, key: Ed25519PrivateKey) -> Envelope:
    signature = (key_id(key.public_key()), key.sign(pae(envelope.payload_type, envelope.payload)))
    return Envelope(envelope.payload_type, envelope.payload, envelope.signatures + (signature,))


@dataclass(frozen=True)
class TrustRoot:
    version: int
    threshold: int
    keys: tuple[tuple[str, Ed25519PublicKey], ...]  # (keyid, key); ids are labels, keys are what count

    def payload(self) -> bytes:
        return rfc8785.dumps(
            {
                "version": self.version,
                "threshold": self.threshold,
                "keys": [{"keyid": k, "public": base64.b64encode(raw_public_bytes(p)).decode()} for k, p in self.keys],
            }
        )

    @classmethod
    def single(cls, public_key: Ed25519PublicKey) -> "TrustRoot":
        """One key, threshold 1: what `--trust KEY.pub` means."""
        return cls(version=1, threshold=1, keys=((key_id(public_key), public_key),))

    @classmethod
    def from_payload(cls, payload: bytes) -> "TrustRoot":
        def malformed(why: str) -> PlanRejected:
            return PlanRejected("malformed-trust-root", f"malformed trust root: {why}")

        try:
            obj = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise malformed("payload is not JSON") from None
        if not isinstance(obj, dict):
            raise malformed("payload is not a JSON object")
        if problem := _field_problem(obj, _TRUST_ROOT_FIELDS, "a trust root"):
            raise malformed(problem)
        version, threshold, entries = obj["version"], obj["threshold"], obj["keys"]
        if type(version) is not int or version < 1 or type(threshold) is not int or threshold < 1:
            raise malformed("version and threshold must be positive integers")
        if not isinstance(entries, list) or not entries:
            raise malformed("keys must be a non-empty list")
        keys = []
        for entry in entries:
            try:
                keys.append((entry["keyid"], Ed25519PublicKey.from_public_bytes(base64.b64decode(entry["public"], validate=True))))
            except (KeyError, TypeError, ValueError, binascii.Error):
                raise malformed("each key needs a keyid and a base64 raw Ed25519 public key") from None
        root = cls(version, threshold, tuple(keys))
        if threshold > len(root.distinct_keys()):
            raise malformed(f"threshold {threshold} exceeds the {len(root.distinct_keys())} distinct keys listed")
        return root

    def distinct_keys(self) -> set[bytes]:
        return {raw_public_bytes(p) for _, p in self.keys}

    def verify(self, envelope: Envelope, expected_type: str) -> bytes:
        """Return the payload when a threshold of distinct keys signed it, else raise PlanRejected."""
        if envelope.payload_type != expected_type:
            raise PlanRejected(
                "wrong-payload-type", f"envelope holds `{envelope.payload_type}`, expected `{expected_type}`"
            )
        if not envelope.signatures:
            raise PlanRejected("unsigned", "envelope carries no signatures")
        message = pae(envelope.payload_type, envelope.payload)
        by_id: dict[str, list[Ed25519PublicKey]] = {}
        for kid, public_key in self.keys:
            by_id.setdefault(kid, []).append(public_key)
        signers: set[bytes] = set()
        unknown, bad = [], []
        for kid, signature in envelope.signatures:
            candidates = by_id.get(kid)
            if not candidates:
                unknown.append(kid)
                continue
            for public_key in candidates:
                try:
                    public_key.verify(signature, message)
                except InvalidSignature:
                    continue
                signers.add(raw_public_bytes(public_key))
                break
            else:
                bad.append(kid)
        if len(signers) >= self.threshold:
            return envelope.payload
        if bad:
            raise PlanRejected("bad-signature", f"signature by key `{bad[0]}` does not verify: the envelope was altered or signed with another key")
        if unknown and not signers:
            raise PlanRejected("unknown-key", f"signed only by keys the trust root does not list: {', '.join(f'`{k}`' for k in unknown)}")
        raise PlanRejected(
            "threshold-not-met",
            f"{len(signers)} distinct trusted key(s) signed, the trust root (version {self.version}) needs {self.threshold}",
        )

    def rotate(self, new_root_envelope: Envelope) -> "TrustRoot":
        """Accept the next root only when this root and the new root each sign it with their threshold."""
        payload = self.verify(new_root_envelope, TRUST_ROOT_PAYLOAD_TYPE)
        new_root = TrustRoot.from_payload(payload)
        new_root.verify(new_root_envelope, TRUST_ROOT_PAYLOAD_TYPE)
        if new_root.version != self.version + 1:
            raise PlanRejected(
                "trust-root-version", f"new trust root has version {new_root.version}, expected {self.version + 1}"
            )
        return new_root


def load_trust(data: bytes, source: str) -> TrustRoot:
    """A trust root envelope (self-signed by its own threshold), or a single PEM public key."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return TrustRoot.single(load_public_key(data, source))
    envelope = Envelope.from_bytes(data)
    root = TrustRoot.from_payload(envelope.payload)
    root.verify(envelope, TRUST_ROOT_PAYLOAD_TYPE)
    return root
