"""Drift reports: conditions computed from observations, signed by the TPM, verified by the controller
(issue 6, must show 3: an edited report fails, a report from another TPM fails)."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest

from compiler.plan import Seal, Vault
from controller import nonce as nonces
from controller.drift import render, summarise, verify_report
from controller.errors import AttestationRejected
from enforcer.attest import AttestationTpm
from enforcer.fscrypt import KeyStatus, policy_for
from enforcer.observe import ObservedSeal, ObservedVault, PathState
from enforcer.report import (SIGNED_REPORT_FORMAT, LastUnlock, PlanRef, Report, Rotation, Usage, VaultReport, report_binding,
                             report_schema, sign_report, vault_condition)

NOW = 1_800_000_000
KEY = bytes(range(16))
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "report.schema.json"


def vault(**changes) -> Vault:
    base = dict(name="config", path="/persist/vault/config", encryption="aes-256-xts", limit_bytes=1 << 20,
                seal=Seal(bank="sha256", pcrs=(0, 7)), on_remove="retain")
    return Vault(**{**base, **changes})


def seen(**changes) -> ObservedVault:
    base = dict(
        name="config", path="/r/persist/vault/config", path_state=PathState.DIRECTORY, mounted=True, used_bytes=4096,
        policy=policy_for(KEY, "aes-256-xts"), key_status=KeyStatus.PRESENT,
        seal=ObservedSeal(KEY, "sha256", (0, 7), True, ()),
    )
    return ObservedVault(**{**base, **changes})


@pytest.mark.parametrize(
    "wanted, observed, expected",
    [
        (vault(), seen(), ("Ready", "ready")),
        (None, seen(key_status=KeyStatus.ABSENT), ("Orphaned", "removed-from-plan")),
        (None, seen(), ("Drifted", "retained-unlocked")),
        (vault(), seen(policy=None, empty=False, mounted=False), ("Disabled", "plaintext-directory")),
        (vault(), seen(path_state=PathState.MISSING), ("Drifted", "path-missing")),
        (vault(), seen(path_state=PathState.SYMLINK_IN_PATH), ("Drifted", "path-not-directory")),
        (vault(), seen(policy=policy_for(bytes(16), "aes-256-xts")), ("Drifted", "key-mismatch")),
        (vault(seal=Seal(bank="sha256", pcrs=(0, 4, 7))), seen(), ("Drifted", "seal-selection")),
        (vault(), seen(used_bytes=2 << 20), ("Drifted", "over-limit")),
        (vault(), seen(key_status=KeyStatus.ABSENT), ("Locked", "key-absent")),
        (vault(), seen(key_status=KeyStatus.ABSENT, seal=ObservedSeal(KEY, "sha256", (0, 7), True, (7,))), ("Locked", "pcr-mismatch")),
        (vault(encryption="none", seal=None), seen(policy=None, seal=None, empty=False), ("Ready", "unencrypted-by-policy")),
    ],
)
def test_vault_condition(wanted, observed, expected):
    condition, reason, message = vault_condition(wanted, observed, managed=True)
    assert (condition, reason) == expected
    if reason == "pcr-mismatch":
        assert "sha256:7" in message


def test_a_vault_left_with_destroy_and_still_there_is_drift():
    assert vault_condition(None, seen(key_status=KeyStatus.ABSENT), True, "destroy")[:2] == ("Drifted", "destroy-pending")


def test_retained_vaults_are_listed_but_are_not_drift():
    from controller.drift import VerifiedReport

    retained = locked_report("gw-1").vaults[0].model_copy(update={
        "name": "old", "condition": "Orphaned", "reason": "removed-from-plan", "mismatching_pcrs": [],
        "message": "the plan no longer has this vault; its data is retained, locked"})
    ready = retained.model_copy(update={"name": "config", "condition": "Ready", "reason": "ready", "message": "ok"})
    report = locked_report("gw-1").model_copy(update={"vaults": [ready, retained]})
    assert report.drifting == [] and report.retained == [retained]
    summary = summarise([VerifiedReport(report, False, {}, "sha256", "r.json", "ab" * 32, (1, 0, 5))], [])
    assert summary.drifting_devices == [] and summary.devices[0].ready == 1
    text = render(summary, "text")
    assert "0 drifting" in text and "all 1 vault(s) Ready, 1 retained" in text
    assert "old: retained, not drift (Orphaned, removed-from-plan)" in text
    assert "| gw-1 | 3 | old | Orphaned (retained, not drift) | removed-from-plan |" in render(summary, "markdown")
    assert "<td>Orphaned (retained, not drift)</td>" in render(summary, "html")


def test_published_schema_is_the_models_schema():
    assert json.loads(SCHEMA.read_text()) == report_schema()


def locked_report(device_id: str) -> Report:
    return Report(
        device_id=device_id,
        generated_at="2027-01-15T08:00:00Z",
        plan=PlanRef(plan_version=3, plan_sha256="ab" * 32),
        vaults=[
            VaultReport(
                name="config", condition="Locked", reason="pcr-mismatch", message="PCR sha256:7 changed since sealing",
                mismatching_pcrs=[7], usage=Usage(used_bytes=4096, limit_bytes=1 << 20),
                rotation=Rotation(last_rotated=None, rotate_seconds=None, overdue=None), escrow="pending",
                last_unlock=LastUnlock(method="none"),
            )
        ],
    )


@pytest.fixture
def enrolled(make_tpm, store):
    tpm = make_tpm()
    tpm.measure_boot()
    with AttestationTpm(tpm.tcti) as device:
        identity = device.identity("gw-1")
    store.enroll("gw-1", identity.ak_public_pem, identity.ak_name, identity.storage_public, NOW)
    return tpm


def test_signed_report_verifies_and_renders(enrolled, store, make_policy):
    nonce = nonces.issue(store, "gw-1", make_policy(), NOW)
    signed = sign_report(enrolled.tcti, locked_report("gw-1"), nonce, "sha256", (0, 2, 4, 7))
    verified = verify_report(store, signed, NOW)
    assert verified.fresh and verified.report.vaults[0].mismatching_pcrs == [7]
    assert verify_report(store, signed, NOW + 60) == verified  # the same statement, rendered again
    other = sign_report(enrolled.tcti, locked_report("gw-1").model_copy(update={"generated_at": "2027-01-15T09:00:00Z"}),
                        nonce, "sha256", (0, 2, 4, 7))
    with pytest.raises(AttestationRejected, match="by a verification of another quote that succeeded: this one is a replay"):
        verify_report(store, other, NOW)  # another report cannot borrow the nonce's freshness

    summary = summarise([verified], [("old.json", "the report was changed after the device signed it")])
    text = render(summary, "text")
    # said once: it read "Locked (pcr-mismatch) locked: PCR sha256:7 changed since sealing [PCRs 7]"
    assert "gw-1: plan 3" in text and "  config: Locked (pcr-mismatch): PCR sha256:7 changed since sealing [escrow pending]\n" in text
    assert "| gw-1 | 3 | config | Locked | pcr-mismatch | 7 | pending | none |" in render(summary, "markdown")
    assert "<td>pcr-mismatch</td>" in render(summary, "html")


def test_an_escrow_the_controller_never_received_is_drift_whatever_the_device_says(enrolled, store):
    ready = locked_report("gw-1").vaults[0].model_copy(update={
        "condition": "Ready", "reason": "ready", "message": "ok", "mismatching_pcrs": [], "escrow": "acknowledged"})
    claim = locked_report("gw-1").model_copy(update={"vaults": [ready]})
    verified = verify_report(store, sign_report(enrolled.tcti, claim, b"", "sha256", (0, 7)), NOW)
    assert verified.escrow_unconfirmed == {"config"}
    summary = summarise([verified], [])
    assert [d.device_id for d in summary.drifting_devices] == ["gw-1"]
    assert "config: Drifted (escrow-unconfirmed): the device reports its escrow acknowledged, but this controller " \
        "holds no escrowed key for it" in render(summary, "text")

    store.add_escrow("gw-1", "config", KEY, b"{}", "00" * 32, NOW)
    verified = verify_report(store, sign_report(enrolled.tcti, claim, b"", "sha256", (0, 7)), NOW)
    assert verified.escrow_unconfirmed == frozenset() and summarise([verified], []).drifting_devices == []


def test_edited_report_fails(enrolled, store):
    signed = json.loads(sign_report(enrolled.tcti, locked_report("gw-1"), b"", "sha256", (0, 7)))
    report = json.loads(base64.b64decode(signed["report"]))
    report["vaults"][0]["condition"] = "Ready"
    signed["report"] = base64.b64encode(json.dumps(report).encode()).decode()
    with pytest.raises(AttestationRejected) as caught:
        verify_report(store, json.dumps(signed).encode(), NOW)
    assert caught.value.reason == "report-altered"


def test_report_from_another_tpm_fails(enrolled, store, make_tpm):
    impostor = make_tpm()
    signed = sign_report(impostor.tcti, locked_report("gw-1"), b"", "sha256", (0, 7))
    with pytest.raises(AttestationRejected) as caught:
        verify_report(store, signed, NOW)
    assert caught.value.reason == "bad-signature"


def test_unsolicited_report_is_refused_when_a_nonce_is_required(enrolled, store):
    signed = sign_report(enrolled.tcti, locked_report("gw-1"), b"", "sha256", (0, 7))
    assert not verify_report(store, signed, NOW).fresh
    with pytest.raises(AttestationRejected, match="no controller nonce"):
        verify_report(store, signed, NOW, require_nonce=True)


def test_the_fleet_shows_each_devices_newest_report_and_refuses_an_older_one(enrolled, store, make_tpm, tmp_path, capsys):
    """A clean report signed before a drifted one is refused beside it and when replayed alone later (it
    used to be shown as well, or instead: the drift disappeared); the same report given twice is shown
    once, and the newest one renders again. An edited report and an unenrolled device's are rejected."""
    from vaultpolicy.cli import main

    ready = locked_report("gw-1").vaults[0].model_copy(update={
        "condition": "Ready", "reason": "ready", "message": "ok", "mismatching_pcrs": []})
    reports = {
        "clean.json": sign_report(enrolled.tcti, locked_report("gw-1").model_copy(update={"vaults": [ready]}), b"", "sha256", (0, 7)),
        "drifted.json": sign_report(enrolled.tcti, locked_report("gw-1"), b"", "sha256", (0, 7)),
        "stranger.json": sign_report(make_tpm().tcti, locked_report("gw-9"), b"", "sha256", (0, 7)),
    }
    reports["drifted-again.json"] = reports["drifted.json"]
    edited = json.loads(reports["drifted.json"])
    edited["report"] = base64.b64encode(base64.b64decode(edited["report"]).replace(b"Locked", b"Ready")).decode()
    reports["edited.json"] = json.dumps(edited).encode()
    for name, data in reports.items():
        (tmp_path / name).write_bytes(data)

    def drift(*names: str, code: int) -> dict:
        capsys.readouterr()
        assert main(["controller", "drift", *(str(tmp_path / n) for n in names), "--format", "json",
                     "--store", str(store.path)]) == code
        return json.loads(capsys.readouterr().out)

    fleet = drift("clean.json", "drifted.json", "drifted-again.json", "edited.json", "stranger.json", code=1)
    assert [(d["device_id"], [v["condition"] for v in d["drifting"]]) for d in fleet["devices"]] == [("gw-1", ["Locked"])]
    why = {Path(source).name: text for source, text in fleet["rejected"]}
    assert sorted(why) == ["clean.json", "edited.json", "stranger.json"]
    assert why["clean.json"].startswith(f"older than `{tmp_path}/drifted.json` from the same device (TPM reset/restart/clock")
    assert "changed after the device signed it" in why["edited.json"] and "`gw-9` is not enrolled" in why["stranger.json"]

    replay = drift("clean.json", code=1)
    assert replay["devices"] == [] and "older than the report of `gw-1` accepted at " in replay["rejected"][0][1]
    assert replay["rejected"][0][1].endswith("a replayed old report?")
    assert [d["device_id"] for d in drift("drifted-again.json", code=3)["devices"]] == ["gw-1"]


def test_html_view_escapes_device_text():
    from controller.drift import VerifiedReport

    hostile = locked_report("<script>alert(1)</script>")
    html = render(summarise([VerifiedReport(hostile, False, {}, "sha256", "r.json", "ab" * 32, (1, 0, 5))], []), "html")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<script>" in render(summarise([VerifiedReport(hostile, False, {}, "sha256", "r.json", "ab" * 32, (1, 0, 5))], []), "text")


@pytest.mark.parametrize("purpose", ["release", "escrow"])
def test_a_release_or_escrow_quote_passed_off_as_a_report_is_refused(enrolled, store, make_policy, purpose):
    """The strongest forgery: a genuine quote of the enrolled TPM over this very report's binding, made
    for another purpose. Its JSON saying `report` breaks the signed qualifying data instead."""
    report_bytes = locked_report("gw-1").to_bytes()
    nonce = nonces.issue(store, "gw-1", make_policy(), NOW) if purpose == "release" else b""
    with AttestationTpm(enrolled.tcti) as attesting:
        made = attesting.quote("gw-1", purpose, nonce, report_binding(report_bytes), "sha256", (0, 2, 4, 7))

    def signed(quote) -> bytes:
        return json.dumps({"format": SIGNED_REPORT_FORMAT, "report": base64.b64encode(report_bytes).decode(),
                           "quote": json.loads(quote.to_bytes())}).encode()

    with pytest.raises(AttestationRejected) as caught:
        verify_report(store, signed(made), NOW)
    assert (caught.value.reason, caught.value.message) == ("not-a-report", "report: the quote does not vouch for a report")
    with pytest.raises(AttestationRejected) as relabelled:
        verify_report(store, signed(dataclasses.replace(made, purpose="report")), NOW)
    assert relabelled.value.reason == "nonce-mismatch"
    if nonce:
        assert store.get_nonce(nonce).used_at is None  # left to the release it was issued for
    with AttestationTpm(enrolled.tcti) as attesting:  # the same report under a report quote verifies
        genuine = attesting.quote("gw-1", "report", b"", report_binding(report_bytes), "sha256", (0, 2, 4, 7))
    assert verify_report(store, signed(genuine), NOW).report == locked_report("gw-1")
