"""`vaultpolicy sign PLAN --key KEY... -o SIGNED`: sign a plan, or add signatures to a signed plan.

The envelope keeps the plan's exact bytes; signing never re-serializes them (S12).
"""

from __future__ import annotations

from compiler.files import (
    check_private_mode, is_envelope, load_plan, load_plan_envelope, plan_payload, read_input, refuse_overwriting_inputs,
    refuse_repeated_keys, write_output,
)
from compiler.plan import PlanNotCanonical, check_canonical
from compiler.signing import PLAN_PAYLOAD_TYPE, add_signature, key_id, load_private_key, sign
from vaultpolicy import status_codes
from vaultpolicy.errors import InputError, PlanRejected


def add_arguments(parser, key) -> None:
    parser.add_argument("plan", metavar="PLAN", help="a compiled plan, or a signed plan to add signatures to")
    parser.add_argument("--key", action="append", required=True, metavar="KEY", help="private key (repeat for several signers)")
    parser.add_argument("-o", "--output", required=True, metavar="SIGNED")


def _load_keys(paths: list[str]):
    """The signing keys, each once: a key given twice (or in two files) would sign twice."""
    keys = []
    for path in paths:
        try:
            keys.append(load_private_key(read_input(path, "signing key"), path))
            check_private_mode(path, "signing key")
        except PlanRejected as exc:
            raise InputError(exc.message) from None
    refuse_repeated_keys("--key", [(path, key.public_key()) for path, key in zip(paths, keys)],
                         "a key signs a plan once: list each signing key once")
    return keys


def _check_canonical(payload: bytes, source: str) -> None:
    """A plan is signed in its one canonical encoding (S12), the bytes `compile` writes: the same plan
    reformatted (indented, keys reordered) would otherwise be signed as other bytes, with another digest."""
    plan = load_plan(payload, source)  # names what is wrong with something that is no plan at all
    try:
        check_canonical(plan, payload)
    except PlanNotCanonical as exc:
        raise InputError(f"{source}: {exc}", hint="re-run `vaultpolicy compile` to write the plan, and sign that "
                         "file") from None


def run(args) -> int:
    refuse_overwriting_inputs(args.output, {args.plan: "the plan"} | {key: "a signing key (--key)" for key in args.key})
    data = read_input(args.plan, "plan")
    keys = _load_keys(args.key)
    if is_envelope(data):
        envelope = load_plan_envelope(data, args.plan)
        _check_canonical(envelope.payload, args.plan)
        already = {kid for kid, _ in envelope.signatures}
        for private_key in keys:
            if key_id(private_key.public_key()) in already:
                print(f"key {key_id(private_key.public_key())} already signed {args.plan}; skipped")
                continue
            envelope = add_signature(envelope, private_key)
            already.add(key_id(private_key.public_key()))
    else:
        _check_canonical(plan_payload(data, args.plan), args.plan)  # also refuses something that is not a plan
        envelope = sign(PLAN_PAYLOAD_TYPE, data, keys)
    write_output(args.output, envelope.to_bytes())
    signers = ", ".join(kid for kid, _ in envelope.signatures)
    print(f"wrote {args.output}: {len(envelope.signatures)} signature(s) by {signers}")
    return status_codes.SUCCESS
