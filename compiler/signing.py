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
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from vaultpolicy.encoding import b64decode_exact, is_json_document, json_problem, load_json
from vaultpolicy.errors import PlanRejected

from .plan import canonical_json

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


_KEY_KINDS = {
    Ed25519PrivateKey: "an Ed25519 private key", Ed25519PublicKey: "an Ed25519 public key",
    X25519PrivateKey: "an X25519 escrow private key", X25519PublicKey: "an X25519 escrow public key",
}


def describe_key_file(data: bytes) -> str:
    """What a file given as a key holds, in words, so that the wrong file is named for what it is
    (a public key given as a private one, a trust root given as a key, an escrow key, a plan)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return _pem_kind(data)
    try:
        document = load_json(data)
    except json.JSONDecodeError as exc:
        if is_json_document(data):  # it begins as JSON: a document cut short or broken, not a key
            return f"broken JSON ({json_problem(exc)})"
        return _text_kind(data) or "not a key file"
    return json_document_kind(document) or "JSON that is neither a key, a plan nor a trust root"


# The documents the device and the controller exchange, by the name in their `format`
# ("vaultpolicy.quote.v1"), in the words their commands use.
_FORMAT_WORDS = {
    "quote": "a quote (`device quote`)", "identity": "a device identity (`device identity`)",
    "release": "a release (`controller release`)", "escrow": "an escrow blob", "escrow-ack":
    "an escrow acknowledgement (`controller escrow`)", "escrow-deposit": "an escrow deposit (`device escrow-deposit`)",
    "report": "an unsigned drift report", "signed-report": "a signed drift report (`device report`)",
}
_FORMAT = re.compile(r"vaultpolicy\.([a-z-]+)\.v[0-9]+")


def json_document_kind(document) -> str | None:
    """What a JSON document vaultpolicy reads or writes is, in words, when it is one: a plan, a signed
    plan, a trust root, or a device or controller document of a known `format`."""
    if not isinstance(document, dict):
        return None
    kind = {TRUST_ROOT_PAYLOAD_TYPE: "a trust root", PLAN_PAYLOAD_TYPE: "a signed plan"}.get(document.get("payload_type"))
    if kind:
        return kind
    if _is_bare_plan(document):
        return "an unsigned plan"
    named = _FORMAT.fullmatch(document["format"]) if isinstance(document.get("format"), str) else None
    return _FORMAT_WORDS.get(named.group(1)) if named else None


def _pem_kind(data: bytes) -> str:
    for load in (lambda: serialization.load_pem_private_key(data, password=None), lambda: serialization.load_pem_public_key(data)):
        try:
            key = load()
        except TypeError:  # a private key that needs a password
            return "a password-protected private key"
        except (ValueError, UnsupportedAlgorithm):
            continue
        kind = next((words for cls, words in _KEY_KINDS.items() if isinstance(key, cls)), None)
        return kind or f"a {type(key).__name__.removeprefix('_')} key, of an algorithm vaultpolicy does not use"
    return "a PEM file holding no key"


# A policy starts with comments or a top-level keyword (policy_lang/parse.py: TOP_LEVEL_KEYWORDS).
_POLICY_START = re.compile(rb"\A(?:\s*#[^\n]*\n)*\s*(?:device|attestation|defaults|vault|component|app|include)\b")


def non_json_kind(data: bytes) -> str | None:
    """What a file that is not JSON holds, when it is something vaultpolicy knows: a PEM key, an escrow
    public key in base64, a policy (.vpol)."""
    return _pem_kind(data) if data.lstrip().startswith(b"-----BEGIN") else _text_kind(data)


def _text_kind(data: bytes) -> str | None:
    """What a file that is neither JSON nor PEM holds, when it is something vaultpolicy knows."""
    if _is_base64_of_32_bytes(data):
        return "32 bytes in base64, like an X25519 escrow public key"
    if _POLICY_START.match(data):
        return "a policy (.vpol)"
    return None


def _is_base64_of_32_bytes(data: bytes) -> bool:
    try:
        return len(b64decode_exact(data.strip())) == 32
    except (binascii.Error, ValueError):
        return False


def _is_bare_plan(document: dict) -> bool:
    """A plan as `compile` writes it, not wrapped in a signed envelope."""
    return "payload_type" not in document and ("schema_version" in document or "plan_version" in document)


def _wrong_key(data: bytes, source: str, option: str, wanted: str) -> PlanRejected:
    return PlanRejected("malformed-key", f"`{source}` is {describe_key_file(data)}; {option} needs {wanted}")


def load_private_key(pem: bytes, source: str, option: str = "--key") -> Ed25519PrivateKey:
    """The Ed25519 signing key in `pem`; `option` names the argument that gave it, for the error."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise _wrong_key(pem, source, option, "the private key written by `vaultpolicy keygen` (KEY, not KEY.pub)")
    return key


def load_public_key(pem: bytes, source: str, option: str = "--key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise _wrong_key(pem, source, option, "an Ed25519 public key (the KEY.pub written by `vaultpolicy keygen`)")
    return key


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, signature)

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "payload_type": self.payload_type,
                "payload": base64.b64encode(self.payload).decode(),
                "signatures": [{"keyid": k, "sig": base64.b64encode(s).decode()} for k, s in self.signatures],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, source: str | None = None) -> "Envelope":
        """The envelope in `data`, parsed but not verified. `source` (the file name) goes into every
        refusal, and a file that is something else altogether is named for what it is."""
        named = f"`{source}`: " if source else ""

        def malformed(why: str) -> PlanRejected:
            return PlanRejected("malformed-envelope", f"{named}malformed envelope: {why}")

        try:
            obj = load_json(data)
        except json.JSONDecodeError as exc:
            kind = non_json_kind(data)
            if kind is None:
                raise malformed(f"not JSON ({json_problem(exc)})") from None
            message = f"`{source}` is {kind}, not a signed envelope" if source else f"malformed envelope: it is {kind}"
            raise PlanRejected("malformed-envelope", message, hint=_SIGNED_HINT) from None
        if not isinstance(obj, dict):
            raise malformed("not a JSON object")
        if _is_bare_plan(obj):
            raise PlanRejected("unsigned", f"`{source}` is an unsigned plan; sign it with `vaultpolicy sign`" if source
                               else "an unsigned plan; sign it with `vaultpolicy sign`")
        if problem := _field_problem(obj, _ENVELOPE_FIELDS, "an envelope"):
            raise malformed(problem)
        if not isinstance(obj["payload_type"], str) or not isinstance(obj["payload"], str):
            raise malformed("payload_type and payload must be strings")
        if not isinstance(obj["signatures"], list):
            raise malformed("signatures must be a list")
        try:
            payload = b64decode_exact(obj["payload"])
            signatures = []
            for entry in obj["signatures"]:
                if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"} or not isinstance(entry["keyid"], str):
                    raise malformed("each signature needs exactly keyid and sig")
                signatures.append((entry["keyid"], b64decode_exact(entry["sig"])))
        except (binascii.Error, TypeError):
            raise malformed("payload or a signature is not valid base64") from None
        return cls(obj["payload_type"], payload, tuple(signatures))


_SIGNED_HINT = "a signed plan is what `vaultpolicy sign PLAN --key KEY -o SIGNED` writes from a compiled plan"


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
        return canonical_json(
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
            obj = load_json(payload)
        except json.JSONDecodeError:
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
                keys.append((entry["keyid"], Ed25519PublicKey.from_public_bytes(b64decode_exact(entry["public"]))))
            except (KeyError, TypeError, ValueError, binascii.Error):
                raise malformed("each key needs a keyid and a base64 raw Ed25519 public key") from None
        root = cls(version, threshold, tuple(keys))
        if threshold > len(root.distinct_keys()):
            raise malformed(f"threshold {threshold} exceeds the {len(root.distinct_keys())} distinct keys listed")
        return root

    def distinct_keys(self) -> set[bytes]:
        return {raw_public_bytes(p) for _, p in self.keys}

    def _check_type(self, envelope: Envelope, expected_type: str) -> None:
        if envelope.payload_type != expected_type:
            raise PlanRejected(
                "wrong-payload-type", f"envelope holds `{envelope.payload_type}`, expected `{expected_type}`"
            )

    def _signers(self, envelope: Envelope) -> tuple[set[bytes], list[str], list[str]]:
        """(distinct keys of this root whose signatures verify, key ids it does not list, key ids it
        lists whose signatures do not verify)."""
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
        return signers, unknown, bad

    def _needs(self, signers: set[bytes]) -> str:
        """What signing under this root takes and who signed: the keys are named so the user sees which could sign."""
        ids = {kid: raw_public_bytes(public_key) for kid, public_key in self.keys}
        signed = ", ".join(f"`{kid}`" for kid, raw in ids.items() if raw in signers) or "none of them"
        return f"(version {self.version}) needs {self.threshold} of its keys {', '.join(f'`{kid}`' for kid in ids)} (signed by {signed})"

    @staticmethod
    def _bad_signature(kid: str) -> PlanRejected:
        return PlanRejected("bad-signature", f"signature by key `{kid}` does not verify: the envelope was altered or signed with another key")

    def verify(self, envelope: Envelope, expected_type: str) -> bytes:
        """Return the payload when a threshold of distinct keys signed it, else raise PlanRejected."""
        self._check_type(envelope, expected_type)
        if not envelope.signatures:
            raise PlanRejected("unsigned", "envelope carries no signatures")
        signers, unknown, bad = self._signers(envelope)
        if len(signers) >= self.threshold:
            return envelope.payload
        if bad:
            raise self._bad_signature(bad[0])
        if unknown and not signers:
            raise PlanRejected(
                "unknown-key",
                f"signed only by keys the trust root does not list: {', '.join(f'`{k}`' for k in unknown)}; "
                f"the trust root {self._needs(signers)}",
            )
        raise PlanRejected("threshold-not-met", f"{len(signers)} distinct trusted key(s) signed, the trust root {self._needs(signers)}")

    def rotate(self, new_root_envelope: Envelope) -> "TrustRoot":
        """Accept the next root only when this root and the new root each sign it with their threshold;
        a refusal names every root whose threshold is not met, with the keys that could sign for it."""
        self._check_type(new_root_envelope, TRUST_ROOT_PAYLOAD_TYPE)
        new_root = TrustRoot.from_payload(new_root_envelope.payload)
        if new_root.version != self.version + 1:
            raise PlanRejected(
                "trust-root-version", f"new trust root has version {new_root.version}, expected {self.version + 1}"
            )
        unmet = []
        for which, root in (("current", self), ("new", new_root)):
            signers, _, bad = root._signers(new_root_envelope)
            if len(signers) < root.threshold:
                if bad:
                    raise self._bad_signature(bad[0])
                unmet.append(f"the {which} root {root._needs(signers)}")
        if unmet:
            raise PlanRejected(
                "threshold-not-met",
                f"rotating trust root version {self.version} to {new_root.version} needs a threshold of both roots: "
                + "; ".join(unmet),
                hint="sign with keys of both roots (repeat --sign-with)",
            )
        return new_root


def load_trust(data: bytes, source: str) -> TrustRoot:
    """A trust root envelope (self-signed by its own threshold), or a single PEM public key.

    Every refusal names `source`: beside a signed plan, the trust argument is the other file at fault."""
    document = None
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            return TrustRoot.single(load_public_key(data, source))
        except PlanRejected:
            pass  # refused below, saying what the file is
    else:
        try:
            document = load_json(data)
        except json.JSONDecodeError:
            pass
    if not isinstance(document, dict) or document.get("payload_type") != TRUST_ROOT_PAYLOAD_TYPE:
        raise PlanRejected(
            "malformed-trust-root",
            f"`{source}` is not a trust root or an Ed25519 public key (it is {describe_key_file(data)})",
            hint="pass the ROOT written by `vaultpolicy trust init`, or a KEY.pub written by `vaultpolicy keygen`",
        )
    try:
        envelope = Envelope.from_bytes(data)
        root = TrustRoot.from_payload(envelope.payload)
        root.verify(envelope, TRUST_ROOT_PAYLOAD_TYPE)
    except PlanRejected as exc:
        raise PlanRejected(exc.reason, f"trust root `{source}`: {exc.message}", exc.hint) from None
    return root
