"""Plans: built-in defaults, determinism, versions and digests, files the policy names, and `compile`."""

from __future__ import annotations

import base64
import importlib
import json
from datetime import timedelta
from pathlib import Path

import pytest

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from compiler.plan import BANK_DIGEST_BYTES, decode_plan, encode_plan, plan_digest

EXAMPLE = Path(__file__).parents[2] / "examples" / "gateway.vpol"
ISSUED = "2026-01-01T00:00:00Z"


def test_builtin_vaults_and_defaults(plan_of):
    plan = plan_of("app a { }\n")
    config, images = plan.vaults
    assert (config.name, config.path, config.protected, config.builtin) == ("config", "/persist/vault/config", True, True)
    assert (images.name, images.path, images.protected) == ("images", "/persist/vault/images", False)
    for vault in plan.vaults:
        assert vault.encryption == "aes-256-xts" and vault.on_remove == "retain"
        assert vault.rotate_seconds == 180 * 86400
        assert (vault.seal.bank, vault.seal.pcrs, vault.seal.attestation) == ("sha256", (0, 4, 7), None)
    assert plan.apps[0].vault == "images"  # mutated app images live in the images vault
    assert plan.protected == ("config",)


def test_the_only_attestation_is_the_default_seal_and_a_declared_builtin_overrides(plan_of):
    plan = plan_of(
        "attestation boot { pcrs 0, 2, 4, 7 }\n"
        'vault config { path "/persist/cfg"  limit 16MiB  rotate every 90d }\n'
        "defaults { on_remove retain }\n"
    )
    config = plan.vault("config")
    assert (config.path, config.limit_bytes, config.rotate_seconds, config.protected) == ("/persist/cfg", 16 << 20, 90 * 86400, True)
    assert (config.seal.attestation, config.seal.pcrs) == ("boot", (0, 2, 4, 7))


def test_same_policy_gives_identical_bytes_in_any_declaration_order(plan_of):
    a = 'vault b { path "/persist/b" }\nvault a { path "/persist/a" }\napp y { vault a }\napp x { vault b }\n'
    b = 'app x { vault b }\napp y { vault a }\nvault a { path "/persist/a" }\nvault b { path "/persist/b" }\n'
    assert encode_plan(plan_of(a)) == encode_plan(plan_of(a)) == encode_plan(plan_of(b))


def test_compile_twice_gives_identical_bytes(cli, tmp_path):
    outputs = []
    for name in ("one.json", "two.json"):
        code, _, err = cli("compile", EXAMPLE, "--plan-version", "3", "--issued-at", ISSUED, "--target", "gw-1", "-o", tmp_path / name)
        assert code == 0, err
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    plan = decode_plan(outputs[0])
    assert (plan.plan_version, plan.issued_at, plan.expires, plan.targets) == (3, ISSUED, "2026-01-31T00:00:00Z", ("gw-1",))

    def no_float(text: str):
        raise AssertionError(f"a float in the plan: {text}")

    json.loads(outputs[0], parse_float=no_float, parse_constant=no_float)  # anywhere in the plan, not only in vaults


def test_compile_says_what_it_wrote_in_words(cli, tmp_path):
    """It said `1 apps`."""
    policy = tmp_path / "one.vpol"
    policy.write_text('vault data { path "/persist/data" }\napp logger { vault data }\n')
    code, out, err = cli("compile", policy, "--plan-version", "1", "-o", tmp_path / "plan.json")
    assert code == 0, err
    assert out.strip() == f"wrote {tmp_path / 'plan.json'}: plan version 1, 3 vaults, 1 app"  # config and images too


def test_prev_gives_the_next_version_and_its_digest(cli, tmp_path):
    first, second = tmp_path / "1.json", tmp_path / "2.json"
    assert cli("compile", EXAMPLE, "--plan-version", "7", "--issued-at", ISSUED, "-o", first)[0] == 0
    assert cli("compile", EXAMPLE, "--prev", first, "--issued-at", ISSUED, "-o", second)[0] == 0
    plan = decode_plan(second.read_bytes())
    assert plan.plan_version == 8 and plan.prev_plan_sha256 == plan_digest(first.read_bytes())


def test_a_version_not_above_prev_is_refused(cli, tmp_path):
    first = tmp_path / "1.json"
    cli("compile", EXAMPLE, "--plan-version", "7", "-o", first)
    code, _, err = cli("compile", EXAMPLE, "--prev", first, "--plan-version", "7", "-o", tmp_path / "2.json")
    assert code == 1 and "not above the previous plan's 7" in err and not (tmp_path / "2.json").exists()


def test_source_digest_ignores_formatting_but_not_content(cli, tmp_path):
    text = EXAMPLE.read_text()
    variants = {"same": text, "reformatted": text.replace("limit 16MiB", "limit    16MiB"), "changed": text.replace("16MiB", "32MiB")}
    digests = {}
    for name, content in variants.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "p.vpol").write_text(content)
        assert cli("compile", tmp_path / name / "p.vpol", "--plan-version", "1", "-o", tmp_path / name / "p.json")[0] == 0
        digests[name] = decode_plan((tmp_path / name / "p.json").read_bytes()).source_sha256
    assert digests["same"] == digests["reformatted"] != digests["changed"]


def test_compile_parses_each_file_once(cli, tmp_path, monkeypatch):
    """The source digest lays out the parse `load` made: formatting the text for it parsed the
    policy four more times, most of what compile cost (bench/compile.py)."""
    import policy_lang.parse

    tokenized = []
    real = policy_lang.parse.tokenize
    monkeypatch.setattr(policy_lang.parse, "tokenize", lambda text, file: tokenized.append(file) or real(text, file))
    (tmp_path / "vaults.vpol").write_text('vault data { path "/persist/data" }\n')
    (tmp_path / "p.vpol").write_text('include "vaults.vpol"\napp a { vault data }\n')
    assert cli("compile", tmp_path / "p.vpol", "--plan-version", "1", "-o", tmp_path / "plan.json")[0] == 0
    assert sorted(tokenized) == [str(tmp_path / "p.vpol"), str(tmp_path / "vaults.vpol")]
    tokenized.clear()
    assert cli("fmt", "--check", tmp_path / "vaults.vpol")[0] == 0
    assert len(tokenized) == 2  # fmt alone re-parses what it wrote, to check that the meaning is kept


def test_compile_prints_every_error_and_writes_no_plan(cli, tmp_path):
    policy = tmp_path / "bad.vpol"
    policy.write_text('vault a { path "/persist/a" }\nvault b { path "/persist/a/b" }\napp x { vault c }\n')
    code, _, err = cli("compile", policy, "--plan-version", "1", "-o", tmp_path / "plan.json")
    assert code == 1 and not (tmp_path / "plan.json").exists()
    assert "error[VP0204]" in err and "error[VP0101]" in err and f"--> {policy}:3:15" in err and "2 errors" in err


def test_escrow_key_file_is_read_relative_to_the_policy(plan_of, tmp_path, cli):
    public = X25519PrivateKey.generate().public_key()
    (tmp_path / "escrow.pub").write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    policy = tmp_path / "p.vpol"
    policy.write_text('device { escrow_key "escrow.pub" }\nattestation boot { pcrs 0, 4, 7  escrow required }\n')
    assert cli("compile", policy, "--plan-version", "1", "-o", tmp_path / "plan.json")[0] == 0
    plan = decode_plan((tmp_path / "plan.json").read_bytes())
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert base64.b64decode(plan.device.escrow_public_key) == raw and plan.attestations[0].escrow_required


def test_missing_escrow_key_file_is_a_diagnostic_at_its_name(cli, tmp_path):
    policy = tmp_path / "p.vpol"
    policy.write_text('device {\n  escrow_key "absent.pub"\n}\n')
    code, _, err = cli("compile", policy, "--plan-version", "1", "-o", tmp_path / "plan.json")
    assert code == 1 and "error[VP0604]" in err and f"--> {policy}:2:14" in err and "Traceback" not in err


def test_allowed_values_from_a_file(cli, tmp_path):
    digest = "ab" * 32
    (tmp_path / "pcr0.txt").write_text(f"# firmware 1.2\n{digest.upper()}\n")
    policy = tmp_path / "p.vpol"
    policy.write_text('attestation boot {\n  pcrs 0, 4, 7\n  allow pcr 0 from "pcr0.txt"\n  allow pcr 4 from "none.txt"\n}\n')
    code, _, err = cli("compile", policy, "--plan-version", "1", "-o", tmp_path / "plan.json")
    assert code == 1 and "error[VP0605]" in err and f"--> {policy}:4:20" in err and "pcr0.txt" not in err
    policy.write_text('attestation boot {\n  pcrs 0, 4, 7\n  allow pcr 0 from "pcr0.txt"\n}\n')
    assert cli("compile", policy, "--plan-version", "1", "-o", tmp_path / "plan.json")[0] == 0
    assert decode_plan((tmp_path / "plan.json").read_bytes()).attestations[0].allowed == {"0": (digest,)}


def test_plan_show_renders_a_summary(cli, tmp_path):
    cli("compile", EXAMPLE, "--plan-version", "2", "--issued-at", ISSUED, "-o", tmp_path / "plan.json")
    code, out, _ = cli("plan", "show", tmp_path / "plan.json")
    assert code == 0
    assert "plan version 2" in out and "config (built-in) [protected]" in out
    assert "plc-historian -> images [end-to-end]" in out and "sealed to sha256 PCRs 0, 4, 7 (attestation boot)" in out


def test_bad_options_are_clear_errors(cli, tmp_path):
    code, _, err = cli("compile", EXAMPLE, "-o", tmp_path / "p.json")
    assert code == 64 and "--plan-version" in err
    code, _, err = cli("compile", EXAMPLE, "--plan-version", "1", "--valid-for", "soon", "-o", tmp_path / "p.json")
    assert code == 64 and "--valid-for: `soon` is not a duration" in err
    code, _, err = cli("compile", tmp_path / "missing.vpol", "--plan-version", "1", "-o", tmp_path / "p.json")
    assert code == 1 and "missing.vpol" in err and "Traceback" not in err


def test_escrow_key_made_by_the_controller_is_accepted(cli, tmp_path):
    assert cli("controller", "escrow-keygen", "-o", tmp_path / "escrow")[0] == 0
    policy = tmp_path / "p.vpol"
    policy.write_text('device { escrow_key "escrow.pub" }\nattestation boot { pcrs 0, 4, 7  escrow required }\n')
    assert cli("compile", policy, "--plan-version", "1", "-o", tmp_path / "plan.json")[0] == 0
    plan = decode_plan((tmp_path / "plan.json").read_bytes())
    assert plan.device.escrow_public_key == (tmp_path / "escrow.pub").read_text().strip()


def test_check_reports_the_named_files_compile_refuses(cli, tmp_path):
    # check read none of the named files: it passed what compile then refused with VP0604/VP0605
    (tmp_path / "comment.txt").write_text("# firmware 1.2, digest to follow\n")
    (tmp_path / "letters.txt").write_text("ab" * 32 + "\nnot-a-digest\n")
    policy = tmp_path / "p.vpol"
    policy.write_text('device { escrow_key "missing.pub" }\nattestation boot {\n  pcrs 0, 4, 7\n'
                      '  allow pcr 7 from "nope.txt"\n  allow pcr 4 from "comment.txt"\n  allow pcr 0 from "letters.txt"\n}\n')
    code, _, checked = cli("check", policy)
    assert code == 1 and "4 errors" in checked
    compiled = cli("compile", policy, "--plan-version", "1", "-o", tmp_path / "plan.json")[2]
    for where in (f"error[VP0604]: cannot use escrow key file `{tmp_path / 'missing.pub'}`", f"--> {policy}:1:21",
                  f"--> {policy}:4:20", f"--> {policy}:5:20", f"--> {policy}:6:20",
                  "only comments or blank lines", "line 2 is not a sha256 digest"):
        assert where in checked and where in compiled, where


def test_check_passes_a_policy_whose_named_files_are_usable(cli, tmp_path):
    assert cli("controller", "escrow-keygen", "-o", tmp_path / "escrow")[0] == 0
    (tmp_path / "pcr7.txt").write_text("# secure boot db\n" + "cd" * 32 + "\n")
    policy = tmp_path / "p.vpol"
    policy.write_text('device { escrow_key "escrow.pub" }\nattestation boot {\n  pcrs 0, 4, 7\n  allow pcr 7 from "pcr7.txt"\n}\n')
    code, out, _ = cli("check", policy)
    assert code == 0 and "0 errors" in out


def test_an_escrow_key_of_the_wrong_kind_says_what_it_is(cli, tmp_path):
    assert cli("keygen", "-o", tmp_path / "ctl.key")[0] == 0
    assert cli("controller", "escrow-keygen", "-o", tmp_path / "escrow.key")[0] == 0
    policy = tmp_path / "p.vpol"
    for named, what in (("ctl.key.pub", "an Ed25519 public key"), ("escrow.key", "an X25519 escrow private key")):
        policy.write_text(f'device {{ escrow_key "{named}" }}\n')
        code, _, err = cli("check", policy)
        assert code == 1 and f"`{tmp_path / named}`: it is {what}, not an X25519 escrow public key" in err


PROTECTED_DATA = 'attestation boot { pcrs 0, 4, 7 }\nvault data { path "/persist/data"  limit 1GiB  protected }\n'


@pytest.mark.parametrize("changed, where", [
    (PROTECTED_DATA.replace("  protected", "  encryption adiantum"), ("data", "aes-256-xts", "adiantum", "2:48")),
    (PROTECTED_DATA.replace("  protected", "  encryption none"), ("data", "aes-256-xts", "none", "2:48")),
    (PROTECTED_DATA + "vault config { encryption adiantum }\n", ("config", "aes-256-xts", "adiantum", "3:16")),
])
def test_prev_refuses_a_new_encryption_for_a_vault_the_previous_plan_protects(cli, tmp_path, monkeypatch, changed, where):
    """The device keeps a protected vault's protection and refuses a plan that changes its encryption
    (enforcer/verify.py): `compile --prev` refuses it too, instead of writing a plan `sign` would sign."""
    monkeypatch.chdir(tmp_path)
    Path("v1.vpol").write_text(PROTECTED_DATA)
    assert cli("compile", "v1.vpol", "--plan-version", "1", "-o", "v1.json")[0] == 0
    Path("v2.vpol").write_text(changed)
    code, _, err = cli("compile", "v2.vpol", "--prev", "v1.json", "-o", "v2.json")
    name, before, after, at = where
    assert code == 1 and not Path("v2.json").exists(), err
    assert (f"error[VP0606]: vault `{name}` was protected by the previous plan, and the device keeps that protection, "
            f"but its encryption changes from `{before}` to `{after}`") in err and f"--> v2.vpol:{at}" in err
    assert cli("compile", "v2.vpol", "--plan-version", "2", "-o", "v2.json")[0] == 0  # only the chain forbids it


def test_prev_reports_a_setting_of_defaults_once_for_every_protected_vault(cli, tmp_path, monkeypatch):
    """`defaults { encryption adiantum }` gave one VP0606 per vault the previous plan protected, each
    saying the vault changes what only `defaults` says."""
    monkeypatch.chdir(tmp_path)
    Path("v1.vpol").write_text(PROTECTED_DATA)
    assert cli("compile", "v1.vpol", "--plan-version", "1", "-o", "v1.json")[0] == 0
    Path("v2.vpol").write_text('defaults { encryption adiantum  on_remove destroy }\nvault config { on_remove retain }\n'
                               'attestation boot { pcrs 0, 4, 7 }\nvault data { path "/persist/data"  limit 1GiB }\n')
    code, _, err = cli("compile", "v2.vpol", "--prev", "v1.json", "-o", "v2.json")
    assert code == 1 and err.count("error[") == 2, err
    assert ("error[VP0602]: `defaults` says `on_remove destroy`, which a vault the previous plan protected inherits, "
            "and the device keeps that protection\n  --> v2.vpol:1:33\n") in err
    assert "  = note: inherited by vault `data`\n" in err
    assert ("error[VP0606]: `defaults` says `encryption adiantum`, which vaults the previous plan protected inherit, "
            "and the device keeps that protection\n  --> v2.vpol:1:12\n") in err
    assert ("= help: a protected vault's data never migrates: keep `encryption aes-256-xts` in vault `config`, "
            "`encryption aes-256-xts` in vault `data` (protection, once in a plan, stays)\n"
            "  = note: inherited by vaults `config`, `data`\n") in err


@pytest.mark.parametrize("bank, line", [("sha256", "abc"), ("sha256", "ab" * 20), ("sha1", "ab" * 32)])
def test_an_allowed_value_of_the_wrong_length_for_its_bank_is_refused(cli, tmp_path, bank, line):
    """`abc` passed check and compile (only hex digits were checked); then plan show and sign refused the plan."""
    (tmp_path / "values.txt").write_text(f"# firmware\n{'cd' * BANK_DIGEST_BYTES[bank]}\n{line}\n")
    policy = tmp_path / "p.vpol"
    policy.write_text(f'attestation boot {{\n  bank {bank}\n  pcrs 0, 4, 7\n  allow pcr 0 from "values.txt"\n}}\n')
    for command in (["check", policy], ["compile", policy, "--plan-version", "1", "-o", tmp_path / "plan.json"]):
        code, _, err = cli(*command)
        assert code == 1 and f"error[VP0605]: cannot read allowed values for PCR 0 from `{tmp_path / 'values.txt'}`: " \
                             f"line 3 is not a {bank} digest" in err and f"--> {policy}:4:20" in err, err
    assert not (tmp_path / "plan.json").exists()


def test_compile_never_writes_a_plan_that_decoding_refuses(cli, tmp_path, monkeypatch):
    """A plan the rules let through but `inconsistencies` refuses is our bug: an internal error, no plan."""
    build_module = importlib.import_module("compiler.build")  # `compiler.build` is also the function's name
    (tmp_path / "values.txt").write_text("cd" * 32 + "\n")
    policy = tmp_path / "p.vpol"
    policy.write_text('attestation boot {\n  pcrs 0, 4, 7\n  allow pcr 0 from "values.txt"\n}\n')
    monkeypatch.setattr(build_module, "_reference_values", lambda *args: ("abc",))  # a rule that let it through
    code, _, err = cli("compile", policy, "--plan-version", "1", "-o", tmp_path / "plan.json")
    assert code == 70 and not (tmp_path / "plan.json").exists()
    assert err.startswith("internal error: BuiltPlanInconsistent: the compiler built a plan that decoding refuses: "
                          "attestation `boot` allows `abc` for PCR 0, which is not a lower-case sha256 digest\n"), err


def test_a_component_s_stores_are_in_one_order_whatever_the_order_written():
    """Sorted by path alone, two stores of one directory kept the order they were written in, so
    swapping the lines gave a `~` diff. (The rules refuse the repeat, VP0208; build is ordered anyway.)"""
    from datetime import datetime, timezone

    import policy_lang
    from compiler import BuildOptions
    from compiler.build import build
    from compiler.resolve import resolve

    options = BuildOptions(plan_version=1, issued_at=datetime(2026, 1, 1, tzinfo=timezone.utc), valid_for_seconds=60,
                           source_sha256="0" * 64)

    def plan(text: str) -> bytes:
        policy, _ = policy_lang.parse_text(text, "t.vpol")
        return encode_plan(build(resolve(policy), options)[0])

    sensitive_first = 'component c { stores "/persist/d/x" sensitive  stores "/persist/d/x" }\n'
    assert plan(sensitive_first) == plan('component c { stores "/persist/d/x"  stores "/persist/d/x" sensitive }\n')


def test_plan_show_lists_the_plan_s_protected_vaults(cli, tmp_path, monkeypatch):
    """After `compile --prev`, `data` (flag dropped) is protected by the plan's list only, and `old`
    left the plan still protected: plan show marked neither."""
    monkeypatch.chdir(tmp_path)
    Path("v1.vpol").write_text('vault data { path "/persist/data"  protected }\nvault old { path "/persist/old"  protected }\n')
    Path("v2.vpol").write_text('vault data { path "/persist/data" }\n')
    assert cli("compile", "v1.vpol", "--plan-version", "1", "-o", "v1.json")[0] == 0
    assert cli("compile", "v2.vpol", "--prev", "v1.json", "-o", "v2.json")[0] == 0
    code, out, _ = cli("plan", "show", "v2.json")
    assert code == 0 and "\n  data [protected]\n" in out and "\n  images (built-in)\n" in out
    assert "\nprotected (3): config, data, old  (no plan may destroy them or change their encryption)\n" \
           "  not in this plan: old  (left an earlier plan: a device keeps it locked, keys kept)\n" in out


def test_a_named_file_that_is_a_device_is_refused_not_read(cli, tmp_path):
    """The named files were read with Path.read_bytes: `from "/dev/zero"` read until memory ran out."""
    policy = tmp_path / "p.vpol"
    policy.write_text('attestation boot {\n  pcrs 0, 4, 7\n  allow pcr 0 from "/dev/zero"\n}\ndevice { escrow_key "/dev/zero" }\n')
    code, _, err = cli("check", policy)
    assert code == 1 and "error[VP0605]: cannot read allowed values for PCR 0 from `/dev/zero`: is a device, pipe " \
                         "or socket, not a regular file" in err
    assert "error[VP0604]: cannot use escrow key file `/dev/zero`: is a device, pipe or socket, not a regular file" in err


def test_compile_refuses_to_write_over_its_own_inputs(cli, tmp_path, monkeypatch):
    """`compile lab.vpol --plan-version 1 -o lab.vpol` replaced the policy with its plan."""
    monkeypatch.chdir(tmp_path)
    Path("apps.vpol").write_text("app a { vault images }\n")
    Path("lab.vpol").write_text('include "apps.vpol"\n')
    Path("link.vpol").symlink_to("apps.vpol")
    assert cli("compile", "lab.vpol", "--plan-version", "1", "-o", "v1.json")[0] == 0
    before = {name: Path(name).read_bytes() for name in ("lab.vpol", "apps.vpol", "v1.json")}
    for output, said in (("lab.vpol", "-o `lab.vpol` is the policy: "),
                         ("link.vpol", "-o `link.vpol` is a file the policy includes (`apps.vpol`): "),
                         ("./v1.json", "-o `./v1.json` is the previous plan: ")):
        code, _, err = cli("compile", "lab.vpol", "--prev", "v1.json", "-o", output)
        assert code == 64 and err.startswith(f"error: {said}writing it would destroy an input\n"), err
    assert {name: Path(name).read_bytes() for name in before} == before


@pytest.mark.parametrize("issued,valid_for,said", [
    ("2020-01-01T00:00:00Z", "1d", "the plan expired at 2020-01-02T00:00:00Z, before it was compiled (now "),
    (None, "3h", "the plan expires at "),  # and how long from now
])
def test_compile_warns_of_a_plan_that_is_expired_or_about_to_expire(cli, tmp_path, issued, valid_for, said):
    """`compile --issued-at 2020-01-01T00:00:00Z --valid-for 1d` wrote an already-expired plan without a word.
    It is still written (exit 0): the warning says when devices start refusing it."""
    issued_at = ["--issued-at", issued] if issued else []
    code, out, err = cli("compile", EXAMPLE, "--plan-version", "1", *issued_at, "--valid-for", valid_for, "-o", tmp_path / "p.json")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'p.json'}") and (tmp_path / "p.json").exists()
    warning, help_line = err.splitlines()
    expires = decode_plan((tmp_path / "p.json").read_bytes()).expires
    assert warning.startswith(f"warning: {said}") and expires in warning and "devices and `verify` refuse it" in warning
    assert help_line == "  = help: compile it with a later --issued-at (default: now) or a longer --valid-for (default 30d)"


def test_compile_warns_of_a_plan_issued_in_the_future(cli, tmp_path):
    """`compile --issued-at 2030-01-01T00:00:00Z` was silent; `verify` and devices refuse the plan."""
    code, _, err = cli("compile", EXAMPLE, "--plan-version", "1", "--issued-at", "2030-01-01T00:00:00Z",
                       "-o", tmp_path / "p.json")
    assert code == 0 and (tmp_path / "p.json").exists()
    warning, help_line = err.splitlines()
    assert warning.startswith("warning: the plan is issued at 2030-01-01T00:00:00Z, in the future (now ")
    assert warning.endswith("devices and `verify` refuse it until 5 minutes before then")
    assert help_line == "  = help: compile it with an --issued-at no later than now (the default)"


def test_compile_says_nothing_of_a_plan_valid_for_a_day_or_more(cli, tmp_path):
    code, _, err = cli("compile", EXAMPLE, "--plan-version", "1", "--valid-for", "1d", "-o", tmp_path / "p.json")
    assert (code, err) == (0, "")


@pytest.mark.parametrize("left,said", [(timedelta(hours=3, minutes=20, seconds=5), "3h 20m"), (timedelta(hours=2), "2h"),
                                       (timedelta(minutes=45), "45m"), (timedelta(seconds=30), "30s")])
def test_how_long_a_plan_has_left_is_said_to_the_minute(left, said):
    from vaultpolicy.commands.compile import _about

    assert _about(left) == said
