"""`vaultpolicy verify SIGNED --trust ROOT`: check a signed plan and say exactly why it is refused."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

from compiler.files import read_input
from compiler.plan import PlanFormatError, PlanInconsistent, PlanNotCanonical, decode_canonical_plan
from compiler.signing import PLAN_PAYLOAD_TYPE, TRUST_ROOT_PAYLOAD_TYPE, Envelope, load_trust
from enforcer.verify import check_validity
from vaultpolicy import status_codes
from vaultpolicy.errors import PlanRejected


def add_arguments(parser, key) -> None:
    parser.add_argument("signed", metavar="SIGNED", help="a signed plan")
    parser.add_argument("--trust", required=True, metavar="ROOT", help="a trust root, or a single public key (KEY.pub)")


def verify_signed_plan(data: bytes, source: str, trust_data: bytes, trust_source: str):
    """The verified plan and how many distinct trusted keys signed it; PlanRejected says why not,
    naming the file at fault (the signed plan or the trust root). The plan must be valid now, by this
    machine's clock, with the device's clock slack."""
    root = load_trust(trust_data, trust_source)
    envelope = Envelope.from_bytes(data, source)
    if envelope.payload_type != PLAN_PAYLOAD_TYPE:
        holds = "is a trust root" if envelope.payload_type == TRUST_ROOT_PAYLOAD_TYPE else f"holds `{envelope.payload_type}`"
        raise PlanRejected("wrong-payload-type", f"`{source}` {holds}, not a signed plan")
    payload = root.verify(envelope, PLAN_PAYLOAD_TYPE)
    try:
        plan = decode_canonical_plan(payload)
    except PlanInconsistent as exc:  # the device's reason for the same refusal
        raise PlanRejected("plan-inconsistent", f"`{source}`: {exc}") from None
    except PlanNotCanonical as exc:
        raise PlanRejected("not-canonical", f"`{source}`: signed payload: {exc}") from None
    except PlanFormatError as exc:
        raise PlanRejected("malformed-plan", f"`{source}`: signed payload is not a valid plan: {exc}") from None
    try:  # a plan a device would refuse as expired or future-dated is not verified here either
        check_validity({"issued_at": plan.issued_at, "expires": plan.expires}, datetime.now(timezone.utc))
    except PlanRejected as exc:
        raise PlanRejected(exc.reason, f"`{source}`: {exc.message}", exc.hint) from None
    return plan, root


def run(args) -> int:
    data = read_input(args.signed, "signed plan")
    trust_data = read_input(args.trust, "trust root")
    try:
        plan, root = verify_signed_plan(data, args.signed, trust_data, args.trust)
    except PlanRejected as exc:
        print(f"refused: {exc.reason}: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  = help: {exc.hint}", file=sys.stderr)
        return status_codes.ERROR
    # devices refuse a plan that does not target them: say which it is for, as `plan show` does
    targets = ", ".join(plan.targets) if plan.targets else "every device"
    print(
        f"verified: plan version {plan.plan_version} for {targets}, issued {plan.issued_at}, expires {plan.expires}; "
        f"threshold {root.threshold} of trust root version {root.version} met"
    )
    return status_codes.SUCCESS
