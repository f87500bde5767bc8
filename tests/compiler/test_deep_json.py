"""JSON nested deeper than the interpreter's stack, as input to every command that reads JSON: the
error of any malformed JSON ("nested too deeply"), never an internal error (RecursionError, exit 70)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vaultpolicy.encoding import load_json

DEEP = "[" * 1000 + "]" * 1000


def test_load_json_says_where_the_nesting_goes_too_deep():
    for document in (DEEP, DEEP.encode(), '{"payload_type": "x", "a": "[[[[", "b": ' + DEEP + "}"):
        with pytest.raises(json.JSONDecodeError, match=r"^nested too deeply: line 1 column \d+"):
            load_json(document)
    assert load_json(b'{"a": [[1]]}') == {"a": [[1]]}


@pytest.fixture
def inputs(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("deep.json").write_text(DEEP)
    Path("deep-envelope.json").write_text('{"payload_type": ' + DEEP + "}")
    Path("p.vpol").write_text("app a { vault images }\n")
    assert cli("keygen", "-o", "k")[0] == 0
    assert cli("compile", "p.vpol", "--plan-version", "1", "-o", "plan.json")[0] == 0
    assert cli("sign", "plan.json", "--key", "k", "-o", "signed.json")[0] == 0
    return tmp_path


@pytest.mark.parametrize("argv, said", [
    (["plan", "show", "deep.json"], "error: deep.json:1:100: not a plan: invalid JSON: nested too deeply\n"),
    (["plan", "show", "deep-envelope.json"], "error: deep-envelope.json:1:116: not a plan: invalid JSON: nested too deeply\n"),
    (["sign", "deep.json", "--key", "k", "-o", "out.json"], "not a plan: invalid JSON: nested too deeply"),
    (["diff", "deep.json", "plan.json"], "not a plan: invalid JSON: nested too deeply"),
    (["compile", "p.vpol", "--prev", "deep.json", "-o", "out.json"], "not a plan: invalid JSON: nested too deeply"),
    (["verify", "deep.json", "--trust", "k.pub"], "malformed envelope: not JSON (nested too deeply at line 1 column 100)"),
    (["verify", "signed.json", "--trust", "deep.json"], "`deep.json` is not a trust root or an Ed25519 public key"),
    (["check", "deep.json"], "error[VP0022]: `deep.json` is not a policy"),
    (["controller", "enroll", "deep.json"], "error: deep.json: not JSON (nested too deeply at line 1 column 100)"),
    (["controller", "verify-quote", "deep.json", "--plan", "plan.json"], "deep.json: not JSON (nested too deeply"),
    (["device", "escrow-ack", "deep.json", "--state-dir", "state"], "deep.json: not JSON (nested too deeply"),
])
def test_deep_json_is_malformed_json(cli, inputs, argv, said):
    code, out, err = cli(*argv)
    assert code == 1 and said in out + err, (code, out, err)
    assert "internal error" not in err and not Path("out.json").exists()
