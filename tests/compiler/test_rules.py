"""One case per verification rule: the exact code and position, and nothing else reported."""

from __future__ import annotations

import pytest

from policy_lang.codes import all_codes

CASES = {
    # --- names
    "VP0101 unknown vault": ('vault data { limit 1GiB }\napp a { vault dta }\n', [("VP0101", 2, 15)]),
    "VP0102 duplicate vault": ('vault data { path "/persist/a" }\nvault data { path "/persist/b" }\n', [("VP0102", 2, 7)]),
    "VP0103 unknown attestation": (
        "attestation boot { pcrs 0, 4, 7 }\nvault data { seal bot }\n",
        [("VP0103", 2, 19)],
    ),
    "VP0104 duplicate attestation": (
        "attestation boot { pcrs 0, 4, 7 }\nattestation boot { pcrs 0, 4, 7 }\n",
        [("VP0104", 2, 13)],
    ),
    "VP0105 duplicate app": ("app a { vault images }\napp a { vault config }\n", [("VP0105", 2, 5)]),
    "VP0106 duplicate component": (
        'component c { stores "/persist/x" }\ncomponent c { stores "/persist/y" }\n',
        [("VP0106", 2, 11)],
    ),
    "VP0107 opt-out of a declared vault": ('vault data { disabled "not needed" }\n', [("VP0107", 1, 23)]),
    "VP0108 second device block": ('device { persist "/persist" }\ndevice { capacity 1GiB }\n', [("VP0108", 2, 1)]),
    # --- paths
    "VP0201 relative persist root, reported once": ('device { persist "persist" }\n', [("VP0201", 1, 18)]),
    "VP0201 relative path": ('vault data { path "persist/data" }\n', [("VP0201", 1, 19)]),
    "VP0201 relative and not normalized, reported once": ('vault data { path "./data/" }\n', [("VP0201", 1, 19)]),
    # the sensitive directory the wrong path was meant to hold also got VP0301, "outside any vault"
    "VP0201 and no follow-on error for what the vault holds": (
        'vault data { path "persist/data/" }\ncomponent c { stores "/persist/data/spool" sensitive }\n',
        [("VP0201", 1, 19)]),
    # what a wrong path reads as covers nothing outside it, nor the whole persist root
    "VP0201 of `.` leaves a sensitive directory elsewhere reported": (
        'vault data { path "." }\ncomponent c { stores "/var/lib/other" sensitive }\n', [("VP0201", 1, 19), ("VP0301", 2, 22)]),
    "VP0201 of `persist` leaves one in the persist root reported": (
        'vault data { path "persist" }\ncomponent c { stores "/persist/secret" sensitive }\n',
        [("VP0201", 1, 19), ("VP0301", 2, 22)]),
    "VP0202 dot-dot": ('vault data { path "/persist/vault/../data" }\n', [("VP0202", 1, 19)]),
    "VP0202 dot": ('vault data { path "/persist/./data" }\n', [("VP0202", 1, 19)]),
    "VP0202 doubled slash": ('vault data { path "/persist//data" }\n', [("VP0202", 1, 19)]),
    "VP0202 trailing slash": ('vault data { path "/persist/data/" }\n', [("VP0202", 1, 19)]),
    "VP0202 in a stored directory": ('component c { stores "/persist/a/./b" }\n', [("VP0202", 1, 22)]),
    "VP0203 outside persist": ('vault data { path "/var/data" }\n', [("VP0203", 1, 19)]),
    "VP0203 the persist root itself": (
        'vault config { disabled "none" }\nvault images { disabled "none" }\nvault all { path "/persist" }\n',
        [("VP0203", 3, 18)],
    ),
    "VP0204 nested vaults": (
        'vault a { path "/persist/a" }\nvault b { path "/persist/a/b" }\n',
        [("VP0204", 2, 16)],
    ),
    "VP0204 same directory": (
        'vault a { path "/persist/a" }\nvault b { path "/persist/a" }\n',
        [("VP0204", 2, 16)],
    ),
    "VP0205 holds outside vault": ('vault a { path "/persist/a"  holds "/persist/b" }\n', [("VP0205", 1, 36)]),
    "VP0208 a directory stored twice, sensitive once": (
        'component c {\n  stores "/persist/vault/config/x"\n  stores "/persist/vault/config/x" sensitive\n}\n',
        [("VP0208", 3, 10)],
    ),
    "VP0208 a directory stored twice in one list": ('component c { stores "/persist/x", "/persist/x" }\n', [("VP0208", 1, 36)]),
    "VP0209 a persist root of `/`": ('device { persist "/" }\n', [("VP0209", 1, 18)]),
    "VP0206 declared vault on a built-in path": ('vault a { path "/persist/vault/config" }\n', [("VP0206", 1, 16)]),
    "VP0206 declared vault covering a built-in": ('vault a { path "/persist/vault" }\n', [("VP0206", 1, 16), ("VP0206", 1, 16)]),
    # a declared built-in at its default path was taken for a written one: VP0204 at `config`'s name, and the
    # path that was wrong never shown
    "VP0206 covering a built-in declared without a path": (
        'vault config { limit 16MiB }\nvault a { path "/persist/vault" }\n', [("VP0206", 2, 16), ("VP0206", 2, 16)]),
    "VP0206 on the default path of a declared vault": (
        'vault logs { limit 8MiB }\nvault a { path "/persist/vault/logs" }\n', [("VP0206", 2, 16)]),
    # --- coverage
    "VP0301 sensitive outside vaults": ('component c { stores "/persist/secret" sensitive }\n', [("VP0301", 1, 22)]),
    "VP0301 sensitive in a clear vault": (
        'vault scratch { path "/persist/clear"  encryption none }\ncomponent c { stores "/persist/clear/x" sensitive }\n',
        [("VP0301", 2, 22)],
    ),
    "VP0302 end-to-end on a clear vault": (
        'vault scratch { path "/persist/clear"  encryption none }\napp a { vault scratch  protection end_to_end }\n',
        [("VP0302", 2, 24)],
    ),
    "VP0303 end-to-end without attestation": (
        'vault data { path "/persist/d"  seal pcrs 0, 4, 7 }\napp a { vault data  protection end_to_end }\n',
        [("VP0303", 2, 21)],
    ),
    "VP0304 built-in vault without encryption": ("vault images { encryption none }\n", [("VP0304", 1, 27)]),
    "VP0304 defaults reaching both built-in vaults": (
        'defaults { encryption none }\nvault data { path "/persist/d"  encryption aes-256-xts }\n',
        [("VP0304", 1, 23)],
    ),
    "VP0304 a built-in vault opted out with a reason": (
        'vault images { disabled "no apps" }\nvault config { encryption adiantum }\nvault s { path "/persist/s"  encryption none }\n',
        [],
    ),
    # --- capacity
    "VP0401 over capacity": (
        'device { capacity 1GiB reserve 512MiB }\nvault config { limit 256MiB }\nvault images { limit 512MiB }\n',
        [("VP0401", 1, 19)],
    ),
    "VP0402 vault without limit": (
        'device { capacity 8GiB }\nvault config { limit 1GiB }\nvault images { limit 1GiB }\nvault logs { path "/persist/logs" }\n',
        [("VP0402", 4, 7)],
    ),
    "VP0402 a built-in vault without limit, at the capacity": (
        'device { capacity 8GiB }\nvault config { limit 1GiB }\n',
        [("VP0402", 1, 19)],
    ),
    "VP0403 limit below the device minimum": (
        'vault scratch { path "/persist/clear/s"  encryption none  limit 4MiB }\n',
        [("VP0403", 1, 65)],
    ),
    "VP0403 the minimum itself is fine": ('vault scratch { path "/persist/clear/s"  encryption none  limit 8MiB }\n', []),
    # --- PCRs and attestation
    "VP0503 PCR 5": ("vault data { seal pcrs 0, 4, 5, 7 }\n", [("VP0503", 1, 30)]),
    "VP0504 PCR 1": ("vault data { seal pcrs 0, 1, 4, 7 }\n", [("VP0504", 1, 27)]),
    "VP0505 PCR 11 and 12": ("vault data { seal pcrs 0, 4, 7, 11, 12 }\n", [("VP0505", 1, 33), ("VP0505", 1, 37)]),
    "VP0506 presence-only binding": (
        "attestation boot { bank sha256 }\nvault data { seal boot }\n",
        # the built-in vaults take the only attestation by default: once, at the attestation's name, for both
        [("VP0506", 1, 13), ("VP0506", 2, 14)],
    ),
    "VP0507 missing firmware PCRs": ("vault data { seal pcrs 7 }\n", [("VP0507", 1, 14)]),
    "VP0508 missing PCR 7": ("vault data { seal pcrs 0, 4 }\n", [("VP0508", 1, 14)]),
    "VP0510 allow for an uncovered PCR": (
        'attestation boot { pcrs 0, 4, 7  allow pcr 2 = "' + "ab" * 32 + '" }\n',
        [("VP0510", 1, 44)],
    ),
    "VP0513 a PCR listed twice, once": ("vault data { seal pcrs 0, 4, 7, 7, 7 }\n", [("VP0513", 1, 33), ("VP0513", 1, 36)]),
    "VP0513 in an attestation": ("attestation boot { pcrs 0, 0, 4, 7 }\n", [("VP0513", 1, 28)]),
    "VP0514 PCR 8 and 9": ("vault data { seal pcrs 0, 4, 7, 8, 9 }\n", [("VP0514", 1, 33), ("VP0514", 1, 36)]),
    "VP0515 PCR 10": ("attestation boot { pcrs 0, 4, 7, 10 }\n", [("VP0515", 1, 34)]),
    "VP0516 PCR 16 and 23": ("vault data { seal pcrs 0, 4, 7, 16, 23 }\n", [("VP0516", 1, 33), ("VP0516", 1, 37)]),
    "VP0516 in an attestation": ("attestation boot { pcrs 0, 4, 7, 16 }\n", [("VP0516", 1, 34)]),
    "VP0517 a nonce valid for a year": ("attestation boot { pcrs 0, 4, 7  nonce 32 bytes, valid 52w }\n", [("VP0517", 1, 56)]),
    "VP0517 not for 10 minutes": ("attestation boot { pcrs 0, 4, 7  nonce 32 bytes, valid 10m }\n", []),
    "VP0518 an attestation over another bank than the device's": (
        "device { bank sha256 }\nattestation boot { bank sha384  pcrs 0, 4, 7 }\n", [("VP0518", 2, 25)],
    ),
    "VP0518 a seal in defaults over another bank, once": (
        "defaults { seal pcrs 0, 4, 7 bank sha384 }\nvault d { path \"/persist/d\" }\n", [("VP0518", 1, 35)],
    ),
    "VP0518 not for the device's own bank written again": (
        "device { bank sha384 }\nvault d { path \"/persist/d\"  seal pcrs 0, 4, 7 bank sha384 }\n", [],
    ),
    "VP0519 the SHA-1 bank, once for the device and every vault that takes it": (
        "device { bank sha1 }\n", [("VP0519", 1, 15)],
    ),
    "VP0518 and VP0519 an attestation over SHA-1": (
        "attestation old { bank sha1  pcrs 0, 4, 7 }\n", [("VP0518", 1, 24), ("VP0519", 1, 24)],
    ),
    "VP0511 allow value not a digest": (
        'attestation boot { pcrs 0, 4, 7  allow pcr 0 = "abc" }\n',
        [("VP0511", 1, 48)],
    ),
    # --- keys
    "VP0601 rotation under a day": ('vault data { path "/persist/d"  rotate every 12h }\n', [("VP0601", 1, 33)]),
    "VP0601 in defaults, once": (
        'defaults { rotate every 1h }\nvault a { path "/persist/a" }\n',
        [("VP0601", 1, 12)],
    ),
    "VP0602 destroy on protected": ('vault data { path "/persist/d"  protected  on_remove destroy }\n', [("VP0602", 1, 44)]),
    "VP0602 destroy on built-in config": ("vault config { on_remove destroy }\n", [("VP0602", 1, 16)]),
    "VP0603 escrow without key": ("attestation boot { pcrs 0, 4, 7  escrow required }\n", [("VP0603", 1, 34)]),
}


# Every other compiler code is an error: a warning never stops `compile`, an error always does.
WARNINGS = {"VP0402", "VP0504", "VP0505", "VP0507", "VP0508", "VP0513", "VP0514", "VP0515", "VP0517", "VP0518",
            "VP0519"}


@pytest.mark.parametrize("text,expected", CASES.values(), ids=CASES.keys())
def test_rule_reports_exact_code_severity_and_position(diagnose, check_text, text, expected):
    assert diagnose(text) == expected
    assert [d.severity for d in check_text(text)] == ["warning" if code in WARNINGS else "error" for code, _, _ in expected]


def test_every_compiler_code_has_a_case():
    import compiler.codes

    registered = {value for name, value in vars(compiler.codes).items() if name.isupper() and isinstance(value, str)}
    tested = {code for _, expected in CASES.values() for code, _, _ in expected}
    tested |= {"VP0604", "VP0605"}  # files the policy names: tests/compiler/test_build.py
    tested |= {"VP0606"}  # against a previous plan (`compile --prev`): tests/compiler/test_build.py
    assert registered == tested


def test_every_code_used_by_a_case_is_explained():
    catalogue = all_codes()
    for _, expected in CASES.values():
        for code, _, _ in expected:
            info = catalogue[code]
            assert info.explanation and info.example, code


def test_every_independent_error_in_one_run(diagnose):
    text = (
        'vault a { path "relative" }\n'
        "vault b { seal pcrs 0, 4, 5, 7 }\n"
        "app x { vault nowhere }\n"
        'component c { stores "/persist/open" sensitive }\n'
        "vault config { on_remove destroy }\n"
    )
    codes = {code for code, _, _ in diagnose(text)}
    assert {"VP0201", "VP0503", "VP0101", "VP0301", "VP0602"} <= codes


def test_unknown_attestation_suggests_the_closest_name(check_text):
    [diagnostic] = check_text("attestation boot { pcrs 0, 4, 7 }\nvault data { seal bot }\n")
    assert (diagnostic.code, diagnostic.message, diagnostic.help) == ("VP0103", "unknown attestation `bot`", "did you mean `boot`?")
    assert diagnostic.notes == ("sealing vault `data`",)


COVERAGE_MESSAGES = {
    "VP0301 outside any vault": (
        'component zedagent { stores "/persist/secret" sensitive }\n',
        "component `zedagent` keeps sensitive data at `/persist/secret` outside any vault"),
    "VP0301 in a plain vault": (
        'vault scratch { path "/persist/clear"  encryption none }\ncomponent zedagent { stores "/persist/clear/x" sensitive }\n',
        "component `zedagent` keeps sensitive data at `/persist/clear/x` in vault `scratch`, which has `encryption none`"),
    "VP0302": (
        'vault scratch { path "/persist/clear"  encryption none }\napp camera { vault scratch  protection end_to_end }\n',
        "app `camera` asks for end-to-end protection but is bound to vault `scratch`, which has `encryption none`"),
    "VP0303": (
        'vault data { path "/persist/d"  seal pcrs 0, 4, 7 }\napp camera { vault data  protection end_to_end }\n',
        "app `camera` asks for end-to-end protection but vault `data` is not sealed to an attestation"),
}


@pytest.mark.parametrize("declared,help_text", [
    ("", "declare an `attestation` block (bank, PCRs, allowed values) and seal vault `data` to it with `seal NAME`"),
    ("attestation factory { pcrs 0, 4, 7 }\n", "seal vault `data` to attestation `factory`: `seal factory`"),
    ("attestation lab { pcrs 0, 4, 7 }\nattestation field { pcrs 0, 4, 7 }\n",
     "seal vault `data` to attestation `lab`: `seal lab` (or another declared one: `field`)"),
])
def test_end_to_end_help_names_an_attestation_the_policy_declares(check_text, declared, help_text):
    """VP0303's help said "e.g. `seal boot`" in a policy that declares no attestation `boot`."""
    [diagnostic] = check_text(declared + COVERAGE_MESSAGES["VP0303"][0])
    assert (diagnostic.code, diagnostic.help) == ("VP0303", help_text)


@pytest.mark.parametrize("text,message", COVERAGE_MESSAGES.values(), ids=COVERAGE_MESSAGES.keys())
def test_coverage_errors_name_the_component_or_app_and_the_vault(check_text, text, message):
    [diagnostic] = check_text(text)
    assert diagnostic.message == message


IN_DEFAULTS = {
    "VP0601": ('defaults { rotate every 1h }\nvault a { path "/persist/a" }\nvault b { path "/persist/b"  rotate every 2d }\n',
               ("VP0601", 1, 12, "`defaults` rotates keys every 1h, more often than once a day"), "`config`, `images`, `a`"),
    "VP0503": ("defaults { seal pcrs 0, 4, 5, 7 }\n",
               ("VP0503", 1, 28, "`defaults` seals to PCR 5, which flips on every A/B update"), "`config`, `images`"),
    "VP0507": ("defaults { seal pcrs 0, 7 }\n",
               ("VP0507", 1, 12, "`defaults` does not seal to firmware PCR 4"), "`config`, `images`"),
    "VP0506": ("attestation boot { bank sha256 }\nattestation other { pcrs 0, 4, 7 }\ndefaults { seal boot }\n",
               ("VP0506", 3, 12, "`defaults` seals through attestation `boot` to no PCRs: presence-only binding"),
               "`config`, `images`"),
    "VP0602": ('defaults { on_remove destroy }\nvault d { path "/persist/d"  protected }\n',
               ("VP0602", 1, 12, "`defaults` says `on_remove destroy`, which protected vaults inherit"), "`config`, `d`"),
}


@pytest.mark.parametrize("text,expected,vaults", IN_DEFAULTS.values(), ids=IN_DEFAULTS.keys())
def test_a_setting_of_defaults_is_reported_once_as_the_defaults_setting(check_text, text, expected, vaults):
    """`defaults { rotate every 1h }` was "vault `config` rotates its key every 1h", though every vault
    that inherits it does; the PCR checks named `config` too. A vault stating its own is not listed."""
    found = [d for d in check_text(text) if d.code == expected[0]]
    assert [(d.code, d.span.line, d.span.column, d.message) for d in found] == [expected]
    assert found[0].notes == (f"inherited by vaults {vaults}",)


def test_vaults_sealed_by_default_to_an_attestation_without_pcrs_are_one_error_that_says_so(check_text):
    """Three VP0506, one per vault (two of them built-in), none saying that the seal was the default."""
    found = [d for d in check_text("attestation x { nonce 16 bytes, valid 5m }\nvault a { }\n") if d.code == "VP0506"]
    assert [(d.span.line, d.span.column, d.message, d.notes) for d in found] == [
        (1, 13, "attestation `x` lists no PCRs, and vaults are sealed to it by default (it is the policy's only "
                "attestation): presence-only binding",
         ("sealed to it by default: vault `config`, vault `images`, vault `a`",))]


def test_the_note_on_a_setting_of_defaults_counts_what_it_does_not_name(check_text):
    vaults = "".join(f'vault v{n} {{ path "/persist/v{n}" }}\n' for n in range(9))
    [found] = check_text("defaults { rotate every 1h }\n" + vaults)
    assert found.notes == ("inherited by vaults `config`, `images`, `v0`, `v1`, `v2`, `v3` and 5 more",)


def test_encryption_none_in_defaults_says_so(check_text):
    [found] = check_text("defaults { encryption none }\n")
    assert (found.code, found.message) == ("VP0304", "`encryption none` in `defaults` leaves built-in vaults `config` "
                                                     "and `images` unencrypted")


def test_an_opt_out_of_a_vault_that_is_not_built_in_names_the_vault(check_text):
    [found] = check_text('vault data { disabled "not needed" }\n')
    assert (found.code, found.message) == ("VP0107", "vault `data` is not built in, so it cannot be opted out of")


def test_a_name_declared_three_times_is_never_said_to_be_declared_twice(check_text):
    """The third `vault a` said "is declared twice", the third `device` "second `device` block"."""
    found = check_text("vault a { }\nvault a { }\nvault a { }\ndevice { }\ndevice { }\ndevice { }\n")
    assert [(d.code, d.span.line, d.message, d.notes) for d in found] == [
        ("VP0102", 2, "vault `a` is already declared", ("first declared at t.vpol:1:7",)),
        ("VP0102", 3, "vault `a` is already declared", ("first declared at t.vpol:1:7",)),
        ("VP0108", 5, "another `device` block", ("first declared at t.vpol:4:1",)),
        ("VP0108", 6, "another `device` block", ("first declared at t.vpol:4:1",)),
    ]


def test_unknown_vault_suggests_the_closest_name(check_text):
    [diagnostic] = check_text('vault historian { path "/persist/h" }\napp a { vault histrian }\n')
    assert diagnostic.help == "did you mean `historian`?"


def test_opted_out_builtin_vault_is_gone_and_named_in_help(check_text, plan_of):
    text = 'vault images { disabled "no apps on this device" }\n'
    assert [v.name for v in plan_of(text).vaults] == ["config"]
    [diagnostic] = check_text(text + "app a { vault images }\n")
    assert diagnostic.code == "VP0101" and "opted out" in diagnostic.help


def test_clean_example_policy_has_no_diagnostics(check_text):
    from pathlib import Path

    import policy_lang

    result = policy_lang.load(Path(__file__).parents[2] / "examples" / "gateway.vpol")
    assert result.policy is not None
    import compiler

    assert list(compiler.check(result.policy)) == []


def test_the_compiler_and_the_device_share_one_minimum_limit():
    from compiler.plan import MIN_VAULT_LIMIT_BYTES
    from enforcer import blockdev

    assert blockdev.MIN_IMAGE_BYTES == MIN_VAULT_LIMIT_BYTES


@pytest.mark.parametrize(
    "path, meant",
    [("data", "write `/persist/data`"), ("./data/", "write `/persist/data`"), ("x/../y", "write `/persist/y`"),
     (".", "write an absolute path below `/persist`"), ("persist/data", "write `/persist/data`")],
)
def test_a_relative_vault_path_is_suggested_below_the_persist_root(check_text, path, meant):
    [found] = check_text(f'vault data {{ path "{path}" }}\n')
    assert (found.code, found.help) == ("VP0201", meant)


@pytest.mark.parametrize("pcr, code, why", [
    (1, "VP0504", "PCR 1 changes when a bootable USB stick is plugged in or a firmware setting changes"),
    (11, "VP0505", "PCR 11 is extended at each boot phase (systemd-stub, systemd-pcrphase)"),
    (12, "VP0505", "PCR 12 measures the kernel command line and credentials, which vary per boot"),
])
def test_a_volatile_pcr_s_warning_says_why_it_changes(check_text, pcr, code, why):
    """S4: the warning names what moves the PCR, so the author can judge whether it moves on this device."""
    [found] = check_text(f"vault data {{ seal pcrs 0, 4, 7, {pcr} }}\n")
    assert (found.code, found.severity, found.message) == (code, "warning", f"vault `data` seals to volatile PCR {pcr}")
    assert found.help == f"{why}; consider removing it"
