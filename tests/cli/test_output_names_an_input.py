"""Every command that writes `-o` refuses one naming its own input (exit 64), before it writes anything.
`compile`'s own inputs are tested in tests/compiler/test_build.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaultpolicy import status_codes
from vaultpolicy.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "minimal.vpol"


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A plan, a signed plan, two key pairs, a trust root, and stand-ins for a quote and an escrow key
    (`controller release` refuses its -o before it reads either)."""
    monkeypatch.chdir(tmp_path)
    assert main(["compile", str(EXAMPLE), "--plan-version", "1", "-o", "plan.json"]) == 0
    for key in ("k1", "k2"):
        assert main(["keygen", "-o", key]) == 0
    assert main(["sign", "plan.json", "--key", "k1", "-o", "signed.json"]) == 0
    assert main(["trust", "init", "--key", "k1.pub", "--threshold", "1", "--sign-with", "k1", "-o", "r1.json"]) == 0
    Path("quote.json").write_text("{}")
    Path("escrow.key").write_text("not read")
    Path("c.db").write_bytes(b"")
    return tmp_path


# (command line with OUT for the -o, the input OUT names, what the error calls it)
CASES = [
    (["sign", "plan.json", "--key", "k1", "-o", "OUT"], "plan.json", "the plan"),
    (["sign", "signed.json", "--key", "k2", "-o", "OUT"], "signed.json", "the plan"),
    (["sign", "plan.json", "--key", "k1", "-o", "OUT"], "k1", "a signing key (--key)"),
    (["trust", "init", "--key", "k1.pub", "--threshold", "1", "--sign-with", "k1", "-o", "OUT"], "k1.pub",
     "a public key (--key)"),
    (["trust", "init", "--key", "k1.pub", "--threshold", "1", "--sign-with", "k1", "-o", "OUT"], "k1",
     "a signing key (--sign-with)"),
    (["trust", "rotate", "--current", "r1.json", "--key", "k2.pub", "--threshold", "1", "--sign-with", "k1",
      "--sign-with", "k2", "-o", "OUT"], "k2", "a signing key (--sign-with)"),
    (["trust", "rotate", "--current", "r1.json", "--key", "k2.pub", "--threshold", "1", "--sign-with", "k1",
      "--sign-with", "k2", "-o", "OUT"], "r1.json", "the current trust root"),
    (["controller", "release", "quote.json", "--escrow-key", "escrow.key", "--store", "c.db", "-o", "OUT"],
     "escrow.key", "the escrow key"),
    (["controller", "release", "quote.json", "--escrow-key", "escrow.key", "--store", "c.db", "-o", "OUT"],
     "quote.json", "the quote"),
    (["controller", "release", "quote.json", "--escrow-key", "escrow.key", "--store", "c.db", "-o", "OUT"],
     "c.db", "the controller store (--store)"),
]


@pytest.mark.parametrize("argv,named,what", CASES, ids=[f"{' '.join(c[0][:2])}: {c[1]}" for c in CASES])
def test_an_output_naming_an_input_is_a_usage_error_and_writes_nothing(files, capsys, argv, named, what):
    """`sign mm.json --key kx -o kx` replaced the private key with an envelope and exited 0; `trust
    rotate … --sign-with k2 -o k2` and `trust init … -o k1.pub` likewise overwrote a key."""
    before = {path.name: path.read_bytes() for path in files.iterdir()}
    code = main([named if arg == "OUT" else arg for arg in argv])
    err = capsys.readouterr().err
    assert code == status_codes.USAGE, err
    assert err.startswith(f"error: -o `{named}` is {what}: writing it would destroy an input\n"), err
    assert {path.name: path.read_bytes() for path in files.iterdir()} == before


def test_another_name_for_an_input_is_refused_too(files, capsys):
    """By device and inode, as `compile` compares: a symlink to the private key is the private key."""
    Path("alias").symlink_to("k1")
    before = Path("k1").read_bytes()
    assert main(["sign", "plan.json", "--key", "k1", "-o", "alias"]) == status_codes.USAGE
    assert "error: -o `alias` is a signing key (--key) (`k1`): writing it would destroy an input\n" in capsys.readouterr().err
    assert Path("k1").read_bytes() == before
