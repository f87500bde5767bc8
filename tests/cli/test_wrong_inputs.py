"""A file of the wrong kind where a policy belongs: one error that says what the file is."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest

from policy_lang import syntax_codes
from policy_lang.diagnostics import Span, error, render_text
from vaultpolicy import status_codes
from vaultpolicy.cli import main


def _run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> dict[str, tuple[object, str]]:
    """A plan (with 300 vaults, so its one line is long), a signed plan and a key pair: file and what it is."""
    d = tmp_path_factory.mktemp("artefacts")
    policy = d / "p.vpol"
    policy.write_text("".join(f'vault v{n} {{ path "/persist/v{n}" }}\n' for n in range(300)))
    assert _run("compile", policy, "--plan-version", "1", "-o", d / "plan1.json")[0] == 0
    assert _run("keygen", "-o", d / "KEY")[0] == 0
    assert _run("sign", d / "plan1.json", "--key", d / "KEY", "-o", d / "signed.json")[0] == 0
    return {"plan": (d / "plan1.json", "an unsigned plan"), "signed plan": (d / "signed.json", "a signed plan"),
            "public key": (d / "KEY.pub", "an Ed25519 public key"), "private key": (d / "KEY", "an Ed25519 private key")}


COMMANDS = {
    "check": lambda f, tmp: ["check", f],
    "check json": lambda f, tmp: ["check", "--format", "json", f],
    "fmt": lambda f, tmp: ["fmt", f],
    "fmt --check": lambda f, tmp: ["fmt", "--check", f],
    "compile": lambda f, tmp: ["compile", f, "--plan-version", "2", "-o", tmp / "out.json"],
}


@pytest.mark.parametrize("kind", ["plan", "signed plan", "public key", "private key"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_plan_or_key_given_as_a_policy_is_one_error_saying_what_it_is(artefacts, tmp_path, command, kind):
    """A plan gave 100 VP0001 errors (296 KB, each repeating the plan's one line); a KEY.pub four."""
    file, what = artefacts[kind]
    before = file.read_bytes()
    code, out, err = _run(*COMMANDS[command](file, tmp_path))
    assert code == status_codes.ERROR
    if command == "check json":
        [d] = json.loads(out)["diagnostics"]
        assert (d["code"], d["message"]) == (syntax_codes.NOT_A_POLICY, f"`{file}` is not a policy: it is {what}")
        return
    assert err.count("error[") == 1, err
    assert f"error[{syntax_codes.NOT_A_POLICY}]: `{file}` is not a policy: it is {what}\n  --> {file}:1:1\n" in err
    assert len(err) < 1000
    assert file.read_bytes() == before and not (tmp_path / "out.json").exists()


def test_an_included_plan_is_named_at_the_include(artefacts, tmp_path):
    plan, _ = artefacts["plan"]
    policy = tmp_path / "p.vpol"
    policy.write_text(f'include "{plan}"\napp a {{ vault images }}\n')
    code, _, err = _run("check", policy)
    assert code == 1 and err.count("error[") == 1
    assert f"`{plan}` is not a policy: it is an unsigned plan" in err


def test_json_that_is_not_ours_is_named_json(tmp_path):
    other = tmp_path / "settings.json"
    other.write_text('\n  ["not", "a", "policy"]\n')
    code, _, err = _run("check", other)
    assert code == 1 and f"--> {other}:2:3" in err
    assert f"`{other}` is not a policy: it is JSON that is neither a key, a plan nor a trust root\n" in err


def test_a_plan_cut_short_is_one_error_naming_it_broken_json(artefacts, tmp_path):
    """Once a stray `{` no longer made a policy "not a policy", a truncated plan was parsed as a policy:
    one VP0001 per `:` and `[`, thousands for a large plan. JSON begins with `[` or `{"`, a policy never."""
    plan, _ = artefacts["plan"]
    cut = plan.read_bytes()[:150]
    for name in ("cut.json", "cut.vpol"):
        (tmp_path / name).write_bytes(cut)
        code, _, err = _run("check", tmp_path / name)
        assert code == 1 and err.count("error[") == 1, err
        assert f"`{tmp_path / name}` is not a policy: it is broken JSON (" in err and " at line 1 column " in err


STRAY_BRACE = "{\nvault a { limit 16MiB }\napp b { vault nosuch }\n"


@pytest.mark.parametrize("name", ["t.vpol", "policy.txt"])
def test_a_policy_with_a_stray_leading_brace_is_checked_as_a_policy(tmp_path, name):
    """It was "`t.vpol` is not a policy: it is not a key file" (VP0022), and nothing else was checked:
    a leading `{` was taken for JSON. Only a JSON document is; the brace is an error like any other."""
    policy = tmp_path / name
    policy.write_text(STRAY_BRACE)
    code, out, _ = _run("check", "--format", "json", policy)
    found = [(d["code"], d["span"]["line"], d["span"]["column"]) for d in json.loads(out)["diagnostics"]]
    assert (code, found) == (status_codes.ERROR, [(syntax_codes.UNEXPECTED_TOKEN, 1, 1), ("VP0101", 3, 15)])


@pytest.mark.parametrize("name", ["t.vpol", "p.txt"])
def test_diff_reads_a_policy_with_a_stray_leading_brace_as_a_policy(tmp_path, name):
    """As `check` does, whatever the file is called: `diff p.txt` said 'not a plan: invalid JSON'."""
    policy = tmp_path / name
    policy.write_text(STRAY_BRACE)
    code, _, err = _run("diff", policy, policy)
    assert code == status_codes.ERROR and "not a plan" not in err
    assert f"error[{syntax_codes.UNEXPECTED_TOKEN}]: unexpected `{{`\n  --> {policy}:1:1\n" in err


def test_a_json_document_named_vpol_is_still_named_for_what_it_is(artefacts, tmp_path):
    plan, _ = artefacts["plan"]
    named = tmp_path / "plan.vpol"
    named.write_bytes(plan.read_bytes())
    code, _, err = _run("check", named)
    assert code == status_codes.ERROR and err.count("error[") == 1
    assert f"`{named}` is not a policy: it is an unsigned plan" in err


def test_a_long_source_line_is_cut_around_the_span():
    line = "x" * 5000 + "@" + "y" * 5000
    span = Span(file="f", line=1, column=5001, end_line=1, end_column=5002, start_pos=5000, end_pos=5001)
    shown = render_text([error("VP0001", "unexpected `@`", span)], {"f": line}).splitlines()
    source, caret = shown[3], shown[4]
    assert len(source) < 140 and source.startswith("1 | …x") and source.endswith("y…")
    assert source[caret.index("^")] == "@" and caret.count("^") == 1


@pytest.mark.parametrize("options,message", [
    ([], "error: no plan version\n"),
    (["--plan-version", "0"], "error: --plan-version: 0 must be between 1 and "),
    (["--plan-version", "1", "--valid-for", "10"], "error: --valid-for: `10` is not a duration\n"),
    (["--plan-version", "1", "--valid-for", "0s"], "error: --valid-for: `0s` would make the plan expire"),
    (["--plan-version", "1", "--issued-at", "yesterday"], "error: --issued-at: "),
])
def test_compile_options_it_cannot_take_are_usage_errors(tmp_path, options, message):
    """`--plan-version abc` was 64 (argparse) while `--plan-version 0` or no version at all was 1."""
    policy = tmp_path / "p.vpol"
    policy.write_text("app a { vault images }\n")
    code, _, err = _run("compile", policy, "-o", tmp_path / "plan.json", *options)
    assert code == status_codes.USAGE and err.startswith(message), err
    assert not (tmp_path / "plan.json").exists()


def test_compile_plan_version_that_is_not_a_number_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", str(tmp_path / "p.vpol"), "--plan-version", "abc", "-o", str(tmp_path / "plan.json")])
    assert exit_info.value.code == status_codes.USAGE


@pytest.mark.parametrize("command", [("device", "status"), ("device", "apply", "plan.signed"), ("device", "quote", "--nonce", "00")],
                         ids=lambda command: " ".join(command[:2]))
def test_an_empty_tpm_is_a_usage_error(tmp_path, capsys, command):
    """`--tpm ""` selected the embedded swtpm, and apply recorded "" as the TPM the keys are sealed in."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--tpm", "", "--state-dir", str(tmp_path / "state")])
    assert exit_info.value.code == status_codes.USAGE
    assert "error: argument --tpm: is empty: give a TCTI string" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


KEY_GENERATORS = [("keygen",), ("controller", "escrow-keygen")]


@pytest.mark.parametrize("command", KEY_GENERATORS, ids=" ".join)
@pytest.mark.parametrize("force", [[], ["--force"]])
def test_keygen_into_a_directory_says_so_up_front(tmp_path, force, command):
    """It said "`/tmp` or `/tmp.pub` already exists; pass --force", then with --force "is a directory"."""
    code, _, err = _run(*command, "-o", tmp_path, *force)
    assert code == status_codes.ERROR and err.startswith(f"error: `{tmp_path}` is a directory\n"), err
    assert "--force" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", KEY_GENERATORS, ids=" ".join)
@pytest.mark.parametrize("existing", [["k"], ["k.pub"], ["k", "k.pub"]])
def test_keygen_names_the_key_file_that_exists(tmp_path, command, existing):
    """keygen said "`k` or `k.pub` already exists" whichever it was; `controller escrow-keygen OUT`
    took its output as a positional where keygen takes `-o KEY`."""
    for name in existing:
        (tmp_path / name).write_text("kept\n")
    code, _, err = _run(*command, "-o", tmp_path / "k")
    named = " and ".join(f"`{tmp_path / name}`" for name in existing)
    assert code == status_codes.ERROR and err.startswith(f"error: {named} already exist{'s' if len(existing) == 1 else ''}\n")
    assert all((tmp_path / name).read_text() == "kept\n" for name in existing)
    assert _run(*command, "-o", tmp_path / "k", "--force")[0] == status_codes.SUCCESS
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600 and (tmp_path / "k.pub").read_text() != "kept\n"

