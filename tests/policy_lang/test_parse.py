"""Every construct of the language parses into the shared AST with the right values and spans."""

from __future__ import annotations

import pytest

from policy_lang import ast

FULL = '''
include "more.vpol"
device {
  persist "/persist"
  capacity 64GiB reserve 4GiB
  tpm optional
  bank sha256
  allow_unmeasured_boot
  escrow_key "escrow.pub"
}
attestation boot {
  bank sha256
  pcrs 0, 2, 4, 7
  allow pcr 0 = "9f86" | "a3c1"
  allow pcr 7 from "pcr7.txt"
  nonce 32 bytes, valid 5m
  escrow required
  on_failure keep_locked, deny_release
}
defaults { encryption adiantum; seal boot; rotate every 180d; on_remove destroy }
vault config { path "/persist/vault/config"; seal pcrs 0, 7 bank sha256; limit 512MiB; protected
  holds "/persist/vault/config/a", "/persist/vault/config/b" }
vault images { disabled "no apps on this device" }
component domainmgr { stores "/persist/img", "/persist/rkt" sensitive  stores "/persist/tmp" }
app historian { vault config  protection end_to_end }
'''


def test_every_construct_becomes_its_ast_node(lang):
    policy = lang.parse_ok(FULL)
    include, device, att, defaults, config, images, component, app = policy.items
    assert include.path.value == "more.vpol"
    assert device.persist.value == "/persist"
    assert (device.capacity.bytes, device.reserve.bytes) == (64 << 30, 4 << 30)
    assert device.tpm_required is False and device.bank.value == "sha256"
    assert device.allow_unmeasured_boot is not None and device.escrow_key.value == "escrow.pub"
    assert [p.index for p in att.pcrs] == [0, 2, 4, 7]
    assert [v.value for v in att.allow[0].values] == ["9f86", "a3c1"]
    assert att.allow[1].pcr.index == 7 and att.allow[1].reference_file.value == "pcr7.txt"
    assert (att.nonce_bytes.value, att.nonce_valid.seconds) == (32, 300)
    assert att.escrow_required is not None and att.on_failure == ("keep_locked", "deny_release")
    s = defaults.settings
    assert (s.encryption.mode, s.seal.attestation.value, s.rotate.every.seconds, s.on_remove.action) == (
        "adiantum", "boot", 180 * 86400, "destroy")
    assert config.settings.seal.attestation is None
    assert [p.index for p in config.settings.seal.pcrs] == [0, 7] and config.settings.seal.bank.value == "sha256"
    assert config.limit.bytes == 512 << 20 and config.limit.text == "512MiB" and config.protected is not None
    assert [h.value for h in config.holds] == ["/persist/vault/config/a", "/persist/vault/config/b"]
    assert images.opt_out_reason.value == "no apps on this device"
    assert [(e.path.value, e.sensitive) for e in component.stores] == [
        ("/persist/img", True), ("/persist/rkt", True), ("/persist/tmp", False)]
    assert app.vault.value == "config" and app.end_to_end is not None


def test_issue_2_slice_with_semicolons_or_newlines_means_the_same(lang):
    one_line = lang.parse_ok('vault v { path "/p"; seal pcrs 0, 7; limit 512MiB }\napp a { vault v }')
    lines = lang.parse_ok('vault v {\n  path "/p"\n  seal pcrs 0,7\n  limit 512MiB\n}\napp a {\n vault v\n}')
    assert one_line == lines
    assert one_line.of_type(ast.AppDecl)[0].vault.value == "v"


def test_spans_are_one_based_with_exclusive_ends(lang):
    policy = lang.parse_ok('vault v {\n  limit 16MiB\n}')
    limit = policy.items[0].limit
    assert (limit.span.line, limit.span.column, limit.span.end_line, limit.span.end_column) == (2, 9, 2, 14)
    assert (policy.items[0].span.line, policy.items[0].span.end_line) == (1, 3)
    assert policy.items[0].name.span.column == 7


def test_sizes_use_binary_and_decimal_units(lang):
    sizes = {"1B": 1, "2KiB": 2048, "3MiB": 3 << 20, "4GiB": 4 << 30, "5TiB": 5 << 40,
             "6KB": 6000, "7MB": 7 * 10**6, "8GB": 8 * 10**9, "9TB": 9 * 10**12}
    for text, expected in sizes.items():
        assert lang.parse_ok(f"vault v {{ limit {text} }}").items[0].limit.bytes == expected


def test_durations_use_s_m_h_d_w(lang):
    durations = {"30s": 30, "5m": 300, "2h": 7200, "90d": 90 * 86400, "2w": 14 * 86400}
    for text, expected in durations.items():
        assert lang.parse_ok(f"defaults {{ rotate every {text} }}").items[0].settings.rotate.every.seconds == expected


def test_string_escapes_are_decoded(lang):
    policy = lang.parse_ok(r'vault images { disabled "a\"b\\c\n\t\u{1F512}" } vault v { path "/a\"b\\c\u{1F512}" }')
    assert policy.items[0].opt_out_reason.value == 'a"b\\c\n\t\U0001F512'
    assert policy.items[1].path.value == '/a"b\\c\U0001F512'


def test_keywords_are_contextual_where_a_name_is_expected(lang):
    policy = lang.parse_ok("vault protected { limit 1MiB }\napp path { vault protected }")
    assert policy.items[0].name.value == "protected"
    assert policy.items[1].name.value == "path" and policy.items[1].vault.value == "protected"


def test_comments_and_empty_input(lang):
    assert lang.parse_ok("# only a comment\n").items == ()
    assert lang.parse_ok("").items == ()
    assert lang.parse_ok("vault v { # trailing\n limit 1MiB # more\n }").items[0].limit.bytes == 1 << 20


def test_unwritten_settings_stay_none(lang):
    vault = lang.parse_ok("vault v { }").items[0]
    assert vault.path is None and vault.limit is None and vault.settings.encryption is None
    assert vault.holds == () and vault.protected is None


def test_a_run_of_bad_characters_is_one_error_at_its_start(lang):
    # The tokenizer matches bad characters as runs; a run stops at whitespace or at a character
    # that starts a token, and a vertical tab is not whitespace in the language. The run costs only
    # itself: the stray `x` before it is an error of its own.
    errors = lang.errors('vault v { limit 8MiB }\n  x@@\x0b$ y\n\tapp a {@} ~\n')
    assert [(lang.where(d), d.span.end_pos - d.span.start_pos, d.message) for d in errors] == [
        (("VP0005", 2, 3), 1, "unknown keyword `x`"),
        (("VP0001", 2, 4), 4, "unexpected `@@`, the control character U+000B and `$` in the policy"),
        (("VP0001", 3, 9), 1, "unexpected `@` in the policy"),
        (("VP0001", 3, 12), 1, "unexpected `~` in the policy"),
    ]


def test_setting_keywords_follow_each_block_kind(lang):
    # Which keywords start a setting is probed once per kind of header and reused: a misspelt
    # setting in a later block of another kind still gets that kind's suggestion.
    errors = lang.errors("vault v { limt 1MiB }\napp a { vaul v }\nvault w { limt 1MiB }\n")
    assert [(lang.where(d), d.help) for d in errors] == [
        (("VP0005", 1, 11), "did you mean `limit`?"),
        (("VP0005", 2, 9), "did you mean `vault`?"),
        (("VP0005", 3, 11), "did you mean `limit`?"),
    ]


@pytest.mark.parametrize("text", [
    "app vault { vault protected }", "vault app { limit 16MiB }", "app device { }", 'component vault { stores "/persist/x" }',
    "vault component { }", "app app { }", "vault vault { }", "attestation include { pcrs 0, 4, 7 }", "vault include { }",
    "vault defaults { }", "vault attestation { }", "attestation attestation { pcrs 0, 4, 7 }",
])
def test_a_top_level_keyword_is_a_name_where_a_name_is_expected(lang, text):
    """`app vault { vault protected }` gave `expected a name, found end of file` at 1:4, and more."""
    [item] = lang.parse_ok(text + "\n").items
    assert item.name.value == text.split()[1]


def test_a_missing_name_before_the_next_item_is_still_one_error_there(lang):
    """`vault` then `app x { }` on the next line: `app` is the next item, not the vault's name. The
    error is at the `vault` that lacks its name."""
    [d] = lang.errors("vault\napp x { }\n")
    assert (*lang.where(d), d.message) == ("VP0007", 1, 1, "missing a vault name after `vault`")
