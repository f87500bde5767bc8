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
"""

from __future__ import annotations

import contextlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

from controller import nonce as nonces
from controller.errors import AttestationRejected
from controller.quote_verify import check_reported_values, check_signature
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
    return VerifiedReport(report, bool(quote.nonce), dict(quote.pcrs), quote.bank, unconfirmed)


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
