"""A UTF-8 byte order mark at the start of any text file a command reads means nothing: an editor
put it there. Policies always took one; allowed values, keys, trust roots and plans refused it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from compiler.plan import decode_plan

BOM = b"\xef\xbb\xbf"


def _with_bom(path: Path) -> Path:
    marked = path.with_name(f"bom-{path.name}")
    marked.write_bytes(BOM + path.read_bytes())
    shutil.copymode(path, marked)  # a private key stays its owner's alone
    return marked


@pytest.fixture
def made(cli, tmp_path, monkeypatch):
    """Files as the commands write them (no BOM), in the working directory."""
    monkeypatch.chdir(tmp_path)
    Path("values.txt").write_text("# firmware\n" + "ab" * 32 + "\n")
    assert cli("controller", "escrow-keygen", "-o", "escrow")[0] == 0
    assert cli("keygen", "-o", "k")[0] == 0
    Path("p.vpol").write_text('device { escrow_key "escrow.pub" }\n'
                              'attestation boot {\n  pcrs 0, 4, 7\n  allow pcr 0 from "values.txt"\n}\n')
    assert cli("compile", "p.vpol", "--plan-version", "1", "-o", "plan.json")[0] == 0
    assert cli("sign", "plan.json", "--key", "k", "-o", "signed.json")[0] == 0
    assert cli("trust", "init", "--key", "k.pub", "--threshold", "1", "--sign-with", "k", "-o", "root.json")[0] == 0
    return tmp_path


def test_files_a_policy_names_may_start_with_a_bom(cli, made):
    """`line 1 is not a hexadecimal digest`, `not a key file`."""
    _with_bom(Path("values.txt"))
    _with_bom(Path("escrow.pub"))
    Path("bom.vpol").write_text('device { escrow_key "bom-escrow.pub" }\n'
                                'attestation boot {\n  pcrs 0, 4, 7\n  allow pcr 0 from "bom-values.txt"\n}\n')
    code, out, err = cli("check", "bom.vpol")
    assert code == 0 and "0 errors" in out, err
    assert cli("compile", "bom.vpol", "--plan-version", "1", "-o", "bom-plan.json")[0] == 0
    with_bom, without = (decode_plan(Path(name).read_bytes()) for name in ("bom-plan.json", "plan.json"))
    assert (with_bom.device, with_bom.attestations) == (without.device, without.attestations)


def test_plans_keys_and_trust_roots_may_start_with_a_bom(cli, made):
    """`plan show`: `unexpected UTF-8 BOM (decode using utf-8-sig)`; `diff` read the plan as a policy."""
    plan, signed, root, key, public = (_with_bom(Path(name)) for name in ("plan.json", "signed.json", "root.json", "k", "k.pub"))
    code, out, err = cli("plan", "show", plan)
    assert code == 0 and out.startswith("plan version 1"), err
    assert cli("diff", plan, "p.vpol", "--exit-code")[:2] == (0, f"diff {plan} -> p.vpol\nno changes\n")
    assert cli("diff", signed, plan, "--exit-code")[0] == 0
    code, _, err = cli("sign", plan, "--key", key, "-o", "again.json")
    assert code == 0, err
    assert cli("verify", "again.json", "--trust", root)[0] == 0
    assert cli("verify", signed, "--trust", public)[0] == 0
    assert cli("trust", "init", "--key", public, "--threshold", "1", "--sign-with", key, "-o", "root2.json")[0] == 0
    assert cli("compile", "p.vpol", "--prev", signed, "-o", "plan2.json")[0] == 0
