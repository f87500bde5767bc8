"""Plans are decoded strictly (S12): what the device reads is exactly typed, names no field twice, and
is consistent in what the device relies on. Each refusal names the field or the thing and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.plan import (PlanFormatError, PlanInconsistent, canonical_json, decode_canonical_plan, decode_plan,
                          encode_plan)

POLICY = """\
attestation boot { pcrs 0, 4, 7 }
vault data { path "/persist/data"  limit 16MiB }
vault logs { path "/persist/logs"  seal pcrs 0, 4, 7 }
app historian { vault data  protection end_to_end }
component agent { stores "/persist/data/agent" sensitive }
"""


@pytest.fixture
def plan_json(plan_of) -> dict:
    return json.loads(encode_plan(plan_of(POLICY)))


def _vault(plan: dict, name: str) -> dict:
    return next(v for v in plan["vaults"] if v["name"] == name)


def _refusal(plan: dict) -> str:
    with pytest.raises(PlanFormatError) as caught:
        decode_plan(json.dumps(plan).encode())
    return str(caught.value)


def test_a_compiled_plan_decodes_to_itself(plan_json):
    payload = json.dumps(plan_json).encode()
    assert encode_plan(decode_plan(payload)) == encode_plan(decode_plan(encode_plan(decode_plan(payload))))


LAX = {
    "a float version": (lambda p: p.update(plan_version=3.0), "plan field `plan_version`: input should be a valid integer, not `3.0`"),
    "a word for true": (lambda p: _vault(p, "data").update(protected="yes"),
                        "plan field `vaults.1.protected` (vault `data`): input should be a valid boolean, not `\"yes\"`"),
    "a size in a string": (lambda p: _vault(p, "data").update(limit_bytes="16777216"),
                           "plan field `vaults.1.limit_bytes` (vault `data`): input should be a valid integer, not `\"16777216\"`"),
    "0 for false": (lambda p: p["device"].update(tpm_required=0),
                    "plan field `device.tpm_required`: input should be a valid boolean, not `0`"),
    "PCRs as strings": (lambda p: _vault(p, "logs")["seal"].update(pcrs=["0", "7"]),
                        "plan field `vaults.3.seal.pcrs.0` (vault `logs`): input should be a valid integer, not `\"0\"`"),
    "a number for the schema version": (lambda p: p.update(schema_version=1), "plan schema version `1` is not supported"),
    "a limit beyond exact JSON integers": (lambda p: _vault(p, "data").update(limit_bytes=2**60),
                                           "plan field `vaults.1.limit_bytes` (vault `data`): input should be less than or equal to 9007199254740991"),
    # RFC 3339 has two digits for each; strptime took one too
    "a month of one digit": (lambda p: p.update(issued_at="2026-1-05T00:00:00Z"),
                             "plan field `issued_at`: value error, `2026-1-05T00:00:00Z` is not an RFC 3339 UTC time"),
}


@pytest.mark.parametrize("case", LAX)
def test_values_of_another_json_type_are_refused_by_field(plan_json, case):
    change, expected = LAX[case]
    change(plan_json)
    assert _refusal(plan_json).startswith(expected)


def test_a_field_given_twice_is_refused():
    """Readers disagree on which value of a repeated field counts: the signer may have read the other one."""
    with pytest.raises(PlanFormatError, match="plan gives the field `plan_version` twice in one object"):
        decode_plan(b'{"schema_version": "1.0", "plan_version": 1, "plan_version": 2}')


INCONSISTENT = {
    "a vault named twice": (lambda p: p["vaults"].append(dict(_vault(p, "data"), path="/persist/other")),
                            "it lists vault `data` twice"),
    "an app on a vault the plan lacks": (lambda p: p["apps"][0].update(vault="nowhere"),
                                         "app `historian` uses vault `nowhere`, which the plan does not have"),
    "an end-to-end app on a plain vault": (
        lambda p: _vault(p, "data").update(encryption="none", seal=None),
        "app `historian` is end-to-end but its vault `data` is not encrypted"),
    "PCR 5 sealed": (lambda p: _vault(p, "logs")["seal"].update(pcrs=[0, 4, 5, 7]),
                     "vault `logs` lists PCR 5, which flips on every A/B update"),
    "a PCR that does not exist": (lambda p: _vault(p, "logs")["seal"].update(pcrs=[0, 4, 7, 24]),
                                  "vault `logs` lists PCR 24, which does not exist"),
    "PCRs out of order": (lambda p: _vault(p, "logs")["seal"].update(pcrs=[7, 0, 4]), "not in ascending order"),
    "an encrypted vault without a seal": (lambda p: _vault(p, "logs").update(seal=None),
                                          "vault `logs` has encryption `aes-256-xts` and no seal"),
    "a seal naming no attestation": (lambda p: _vault(p, "data")["seal"].update(attestation="boat"),
                                     "vault `data` is sealed to attestation `boat`, which the plan does not have"),
    "a seal that differs from its attestation": (lambda p: _vault(p, "data")["seal"].update(pcrs=[0, 7]),
                                                 "but its attestation `boot` lists sha256 PCRs [0, 4, 7]"),
    "a vault outside the persist root": (lambda p: _vault(p, "data").update(path="/var/data"),
                                         "vault `data` at `/var/data` is not below the persist root `/persist`"),
    "a vault on the persist root": (lambda p: _vault(p, "data").update(path="/persist"), "is not below the persist root"),
    "a path with `..`": (lambda p: _vault(p, "data").update(path="/persist/x/../data"), "not an absolute normalized path"),
    "a control character in a path": (lambda p: _vault(p, "data").update(path="/persist/da\nta"), "`/persist/da\\nta`"),
    # the compiler refuses these in a policy (VP0207): the device refuses them in a plan made elsewhere
    "a zero-width space in a path": (lambda p: _vault(p, "data").update(path="/persist/da\u200bta"),
                                     "vault `data` has path `/persist/da\\u{200b}ta`, which is not an absolute normalized path"),
    "a bidi control in a stored directory": (
        lambda p: p["components"][0]["stores"][0].update(path=p["components"][0]["stores"][0]["path"] + "\u202e"),
        "\\u{202e}`, which is not an absolute normalized path"),
    "a zero-width space in a target": (lambda p: p.update(targets=["gw-1\u200b"]),
                                       "target `gw-1\\u{200b}` is not a device id or `class:NAME`"),
    "nested vaults": (lambda p: _vault(p, "logs").update(path="/persist/data/logs"),
                      "vault `logs` at `/persist/data/logs` lies inside vault `data` (`/persist/data`)"),
    "a component in a vault the plan lacks": (lambda p: p["components"][0]["stores"][0].update(vault="gone"),
                                              "in vault `gone`, which the plan does not have"),
    "allowed values for an unlisted PCR": (lambda p: p["attestations"][0].update(allowed={"2": ["ab" * 32]}),
                                           "attestation `boot` allows values for PCR `2`, which it does not list"),
    "escrow required without a key": (lambda p: p["attestations"][0].update(escrow_required=True),
                                      "attestation `boot` requires escrow but the device has no `escrow_public_key`"),
    "a target named twice": (lambda p: p.update(targets=["gw-1", "gw-1"]), "it lists target `gw-1` twice"),
    "expiry before issue": (lambda p: p.update(expires=p["issued_at"]), "no later than it is issued"),
}


@pytest.mark.parametrize("case", INCONSISTENT)
def test_a_plan_that_contradicts_itself_is_refused_saying_where(plan_json, case):
    change, expected = INCONSISTENT[case]
    change(plan_json)
    with pytest.raises(PlanInconsistent) as caught:
        decode_plan(json.dumps(plan_json).encode())
    assert str(caught.value).startswith("plan is inconsistent: ") and expected in str(caught.value)


CANONICAL = {**{case: change for case, (change, _) in INCONSISTENT.items()},
             "a word for true": LAX["a word for true"][0], "PCRs as strings": LAX["PCRs as strings"][0],
             "a number for the schema version": LAX["a number for the schema version"][0],
             "another major schema version": lambda p: p.update(schema_version="2.0"),
             "a field the schema lacks": lambda p: p.update(extra=1)}


@pytest.mark.parametrize("case", CANONICAL)
def test_a_bad_plan_in_its_canonical_encoding_is_refused_as_decode_plan_refuses_it(plan_json, case):
    """decode_canonical_plan reads bytes in their one encoding with pydantic alone, without decode_plan's
    first read in Python: what decode_plan checks besides (the schema version, consistency) it still
    refuses, in the same words."""
    CANONICAL[case](plan_json)
    payload = canonical_json(plan_json)
    with pytest.raises(PlanFormatError) as strict:
        decode_plan(payload)
    with pytest.raises(PlanFormatError) as canonical:
        decode_canonical_plan(payload)
    assert (type(canonical.value), str(canonical.value)) == (type(strict.value), str(strict.value))


def test_a_plan_in_its_canonical_encoding_decodes_as_decode_plan_decodes_it(plan_json):
    payload = canonical_json(plan_json)
    assert decode_canonical_plan(payload) == decode_plan(payload)


def test_diff_refuses_a_plan_with_a_vault_named_twice(cli, tmp_path, monkeypatch, plan_json):
    """`_pairs` matched things by name, so the second `data` vanished and the diff said "no changes"."""
    monkeypatch.chdir(tmp_path)
    Path("p1.json").write_text(json.dumps(plan_json))
    plan_json["vaults"].append(dict(_vault(plan_json, "data"), path="/persist/copy", encryption="none", seal=None))
    Path("dupv.json").write_text(json.dumps(plan_json))
    code, out, err = cli("diff", "dupv.json", "p1.json", "--exit-code")
    assert (code, out) == (1, "")
    assert err == "error: dupv.json: plan is inconsistent: it lists vault `data` twice\n"


def test_verify_refuses_a_signed_lax_plan_as_malformed(cli, tmp_path, plan_json):
    plan_json["plan_version"] = 3.0
    (tmp_path / "lax.json").write_text(json.dumps(plan_json))
    assert cli("keygen", "-o", tmp_path / "k")[0] == 0
    from compiler.signing import PLAN_PAYLOAD_TYPE, load_private_key, sign

    key = load_private_key((tmp_path / "k").read_bytes(), "k")
    (tmp_path / "lax.signed").write_bytes(sign(PLAN_PAYLOAD_TYPE, (tmp_path / "lax.json").read_bytes(), [key]).to_bytes())
    code, _, err = cli("verify", tmp_path / "lax.signed", "--trust", tmp_path / "k.pub")
    assert code == 1 and err.startswith(f"refused: malformed-plan: `{tmp_path / 'lax.signed'}`: signed payload is not a valid "
                                        "plan: plan field `plan_version`")


def test_verify_refuses_a_signed_inconsistent_plan_with_the_devices_reason(cli, tmp_path, plan_json):
    plan_json["vaults"].append(dict(_vault(plan_json, "data"), path="/persist/copy"))
    (tmp_path / "dup.json").write_text(json.dumps(plan_json))
    assert cli("keygen", "-o", tmp_path / "k")[0] == 0
    from compiler.signing import PLAN_PAYLOAD_TYPE, load_private_key, sign

    key = load_private_key((tmp_path / "k").read_bytes(), "k")
    (tmp_path / "dup.signed").write_bytes(sign(PLAN_PAYLOAD_TYPE, (tmp_path / "dup.json").read_bytes(), [key]).to_bytes())
    code, _, err = cli("verify", tmp_path / "dup.signed", "--trust", tmp_path / "k.pub")
    assert (code, err) == (1, f"refused: plan-inconsistent: `{tmp_path / 'dup.signed'}`: plan is inconsistent: "
                              "it lists vault `data` twice\n")
