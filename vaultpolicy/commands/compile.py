"""`vaultpolicy compile FILE --plan-version N -o PLAN`: verify a policy and write its canonical plan.

Diagnostics are printed like `check`; with any error no plan is written.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

from compiler import BuildOptions, compile_policy
from compiler.build import kept_protection
from compiler.files import load_plan, parse_duration, plan_payload, read_input, refuse_overwriting_inputs, write_output
from compiler.plan import encode_plan, format_time, parse_time, plan_digest
from compiler.source import load_policy, print_diagnostics, source_sha256
from vaultpolicy import status_codes
from vaultpolicy.errors import InputError, UsageError
from vaultpolicy.printable import escaped, hidden_character


def add_arguments(parser, key) -> None:
    parser.add_argument("file", metavar="FILE", help="the policy (.vpol)")
    parser.add_argument("--plan-version", type=int, metavar="N", help="default: one above --prev")
    parser.add_argument("-o", "--output", required=True, metavar="PLAN")
    parser.add_argument("--prev", metavar="PLAN", help="the previous plan (plain or signed): its digest is recorded")
    parser.add_argument("--target", action="append", default=[], metavar="ID", help="device id or class:NAME (repeat)")
    parser.add_argument("--valid-for", default="30d", metavar="DURATION", help="how long the plan stays valid (default 30d)")
    parser.add_argument("--issued-at", metavar="TIME", help="RFC 3339 UTC time, e.g. 2026-01-31T12:00:00Z (default: now)")


# Plans are RFC 8785 JSON, whose integers are exact only up to 2**53 - 1 (IEEE doubles).
_MAX_PLAN_VERSION = 2**53 - 1
# A plan that expires sooner than this after it is compiled may not reach its devices in time.
_SHORT_VALIDITY = timedelta(days=1)


def _issued_at(text: str | None, now: datetime) -> datetime:
    if text is None:
        return now
    try:
        return parse_time(text)
    except ValueError as exc:
        raise UsageError(f"--issued-at: {exc}") from None


def _valid_for(text: str, issued_at: datetime) -> int:
    try:
        seconds = parse_duration(text)
    except InputError as exc:
        raise UsageError(f"--valid-for: {exc.message}", hint=exc.hint) from None
    if seconds <= 0:
        raise UsageError(f"--valid-for: `{text}` would make the plan expire as it is issued",
                         hint="give a positive duration, e.g. `30d`")
    try:
        issued_at + timedelta(seconds=seconds)
    except OverflowError:
        raise UsageError(f"--valid-for: `{text}` after --issued-at {issued_at:%Y-%m-%dT%H:%M:%SZ} ends after the year 9999",
                         hint="give a shorter duration or an earlier --issued-at") from None
    return seconds


def _targets(values: list[str]) -> tuple[str, ...]:
    for target in values:
        name = target.removeprefix("class:")
        if not name.strip() or name != name.strip() or hidden_character(target) is not None:
            raise UsageError(f"--target: `{escaped(target)}` is not a device id or `class:NAME`",
                             hint="a target is a non-empty name of characters that show, without surrounding spaces")
    return tuple(values)


def _check_plan_version(args) -> None:
    if args.plan_version is None and args.prev is None:
        raise UsageError("no plan version", hint="pass --plan-version N, or --prev PLAN to use one above it")
    if args.plan_version is not None and not 1 <= args.plan_version <= _MAX_PLAN_VERSION:
        raise UsageError(f"--plan-version: {args.plan_version} must be between 1 and {_MAX_PLAN_VERSION}")


def _versions(args) -> tuple[int, str | None, dict[str, str | None]]:
    """The plan version, the previous plan's digest and the vaults it protects (they stay protected)."""
    if args.prev is None:
        return args.plan_version, None, {}
    payload = plan_payload(read_input(args.prev, "previous plan"), args.prev)
    previous = load_plan(payload, args.prev)
    version = args.plan_version if args.plan_version is not None else previous.plan_version + 1
    if version > _MAX_PLAN_VERSION:
        raise InputError(f"the previous plan's version {previous.plan_version} is the largest a plan can have")
    if version <= previous.plan_version:
        raise InputError(
            f"plan version {version} is not above the previous plan's {previous.plan_version}",
            hint="devices refuse plans whose version does not go up",
        )
    return version, plan_digest(payload), kept_protection(previous)


def run(args) -> int:
    # The options first: a wrong command line is a usage error (64) before any file is read.
    _check_plan_version(args)
    now = datetime.now(timezone.utc).replace(microsecond=0)  # a plan's times are to the second
    issued_at = _issued_at(args.issued_at, now)
    valid_for = _valid_for(args.valid_for, issued_at)
    targets = _targets(args.target)
    version, prev_digest, kept_protected = _versions(args)
    policy, sources, diagnostics, parses = load_policy(args.file)
    inputs = {file: "the policy" if file == args.file else "a file the policy includes" for file in sources}
    refuse_overwriting_inputs(args.output, inputs | ({args.prev: "the previous plan"} if args.prev else {}))
    if policy is None or diagnostics.has_errors():
        print_diagnostics(diagnostics, sources)
        return status_codes.ERROR
    options = BuildOptions(
        plan_version=version,
        issued_at=issued_at,
        valid_for_seconds=valid_for,
        source_sha256=source_sha256(parses, args.file),
        prev_plan_sha256=prev_digest,
        targets=targets,
        kept_protected=kept_protected,
    )
    plan, compile_diagnostics = compile_policy(policy, options)
    diagnostics.extend(compile_diagnostics)
    print_diagnostics(diagnostics, sources)
    if plan is None:
        print(f"no plan written to {args.output}: fix the errors above", file=sys.stderr)
        return status_codes.ERROR
    write_output(args.output, encode_plan(plan))
    print(f"wrote {args.output}: plan version {plan.plan_version}, {_count(len(plan.vaults), 'vault')}, "
          f"{_count(len(plan.apps), 'app')}")
    _warn_if_refused_for_its_times(plan.issued_at, plan.expires, now)
    return status_codes.SUCCESS


def _warn_if_refused_for_its_times(issued_at: str, expires: str, now: datetime) -> None:
    """A plan written expired (an --issued-at in the past), expiring within a day, or issued further in
    the future than devices allow: devices and `verify` refuse it (until then, or from then on).
    Written all the same (a test fixture may want one), with a warning."""
    from enforcer.verify import CLOCK_SLACK

    left = parse_time(expires) - now
    fix = "a later --issued-at (default: now) or a longer --valid-for (default 30d)"
    if parse_time(issued_at) > now + CLOCK_SLACK:
        said = (f"the plan is issued at {issued_at}, in the future (now {format_time(now)}): devices and `verify` "
                f"refuse it until {CLOCK_SLACK.seconds // 60} minutes before then")
        fix = "an --issued-at no later than now (the default)"
    elif left <= timedelta(0):
        said = f"the plan expired at {expires}, before it was compiled (now {format_time(now)}): devices and `verify` refuse it"
    elif left < _SHORT_VALIDITY:
        said = f"the plan expires at {expires}, in {_about(left)}: devices and `verify` refuse it from then on"
    else:
        return
    print(f"warning: {said}", file=sys.stderr)
    print(f"  = help: compile it with {fix}", file=sys.stderr)


def _about(left: timedelta) -> str:
    """`3h 20m`, `45m`, `30s`: how long, to the minute (or the second under one)."""
    seconds = int(left.total_seconds())
    hours, minutes = divmod(seconds // 60, 60)
    if not hours and not minutes:
        return f"{seconds}s"
    return " ".join(part for part in (f"{hours}h" if hours else "", f"{minutes}m" if minutes else "") if part)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
