"""Diffs: golden text and JSON per data-impact kind, no noise, blocked changes inside a full diff,
every format from one ChangeSet, and `--exit-code`."""

from __future__ import annotations

import json
import re
import os
from pathlib import Path

import pytest

from compiler.plan import decode_plan, encode_plan
from compiler.render import field_label, field_value

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"  # regenerate after an intended change, then review the diff

BASE = """\
attestation boot { pcrs 0, 4, 7 }
vault data { path "/persist/data"  limit 1GiB }
vault scratch { path "/persist/scratch"  encryption none }
app historian { vault data }
app camera { vault scratch }
"""
WITHOUT_DATA = BASE.replace('vault data { path "/persist/data"  limit 1GiB }\n', "").replace("vault data", "vault scratch")

CASES = {
    "none": (BASE, BASE.replace("limit 1GiB", "limit 2GiB")),
    "reseal": (BASE, BASE.replace("limit 1GiB", "limit 1GiB  seal pcrs 0, 2, 4, 7")),
    "rekey": (BASE, BASE.replace("limit 1GiB", "limit 1GiB  rotate every 30d")),
    "re-encrypt": (BASE, BASE.replace("limit 1GiB", "limit 1GiB  encryption adiantum")),
    "decrypts-data": (BASE, BASE.replace("limit 1GiB", "limit 1GiB  encryption none")),
    "encrypts-plain": (BASE, BASE.replace('"/persist/scratch"  encryption none', '"/persist/scratch"')),
    "destroys-data": (BASE.replace("limit 1GiB", "limit 1GiB  on_remove destroy"), WITHOUT_DATA),
    "remove-retain": (BASE, WITHOUT_DATA),
    "create": (BASE, BASE + 'vault logs { path "/persist/logs"  limit 64MiB }\napp logger { vault logs }\n'),
    "blocked-replace": (BASE, BASE + "vault config { encryption adiantum }\n"),
}


def _diff(cli, tmp_path, monkeypatch, old: str, new: str, *options: str):
    monkeypatch.chdir(tmp_path)
    Path("old.vpol").write_text(old)
    Path("new.vpol").write_text(new)
    return cli("diff", "old.vpol", "new.vpol", *options)


def _golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(actual)
    assert actual == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1 to regenerate)"


@pytest.mark.parametrize("case", CASES)
def test_golden_text_and_json(cli, tmp_path, monkeypatch, case):
    old, new = CASES[case]
    code, text, err = _diff(cli, tmp_path, monkeypatch, old, new, "--exit-code")
    assert code == 2, err
    _golden(f"{case}.txt", text)
    code, as_json, _ = cli("diff", "old.vpol", "new.vpol", "--format", "json")
    assert code == 0
    _golden(f"{case}.json", as_json)


@pytest.mark.parametrize(
    "case,name,marker,impact",
    [
        ("none", "data", "~", "none"),
        ("reseal", "data", "~", "reseal"),
        ("rekey", "data", "~", "rekey"),
        ("re-encrypt", "data", "-/+", "re-encrypt"),
        ("decrypts-data", "data", "-/+", "decrypts data"),
        ("destroys-data", "data", "-", "destroys data"),
        ("remove-retain", "data", "-", "none"),
        ("create", "logs", "+", "none"),
    ],
)
def test_each_impact_kind_and_its_affected_apps(cli, tmp_path, monkeypatch, case, name, marker, impact):
    old, new = CASES[case]
    _diff(cli, tmp_path, monkeypatch, old, new)
    changes = json.loads(cli("diff", "old.vpol", "new.vpol", "--format", "json")[1])["changes"]
    [vault] = [c for c in changes if c["kind"] == "vault" and c["name"] == name]
    assert (vault["marker"], vault["impact"]) == (marker, impact)
    assert vault["affected_apps"] == (["logger"] if name == "logs" else ["historian"])


def test_blocked_destroy_of_a_protected_vault_inside_a_full_diff(cli, tmp_path, monkeypatch, plan_of):
    """A plan made elsewhere (or by an older compiler) with a protected vault that says destroy."""
    monkeypatch.chdir(tmp_path)
    old = json.loads(_compile(cli, BASE, "old"))
    for vault in old["vaults"]:
        if vault["name"] == "data":
            vault.update(protected=True, on_remove="destroy")
    old["protected"] = ["config", "data"]
    Path("old.json").write_text(json.dumps(old))
    _compile(cli, CASES["destroys-data"][1], "new")
    code, text, _ = cli("diff", "old.json", "new.json", "--exit-code")
    assert code == 2
    _golden("blocked-destroy.txt", text)
    assert "-   vault data  (destroy; data impact: destroys data)  BLOCKED" in text
    assert "~   app historian" in text  # the rest of the diff is still rendered
    code, as_json, _ = cli("diff", "old.json", "new.json", "--format", "json")
    assert code == 0
    _golden("blocked-destroy.json", as_json)
    [vault] = [c for c in json.loads(as_json)["changes"] if c["kind"] == "vault"]
    assert (vault["action"], vault["impact"], vault["blocked"]) == (
        "destroy", "destroys data", "vault `data` is protected: the device refuses a plan that destroys it")


def test_a_vault_leaving_with_retain_is_removed_not_destroyed_in_every_format(cli, tmp_path, monkeypatch):
    """The device locks it, keeps its sealed key and reports it orphaned (docs/enforcer.md)."""
    text = _diff(cli, tmp_path, monkeypatch, *CASES["remove-retain"])[1]
    assert "-   vault data  (remove, retain: locked, key kept, reported orphaned; data impact: none)\n" in text
    assert "destroy" not in text.replace("0 to destroy", "")
    markdown = cli("diff", "old.vpol", "new.vpol", "--format", "markdown")[1]
    html = cli("diff", "old.vpol", "new.vpol", "--format", "html")[1]
    assert "| `-` | vault | `data` | remove (retain: locked, key kept, reported orphaned) | none | historian |" in markdown
    assert "- `path`: `\"/persist/data\"`\n" in markdown and "seal" not in markdown
    assert ">remove (retain: locked, key kept, reported orphaned)" in html and "seal" not in html
    [vault] = [c for c in json.loads(cli("diff", "old.vpol", "new.vpol", "--format", "json")[1])["changes"] if c["kind"] == "vault"]
    assert (vault["action"], vault["note"], vault["blocked"]) == ("remove", "retain: locked, key kept, reported orphaned", None)
    assert [f["field"] for f in vault["fields"]] == ["encryption", "on_remove", "path"]  # what identifies it, no absent values


def test_a_plain_vault_becoming_encrypted_says_its_files_migrate_into_the_encrypted_directory(cli, tmp_path, monkeypatch):
    text = _diff(cli, tmp_path, monkeypatch, *CASES["encrypts-plain"])[1]
    assert (
        "-/+ vault scratch  (replace, plain files migrate into the encrypted directory; data impact: re-encrypt)\n"
        '      encryption: none -> aes-256-xts\n'
    ) in text
    markdown = cli("diff", "old.vpol", "new.vpol", "--format", "markdown")[1]
    assert "| `-/+` | vault | `scratch` | replace (plain files migrate into the encrypted directory) | re-encrypt | camera |" in markdown
    re_encrypt = _diff(cli, tmp_path, monkeypatch, *CASES["re-encrypt"])[1]
    assert "-/+ vault data  (replace; data impact: re-encrypt)\n" in re_encrypt  # a cipher change: no plain files


def test_a_path_change_says_the_device_keeps_the_files_where_they_are(cli, tmp_path, monkeypatch):
    """The device never moves a vault's files (VP1108): no data migrates, nothing is re-created."""
    moved = BASE.replace('"/persist/data"', '"/persist/moved"')
    text = _diff(cli, tmp_path, monkeypatch, BASE, moved)[1]
    assert "~   vault data  (update, path not moved: files stay at /persist/data, reported as VP1108; data impact: none)\n" in text
    recrypted = _diff(cli, tmp_path, monkeypatch, BASE, moved.replace("limit 1GiB", "limit 1GiB  encryption adiantum"))[1]
    assert "-/+ vault data  (replace, path not moved: files stay at /persist/data, reported as VP1108; data impact: re-encrypt)\n" in recrypted


def test_removed_apps_and_components_are_removed_not_destroyed(cli, tmp_path, monkeypatch):
    old = BASE + 'component agent { stores "/persist/data/agent" sensitive }\n'
    text = _diff(cli, tmp_path, monkeypatch, old, BASE.replace("app camera { vault scratch }\n", ""))[1]
    assert "-   app camera  (remove; data impact: none)\n      vault: scratch\n" in text
    assert '-   component agent  (remove; data impact: none)\n      stores: "/persist/data/agent" sensitive (in vault data)\n' in text
    assert text.endswith("0 to create, 0 to update, 0 to replace, 2 to remove, 0 to destroy\n")


def test_protected_vault_leaving_with_retain_is_not_blocked(cli, tmp_path, monkeypatch):
    """The device allows it (enforcer/verify.py): the vault stays, locked, its key kept."""
    monkeypatch.chdir(tmp_path)
    _compile(cli, BASE.replace("limit 1GiB", "limit 1GiB  protected"), "old")
    _compile(cli, WITHOUT_DATA, "new")
    [vault] = [c for c in json.loads(cli("diff", "old.json", "new.json", "--format", "json")[1])["changes"] if c["kind"] == "vault"]
    assert (vault["action"], vault["impact"], vault["blocked"]) == ("remove", "none", None)


def test_switching_a_protected_vault_to_on_remove_destroy_is_blocked(cli, tmp_path, monkeypatch):
    """Protection is sticky on the device: dropping `protected` does not allow `on_remove destroy`."""
    monkeypatch.chdir(tmp_path)
    _compile(cli, BASE.replace("limit 1GiB", "limit 1GiB  protected"), "old")
    _compile(cli, BASE.replace("limit 1GiB", "limit 1GiB  on_remove destroy"), "new")
    code, text, _ = cli("diff", "old.json", "new.json")
    assert code == 0 and "~   vault data  (update, the device keeps it protected; data impact: none)  BLOCKED\n" in text
    assert "blocked: vault `data` is protected: the device refuses a plan that sets `on_remove destroy` on it\n" in text


def test_protection_is_sticky_along_the_chain_of_plans(cli, tmp_path, monkeypatch):
    """S16: protected in v1, `protected` dropped in v2, `on_remove destroy` in v3. The device keeps the
    protection it recorded, so the chain does too: v2 (compiled with --prev v1) still lists the vault
    as protected, v3 is refused at compile, and the diff from v2 shows the change BLOCKED."""
    monkeypatch.chdir(tmp_path)
    _compile(cli, BASE.replace("limit 1GiB", "limit 1GiB  protected"), "v1")
    Path("v2.vpol").write_text(BASE)
    assert cli("compile", "v2.vpol", "--prev", "v1.json", "--issued-at", "2026-01-02T00:00:00Z", "-o", "v2.json")[0] == 0
    v2 = decode_plan(Path("v2.json").read_bytes())
    assert v2.protected == ("config", "data") and not v2.vault("data").protected
    from enforcer.verify import record_for

    assert record_for(v2, v2.vault("data"), None).protected  # a device that first sees v2 protects it too

    text = cli("diff", "v1.json", "v2.json")[1]
    assert "~   vault data  (update, the device keeps it protected; data impact: none)\n      protected: true -> false\n" in text

    Path("v3.vpol").write_text(BASE.replace("limit 1GiB", "limit 1GiB  on_remove destroy"))
    code, _, err = cli("compile", "v3.vpol", "--prev", "v2.json", "-o", "v3.json")
    assert code == 1 and not Path("v3.json").exists()
    assert "error[VP0602]: vault `data` was protected by the previous plan, and the device keeps that protection, " \
           "but says `on_remove destroy`" in err and "--> v3.vpol:2:48" in err
    code, text, _ = cli("diff", "v2.json", "v3.vpol", "--exit-code")
    assert code == 2 and "~   vault data  (update; data impact: none)  BLOCKED\n" in text
    assert "blocked: vault `data` is protected: the device refuses a plan that sets `on_remove destroy` on it\n" in text

    # it stays protected after it leaves the plan (the device keeps it, locked): back with destroy, refused
    assert cli("compile", "v2.vpol", "--prev", "v2.json", "-o", "v4.json")[0] == 0
    Path("v5.vpol").write_text(WITHOUT_DATA)
    assert cli("compile", "v5.vpol", "--prev", "v4.json", "-o", "v5.json")[0] == 0
    assert decode_plan(Path("v5.json").read_bytes()).protected == ("config", "data")
    assert cli("compile", "v3.vpol", "--prev", "v5.json", "-o", "v6.json")[0] == 1


def _compile(cli, text: str, stem: str) -> str:
    Path(f"{stem}.vpol").write_text(text)
    assert cli("compile", f"{stem}.vpol", "--plan-version", "1", "--issued-at", "2026-01-01T00:00:00Z", "-o", f"{stem}.json")[0] == 0
    return Path(f"{stem}.json").read_text()


def test_no_noise_for_equal_inputs(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _compile(cli, BASE, "a")
    reordered = "\n".join(reversed(BASE.splitlines())) + "\n"
    Path("b.vpol").write_text(reordered)
    cli("compile", "b.vpol", "--plan-version", "2", "--issued-at", "2026-02-01T00:00:00Z", "--prev", "a.json", "-o", "b.json")
    cli("keygen", "-o", "k")
    cli("sign", "a.json", "--key", "k", "-o", "a.signed")
    for old, new in [("a.json", "a.json"), ("a.vpol", "b.vpol"), ("a.json", "b.json"), ("a.json", "a.signed"), ("a.vpol", "a.signed")]:
        code, out, _ = cli("diff", old, new, "--exit-code")
        assert (code, out) == (0, f"diff {old} -> {new}\nno changes\n")


@pytest.mark.parametrize("written", ["deny_release, keep_locked", "keep_locked, keep_locked, deny_release", "deny_release, deny_release"])
def test_on_failure_in_any_order_or_repeated_is_the_same_plan(cli, tmp_path, monkeypatch, plan_of, written):
    monkeypatch.chdir(tmp_path)
    listed = BASE.replace("pcrs 0, 4, 7 }", "pcrs 0, 4, 7  on_failure keep_locked, deny_release }")
    rewritten = listed.replace("keep_locked, deny_release", written)
    same = written.count("keep_locked") and written.count("deny_release")
    assert (encode_plan(plan_of(listed)) == encode_plan(plan_of(rewritten))) == bool(same)
    _compile(cli, listed, "a")
    Path("b.vpol").write_text(rewritten)
    code, out, _ = cli("diff", "a.json", "b.vpol", "--exit-code")
    if same:
        assert (code, out) == (0, "diff a.json -> b.vpol\nno changes\n")
    else:  # only one action: a real change, shown once
        assert code == 2 and "on_failure: keep_locked, deny_release -> deny_release" in out


def test_a_policy_diffed_with_its_plan_for_a_target_shows_no_change(cli, tmp_path, monkeypatch):
    """A policy names no targets: beside a plan compiled with `--target`, it is compared for the same ones."""
    monkeypatch.chdir(tmp_path)
    Path("a.vpol").write_text(BASE)
    assert cli("compile", "a.vpol", "--plan-version", "1", "--target", "gw-1", "--target", "class:edge", "-o", "a.json")[0] == 0
    for old, new in (("a.vpol", "a.json"), ("a.json", "a.vpol")):
        assert cli("diff", old, new, "--exit-code")[:2] == (0, f"diff {old} -> {new}\nno changes\n")
    assert cli("compile", "a.vpol", "--plan-version", "2", "--target", "gw-2", "-o", "b.json")[0] == 0
    code, out, _ = cli("diff", "a.json", "b.json")
    assert "~   device  (update; data impact: none)\n      targets: class:edge, gw-1 -> gw-2\n" in out
    # the device has no name of its own: "device device" in every format
    markdown = cli("diff", "a.json", "b.json", "--format", "markdown")[1]
    assert "| `~` | device | — | update |" in markdown and "#### `~` device\n" in markdown
    html = cli("diff", "a.json", "b.json", "--format", "html")[1]
    assert "<td>device</td><td></td>" in html and "device device" not in markdown + html + out


def test_exit_code_one_on_a_policy_with_errors(cli, tmp_path, monkeypatch):
    code, _, err = _diff(cli, tmp_path, monkeypatch, BASE, BASE + "app broken { vault nowhere }\n", "--exit-code")
    assert code == 1 and "error[VP0101]" in err and "cannot diff `new.vpol`" in err


def test_markdown_and_html_render_the_same_changes(cli, tmp_path, monkeypatch):
    old, new = CASES["blocked-replace"]
    _diff(cli, tmp_path, monkeypatch, old, new)
    markdown = cli("diff", "old.vpol", "new.vpol", "--format", "markdown")[1]
    html = cli("diff", "old.vpol", "new.vpol", "--format", "html")[1]
    assert "| `-/+` | vault | `config` | replace **BLOCKED** | re-encrypt |" in markdown
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html and "BLOCKED: vault <code>" not in html
    assert "BLOCKED: vault `config` is protected" in html and html.rstrip().endswith("</html>")


def test_human_formats_show_units_and_only_the_nested_values_that_changed(cli, tmp_path, monkeypatch):
    new = BASE.replace("limit 1GiB", "limit 2GiB  rotate every 90d  seal pcrs 0, 2, 4, 7")
    text = _diff(cli, tmp_path, monkeypatch, BASE, new)[1]
    markdown = cli("diff", "old.vpol", "new.vpol", "--format", "markdown")[1]
    html = cli("diff", "old.vpol", "new.vpol", "--format", "html")[1]
    for line in ("limit: 1GiB -> 2GiB", "rotate: 180d -> 90d", "seal.pcrs: 0, 4, 7 -> 0, 2, 4, 7"):
        assert f"      {line}\n" in text
    assert "seal.bank" not in text and "{" not in text  # unchanged nested values stay out; no JSON blobs
    assert "- `limit`: `1GiB` → `2GiB`" in markdown and "- `seal.pcrs`: `0, 4, 7` → `0, 2, 4, 7`" in markdown
    assert "<code>rotate</code>: <code>180d</code> → <code>90d</code>" in html
    changes = json.loads(cli("diff", "old.vpol", "new.vpol", "--format", "json")[1])["changes"]
    [vault] = [c for c in changes if c["name"] == "data"]
    assert {f["field"]: (f["old"], f["new"]) for f in vault["fields"]} == {  # machine values, exact
        "limit_bytes": (1 << 30, 2 << 30),
        "rotate_seconds": (180 * 86400, 90 * 86400),
        "seal.attestation": ("boot", None),
        "seal.pcrs": ([0, 4, 7], [0, 2, 4, 7]),
    }


def test_device_sizes_and_nonce_lifetimes_read_in_the_language_s_units():
    assert (field_label("capacity_bytes"), field_value(64 << 30, "capacity_bytes")) == ("capacity", "64GiB")
    assert (field_label("reserve_bytes"), field_value(1536, "reserve_bytes")) == ("reserve", "1536B")
    assert (field_label("nonce_lifetime_seconds"), field_value(300, "nonce_lifetime_seconds")) == ("nonce_valid", "5m")
    assert field_value(0, "limit_bytes") == "unlimited" and field_value(None, "limit_bytes") == "(none)"
    assert (field_label("seal.pcrs"), field_value("/persist/a", "path")) == ("seal.pcrs", '"/persist/a"')
    # `escrow_public_key: (none) -> 7sKZ…`: a field the language has not, and a value that said not what it is
    key = "7sKZ" + "A" * 39 + "="
    assert (field_label("escrow_public_key"), field_value(key, "escrow_public_key")) == (
        "escrow_key", f"X25519 public key {key} (base64)")


def test_attestation_pcr_change_reseals_every_vault_sealed_to_it(cli, tmp_path, monkeypatch):
    _diff(cli, tmp_path, monkeypatch, BASE, BASE.replace("pcrs 0, 4, 7", "pcrs 0, 2, 4, 7"))
    changes = json.loads(cli("diff", "old.vpol", "new.vpol", "--format", "json")[1])["changes"]
    summary = {(c["kind"], c["name"]): (c["marker"], c["impact"], c["affected_apps"]) for c in changes}
    assert summary == {
        ("attestation", "boot"): ("~", "reseal", ["historian"]),
        ("vault", "config"): ("~", "reseal", []),
        ("vault", "data"): ("~", "reseal", ["historian"]),
        ("vault", "images"): ("~", "reseal", []),
    }


ODD_PATH = "/persist/a|b`<i>x"


def test_markdown_escapes_what_a_policy_may_write(cli, tmp_path, monkeypatch):
    """A path with `|`, a backtick or `<i>` broke the table row (a `|` ends a cell) or made HTML."""
    old = f'vault data {{ path "{ODD_PATH}"  limit 1GiB }}\n'
    markdown = _diff(cli, tmp_path, monkeypatch, old, old.replace(ODD_PATH, "/persist/new"), "--format", "markdown")[1]
    [row] = [line for line in markdown.splitlines() if line.startswith("| `~` |")]
    assert row == ("| `~` | vault | `data` | update (path not moved: files stay at /persist/a\\|b\\`\\<i\\>x, reported as "
                   "VP1108) | none | — |")
    assert len(re.findall(r"(?<!\\)\|", row)) == 7  # six cells
    assert '- `path`: ``"/persist/a|b`<i>x"`` → `"/persist/new"`\n' in markdown  # a code span: literal, HTML too


def test_a_lowered_limit_is_noted_the_device_never_shrinks(cli, tmp_path, monkeypatch):
    text = _diff(cli, tmp_path, monkeypatch, BASE, BASE.replace("limit 1GiB", "limit 512MiB"))[1]
    assert ("~   vault data  (update, limit lowered: the device never shrinks a vault, it keeps 1GiB and reports VP1104 "
            "(limit-below-size); data impact: none)\n      limit: 1GiB -> 512MiB\n") in text
    raised = _diff(cli, tmp_path, monkeypatch, BASE, BASE.replace("limit 1GiB", "limit 2GiB"))[1]
    assert "~   vault data  (update; data impact: none)\n" in raised


def test_a_vault_renamed_at_its_path_is_noted_the_device_does_not_rename(cli, tmp_path, monkeypatch):
    """Remove (retain) + create at the same path: the old files stay there, locked, and the device
    finds an encrypted directory without the new vault's key (key-lost)."""
    text = _diff(cli, tmp_path, monkeypatch, BASE, BASE.replace("vault data", "vault records"))[1]
    assert ("+   vault records  (create, at the path of removed vault `data`, whose files stay there, locked: the device "
            "renames no vault and reports VP1102 (key-lost) here; data impact: none)\n") in text
    assert "-   vault data  (remove, retain: locked, key kept, reported orphaned; data impact: none)\n" in text


def test_a_created_thing_shows_only_values_that_say_something_and_an_app_does_not_affect_itself(cli, tmp_path, monkeypatch):
    """A created vault listed `builtin: false`, `holds: (none)` and `protected: false`, a created app
    `end_to_end: false`, and a removed app "affects apps: <itself>"."""
    new = BASE.replace("app camera { vault scratch }\n", "") + 'vault logs { path "/persist/logs" }\napp logger { vault logs }\n'
    text = _diff(cli, tmp_path, monkeypatch, BASE, new)[1]
    vault = text.split("+   vault logs  (create; data impact: none)\n")[1].split("\n\n")[0]
    assert vault.splitlines() == ["      encryption: aes-256-xts", "      limit: unlimited", "      on_remove: retain",
                                  '      path: "/persist/logs"', "      rotate: 180d", "      seal.attestation: boot",
                                  "      seal.bank: sha256", "      seal.pcrs: 0, 4, 7", "      affects apps: logger"]
    assert "+   app logger  (create; data impact: none)\n      vault: logs\n\n" in text
    assert "-   app camera  (remove; data impact: none)\n      vault: scratch\n\n" in text
    changes = json.loads(cli("diff", "old.vpol", "new.vpol", "--format", "json")[1])["changes"]
    assert {c["name"]: c["affected_apps"] for c in changes if c["kind"] == "app"} == {"camera": [], "logger": []}
    protected = _diff(cli, tmp_path, monkeypatch, BASE, BASE + 'vault keys { path "/persist/keys"  protected }\n')[1]
    assert "      protected: true\n" in protected  # a value that says something stays


def test_values_are_spelt_as_the_language_writes_them(cli, tmp_path, monkeypatch):
    """`encryption: "none"` beside `limit: 8MiB`, and `rotate: 180d` on a vault with no key to rotate."""
    new = BASE + 'vault logs { path "/persist/logs"  encryption none  holds "/persist/logs/a" }\n'
    text = _diff(cli, tmp_path, monkeypatch, BASE, new)[1]
    created = text.split("+   vault logs  (create; data impact: none)\n")[1].split("\n\n")[0]
    assert created.splitlines() == [
        "      encryption: none", '      holds: "/persist/logs/a"', "      limit: unlimited", "      on_remove: retain",
        '      path: "/persist/logs"']
    resealed = _diff(cli, tmp_path, monkeypatch, BASE, BASE.replace("pcrs 0, 4, 7 }", 'pcrs 0, 4, 7  allow pcr 0 = "'
                                                                   + "ab" * 32 + '" }'))[1]
    assert f'      allowed.0: (none) -> "{"ab" * 32}"\n' in resealed
    assert field_value(["a\tb", '"q"'], "holds") == '"a\\tb", "\\"q\\""'
