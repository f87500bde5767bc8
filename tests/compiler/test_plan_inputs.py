"""Every author/controller command that reads a plan or a signed plan (diff, compile --prev, plan show,
sign) says in one error what is wrong with it: where broken JSON goes wrong, which field is missing.
Never a policy parse of JSON, never `None`, never a traceback."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from compiler.signing import PLAN_PAYLOAD_TYPE

POLICY = 'vault data { path "/persist/data" }\n'

# Each command with the plan it reads at `{plan}`.
COMMANDS = {
    "diff old": ("diff", "{plan}", "a.vpol"),
    "diff new": ("diff", "a.vpol", "{plan}"),
    "compile --prev": ("compile", "a.vpol", "--prev", "{plan}", "-o", "out.json"),
    "plan show": ("plan", "show", "{plan}"),
    "sign": ("sign", "{plan}", "--key", "k", "-o", "out.signed"),
}

BAD_PLANS = {
    "truncated plan": ('{"schema_version": 1, "vaults": [', "p.json:1:34: not a plan: JSON ends early"),
    "truncated envelope": ('\n  {"payload_type": "x",', "p.json:2:24: not a plan: JSON ends early"),
    "trailing comma": ('{"a": 1,}', "p.json:1:9: not a plan: invalid JSON: expecting property name"),
    "JSON of something else": ('{"x": 1}', "p.json: not a vaultpolicy plan: it has no `schema_version`"),
    "array": ("[1]", "p.json: plan is not a JSON object"),
    "plan without a field": ('{"schema_version": "1.0"}', "p.json: plan has no `plan_version` field"),
    "envelope without a field": (
        json.dumps({"payload_type": PLAN_PAYLOAD_TYPE, "payload": ""}),
        "p.json: malformed envelope: no `signatures` field",
    ),
    "envelope with an extra field": (
        json.dumps({"payload_type": PLAN_PAYLOAD_TYPE, "payload": "", "signatures": [], "note": ""}),
        "p.json: malformed envelope: unexpected field `note`",
    ),
    # bytes that are not JSON text: `plan show` said "byte 4 is not UTF-8 text" of the 5th byte;
    # positions are 1-based lines and columns, as in every other message
    "a byte that is not UTF-8": (b'{"ab\xff"}', "p.json:1:5: not a plan: invalid JSON: byte 0xff is not valid UTF-8"),
    "one on line 3": (b'{\n "ab": 1,\n "c\xffd"}', "p.json:3:4: not a plan: invalid JSON: byte 0xff is not valid UTF-8"),
    "a NUL in a string": (b'{"a\x00": 1}', "p.json:1:4: not a plan: invalid JSON: invalid control character\n"),
    "envelope of something else": (
        json.dumps({"payload_type": PLAN_PAYLOAD_TYPE, "payload": base64.b64encode(b'{"x": 1}').decode(), "signatures": []}),
        "p.json: not a vaultpolicy plan: it has no `schema_version`",
    ),
}


@pytest.fixture
def workdir(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a.vpol").write_text(POLICY)
    assert cli("keygen", "-o", "k")[0] == 0
    return tmp_path


@pytest.mark.parametrize("bad", BAD_PLANS)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_plan_is_one_error_naming_the_file_and_what_is_wrong(cli, workdir, command, bad):
    content, expected = BAD_PLANS[bad]
    Path("p.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    code, out, err = cli(*(arg.format(plan="p.json") for arg in COMMANDS[command]))
    assert code == 1 and out == ""
    assert err.startswith(f"error: {expected}"), err
    assert "VP0001" not in err and "None" not in err and "Traceback" not in err
    assert not Path("out.json").exists() and not Path("out.signed").exists()  # nothing written halfway


@pytest.mark.parametrize("command", [c for c in COMMANDS if not c.startswith("diff")] + ["controller nonce"])
def test_a_policy_or_key_where_a_plan_goes_is_named_for_what_it_is(cli, workdir, command):
    """`gateway.vpol:1:1: not a plan: invalid JSON: expecting value`; `verify` already said `is a policy (.vpol)`."""
    argv = COMMANDS.get(command, ("controller", "nonce", "--device-id", "d", "--plan", "{plan}"))
    for given, what in (("a.vpol", "a policy (.vpol)"), ("k.pub", "an Ed25519 public key")):
        code, _, err = cli(*(arg.format(plan=given) for arg in argv))
        assert code == 1 and err.startswith(f"error: `{given}` is {what}, not a plan\n"), err


@pytest.mark.parametrize("content,said", [
    (b'{"ab\xff"}', "byte 0xff is not valid UTF-8 at line 1 column 5"),
    # json.loads took the NUL for UTF-16 and said "byte 10 is not UTF-8 text", of valid UTF-8
    (b"v\x00ault x {}", "expecting value at line 1 column 1"),
    (b'{"a\x00": 1}', "invalid control character at line 1 column 4"),  # not "character at at line"
])
def test_json_that_is_not_text_is_named_at_its_line_and_column_by_every_reader(cli, workdir, content, said):
    Path("p.json").write_bytes(content)
    code, _, err = cli("verify", "p.json", "--trust", "k.pub")
    assert code == 1 and err == f"refused: malformed-envelope: `p.json`: malformed envelope: not JSON ({said})\n"
    code, _, err = cli("controller", "enroll", "p.json", "--store", "c.db")
    assert code == 1 and err == f"error: p.json: not JSON ({said})\n"


def test_an_allowed_values_file_that_is_not_utf8_is_named_at_its_line_and_column(cli, workdir):
    Path("values.txt").write_bytes(b"# firmware\n" + b"ab" * 16 + b"\xff" + b"ab" * 15 + b"\n")
    Path("p.vpol").write_text('attestation boot {\n  pcrs 0, 4, 7\n  allow pcr 0 from "values.txt"\n}\n')
    code, _, err = cli("check", "p.vpol")
    assert code == 1 and ("cannot read allowed values for PCR 0 from `values.txt`: byte 0xff is not valid UTF-8 "
                          "at line 2 column 33\n") in err, err
