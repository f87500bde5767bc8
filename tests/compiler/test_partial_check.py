"""`check` on a policy with syntax errors: the compiler's rules run on the blocks that parsed, and only
what depends on a broken block is left out (issue 3, S18)."""

from __future__ import annotations

import json

import pytest

from compiler import codes as rule
from policy_lang import syntax_codes as syntax
from vaultpolicy.cli import main


def _check(tmp_path, capsys, text: str, name: str = "p.vpol") -> tuple[int, list[tuple[str, int, int]]]:
    policy = tmp_path / name
    policy.write_text(text)
    code = main(["check", "--format", "json", str(policy)])
    report = json.loads(capsys.readouterr().out)
    return code, [(d["code"], d["span"]["line"], d["span"]["column"]) for d in report["diagnostics"]]


def test_a_syntax_error_no_longer_hides_independent_compiler_errors(tmp_path, capsys):
    code, found = _check(tmp_path, capsys, (
        'device { persist "/persist" capacity 1GiB }\n'
        'vault data { path "/persist/data" seal pcrs 0, 5 }\n'
        'valt other { path "/persist/other" }\n'
        'app web { vault dtaa }\n'
        'app api { vault other }\n'
    ))
    assert code == 1
    assert found == [
        (rule.NO_LIMIT, 1, 38),  # no limit on the built-in `config` (warning, at the capacity)
        (rule.NO_LIMIT, 1, 38),  # nor on `images`
        (rule.NO_LIMIT, 2, 7),  # no limit on `data` (warning)
        (rule.MISSING_FIRMWARE_ANCHOR, 2, 35),  # no firmware PCR 4 (warning)
        (rule.MISSING_SECURE_BOOT_PCR, 2, 35),  # no PCR 7 (warning)
        (rule.PCR5_SEALED, 2, 48),  # PCR 5
        (syntax.UNKNOWN_KEYWORD, 3, 1),  # `valt`
        (rule.UNKNOWN_VAULT, 4, 17),  # `dtaa`; `other` is declared by the broken `valt other` block, so `api` is fine
    ]


def test_a_vault_block_with_a_broken_body_still_declares_its_name(tmp_path, capsys):
    code, found = _check(tmp_path, capsys, (
        'vault data { path "/persist/data" limit }\n'
        'app web { vault data }\n'
        'app api { vault nothere }\n'
    ))
    assert code == 1
    assert found == [(syntax.UNEXPECTED_TOKEN, 1, 35), (rule.UNKNOWN_VAULT, 3, 17)]  # at the `limit` missing its size


def test_a_broken_attestation_hides_unknown_seals_to_it_but_not_to_others(tmp_path, capsys):
    _, found = _check(tmp_path, capsys, (
        'attestaton boot { pcrs 0, 4, 7 }\n'
        'vault a { path "/persist/a" seal boot }\n'
        'vault b { path "/persist/b" seal bogus }\n'
    ))
    assert found == [(syntax.UNKNOWN_KEYWORD, 1, 1), (rule.UNKNOWN_ATTESTATION, 3, 34)]


def test_an_attestation_that_lost_its_pcrs_does_not_make_vaults_presence_only(tmp_path, capsys):
    _, found = _check(tmp_path, capsys, (
        'attestation boot { pcrs 0, 4, 24 }\n'
        'vault a { path "/persist/a" seal boot }\n'
        'vault b { path "/persist/b" seal pcrs 0, 4, 5, 7 }\n'
    ))
    assert found == [(syntax.PCR_OUT_OF_RANGE, 1, 31), (rule.PCR5_SEALED, 3, 45)]


def test_a_device_that_lost_its_persist_root_does_not_put_vaults_outside_it(tmp_path, capsys):
    _, found = _check(tmp_path, capsys, (
        'device { persist "/data\\q" }\n'
        'vault a { path "/data/a" }\n'
        'vault b { path "relative/b" }\n'
    ))
    assert found == [(syntax.BAD_ESCAPE, 1, 24), (rule.PATH_NOT_ABSOLUTE, 3, 16)]


def test_a_vault_that_lost_its_path_hides_coverage_errors_that_path_decides(tmp_path, capsys):
    _, found = _check(tmp_path, capsys, (
        'vault a { path "/persist/x\\q" holds "/persist/x/sub" }\n'
        'component agent { stores "/persist/x/keys" sensitive }\n'
        'app web { vault missing }\n'
    ))
    assert found == [(syntax.BAD_ESCAPE, 1, 27), (rule.UNKNOWN_VAULT, 3, 17)]


def test_an_unreadable_include_hides_unknown_names(tmp_path, capsys):
    _, found = _check(tmp_path, capsys, (
        'include "vaults.vpol"\n'
        'app web { vault data }\n'
        'vault b { path "/persist/b" seal pcrs 0, 4, 5, 7 }\n'
    ))
    assert found == [(syntax.INCLUDE_NOT_FOUND, 1, 9), (rule.PCR5_SEALED, 3, 45)]


def test_compile_still_refuses_a_policy_with_any_error(tmp_path, capsys):
    policy = tmp_path / "p.vpol"
    policy.write_text('valt other { path "/persist/other" }\napp web { vault other }\n')
    plan = tmp_path / "plan.json"
    assert main(["compile", str(policy), "--plan-version", "1", "-o", str(plan)]) == 1
    assert not plan.exists()
    assert syntax.UNKNOWN_KEYWORD in capsys.readouterr().err


def test_five_independent_errors_of_both_phases_in_one_run(tmp_path, capsys):
    code, found = _check(tmp_path, capsys, (
        "vault config {\n"
        "  limt 16MiB\n"
        "}\n"
        "vault images { limit 64XiB }\n"
        'vault scratch { path "/persist/scratch" }\n'
        'vault scratch { path "/persist/scratch2" }\n'
        "attestation boot { pcrs 0, 24 }\n"
        "app cam { vault scrach }\n"
    ))
    assert code == 1
    assert found == [
        (syntax.UNKNOWN_KEYWORD, 2, 3),
        (syntax.BAD_SIZE, 4, 24),
        (rule.DUPLICATE_VAULT, 6, 7),
        (syntax.PCR_OUT_OF_RANGE, 7, 28),
        (rule.UNKNOWN_VAULT, 8, 17),
    ]


def test_a_broken_builtin_vault_is_not_checked_at_its_default_path(tmp_path, capsys):
    _, found = _check(tmp_path, capsys, (
        'valt images { path "/persist/apps" limit 1GiB }\n'
        'vault store { path "/persist/vault" }\n'
        "app web { vault images protection end_to_end }\n"
        "app api { vault nothere }\n"
    ))
    # `store` covers where the unbroken built-in `config` lives: that holds whatever `images` said
    assert found == [(syntax.UNKNOWN_KEYWORD, 1, 1), (rule.DEFAULT_PATH_COLLISION, 2, 20), (rule.UNKNOWN_VAULT, 4, 17)]


# Nested vaults (VP0204) and an end-to-end app on an `encryption none` vault (VP0302): two errors
# that nothing below can change.
_TWO_ERRORS = (
    'vault outer { path "/persist/outer" limit 8MiB }\n'
    'vault inner { path "/persist/outer/inner" limit 8MiB }\n'
    'vault plain { path "/persist/plain" encryption none limit 8MiB }\n'
    "app web { vault plain protection end_to_end }\n"
)


@pytest.mark.parametrize("broken,syntax_error", [
    ("vault foo { limit 8MiB; limt 3 }", (syntax.UNKNOWN_KEYWORD, 5, 25)),
    ("attestation foo { pcrs 0, 4, 77 }", (syntax.PCR_OUT_OF_RANGE, 5, 30)),
    ('vault images { disabled "" }', (syntax.EMPTY_REASON, 5, 25)),
], ids=["typo in another vault", "bad PCR in an attestation", "empty opt-out reason"])
def test_a_broken_setting_hides_nothing_that_it_cannot_change(tmp_path, capsys, broken, syntax_error):
    _, found = _check(tmp_path, capsys, _TWO_ERRORS + broken + "\n")
    assert found == [(rule.PATHS_OVERLAP, 2, 20), (rule.END_TO_END_UNENCRYPTED, 4, 23), syntax_error]


def test_a_misspelt_limit_does_not_hide_an_unencrypted_sensitive_directory(tmp_path, capsys):
    _, found = _check(tmp_path, capsys, (
        "vault bar { limt 4MiB }\n"
        'component c { stores "/persist/secret" sensitive }\n'
    ))
    assert found == [(syntax.UNKNOWN_KEYWORD, 1, 13), (rule.SENSITIVE_NOT_ENCRYPTED, 2, 22)]


def test_a_misspelt_word_that_could_be_the_path_hides_what_the_path_decides(tmp_path, capsys):
    _, found = _check(tmp_path, capsys, (
        'vault bar { pth "/persist/secret" }\n'
        'component c { stores "/persist/secret" sensitive }\n'
    ))
    assert found == [(syntax.UNKNOWN_KEYWORD, 1, 13)]


def test_a_typo_after_a_setting_on_its_line_keeps_that_setting(tmp_path, capsys):
    """`seal bot limt 1MiB` lost the seal with the typo; `path "/var/x" limt 2MiB` the path."""
    _, found = _check(tmp_path, capsys, (
        "attestation boot { pcrs 0, 4, 7 }\n"
        'vault data { path "/persist/data" seal bot limt 1MiB}\n'
        'vault e {path "/var/x" limt 2MiB}\n'
    ))
    assert found == [(rule.UNKNOWN_ATTESTATION, 2, 40), (syntax.UNKNOWN_KEYWORD, 2, 44),
                     (rule.PATH_OUTSIDE_PERSIST, 3, 15), (syntax.UNKNOWN_KEYWORD, 3, 24)]


@pytest.mark.parametrize("text,pcr5", [
    ("attestation boot { pcrs 0, 5, 24 }\n", (rule.PCR5_SEALED, 1, 28)),
    ('vault v { path "/persist/v" seal pcrs 0, 5, 24 }\n', (rule.PCR5_SEALED, 1, 42)),
    ('vault v { path "/persist/v" seal pcrs 0, 5, 7 bank sha257 }\n', (rule.PCR5_SEALED, 1, 42)),
])
def test_the_valid_pcrs_of_a_list_with_a_bad_one_are_still_checked(tmp_path, capsys, text, pcr5):
    """What the bad index might have been (4, 7) is not reported missing; PCR 5 is there anyway."""
    _, found = _check(tmp_path, capsys, text)
    assert [f for f in found if f[0] not in (syntax.PCR_OUT_OF_RANGE, syntax.UNKNOWN_VALUE)] == [pcr5]
    assert len(found) == 2


def test_an_attestation_that_lost_a_pcr_hides_no_presence_only_binding_elsewhere(tmp_path, capsys):
    _, found = _check(tmp_path, capsys, (
        "attestation foo { pcrs 0, 4, 77 }\n"
        "attestation empty { bank sha256 }\n"
        'vault v { path "/persist/v" seal empty }\n'
    ))
    assert found == [(syntax.PCR_OUT_OF_RANGE, 1, 30), (rule.PRESENCE_ONLY, 3, 29)]


def test_compile_and_diff_report_what_check_reports(tmp_path, capsys):
    """`diff` on a broken policy reported 6 errors where `check` reported 9: it left out the rules."""
    policy = tmp_path / "p.vpol"
    policy.write_text('vault v {\n  limt 1MiB\n}\napp a { vault nowhere }\nvault w { limit 3XB }\n'
                      'vault x { seal pcrs 0, 5 }\nvault y { path "rel" }\n')
    reports = {}
    for command in (["check"], ["compile", "--plan-version", "1", "-o", str(tmp_path / "plan.json")], ["diff", str(policy)]):
        assert main([*command, str(policy)]) == 1
        err = capsys.readouterr().err
        reports[command[0]] = sorted(line for line in err.splitlines() if line.startswith(("error[", "warning[", "  -->")))
    assert reports["check"] == reports["compile"] == reports["diff"]
    assert sum(line.startswith("error[") for line in reports["check"]) == 5


_S18_BLOCK = "vault media {\n  limit 64mib\n  seal boot\n"  # no `}`, and no attestation `boot`
_S18_ERRORS = [(syntax.BAD_SIZE, 2, 11, "did you mean `MiB`?"),
               (rule.UNKNOWN_ATTESTATION, 3, 8, "declare it with `attestation boot { pcrs 0, 4, 7 }`")]
_CLOSE_AFTER_3 = (syntax.UNCLOSED_BRACE, 1, 13, "add `}` after line 3 to close this block")
_MEDAI = "app kiosk { vault medai }\n"


def _unknown_medai(line: int) -> tuple:
    return rule.UNKNOWN_VAULT, line, 19, "did you mean `media`?"


@pytest.mark.parametrize("text,expected", [
    (_S18_BLOCK + _MEDAI, [_CLOSE_AFTER_3, *_S18_ERRORS, _unknown_medai(4)]),
    (_MEDAI + _S18_BLOCK, [_unknown_medai(1), (syntax.UNCLOSED_BRACE, 2, 13, "add `}` after line 4 to close this block"),
                           *[(code, line + 1, column, help) for code, line, column, help in _S18_ERRORS]]),
    (_S18_BLOCK + 'device {\n  persist "/persist"\n}\n' + _MEDAI, [_CLOSE_AFTER_3, *_S18_ERRORS, _unknown_medai(7)]),
    (_S18_BLOCK + "app x y {\n  vault media\n}\n" + _MEDAI,
     [_CLOSE_AFTER_3, *_S18_ERRORS, (syntax.UNEXPECTED_TOKEN, 4, 7, "write `{` before `y`"), _unknown_medai(7)]),
    ("vault media {\n  { limit 64mib }\n  seal boot\n" + _MEDAI,
     [_CLOSE_AFTER_3, (syntax.UNEXPECTED_TOKEN, 2, 3, "remove it and its `}`: blocks do not nest"),
      (syntax.BAD_SIZE, 2, 13, "did you mean `MiB`?"), *_S18_ERRORS[1:], _unknown_medai(4)]),
    ("vault media {\n  limit 64mib {\n  seal boot\n}\n" + _MEDAI,
     [*_S18_ERRORS[:1], (syntax.UNEXPECTED_TOKEN, 2, 15, "remove it: blocks do not nest"), *_S18_ERRORS[1:],
      _unknown_medai(5)]),
], ids=["followed by an app", "at the end of the file", "followed by a device block", "followed by a malformed header",
        "holding a stray block", "closed, holding a stray `{`"])
def test_an_unclosed_block_hides_no_error_inside_it_or_after_it(tmp_path, capsys, text, expected):
    """S18: a missing `}` was the only error reported; the bad unit, the unknown attestation and
    `medai`'s did-you-mean were lost. The block ends where the next item starts, so it is checked
    as written. A `}` that lines up with the block closes it: then the `{` left open is the error."""
    (tmp_path / "p.vpol").write_text(text)
    code = main(["check", "--format", "json", str(tmp_path / "p.vpol")])
    found = [(d["code"], d["span"]["line"], d["span"]["column"], d["help"])
             for d in json.loads(capsys.readouterr().out)["diagnostics"]]
    assert (code, found) == (1, expected)


def test_the_default_seal_error_survives_a_broken_block_elsewhere(tmp_path, capsys):
    """With `vault b { seal ??? }` broken, which vaults take the default seal differs between the stand-ins
    for the broken block, and the VP0506 whose message listed them was dropped as not independent."""
    code, found = _check(tmp_path, capsys, "attestation x { nonce 16 bytes, valid 5m }\nvault a { }\nvault b { seal ??? }\n")
    assert code == 1 and (rule.PRESENCE_ONLY, 1, 13) in found, found
