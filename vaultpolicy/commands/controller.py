"""`vaultpolicy controller …`: the controller's half of attestation, escrow and drift.

  escrow-keygen -o OUT         X25519 escrow key pair: OUT (private, 0600) and OUT.pub (base64, for the
                               policy's `device.escrow_public_key`)
  enroll IDENTITY              record a device's attestation key and storage key (`device identity`)
  escrow DEPOSIT... --ack-dir D   verify deposits the devices signed (`device escrow-deposit`), store
                               their escrow blobs, write one acknowledgement per blob into D
  nonce --device-id ID --plan P   issue a single-use nonce (size and lifetime from the plan's attestation)
  verify-quote QUOTE --plan P  verify in the order of controller/quote_verify.py; names refused PCRs
  release QUOTE --escrow-key K -o OUT [--vault V]...   escrowed keys as TPM duplication blobs for the
                               verified device, unsealable only in the PCR state its quote showed
  drift REPORT... [--format text|markdown|html|json]   verify signed reports and summarise the fleet
                               (each device's newest report; an older one is rejected)

State lives in one SQLite file (`--store`, default ./controller.db), which only `enroll` creates.
Refusals print the reason and exit 1; `drift` exits 3 (DRIFT) when a verified device drifts.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from vaultpolicy import status_codes
from vaultpolicy.errors import InputError


def add_arguments(parser, key) -> None:
    action = key[1]
    if action == "escrow-keygen":
        parser.add_argument("-o", "--output", required=True, metavar="OUT", help="private key file; the public key goes to OUT.pub")
        parser.add_argument("--force", action="store_true", help="overwrite an existing key (every key escrowed to it is lost)")
        return
    parser.add_argument("--store", default="controller.db", metavar="DB", help="controller state (SQLite; default ./controller.db)")
    if action == "enroll":
        parser.add_argument("identity", metavar="IDENTITY", help="output of `vaultpolicy device identity`")
    elif action == "escrow":
        parser.add_argument("deposits", nargs="+", metavar="DEPOSIT", help="signed deposits from `vaultpolicy device escrow-deposit`")
        parser.add_argument("--ack-dir", required=True, metavar="DIR", help="where to write <device>.<vault>.ack.json")
    elif action == "nonce":
        parser.add_argument("--device-id", required=True, metavar="ID", help="the device the nonce is for")
        _plan_arguments(parser)
    elif action == "verify-quote":
        parser.add_argument("quote", metavar="QUOTE", help="output of `vaultpolicy device quote`")
        _plan_arguments(parser)
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
    elif action == "release":
        parser.add_argument("quote", metavar="QUOTE", help="a quote `controller verify-quote` accepted")
        parser.add_argument("--escrow-key", required=True, metavar="KEY", help="the escrow private key")
        parser.add_argument("--vault", action="append", default=[], metavar="NAME",
                            help="vault to release (repeat; default: every escrowed vault sealed to the quote's attestation)")
        parser.add_argument("-o", "--output", required=True, metavar="OUT", help="release file for `device unlock --release`")
    elif action == "drift":
        parser.add_argument("reports", nargs="+", metavar="REPORT", help="signed reports from `vaultpolicy device report`")
        parser.add_argument("--format", choices=("text", "markdown", "html", "json"), default="text")
        parser.add_argument("--require-nonce", action="store_true", help="refuse reports without a controller nonce")


def _plan_arguments(parser) -> None:
    parser.add_argument("--plan", required=True, metavar="PLAN", help="the plan (plain or signed) with the attestation policy")
    parser.add_argument("--attestation", metavar="NAME", help="which attestation requirement (default: the only one)")


def _attestation(args):
    """(plan, the attestation requirement --attestation names, or its only one)."""
    from compiler.files import load_plan, plan_payload, read_input

    plan = load_plan(plan_payload(read_input(args.plan, "plan"), args.plan), args.plan)
    if not plan.attestations:
        raise InputError(f"{args.plan}: the plan has no attestation requirement")
    if args.attestation is None:
        if len(plan.attestations) > 1:
            names = ", ".join(a.name for a in plan.attestations)
            raise InputError(f"{args.plan}: several attestation requirements ({names}); choose one with --attestation")
        return plan, plan.attestations[0]
    for attestation in plan.attestations:
        if attestation.name == args.attestation:
            return plan, attestation
    raise InputError(f"{args.plan}: no attestation requirement `{args.attestation}`")


def run(args) -> int:
    from controller.store import Store

    now = int(time.time())
    command = args.command[1]
    if command == "escrow-keygen":
        return _escrow_keygen(args)
    read, act = _ACTIONS[command]
    inputs = read(args)  # the files it names, read and checked before the store is opened (or created)
    with Store(args.store, create=command == "enroll") as store:
        return act(args, inputs, store, now)


def _escrow_keygen(args) -> int:
    from compiler.files import refuse_replacing_key, write_output
    from enforcer.escrow import escrow_private_pem, escrow_public_text, generate_escrow_key

    public_path = refuse_replacing_key(args.output, args.force, hint="replacing the escrow key makes every key escrowed "
                                       "to it unrecoverable; pass --force if that is intended")
    key = generate_escrow_key()
    write_output(args.output, escrow_private_pem(key), 0o600)
    write_output(public_path, (escrow_public_text(key) + "\n").encode())
    print(f"wrote {args.output} (keep it offline) and {public_path} (put it in the policy's escrow key)")
    return status_codes.SUCCESS


def _read_identity(args):
    from compiler.files import read_input
    from enforcer.attest import Identity

    return Identity.from_bytes(read_input(args.identity, "identity"), args.identity)


def _enroll(args, identity, store, now) -> int:
    store.enroll(identity.device_id, identity.ak_public_pem, identity.ak_name, identity.storage_public, now)
    print(f"enrolled device `{identity.device_id}`")
    return status_codes.SUCCESS


def _read_deposits(args) -> list[tuple[str, bytes]]:
    from compiler.files import read_input

    ack_dir = Path(args.ack_dir)
    try:
        ack_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the acknowledgement directory `{ack_dir}`: {exc.strerror or exc}") from None
    return [(path, read_input(path, "escrow deposit")) for path in args.deposits]


def _escrow(args, deposits, store, now) -> int:
    from compiler.files import write_output
    from controller.release import accept_deposit

    said = {"stored": "stored", "held": "already held",
            "kept-beside": "stored beside the other blob held for this key (none is replaced)"}
    for path, data in deposits:
        for deposited in accept_deposit(store, data, now, path):
            blob = deposited.blob
            target = Path(args.ack_dir) / deposited.ack_file_name
            write_output(target, deposited.ack)
            print(f"escrow of `{blob.device_id}` vault `{blob.vault}` {said[deposited.outcome]}; acknowledgement {target}")
    return status_codes.SUCCESS


def _nonce(args, requirement, store, now) -> int:
    from controller import nonce

    _, attestation = requirement
    if store.device(args.device_id) is None:
        raise InputError(f"device `{args.device_id}` is not enrolled", hint="enrol it with `vaultpolicy controller enroll`")
    print(nonce.issue(store, args.device_id, attestation, now).hex())
    return status_codes.SUCCESS


def _read_quote_and_requirement(args):
    from compiler.files import read_input
    from enforcer.attest import Quote

    return Quote.from_bytes(read_input(args.quote, "quote"), args.quote), *_attestation(args)


def _verify_quote(args, inputs, store, now) -> int:
    from controller.errors import AttestationRejected
    from controller.quote_verify import sealed_to, verify_quote

    quote, plan, attestation = inputs
    try:
        verified = verify_quote(store, quote, attestation, now, sealed_to(plan))
    except AttestationRejected as exc:
        if args.json:
            print(json.dumps({"verified": False, "reason": exc.reason, "message": exc.message, "pcrs": exc.pcrs}))
        raise
    if args.json:
        print(json.dumps({"verified": True, "device_id": verified.device_id, "quote_sha256": verified.quote_sha256}))
    else:
        print(f"quote from `{verified.device_id}` verified: signature, nonce, PCR digest, allowed values, counters")
    return status_codes.SUCCESS


def _read_release_inputs(args):
    from compiler.files import check_private_mode, read_input, refuse_overwriting_inputs
    from enforcer.attest import Quote
    from enforcer.escrow import load_escrow_private

    refuse_overwriting_inputs(args.output, {args.quote: "the quote", args.escrow_key: "the escrow key",
                                            args.store: "the controller store (--store)"})
    quote = Quote.from_bytes(read_input(args.quote, "quote"), args.quote)
    key = load_escrow_private(read_input(args.escrow_key, "escrow key"), args.escrow_key)
    check_private_mode(args.escrow_key, "escrow key")
    return quote, key


def _release(args, inputs, store, now) -> int:
    from compiler.files import write_output
    from controller.release import release_keys

    quote, key = inputs
    # marked released and written as one: a file that cannot be written rolls the mark back, so the
    # quote can still release (a second process waits, then finds it released)
    with store.transaction():
        release = release_keys(store, quote, args.vault or None, key, now)
        write_output(args.output, release.to_bytes(), 0o600)
    print(f"released {', '.join(k.vault for k in release.keys)} to `{release.device_id}`: {args.output}")
    return status_codes.SUCCESS


def _drift(args, _inputs, store, now) -> int:
    """Each report is read in turn: one that is unreadable is rejected, the others are summarised."""
    from compiler.files import read_input
    from controller.drift import keep_newest, render, summarise, verify_report
    from controller.errors import AttestationRejected

    verified, rejected = [], []
    for path in args.reports:
        try:
            verified.append(verify_report(store, read_input(path, "report"), now, require_nonce=args.require_nonce, source=path))
        except (AttestationRejected, InputError) as exc:  # that report's fault; a store error ends the run
            exc.message = _without_file_name(exc.message, path)  # its line names the file
            rejected.append((path, exc.shown))
    newest, older = keep_newest(store, verified, now)
    summary = summarise(newest, rejected + older)
    if args.format == "json":
        print(json.dumps(asdict(summary), indent=2, default=lambda model: model.model_dump(mode="json")))
    else:
        sys.stdout.write(render(summary, args.format))
    if summary.rejected:
        return status_codes.ERROR
    return status_codes.DRIFT if summary.drifting_devices else status_codes.SUCCESS


def _without_file_name(message: str, path: str) -> str:
    """A message that begins with the file it is about (as a command reading one file words it), for a
    line that names the file already: `r.json: not JSON (…)` -> `not JSON (…)`, `` `r.json` is a … ``
    -> `it is a …`."""
    if message.startswith(f"{path}: "):
        return message[len(path) + 2:]
    if message.startswith(f"`{path}` "):
        return f"it {message[len(path) + 3:]}"
    return message


# command -> (read and check the files it names, without the store; act on the store)
_ACTIONS = {
    "enroll": (_read_identity, _enroll),
    "escrow": (_read_deposits, _escrow),
    "nonce": (_attestation, _nonce),
    "verify-quote": (_read_quote_and_requirement, _verify_quote),
    "release": (_read_release_inputs, _release),
    "drift": (lambda args: None, _drift),
}
