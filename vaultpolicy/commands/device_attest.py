"""`vaultpolicy device identity|quote|report|escrow-deposit|escrow-ack`: the device's half of attestation.

  identity                 create (once) the TPM attestation key; print it and the storage key for enrolment
  quote --nonce HEX        TPM2_Quote over the applied plan's attestation PCRs, binding the nonce and
                           the storage key releases are wrapped to (docs/attestation.md has the JSON format)
  report [--nonce HEX]     observe every vault and print a drift report signed by the attestation key
  escrow-deposit [--vault NAME]...   the escrow blobs this device holds, signed by its attestation key
                           (a quote binding their digests) for `vaultpolicy controller escrow`
  escrow-ack ACK...        record the controller's acknowledgements (escrow state pending -> acknowledged)

The device id is the one recorded in STATE/host.json (by `device apply`, or here by `identity`), else
`--device-id`, else the host name; a `--device-id` other than the recorded one is refused
(`attest.resolve_device_id`). The TPM is `--tpm TCTI`, else /dev/tpmrm0, else the embedded swtpm of the state dir; as for
every device command, a default other than the TPM `device apply` recorded is refused, and so is a
`report` under another --root than the recorded one (`device._tcti`, `device.host_root`).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

from vaultpolicy import status_codes
from vaultpolicy.commands import device
from vaultpolicy.encoding import hex_exact
from vaultpolicy.errors import InputError
from vaultpolicy.printable import escaped


def add_arguments(parser, key) -> None:
    action = key[1]
    parser.add_argument("--state-dir", default="/var/lib/vaultpolicy", metavar="DIR", help="the device's state directory")
    parser.add_argument("--device-id", metavar="ID", help="this device's id (default: the recorded one, else the host "
                        "name; another than the recorded one is refused)" + (
                            "; recorded, as the controller enrols it" if action == "identity" else ""))
    if action == "escrow-ack":
        parser.add_argument("acks", nargs="+", metavar="ACK", help="acknowledgements from `vaultpolicy controller escrow`")
        return
    parser.add_argument("--tpm", metavar="TCTI", type=device.tcti_option, help="TPM to use, e.g. swtpm:host=127.0.0.1,port=2321, or `embedded` "
                        "(default /dev/tpmrm0, else the embedded swtpm under the state dir)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    if action in ("quote", "report"):
        parser.add_argument("--attestation", metavar="NAME", help="attestation requirement of the plan (default: the only one)")
    if action == "quote":
        parser.add_argument("--nonce", required=True, metavar="HEX", help="the nonce from `vaultpolicy controller nonce`")
    if action == "escrow-deposit":
        parser.add_argument("--vault", action="append", default=[], metavar="NAME",
                            help="deposit this vault's blob (repeat; default: every blob the device holds)")
    if action == "report":
        parser.add_argument("--nonce", metavar="HEX", help="the controller's nonce, when it asked for a fresh report")
        parser.add_argument("--root", metavar="DIR", help="the plan's absolute paths live under DIR: the --root "
                            "`device apply` used (recorded; another one, or none when it used one, is refused)")


def _nonce(text: str | None) -> bytes:
    if text is None:
        return b""
    try:
        nonce = hex_exact(text.strip())
    except ValueError as exc:
        raise InputError(f"--nonce `{escaped(text)}` {exc}",
                         hint="give the nonce `vaultpolicy controller nonce` printed, as it printed it") from None
    if not 12 <= len(nonce) <= 32:
        raise InputError(f"--nonce is {len(nonce)} bytes; controller nonces are 12 to 32 bytes")
    return nonce


def _emit(args, data: bytes, what: str) -> None:
    """`data` to --output, saying so as `compile` and `sign` do (`wrote FILE: what`), else to stdout."""
    if args.output:
        from compiler.files import write_output

        write_output(args.output, data)
        print(f"wrote {args.output}: {what}")
    else:
        sys.stdout.write(data.decode() + "\n")


def _applied_plan(state):
    """(plan, sha256) of the applied plan, or (None, None). It was verified when applied; the controller
    checks what the quote shows against its own copy of the plan."""
    from enforcer.unlock import decode_stored, stored_envelope

    envelope = stored_envelope(state)
    if envelope is None:
        return None, None
    floor = state.floor()
    return decode_stored(state, envelope.payload), floor[1] if floor else None


def _attested_pcrs(plan, name: str | None) -> tuple[str, tuple[int, ...]]:
    if plan is None:
        raise InputError("no plan has been applied on this device, so it has no attestation PCRs to quote")
    if name is not None:
        for attestation in plan.attestations:
            if attestation.name == name:
                return attestation.bank, tuple(attestation.pcrs)
        raise InputError(f"the applied plan has no attestation requirement `{name}`")
    if len(plan.attestations) == 1:
        return plan.attestations[0].bank, tuple(plan.attestations[0].pcrs)
    if plan.attestations:
        raise InputError("the applied plan has several attestation requirements; choose one with --attestation")
    return _sealed_pcrs(plan)  # no attestation: vouch for what the keys are sealed to


def _sealed_pcrs(plan) -> tuple[str, tuple[int, ...]]:
    sealed = sorted({pcr for vault in plan.vaults if vault.seal for pcr in vault.seal.pcrs})
    return plan.device.bank, tuple(sealed or (0,))


def run(args) -> int:
    from enforcer.state import StateDir

    state = StateDir(args.state_dir)
    try:
        return _run(args, state)
    finally:
        for message in state.warnings:  # what could not be read (a damaged record: the report goes on without it)
            print(f"warning: {message}", file=sys.stderr)


def _run(args, state) -> int:
    action = args.command[1]
    if action == "escrow-ack":
        from compiler.files import read_input
        from enforcer.escrow import record_ack

        for path in args.acks:
            vault = record_ack(state.root, read_input(path, "acknowledgement"), path)
            print(f"escrow of vault `{vault}` acknowledged by the controller")
        return status_codes.SUCCESS

    from enforcer.attest import AttestationTpm, resolve_device_id, storage_parent_binding

    device_id = resolve_device_id(args.device_id, state.root)  # before anything: another id than recorded is refused
    if action == "identity":
        tcti = device._tcti(args, state)
        with AttestationTpm(tcti) as tpm:
            identity = tpm.identity(device_id)
        with state.exclusive():  # host.json is apply's too
            state.record_device_id(device_id)  # the controller enrols the device by it
        _emit(args, identity.to_bytes(), f"the identity of device `{device_id}`, for `vaultpolicy controller enroll`")
        return status_codes.SUCCESS

    plan, plan_sha256 = _applied_plan(state)  # before the TPM: no plan, no quote, and no swtpm started
    if action == "escrow-deposit":
        from enforcer.escrow import EscrowBlob, held_blobs, sign_deposit

        if plan is None:
            raise InputError("no plan has been applied on this device, so it holds no escrow blob")
        blobs = held_blobs(state.root, args.vault)
        # the controller refuses a whole deposit holding a blob of another device, without saying why
        for blob in map(EscrowBlob.from_bytes, blobs):
            if blob.device_id != device_id:
                raise InputError(f"the escrow blob of vault `{blob.vault}` names device `{blob.device_id}`, not this "
                                 f"device's id `{device_id}` (made before the id was recorded); nothing was deposited",
                                 hint=f"give the vault a new key, escrowed as `{device_id}`: `vaultpolicy device rotate "
                                 f"{blob.vault}`; or deposit the other vaults' blobs with --vault")
        deposit = sign_deposit(device._tcti(args, state), device_id, blobs,
                               *_sealed_pcrs(plan))  # the quote vouches for the blobs; any PCRs would do
        _emit(args, deposit, f"the escrow deposit of device `{device_id}`, for `vaultpolicy controller escrow`")
        return status_codes.SUCCESS
    bank, pcrs = _attested_pcrs(plan, args.attestation)
    # the vaults are observed under the recorded root: elsewhere each would be signed as path-missing
    root = device.host_root(args, state) if action == "report" else None
    tcti = device._tcti(args, state)
    if action == "quote":
        with AttestationTpm(tcti) as tpm:
            identity = tpm.identity(device_id)
            quote = tpm.quote(device_id, "release", _nonce(args.nonce), storage_parent_binding(identity.storage_public), bank, pcrs)
        _emit(args, quote.to_bytes(), f"a quote of device `{device_id}`, for `vaultpolicy controller verify-quote`")
        return status_codes.SUCCESS

    from enforcer.observe import observe
    from enforcer.report import build_report, sign_report
    from enforcer.tpm import Tpm

    with Tpm(tcti) as tpm:
        observed = observe(plan, state, root, tpm)
    report = build_report(device_id, plan, plan_sha256, observed, state, datetime.now(timezone.utc))
    vaults = len(report.vaults)
    _emit(args, sign_report(tcti, report, _nonce(args.nonce), bank, pcrs),
          f"the signed report of device `{device_id}`, {len(report.drifting)} of {vaults} vault{'s' * (vaults != 1)} "
          "drifting, for `vaultpolicy controller drift`")
    return status_codes.DRIFT if report.drifting else status_codes.SUCCESS
