"""Escrow deposits are authenticated and never replace a held blob (real swtpm). The key identifier a
blob is for is public (the vault directory's fscrypt policy names it), so anyone with the escrow public
key can build a blob for it: `controller escrow` took such a blob and replaced the real one (INSERT OR
REPLACE), the device stayed `acknowledged`, and after a firmware update the release could not recover
the key."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets

import pytest

from controller import nonce as nonces
from controller.errors import AttestationRejected
from controller.quote_verify import verify_quote
from controller.release import accept_deposit, release_keys
from enforcer import escrow, fscrypt
from enforcer.attest import AttestationTpm, storage_parent_binding
from enforcer.release import open_release
from vaultpolicy.errors import InputError

from .conftest import run_cli

PCRS = (0, 2, 4, 7)
NOW = 1_800_000_000
RAW = secrets.token_bytes(64)
KEY_ID = fscrypt.key_identifier(RAW)  # public: the directory's encryption policy names it


@pytest.fixture
def device(make_tpm, store, make_policy):
    """An enrolled device whose real escrow blob of vault `config` the controller holds."""
    tpm = make_tpm()
    tpm.measure_boot()
    with AttestationTpm(tpm.tcti) as attesting:
        identity = attesting.identity("gw-1")
        _, values = attesting.read_pcrs("sha256", PCRS)
    store.enroll("gw-1", identity.ak_public_pem, identity.ak_name, identity.storage_public, NOW)
    escrow_key = escrow.generate_escrow_key()
    genuine = escrow.wrap_key(escrow_key.public_key(), "gw-1", "config", KEY_ID, RAW).to_bytes()
    [deposited] = accept_deposit(store, escrow.sign_deposit(tpm.tcti, "gw-1", [genuine], "sha256", PCRS), NOW)
    assert deposited.outcome == "stored"
    return tpm, identity, escrow_key, genuine, make_policy({i: [v.hex()] for i, v in values.items()})


def released_key(store, tpm, identity, policy, escrow_key) -> bytes:
    nonce = nonces.issue(store, "gw-1", policy, NOW)
    with AttestationTpm(tpm.tcti) as attesting:
        quote = attesting.quote("gw-1", "release", nonce, storage_parent_binding(identity.storage_public), "sha256", PCRS)
    verify_quote(store, quote, policy, NOW, {"config": "boot"})
    return bytes(open_release(tpm.tcti, release_keys(store, quote, ["config"], escrow_key, NOW), "gw-1")["config"][1])


def refused(reason: str, deposit: bytes, store) -> AttestationRejected:
    with pytest.raises(AttestationRejected) as caught:
        accept_deposit(store, deposit, NOW)
    assert caught.value.reason == reason, caught.value.message
    return caught.value


def test_a_forged_blob_is_refused_however_it_is_presented(device, store, make_tpm):
    tpm, identity, escrow_key, genuine, policy = device
    attacker_raw = secrets.token_bytes(64)
    forged = escrow.wrap_key(escrow_key.public_key(), "gw-1", "config", KEY_ID, attacker_raw).to_bytes()

    with pytest.raises(InputError, match="an escrow blob as the device wrote it, not a deposit the device signed"):
        accept_deposit(store, forged, NOW)  # the bare blob, as `controller escrow` took it before
    impostor = make_tpm()
    refused("bad-signature", escrow.sign_deposit(impostor.tcti, "gw-1", [forged], "sha256", PCRS), store)
    swapped = json.loads(escrow.sign_deposit(tpm.tcti, "gw-1", [genuine], "sha256", PCRS))
    swapped["blobs"] = [base64.b64encode(forged).decode()]
    refused("deposit-altered", json.dumps(swapped).encode(), store)
    with AttestationTpm(tpm.tcti) as attesting:  # a quote the device made for something else
        report_quote = attesting.quote("gw-1", "report", b"", escrow.deposit_binding([forged]), "sha256", PCRS)
    relabelled = {"format": escrow.DEPOSIT_FORMAT, "blobs": [base64.b64encode(forged).decode()],
                  "quote": json.loads(report_quote.to_bytes())}
    assert refused("not-a-deposit", json.dumps(relabelled).encode(), store).message.endswith("made for a report, not for escrow")
    relabelled["quote"]["purpose"] = "escrow"
    refused("nonce-mismatch", json.dumps(relabelled).encode(), store)  # the purpose is signed
    other_device = escrow.wrap_key(escrow_key.public_key(), "gw-2", "config", KEY_ID, attacker_raw).to_bytes()
    assert "a blob of device `gw-2` signed by `gw-1`" in refused(
        "deposit-altered", escrow.sign_deposit(tpm.tcti, "gw-1", [other_device], "sha256", PCRS), store).message
    unenrolled = escrow.wrap_key(escrow_key.public_key(), "gw-9", "config", KEY_ID, attacker_raw).to_bytes()
    refused("device-unknown", escrow.sign_deposit(impostor.tcti, "gw-9", [unenrolled], "sha256", PCRS), store)

    assert store.escrow_blobs("gw-1", "config") == [genuine]
    tpm.extend(4, b"firmware update")  # the release after an update recovers the real key
    updated = policy.model_copy(update={"allowed": {**policy.allowed, "4": (_pcr(tpm, 4).hex(),)}})
    assert released_key(store, tpm, identity, updated, escrow_key) == RAW


@pytest.mark.parametrize("vault", ["/../../escaped", "../gw-2.config", ".hidden", "a/b", "config\n"])
def test_a_blob_whose_vault_is_no_file_name_is_refused_before_its_ack_is_written(device, store, tmp_path, vault):
    """The controller writes `<ack-dir>/<device>.<vault>.ack.json`, and the device names the vault: a deposit
    of `/../../escaped`, signed by the device's own TPM, was stored and its acknowledgement written outside
    the ack dir (over another device's, with `../gw-2.config`)."""
    tpm, _, escrow_key, _, _ = device
    raw = secrets.token_bytes(64)
    blob = escrow.wrap_key(escrow_key.public_key(), "gw-1", vault, fscrypt.key_identifier(raw), raw).to_bytes()
    (tmp_path / "deposit.json").write_bytes(escrow.sign_deposit(tpm.tcti, "gw-1", [blob], "sha256", PCRS))
    ack_dir = tmp_path / "acks" / "inner"
    code, out, err = run_cli(["controller", "escrow", str(tmp_path / "deposit.json"), "--ack-dir", str(ack_dir),
                              "--store", str(store.path)])
    assert (code, out) == (1, "")
    assert err.startswith(f"error: refused (deposit-malformed): {tmp_path / 'deposit.json'}: a blob names vault `{vault}`, "
                          "which no device has")
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".ack.json")] == []
    assert store.escrowed_vaults("gw-1") == ["config"]


def test_an_ack_dir_that_cannot_be_made_is_named_and_nothing_is_stored(device, store, tmp_path):
    tpm, _, escrow_key, _, _ = device
    blob = escrow.wrap_key(escrow_key.public_key(), "gw-1", "notes", KEY_ID, RAW).to_bytes()
    (tmp_path / "deposit.json").write_bytes(escrow.sign_deposit(tpm.tcti, "gw-1", [blob], "sha256", PCRS))
    (tmp_path / "a-file").write_text("")
    for ack_dir, why in (("a-file", "File exists"), ("a-file/acks", "Not a directory")):
        code, out, err = run_cli(["controller", "escrow", str(tmp_path / "deposit.json"), "--ack-dir", str(tmp_path / ack_dir),
                                  "--store", str(store.path)])
        assert (code, out, err) == (1, "", f"error: cannot create the acknowledgement directory `{tmp_path / ack_dir}`: {why}\n")
    assert store.escrowed_vaults("gw-1") == ["config"]


def test_a_held_blob_is_never_replaced(device, store):
    """Even a deposit the device signed (root on the device) cannot replace a held blob: a second blob for
    the same key identifier is kept beside it, and release takes the blob that holds the key its
    identifier names. The same key wrapped to a new escrow key (a re-escrow) is kept beside too."""
    tpm, identity, escrow_key, genuine, policy = device
    bogus = escrow.wrap_key(escrow_key.public_key(), "gw-1", "config", KEY_ID, secrets.token_bytes(64)).to_bytes()
    [deposited] = accept_deposit(store, escrow.sign_deposit(tpm.tcti, "gw-1", [bogus], "sha256", PCRS), NOW + 1)
    assert deposited.outcome == "kept-beside" and json.loads(deposited.ack)["blob_sha256"] == hashlib.sha256(bogus).hexdigest()
    [again] = accept_deposit(store, escrow.sign_deposit(tpm.tcti, "gw-1", [genuine], "sha256", PCRS), NOW + 2)
    assert again.outcome == "held"
    assert store.escrow_blobs("gw-1", "config") == [bogus, genuine]  # the newest first
    assert released_key(store, tpm, identity, policy, escrow_key) == RAW  # the bogus blob is passed over

    new_escrow_key = escrow.generate_escrow_key()
    rewrapped = escrow.wrap_key(new_escrow_key.public_key(), "gw-1", "config", KEY_ID, RAW).to_bytes()
    [deposited] = accept_deposit(store, escrow.sign_deposit(tpm.tcti, "gw-1", [rewrapped], "sha256", PCRS), NOW + 3)
    assert deposited.outcome == "kept-beside"
    assert released_key(store, tpm, identity, policy, new_escrow_key) == RAW
    assert released_key(store, tpm, identity, policy, escrow_key) == RAW
    with pytest.raises(AttestationRejected, match="none of the 3 escrow blobs of vault `config` yields its key") as caught:
        released_key(store, tpm, identity, policy, escrow.generate_escrow_key())
    assert caught.value.reason == "escrow-unreadable"


def test_a_blob_holding_no_fscrypt_key_is_passed_over(device, store):
    """A deposited blob wrapping a 32-byte key made `controller release` an internal error (ValueError
    from `fscrypt.key_identifier`, exit 70) before it reached the genuine blob beside it."""
    tpm, identity, escrow_key, genuine, policy = device
    short = escrow.wrap_key(escrow_key.public_key(), "gw-1", "config", KEY_ID, secrets.token_bytes(32)).to_bytes()
    [deposited] = accept_deposit(store, escrow.sign_deposit(tpm.tcti, "gw-1", [short], "sha256", PCRS), NOW + 1)
    assert deposited.outcome == "kept-beside" and store.escrow_blobs("gw-1", "config") == [short, genuine]
    assert released_key(store, tpm, identity, policy, escrow_key) == RAW


def _pcr(tpm, index: int) -> bytes:
    with AttestationTpm(tpm.tcti) as attesting:
        return attesting.read_pcrs("sha256", (index,))[1][index]
