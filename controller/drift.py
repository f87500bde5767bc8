"""Verify devices' signed drift reports and summarise the fleet (data first, text second).

A report is accepted only when: its device is enrolled; the quote verifies with that device's
attestation key and names it as signer; the quote's qualifying data binds the report's exact bytes
(and the nonce it carries); the reported PCR values hash to the quoted digest; the report names the
same device. A report that carries a nonce must use one we issued to that device, unused and unexpired,
or be the very report that already used it and verified (rendering a report again is idempotent);
`require_nonce` makes a nonce mandatory. A vault the device reports with escrow `acknowledged` while
the store holds no escrow of it is drift in the fleet view (`escrow-unconfirmed`): acknowledgements
are unsigned, so that claim is checked against the controller's own records. The fleet summary is rendered by jinja2 templates
(controller/templates/drift.{txt,md,html}.j2) from the same `FleetSummary` a JSON view would dump.

The fleet shows each device's newest report by its TPM's counters (`keep_newest`): an older report is
refused, whether given beside a newer one or after a newer one was accepted (the store records the
newest accepted report of each device), so a replayed clean report cannot hide drift reported since.
"""

from __future__ import annotations

import contextlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from compiler.plan import format_time
from controller import nonce as nonces
from controller.errors import AttestationRejected
from controller.quote_verify import check_reported_values, check_signature, went_backwards
from controller.store import Store
from enforcer.report import Report, VaultReport, load_report, report_binding, split_signed_report

TEMPLATES = Path(__file__).parent / "templates"
FORMATS = {"text": "drift.txt.j2", "markdown": "drift.md.j2", "html": "drift.html.j2"}


@dataclass(frozen=True)
class VerifiedReport:
    report: Report
    fresh: bool  # carried a controller nonce that we checked and used
    pcrs: dict[int, bytes]
    bank: str
    source: str  # where the report was read from
    quote_sha256: str  # the signed statement: the same report given twice is one
    counters: tuple[int, int, int]  # the TPM's reset count, restart count and clock when it signed
    # vaults the device reports escrow `acknowledged` for while this controller holds no escrow of them:
    # acknowledgements are unsigned and made from public data, so the device's word is not enough
    escrow_unconfirmed: frozenset[str] = frozenset()


def verify_report(store: Store, signed: bytes, now: int, *, require_nonce: bool = False, source: str = "report") -> VerifiedReport:
    report_bytes, quote = split_signed_report(signed, source)
    if quote.purpose != "report":
        raise AttestationRejected("not-a-report", f"{source}: the quote does not vouch for a report")
    device = store.device(quote.device_id)
    if device is None:
        raise AttestationRejected("device-unknown", f"{source}: device `{quote.device_id}` is not enrolled")
    parsed = check_signature(quote, device.ak_public_pem, device.ak_name)
    if not hmac.compare_digest(quote.bound_sha256, report_binding(report_bytes)):
        raise AttestationRejected("report-altered", f"{source}: the report was changed after the device signed it")
    if not quote.nonce and require_nonce:
        raise AttestationRejected("nonce-missing", f"{source}: the report carries no controller nonce")
    # The same verified report may be rendered again (same quote, same statement); another report
    # with its nonce is a replay.
    freshness = (nonces.spend(store, quote.nonce, quote.device_id, now, quote.digest(), repeatable=True)
                 if quote.nonce else contextlib.nullcontext())
    with freshness:
        check_reported_values(quote, parsed)
        report = load_report(report_bytes, source)
        if report.device_id != quote.device_id:
            raise AttestationRejected("report-altered", f"{source}: report names device `{report.device_id}`, its quote `{quote.device_id}`")
    escrowed = set(store.escrowed_vaults(report.device_id))
    unconfirmed = frozenset(v.name for v in report.vaults if v.escrow == "acknowledged" and v.name not in escrowed)
    return VerifiedReport(report, bool(quote.nonce), dict(quote.pcrs), quote.bank, source, quote.digest(), parsed.counters,
                          unconfirmed)


def keep_newest(store: Store, verified: list[VerifiedReport], now: int) -> tuple[list[VerifiedReport], list[tuple[str, str]]]:
    """(each device's newest report by its TPM's counters, the (source, why) of every other one).

    Refused: a report given beside a newer one of its device, and one older than the newest report of
    its device accepted before. The same report given twice is one statement, kept once. The newest
    report kept of each device is recorded as its newest, checked and recorded in one transaction."""
    newest: dict[str, VerifiedReport] = {}
    refused = []
    for candidate in sorted(verified, key=lambda v: v.counters, reverse=True):
        kept = newest.setdefault(candidate.report.device_id, candidate)
        if kept.quote_sha256 != candidate.quote_sha256:
            refused.append((candidate.source, f"older than `{kept.source}` from the same device (TPM reset/restart/clock "
                                              f"{candidate.counters}, that one {kept.counters})"))
    accepted = []
    for report in newest.values():
        device_id = report.report.device_id
        with store.transaction():
            seen = store.newest_report(device_id)
            if seen and seen.quote_sha256 != report.quote_sha256 and went_backwards(report.counters, seen.counters):
                accepted_at = format_time(datetime.fromtimestamp(seen.accepted_at, timezone.utc))
                refused.append((report.source, f"older than the report of `{device_id}` accepted at {accepted_at} (TPM "
                                               f"reset/restart/clock {report.counters}, that one {seen.counters}): a replayed "
                                               "old report?"))
                continue
            store.record_newest_report(device_id, report.quote_sha256, report.counters, now)
        accepted.append(report)
    return accepted, refused


@dataclass(frozen=True)
class DeviceSummary:
    device_id: str
    plan_version: int | None
    generated_at: str
    fresh: bool
    drifting: list[VaultReport]
    ready: int
    retained: list[VaultReport] = field(default_factory=list)  # Orphaned: left the plan with `retain`, not drift


@dataclass(frozen=True)
class FleetSummary:
    devices: list[DeviceSummary]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (source, why)

    @property
    def drifting_devices(self) -> list[DeviceSummary]:
        return [d for d in self.devices if d.drifting]


def summarise(verified: list[VerifiedReport], rejected: list[tuple[str, str]]) -> FleetSummary:
    devices = []
    for v in sorted(verified, key=lambda v: v.report.device_id):
        report = controller_view(v)
        devices.append(DeviceSummary(
            device_id=report.device_id,
            plan_version=report.plan.plan_version,
            generated_at=report.generated_at,
            fresh=v.fresh,
            drifting=report.drifting,
            ready=len(report.vaults) - len(report.drifting) - len(report.retained),
            retained=report.retained,
        ))
    return FleetSummary(devices, rejected)


def controller_view(verified: VerifiedReport) -> Report:
    """The device's report with what the controller knows better: a vault whose escrow it claims is
    acknowledged, but of which the store holds no escrow, drifts (`escrow-unconfirmed`)."""
    vaults = [vault.model_copy(update={
        "condition": "Drifted", "reason": "escrow-unconfirmed",
        "message": "the device reports its escrow acknowledged, but this controller holds no escrowed key for it"})
        if vault.name in verified.escrow_unconfirmed else vault for vault in verified.report.vaults]
    return verified.report.model_copy(update={"vaults": vaults})


def render(summary: FleetSummary, fmt: str) -> str:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    return environment.get_template(FORMATS[fmt]).render(summary=summary)
