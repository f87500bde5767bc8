"""Signing and trust through the CLI: every byte of an envelope matters, thresholds count distinct
keys, trust roots rotate only with a threshold of the current root, and `verify` says why."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from compiler.files import write_output
from compiler.plan import format_time
from compiler.signing import (
    PLAN_PAYLOAD_TYPE, TRUST_ROOT_PAYLOAD_TYPE, Envelope, TrustRoot, key_id, load_private_key, load_public_key, load_trust, sign,
)
from enforcer.verify import CLOCK_SLACK, DeviceIdentity, verify_plan
from vaultpolicy.errors import PlanRejected

EXAMPLE = Path(__file__).parents[2] / "examples" / "gateway.vpol"


@pytest.fixture
def keys(cli, tmp_path):
    """Three signing keys a, b, c in tmp_path (files a, a.pub, …)."""
    for name in "abc":
        assert cli("keygen", "-o", tmp_path / name)[0] == 0
    return tmp_path


@pytest.fixture
def plan_file(cli, tmp_path):
    path = tmp_path / "plan.json"
    assert cli("compile", EXAMPLE, "--plan-version", "1", "-o", path)[0] == 0  # issued now: `verify` refuses an expired plan
    return path


def test_keygen_writes_a_private_key_only_its_owner_can_read(keys):
    assert (keys / "a").stat().st_mode & 0o777 == 0o600
    assert (keys / "a.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_keygen_refuses_to_overwrite(cli, keys):
    code, _, err = cli("keygen", "-o", keys / "a")
    assert code == 1 and f"`{keys / 'a'}` and `{keys / 'a.pub'}` already exist\n" in err


def test_sign_keeps_the_plan_bytes_and_verify_accepts(cli, keys, plan_file):
    signed = keys / "signed"
    assert cli("sign", plan_file, "--key", keys / "a", "-o", signed)[0] == 0
    assert Envelope.from_bytes(signed.read_bytes()).payload == plan_file.read_bytes()
    code, out, _ = cli("verify", signed, "--trust", keys / "a.pub")
    assert code == 0 and out.startswith("verified: plan version 1 for every device, issued ")


def test_verify_names_the_devices_a_plan_is_for(cli, keys, tmp_path):
    """verify said nothing of the targets, and the device then refused the plan (wrong-target)."""
    plan, signed = tmp_path / "targeted.json", tmp_path / "targeted.signed"
    assert cli("compile", EXAMPLE, "--plan-version", "1", "--target", "gw-7", "--target", "class:edge", "-o", plan)[0] == 0
    assert cli("sign", plan, "--key", keys / "a", "-o", signed)[0] == 0
    code, out, _ = cli("verify", signed, "--trust", keys / "a.pub")
    assert code == 0 and out.startswith("verified: plan version 1 for class:edge, gw-7, issued "), out


@pytest.mark.parametrize("rewrite", [
    lambda plan: json.dumps(json.loads(plan), indent=2).encode(),
    lambda plan: json.dumps(json.loads(plan), sort_keys=False, separators=(", ", ": ")).encode(),
    lambda plan: plan + b"\n",
], ids=["indented", "spaced", "newline"])
def test_sign_refuses_a_plan_that_is_not_in_its_canonical_encoding(cli, keys, plan_file, rewrite):
    """A plan rewritten with indent=2 was signed and verified: the signed payload was not the plan's
    one canonical encoding (S12), and its digest not the one `compile --prev` records."""
    edited = keys / "edited.json"
    edited.write_bytes(rewrite(plan_file.read_bytes()))
    signed_edit = sign(PLAN_PAYLOAD_TYPE, edited.read_bytes(), [load_private_key((keys / "a").read_bytes(), "a")])
    (keys / "edited.signed").write_bytes(signed_edit.to_bytes())
    for given in (edited, keys / "edited.signed"):  # a plan to sign, or a signed plan to add a signature to
        code, _, err = cli("sign", given, "--key", keys / "b", "-o", keys / "out")
        assert code == 1 and err == (f"error: {given}: the plan is not in the canonical form `vaultpolicy compile` writes "
                                     "(RFC 8785 JSON on one line)\n"
                                     "  = help: re-run `vaultpolicy compile` to write the plan, and sign that file\n")
        assert not (keys / "out").exists()
    # signed by other tooling all the same: `verify` and the device refuse it for the same reason
    code, _, err = cli("verify", keys / "edited.signed", "--trust", keys / "a.pub")
    assert code == 1 and err.startswith(f"refused: not-canonical: `{keys / 'edited.signed'}`: signed payload: the "
                                        "plan is not in the canonical form `vaultpolicy compile` writes"), err
    with pytest.raises(PlanRejected) as refused:
        verify_plan(signed_edit.to_bytes(), TrustRoot.single(load_public_key((keys / "a.pub").read_bytes(), "a.pub")),
                    now=datetime.now(timezone.utc), floor=None, device=DeviceIdentity())
    assert refused.value.reason == "not-canonical"


@pytest.mark.parametrize("issued_at,reason,said", [
    ("2020-01-01T00:00:00Z", "expired", "plan expired at 2020-01-31T00:00:00Z"),  # valid 30 days by default
    ("FUTURE", "future-dated", "plan is issued at FUTURE, in the future beyond the 300s clock slack"),
])
def test_verify_refuses_a_plan_the_device_would_refuse_for_its_dates(cli, keys, issued_at, reason, said):
    """A plan issued 2020-01-01 verified ("verified … expires 2020-01-31", exit 0) while every device
    refuses it as expired: `verify` runs the device's own date check (enforcer/verify.py)."""
    if issued_at == "FUTURE":  # beyond the device's 5 minutes of clock slack
        issued_at = format_time(datetime.now(timezone.utc) + CLOCK_SLACK + timedelta(minutes=10))
        said = said.replace("FUTURE", issued_at)
    plan, signed = keys / "dated.json", keys / "dated.signed"
    assert cli("compile", EXAMPLE, "--plan-version", "1", "--issued-at", issued_at, "-o", plan)[0] == 0
    assert cli("sign", plan, "--key", keys / "a", "-o", signed)[0] == 0
    code, out, err = cli("verify", signed, "--trust", keys / "a.pub")
    assert (code, out) == (1, "") and err.startswith(f"refused: {reason}: `{signed}`: {said}\n"), err


def test_flipping_any_byte_of_a_signed_envelope_fails_verification(keys):
    """Every position of a small envelope, set to each of the 255 other byte values: never accepted
    (the unused low bits of a base64 text's last character are changes too)."""
    key = load_private_key((keys / "a").read_bytes(), "a")
    root = TrustRoot.single(key.public_key())
    data = sign("application/vnd.vaultpolicy.plan.v1+json", b'{"v":1}', [key]).to_bytes()
    assert len(data) < 250
    for position in range(len(data)):
        for value in range(256):
            if value == data[position]:
                continue
            altered = bytearray(data)
            altered[position] = value
            with pytest.raises(PlanRejected):
                root.verify(Envelope.from_bytes(bytes(altered)), "application/vnd.vaultpolicy.plan.v1+json")


def test_flipped_byte_is_refused_by_verify_with_a_reason(cli, keys, plan_file):
    signed = keys / "signed"
    cli("sign", plan_file, "--key", keys / "a", "-o", signed)
    envelope = json.loads(signed.read_bytes())
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[10] ^= 0x20
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()
    signed.write_text(json.dumps(envelope))
    code, _, err = cli("verify", signed, "--trust", keys / "a.pub")
    assert code == 1 and err.startswith("refused: bad-signature:")


@pytest.mark.parametrize(
    "content,reason",
    [(b"not json", "malformed-envelope"), (b'{"payload": "x"}', "malformed-envelope")],
)
def test_malformed_envelope_reason(cli, keys, content, reason):
    (keys / "signed").write_bytes(content)
    code, _, err = cli("verify", keys / "signed", "--trust", keys / "a.pub")
    assert code == 1 and err.startswith(f"refused: {reason}:")


def test_a_bad_trust_root_is_named_apart_from_the_signed_plan(cli, keys, plan_file):
    cli("sign", plan_file, "--key", keys / "a", "-o", keys / "signed")
    (keys / "root.json").write_text("vault data {}\n")
    code, _, err = cli("verify", keys / "signed", "--trust", keys / "root.json")
    assert code == 1 and err.startswith(f"refused: malformed-trust-root: `{keys / 'root.json'}` is not a trust root or an "
                                        "Ed25519 public key (it is a policy (.vpol))")
    payload = base64.b64encode(json.dumps({"version": 1, "keys": []}).encode()).decode()
    envelope = {"payload_type": TRUST_ROOT_PAYLOAD_TYPE, "payload": payload, "signatures": []}
    (keys / "root.json").write_text(json.dumps(envelope))
    err = cli("verify", keys / "signed", "--trust", keys / "root.json")[2]
    assert f"trust root `{keys / 'root.json'}`: malformed trust root: no `threshold` field" in err


def test_unknown_key_reason(cli, keys, plan_file):
    cli("sign", plan_file, "--key", keys / "b", "-o", keys / "signed")
    code, _, err = cli("verify", keys / "signed", "--trust", keys / "a.pub")
    assert code == 1 and err.startswith("refused: unknown-key:")


def _root_with_one_key_under_two_ids(keys: Path, threshold: int) -> Path:
    """A 2-of-3 root whose list holds key a twice under different ids, signed by a and b."""
    a = load_private_key((keys / "a").read_bytes(), "a")
    b = load_private_key((keys / "b").read_bytes(), "b")
    c = load_private_key((keys / "c").read_bytes(), "c")
    root = TrustRoot(
        version=1,
        threshold=threshold,
        keys=(
            (key_id(a.public_key()), a.public_key()),
            ("a-backup", a.public_key()),
            (key_id(b.public_key()), b.public_key()),
            (key_id(c.public_key()), c.public_key()),
        ),
    )
    path = keys / "root"
    write_output(path, sign(TRUST_ROOT_PAYLOAD_TYPE, root.payload(), [a, b]).to_bytes())
    return path


def test_threshold_counts_distinct_keys_not_ids(cli, keys, plan_file):
    """2-of-3: key a signing under both of its ids is one key, refused; a and b are two, accepted."""
    root = _root_with_one_key_under_two_ids(keys, threshold=2)
    a = load_private_key((keys / "a").read_bytes(), "a")
    payload = plan_file.read_bytes()
    message_type = "application/vnd.vaultpolicy.plan.v1+json"
    same_key_twice = Envelope(message_type, payload, tuple(
        (kid, sig) for kid in (key_id(a.public_key()), "a-backup") for _, sig in sign(message_type, payload, [a]).signatures
    ))
    (keys / "twice").write_bytes(same_key_twice.to_bytes())
    code, _, err = cli("verify", keys / "twice", "--trust", root)
    assert code == 1 and err.startswith("refused: threshold-not-met: 1 distinct trusted key(s) signed")

    assert cli("sign", plan_file, "--key", keys / "a", "--key", keys / "b", "-o", keys / "two")[0] == 0
    assert cli("verify", keys / "two", "--trust", root)[0] == 0


def test_trust_init_and_adding_a_signature_reaches_the_threshold(cli, keys, plan_file):
    args = ["--key", keys / "a.pub", "--key", keys / "b.pub", "--key", keys / "c.pub", "--threshold", "2"]
    assert cli("trust", "init", *args, "--sign-with", keys / "a", "--sign-with", keys / "b", "-o", keys / "root")[0] == 0
    cli("sign", plan_file, "--key", keys / "a", "-o", keys / "one")
    code, _, err = cli("verify", keys / "one", "--trust", keys / "root")
    assert code == 1 and "threshold-not-met" in err
    cli("sign", keys / "one", "--key", keys / "c", "-o", keys / "two")  # adds to the existing envelope
    assert cli("verify", keys / "two", "--trust", keys / "root")[0] == 0


@pytest.mark.parametrize("command", ["init", "rotate"])
def test_a_key_listed_twice_is_a_usage_error_naming_both_files(cli, keys, command):
    """`trust init --key k1.pub --key k1copy.pub --key k3.pub --threshold 2` wrote "2 of 2 keys": the
    copy was dropped without a word, and the author's 2-of-3 was a 2-of-2."""
    (keys / "a-copy.pub").write_bytes((keys / "a.pub").read_bytes())
    current = []
    if command == "rotate":
        init = ["--key", keys / "c.pub", "--threshold", "1", "--sign-with", keys / "c", "-o", keys / "r1"]
        assert cli("trust", "init", *init)[0] == 0
        current = ["--current", keys / "r1"]
    signers = ["--sign-with", keys / "a", "--sign-with", keys / "b", "--sign-with", keys / "c"]
    copy_said = f"--key `{keys / 'a-copy.pub'}` holds the same key as --key `{keys / 'a.pub'}`"
    for listed, said in ((["a.pub", "a-copy.pub", "b.pub"], copy_said),
                         (["a.pub", "b.pub", "a.pub"], f"--key `{keys / 'a.pub'}` is given twice")):
        given = [arg for name in listed for arg in ("--key", keys / name)]
        code, _, err = cli("trust", command, *current, *given, "--threshold", "2", *signers, "-o", keys / "root")
        assert code == 64 and err == f"error: {said}\n  = help: a threshold counts distinct keys: list each key once\n"
        assert not (keys / "root").exists()


@pytest.mark.parametrize("command", ["sign", "trust"])
def test_a_signing_key_listed_twice_is_a_usage_error_naming_both_files(cli, keys, plan_file, command):
    """`sign --key a.key --key a.key` wrote two signatures by the same key and exited 0, where `trust
    init` refused a repeated --key (README: a `--key` listed twice is a usage error, 64). A copy of a
    key under another name is the same signer. Trust's --sign-with is checked the same way."""
    (keys / "a-copy").write_bytes((keys / "a").read_bytes())
    (keys / "a-copy").chmod(0o600)
    option = "--key" if command == "sign" else "--sign-with"
    copy_said = f"{option} `{keys / 'a-copy'}` holds the same key as {option} `{keys / 'a'}`"
    for listed, said in ((["a", "a-copy"], copy_said), (["a", "b", "a"], f"{option} `{keys / 'a'}` is given twice")):
        given = [arg for name in listed for arg in (option, keys / name)]
        if command == "sign":
            code, _, err = cli("sign", plan_file, *given, "-o", keys / "out")
            hint = "a key signs a plan once: list each signing key once"
        else:
            code, _, err = cli("trust", "init", "--key", keys / "a.pub", "--key", keys / "b.pub", "--threshold", "1", *given,
                               "-o", keys / "out")
            hint = "a key signs once: list each signing key once"
        assert code == 64 and err == f"error: {said}\n  = help: {hint}\n"
        assert not (keys / "out").exists()


def test_trust_init_refuses_a_root_its_signers_cannot_meet(cli, keys):
    args = ["--key", keys / "a.pub", "--key", keys / "b.pub", "--threshold", "2", "--sign-with", keys / "a"]
    code, _, err = cli("trust", "init", *args, "-o", keys / "root")
    assert code == 1 and "needs 2" in err and not (keys / "root").exists()


def test_trust_rotation_needs_a_threshold_of_the_current_root(cli, keys, plan_file):
    init = ["--key", keys / "a.pub", "--key", keys / "b.pub", "--threshold", "2"]
    cli("trust", "init", *init, "--sign-with", keys / "a", "--sign-with", keys / "b", "-o", keys / "root1")
    rotate = ["--current", keys / "root1", "--key", keys / "b.pub", "--key", keys / "c.pub", "--threshold", "2"]
    # signed only by the new keys: the current root's threshold (a and b) is not met
    a, b, c = (key_id(load_private_key((keys / name).read_bytes(), name).public_key()) for name in "abc")
    code, _, err = cli("trust", "rotate", *rotate, "--sign-with", keys / "b", "--sign-with", keys / "c", "-o", keys / "root2")
    assert code == 1 and not (keys / "root2").exists()
    assert f"the current root (version 1) needs 2 of its keys `{a}`, `{b}` (signed by `{b}`)" in err
    assert "the new root" not in err  # b and c meet the new root's own threshold
    # signed only by c: neither root's threshold is met, and the message names both
    err = cli("trust", "rotate", *rotate, "--sign-with", keys / "c", "-o", keys / "root2")[2]
    assert (f"error: rotating trust root version 1 to 2 needs a threshold of both roots: the current root (version 1) needs "
            f"2 of its keys `{a}`, `{b}` (signed by none of them); the new root (version 2) needs 2 of its keys `{b}`, `{c}` "
            f"(signed by `{c}`)") in err and "repeat --sign-with" in err
    signers = ["--sign-with", keys / "a", "--sign-with", keys / "b", "--sign-with", keys / "c"]
    assert cli("trust", "rotate", *rotate, *signers, "-o", keys / "root2")[0] == 0
    old, new = load_trust((keys / "root1").read_bytes(), "root1"), (keys / "root2").read_bytes()
    assert old.rotate(Envelope.from_bytes(new)).version == 2
    # the new root trusts c and no longer a
    cli("sign", plan_file, "--key", keys / "b", "--key", keys / "c", "-o", keys / "bc")
    cli("sign", plan_file, "--key", keys / "a", "--key", keys / "b", "-o", keys / "ab")
    assert cli("verify", keys / "bc", "--trust", keys / "root2")[0] == 0
    code, _, err = cli("verify", keys / "ab", "--trust", keys / "root2")
    assert code == 1 and "threshold-not-met" in err


def test_an_unsigned_plan_is_named_as_such(cli, keys, plan_file):
    code, _, err = cli("verify", plan_file, "--trust", keys / "a.pub")
    assert code == 1 and err == f"refused: unsigned: `{plan_file}` is an unsigned plan; sign it with `vaultpolicy sign`\n"


@pytest.mark.parametrize(
    "given, what",
    [("escrow.key.pub", "32 bytes in base64, like an X25519 escrow public key"), ("escrow.key", "an X25519 escrow private key"),
     ("a", "an Ed25519 private key"), ("signed", "a signed plan"), ("plan.json", "an unsigned plan")],
)
def test_a_wrong_trust_argument_is_blamed_not_the_plan(cli, keys, plan_file, given, what):
    assert cli("controller", "escrow-keygen", "-o", keys / "escrow.key")[0] == 0
    cli("sign", plan_file, "--key", keys / "a", "-o", keys / "signed")
    code, _, err = cli("verify", keys / "signed", "--trust", keys / given)
    assert code == 1 and err.startswith(
        f"refused: malformed-trust-root: `{keys / given}` is not a trust root or an Ed25519 public key (it is {what})\n")
    assert "envelope" not in err


@pytest.mark.parametrize(
    "given, what",
    [("a.pub", "an Ed25519 public key"), ("root", "a trust root"), ("escrow.key", "an X25519 escrow private key"),
     ("plan.json", "an unsigned plan"), ("notes.txt", "not a key file"), ("other.pem", "a PEM file holding no key")],
)
def test_a_wrong_signing_key_says_what_the_file_is(cli, keys, plan_file, given, what):
    assert cli("controller", "escrow-keygen", "-o", keys / "escrow.key")[0] == 0
    cli("trust", "init", "--key", keys / "a.pub", "--threshold", "1", "--sign-with", keys / "a", "-o", keys / "root")
    (keys / "notes.txt").write_text("remember to rotate\n")
    (keys / "other.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    for argv, option in ((["sign", plan_file, "--key", keys / given, "-o", keys / "out"], "--key"),
                         (["trust", "init", "--key", keys / "a.pub", "--threshold", "1", "--sign-with", keys / given,
                           "-o", keys / "out"], "--sign-with")):
        code, _, err = cli(*argv)
        assert code == 1 and not (keys / "out").exists()
        assert err == (f"error: `{keys / given}` is {what}; {option} needs the private key written by `vaultpolicy keygen` "
                       "(KEY, not KEY.pub)\n")  # one line of ours: no library text, no URL


def test_a_signing_key_others_can_read_is_refused(cli, keys, plan_file):
    """The escrow key was refused open to others; the controller's signing keys, which every device
    trusts, were read whatever their mode."""
    (keys / "a").chmod(0o640)
    for argv in (["sign", plan_file, "--key", keys / "a", "-o", keys / "out"],
                 ["trust", "init", "--key", keys / "a.pub", "--threshold", "1", "--sign-with", keys / "a", "-o", keys / "out"]):
        code, _, err = cli(*argv)
        assert code == 1 and not (keys / "out").exists()
        assert err == (f"error: signing key `{keys / 'a'}` is open to others (mode 0640): a private key must be its "
                       f"owner's alone\n  = help: chmod 600 {keys / 'a'}\n")


def test_a_wrong_public_key_for_a_trust_root_says_what_the_file_is(cli, keys):
    code, _, err = cli("trust", "init", "--key", keys / "a", "--threshold", "1", "--sign-with", keys / "a", "-o", keys / "root")
    assert code == 1 and err == (f"error: `{keys / 'a'}` is an Ed25519 private key; --key needs an Ed25519 public key "
                                 "(the KEY.pub written by `vaultpolicy keygen`)\n")


@pytest.mark.parametrize(
    "given, what",
    [("policy.vpol", "a policy (.vpol)"), ("a.pub", "an Ed25519 public key"), ("a", "an Ed25519 private key"),
     ("escrow.key", "an X25519 escrow private key")],
)
def test_a_file_given_as_the_signed_plan_is_named_for_what_it_is(cli, keys, given, what):
    """`verify p1.vpol` said `malformed envelope: not JSON (JSONDecodeError: Expecting value: line 1 column 1 (char 0))`."""
    (keys / "policy.vpol").write_text("# the gateway\nvault data { limit 16MiB }\n")
    assert cli("controller", "escrow-keygen", "-o", keys / "escrow.key")[0] == 0
    code, _, err = cli("verify", keys / given, "--trust", keys / "a.pub")
    assert code == 1 and err == (f"refused: malformed-envelope: `{keys / given}` is {what}, not a signed envelope\n"
                                 "  = help: a signed plan is what `vaultpolicy sign PLAN --key KEY -o SIGNED` writes from a "
                                 "compiled plan\n")


def test_a_broken_signed_plan_is_named_and_says_where_its_json_breaks(cli, keys, plan_file):
    cli("sign", plan_file, "--key", keys / "a", "-o", keys / "signed")
    (keys / "signed").write_bytes((keys / "signed").read_bytes()[:-1])
    code, _, err = cli("verify", keys / "signed", "--trust", keys / "a.pub")
    assert code == 1 and err.startswith(f"refused: malformed-envelope: `{keys / 'signed'}`: malformed envelope: not JSON ("
                                        "expecting ',' delimiter at line 1 column ")
    assert "JSONDecodeError" not in err and "char" not in err


def test_envelope_refusals_name_the_source_they_are_given():
    """The device names its stored applied plan this way (enforcer), so a damaged one is told apart."""
    with pytest.raises(PlanRejected, match=r"^`state/plan.signed`: malformed envelope: not JSON \(extra data at line 1 column 3\)$"):
        Envelope.from_bytes(b"{}x", "state/plan.signed")
    with pytest.raises(PlanRejected, match=r"^malformed envelope: not JSON \(extra data at line 1 column 3\)$"):
        Envelope.from_bytes(b"{}x")
    with pytest.raises(PlanRejected, match=r"^`s.json`: malformed envelope: no `signatures` field"):
        Envelope.from_bytes(b'{"payload_type": "x", "payload": ""}', "s.json")


def test_a_trust_root_given_as_the_signed_plan_is_the_wrong_payload_type(cli, keys):
    assert cli("trust", "init", "--key", keys / "a.pub", "--threshold", "1", "--sign-with", keys / "a", "-o", keys / "root")[0] == 0
    code, _, err = cli("verify", keys / "root", "--trust", keys / "root")
    assert code == 1 and err == f"refused: wrong-payload-type: `{keys / 'root'}` is a trust root, not a signed plan\n"
    # `plan show` names it alike (it said "envelope holds `application/vnd.vaultpolicy.trust-root.v1+json`")
    code, _, err = cli("plan", "show", keys / "root")
    assert code == 1 and err.startswith(f"error: `{keys / 'root'}` is a trust root, not a plan\n"), err
    key = load_private_key((keys / "a").read_bytes(), "a")
    other = sign("application/vnd.example+json", b"{}", [key])
    with pytest.raises(PlanRejected, match="envelope holds `application/vnd.example.json`, expected `application/vnd.vaultpolicy.plan"):
        TrustRoot.single(key.public_key()).verify(other, "application/vnd.vaultpolicy.plan.v1+json")
    (keys / "other").write_bytes(other.to_bytes())
    err = cli("verify", keys / "other", "--trust", keys / "a.pub")[2]
    assert err == f"refused: wrong-payload-type: `{keys / 'other'}` holds `application/vnd.example+json`, not a signed plan\n"


def test_a_signed_payload_that_is_not_a_plan_is_a_malformed_plan(cli, keys):
    key = load_private_key((keys / "a").read_bytes(), "a")
    for payload, why in ((b'{"schema_version": "1.0"}', "plan has no `plan_version` field"), (b"[1]", "plan is not a JSON object")):
        (keys / "signed").write_bytes(sign("application/vnd.vaultpolicy.plan.v1+json", payload, [key]).to_bytes())
        code, _, err = cli("verify", keys / "signed", "--trust", keys / "a.pub")
        assert code == 1 and err == f"refused: malformed-plan: `{keys / 'signed'}`: signed payload is not a valid plan: {why}\n"


def _rotated(keys: Path, version: int) -> Envelope:
    """A root of `version` listing key b, signed by the current root's key a and by b."""
    a = load_private_key((keys / "a").read_bytes(), "a")
    b = load_private_key((keys / "b").read_bytes(), "b")
    new = TrustRoot(version=version, threshold=1, keys=((key_id(b.public_key()), b.public_key()),))
    return sign(TRUST_ROOT_PAYLOAD_TYPE, new.payload(), [a, b])


@pytest.mark.parametrize("step", [0, 2, -1])
def test_a_trust_root_rotates_only_to_the_next_version(keys, step):
    """N -> N+1 only: the same version again (N -> N) or a skipped one (N -> N+2) is refused."""
    a = load_private_key((keys / "a").read_bytes(), "a")
    current = TrustRoot(version=3, threshold=1, keys=((key_id(a.public_key()), a.public_key()),))
    assert current.rotate(_rotated(keys, 4)).version == 4
    with pytest.raises(PlanRejected) as refused:
        current.rotate(_rotated(keys, 3 + step))
    assert (refused.value.reason, refused.value.message) == (
        "trust-root-version", f"new trust root has version {3 + step}, expected 4")


def test_trust_rotate_refuses_a_signed_plan_as_the_new_root(keys, plan_file):
    a = load_private_key((keys / "a").read_bytes(), "a")
    current = TrustRoot.single(a.public_key())
    with pytest.raises(PlanRejected) as refused:
        current.rotate(sign("application/vnd.vaultpolicy.plan.v1+json", plan_file.read_bytes(), [a]))
    assert refused.value.reason == "wrong-payload-type"
