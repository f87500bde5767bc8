"""`vaultpolicy device apply|status|unlock|lock|gate`: the thin shell over enforcer/.

`unlock --release FILE` unlocks with keys the controller released after a verified quote
(docs/attestation.md) and re-seals them to the current PCRs, so the next boot unlocks locally; the
vaults the file does not hold unlock with their sealed keys, as in a plain `unlock`.

Every command reads the kernel and the TPM; none trusts a message of its own from an earlier run.
Exit codes: 0 success, 1 refused plan, a vault that failed or bad input, 3 (DRIFT) when `status` finds
the device different from the plan or the last plan offered was refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from compiler.units import format_measured, format_size
from enforcer.codes import code_for
from vaultpolicy import status_codes
from vaultpolicy.errors import InputError, PlanRejected

DEFAULT_STATE_DIR = "/var/lib/vaultpolicy"
# where a device id came from when neither --device-id nor the state dir gave it
HOST_NAME = "its host name: no --device-id given or recorded"


def add_arguments(parser: argparse.ArgumentParser, key: tuple[str, ...]) -> None:
    command = key[1]
    if command == "apply":
        parser.add_argument("signed", metavar="SIGNED", help="the signed plan (envelope) to verify and enforce")
    if command == "gate":
        parser.add_argument("app", metavar="APP", help="the app that wants to start")
    if command == "apply":
        parser.add_argument("--trust", metavar="ROOT|KEY.pub",
                            help="trust root envelope or a PEM public key; required the first time, when it is "
                            "recorded (trust on first use). Later: the recorded root by default; a different one "
                            "is taken only as a rotation signed by a threshold of the recorded root")
    elif command != "lock":  # locking is always safe: it trusts no plan
        parser.add_argument("--trust", metavar="ROOT|KEY.pub",
                            help="trust root envelope or PEM public key; must be the one recorded by `device apply` "
                            "(the default)")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                        help=f"sealed keys, the applied plan and the journal (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--root", metavar="DIR", help="put the plan's absolute paths under DIR")
    parser.add_argument("--tpm", metavar="TCTI", type=tcti_option,
                        help="TPM to use, e.g. swtpm:host=127.0.0.1,port=2321, or `embedded` (default /dev/tpmrm0, "
                        "else the embedded swtpm under the state dir; `lock` needs none)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    if command in ("apply", "rotate"):
        parser.add_argument("--device-id", metavar="ID", help="this device's id (default: the recorded one, else the "
                            "host name; another than the recorded one is refused)" + (
                                ", matched against the plan's targets; recorded when given or when the plan names "
                                "targets or an escrow key" if command == "apply" else ", in the escrow blobs of the "
                                "new keys"))
    if command == "lock":
        parser.add_argument("--stop-tpm", action="store_true", help="then stop the embedded swtpm of the state dir "
                            "if one runs (as a shutdown does: its PCRs reset when it starts again)")
        parser.add_argument("--force", action="store_true", help="also remove a key the kernel holds the only copy "
                            "of (a vault whose sealed key is lost): nothing can unlock that vault afterwards")
    if command == "unlock":
        parser.add_argument("--release", metavar="FILE", help="unlock the vaults a `vaultpolicy controller release` "
                            "file holds with its keys and re-seal them to the current PCRs; every other vault unlocks "
                            "with its sealed key, as without --release (exit 1 if a vault stays locked)")
        parser.add_argument("--device-id", metavar="ID", help="this device's id (default: the recorded one, else "
                            "the host name; another than the recorded one is refused); a release file opens only for "
                            "its own device")


def run(args: argparse.Namespace) -> int:
    from enforcer.state import StateDir

    state = StateDir(args.state_dir)
    command = args.command[1]
    check_state_dir(state, args, command)
    root = host_root(args, state)
    handler = {"apply": _apply, "status": _status, "unlock": _unlock, "lock": _lock, "gate": _gate}[command]
    try:
        if command in ("status", "gate", "apply"):  # read-only; apply verifies the plan before it takes the lock
            return handler(args, state, root)
        with state.exclusive():
            return handler(args, state, root)
    finally:
        for message in state.warnings:  # what the command did stands; the state dir could not record or read this
            print(f"warning: {message}", file=sys.stderr)


# --- helpers -----------------------------------------------------------------------------------
def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} `{path}`: {exc.strerror or exc}") from None


def host_root(args, state) -> Path | None:
    """`--root`, resolved; it must be a directory, and the one the first `device apply` recorded
    (`STATE/host.json`; "/" without --root): under another root every vault path is wrong, and a
    command would make vaults or mount images where none belong."""
    root = Path(args.root).resolve() if args.root else None
    if root is not None and not root.is_dir():
        raise InputError(f"--root {args.root}: not a directory")
    if not state.root.is_dir():
        recorded = None
    else:  # apply refuses on a damaged record (it would record a root it cannot check); the rest warn
        recorded = state.checked_host() if args.command[-1] == "apply" else state.host()
    given = str(root or "/")
    if recorded is not None and recorded.root is not None and recorded.root != given:
        which = f"--root `{args.root}` ({given}) is not" if args.root else "without --root the root is `/`, not"
        raise InputError(f"{which} the root this device's vaults were applied under: `{recorded.root}` "
                         f"(recorded in {state.host_path})",
                         hint="omit --root" if recorded.root == "/" else f"pass --root {recorded.root}")
    return root


def check_state_dir(state, args, command: str) -> None:
    """`--state-dir` must be a directory. Only `apply` may create it; `lock` needs vault records, the
    others an applied plan — asked before the trust root, so an empty state dir says what is missing."""
    from enforcer.unlock import NoAppliedPlan

    if state.root.exists() and not state.root.is_dir():
        raise InputError(f"--state-dir {args.state_dir}: not a directory")
    if command == "apply":
        return
    if not state.root.exists() or (command != "lock" and state.applied_envelope() is None):
        where = "does not exist" if not state.root.exists() else "holds none"
        refused = state.conditions().get("plan") if state.root.exists() else None
        if refused is not None and not refused.ok:  # what the last apply said, so nobody has to dig for it
            where += f"; the last apply {refused.message} ({_tag(refused.reason)})"
        if state.root.exists() and state.journal_path.exists():  # a first apply killed: maybe mid-migration
            where += ("; an apply did not finish (its journal is there): run that `device apply` again, which takes "
                      "it up where it stopped; until then files it was moving into a vault may wait, unencrypted, "
                      "beside the vault's path (`.<vault>.vp-plaintext`, `.<vault>.vp-erase`)")
        raise NoAppliedPlan(f"no plan has been applied: the state dir {state.root} {where}",
                            hint="run `vaultpolicy device apply` first, or pass the --state-dir it used")


def _trust(args, state, rotate: bool = False):
    """(bytes, TrustRoot, the recorded TrustRoot it replaces or None) to verify plans with.

    The first apply records the trust root it is given (trust on first use). From then on the recorded
    root is the default, and a different `--trust` is refused, except by `apply` (`rotate`) when it is
    a valid rotation of the recorded root: signed by a threshold of it and by its own, version + 1.
    """
    from compiler.signing import Envelope, load_trust
    from enforcer.state import StateCorrupt

    stored = state.trust_bytes()
    recorded = None
    if stored is not None:
        try:
            recorded = load_trust(stored, str(state.trust_path))
        except PlanRejected as exc:
            raise StateCorrupt(f"the recorded trust root {state.trust_path} is unreadable: {exc.message}") from None
    if not args.trust:
        if recorded is None:
            raise InputError("no trust root: pass --trust ROOT|KEY.pub (the first `device apply` records it)")
        return stored, recorded, None
    data = _read(args.trust, "trust root")
    try:
        given = load_trust(data, args.trust)
    except PlanRejected as exc:
        raise InputError(f"--trust {args.trust}: not a trust root envelope or a PEM public key: {exc.message}") from None
    if recorded is None or _same_root(given, recorded):
        return data, given, None
    refused = f"--trust {args.trust} is not the device's trust root (recorded in {state.trust_path})"
    if not rotate:
        raise PlanRejected("trust-root-changed", refused, hint="omit --trust: the recorded root is the default")
    if data.lstrip().startswith(b"-----BEGIN"):
        raise PlanRejected("trust-root-changed", f"{refused}; a PEM key cannot replace it, only a trust root envelope "
                           "signed by a threshold of the recorded root (`vaultpolicy trust rotate`)")
    try:
        return data, recorded.rotate(Envelope.from_bytes(data)), recorded
    except PlanRejected as exc:
        raise PlanRejected("trust-root-changed", f"{refused} and not a valid rotation of it: {exc.message}",
                           hint="a new root must be signed by a threshold of the recorded root, with version + 1 "
                           "(`vaultpolicy trust rotate`)") from None


def _same_root(a, b) -> bool:
    return (a.version, a.threshold, a.distinct_keys()) == (b.version, b.threshold, b.distinct_keys())


def _tcti(args, state) -> str:
    """The TPM of this command: `--tpm`, else the default (/dev/tpmrm0, else the embedded swtpm). The
    default is refused, before any swtpm is started, when `device apply` sealed the keys through
    another TPM (`STATE/host.json`): they would not load, and a read-only command would start a daemon."""
    from enforcer.tcti import resolve_tcti

    recorded = state.host() if state.root.is_dir() else None
    default = _tpm_name(None)
    # "" was recorded by an apply given `--tpm ""` (now a usage error): the default of then, not known now
    if args.tpm is None and recorded is not None and recorded.tpm not in (None, "", default) \
            and not (recorded.tpm.startswith("device:") and default.startswith("device:")):  # /dev/tpm0, tpmrm0: one TPM
        raise InputError(f"this device's keys are sealed in {_tpm_words(recorded.tpm)} (recorded by `device apply` in "
                         f"{state.host_path}); without --tpm this command would use {_tpm_words(default)}",
                         hint=f"use the same --tpm as `device apply` did: --tpm {recorded.tpm}")
    state.ensure()
    return resolve_tcti(args.tpm, state.root, on_start=_announce_embedded)


def _announce_embedded(tcti: str, directory: Path) -> None:
    # it outlives this command (docs/enforcer.md): say so once, where it starts
    print(f"started the embedded swtpm ({tcti}, state in {directory}); it keeps running until "
          "`vaultpolicy device lock --stop-tpm`", file=sys.stderr)


def tcti_option(text: str) -> str:
    """`--tpm`: a TCTI string or `embedded`. An empty one is a usage error: it would select the
    embedded swtpm and be recorded as the TPM keys are sealed in."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a TCTI string such as `swtpm:host=127.0.0.1,port=2321`, "
                                         "or `embedded`")
    return text


def _tpm_words(name: str) -> str:
    from enforcer.tcti import EMBEDDED

    return "the state dir's embedded swtpm" if name == EMBEDDED else f"the TPM `{name}`"


def _tpm_name(option: str | None) -> str:
    """What `STATE/host.json` records of the TPM: the --tpm TCTI, else the default it resolves to."""
    from enforcer.tcti import EMBEDDED, TPMRM_DEVICE

    if option is not None:
        return option
    return f"device:{TPMRM_DEVICE}" if Path(TPMRM_DEVICE).exists() else EMBEDDED


def _tpm(args, state):
    """The TPM, opened only after the plan was verified: a refused plan touches no TPM. A mutating
    command calls `flush_leftovers()` on it right away, while it holds the state lock (no live command
    then uses the TPM: whatever a killed one left loaded in a TPM without a resource manager goes)."""
    from enforcer.tpm import Tpm

    return Tpm(_tcti(args, state))


def _applied(args, state):
    from enforcer.unlock import load_applied

    return load_applied(state, _trust(args, state)[1])


def _emit(args, data: dict, lines: list[str]) -> None:
    if args.json:  # one write: json.dump wrote it piece by piece, a write(2) per line on a line-buffered pipe
        print(json.dumps(data, indent=2, default=str))
    else:
        print("\n".join(lines))


# --- commands ----------------------------------------------------------------------------------
def _apply(args, state, root) -> int:
    from enforcer.apply import Applier
    from enforcer.journal import Journal
    from enforcer.observe import observe
    from enforcer.preflight import ApplyRefused, check_host, check_image_room, check_sealing
    from enforcer.reconcile import Action, Reconciliation, escrow_steps, reconcile
    from enforcer.rotate import Rotator, leave_unrecovered
    from enforcer.state import HostRecord
    from enforcer.verify import record_for

    envelope = _read(args.signed, "signed plan")
    now = datetime.now(timezone.utc)  # the one clock reading of this apply
    if not state.root.exists():  # a first plan: a refused one leaves no state dir behind
        _verify_offered(args, state, envelope, now, _identity(args, state))
    with state.exclusive():
        identity = _identity(args, state)
        trust_bytes, trust, replaced, verified = _verify_offered(args, state, envelope, now, identity)  # again, held
        state.check_writable()  # a read-only or full state dir: refused before anything changes
        plan = verified.plan
        current = state.records()
        journal = Journal(state.journal_path, state.warnings)
        # kept until the checks below pass: a refused plan leaves an interrupted apply's journal as it was
        # (status and report go on calling its half-made vaults so; the next apply resumes it)
        interrupted = journal.unfinished()
        recovered = []
        try:
            check_host(plan, current, root, state)  # before the TPM: a missing persist partition starts no swtpm
            with _tpm(args, state) as tpm:
                tpm.flush_leftovers()
                rotator = Rotator(plan, state, root, tpm, now, identity.device_id, journal)
                recovered, unrecovered = rotator.recover()  # a rotation a crash cut short
                # this apply finishes whatever one was interrupted: none of its vaults is "of an unfinished apply"
                observed = replace(observe(plan, state, root, tpm), apply_unfinished=False)
                rec = reconcile(plan, observed)
                rec = leave_unrecovered(Reconciliation(rec.steps + escrow_steps(plan, observed), rec.problems),
                                        unrecovered)
                check_sealing(plan, rec.steps, tpm)
                check_image_room(plan, rec.steps, state)
                journal.restart()
                # where the vaults and keys are, and who the device is, before the first change: later
                # commands must use the same. The id is recorded once given, or once this plan binds it
                # (its targets matched it, its escrow blobs will name it); until then it is the host name
                named = identity.origin != HOST_NAME  # given or recorded
                binds = named or plan.targets or plan.device.escrow_public_key
                state.save_host(HostRecord(str(root or "/"), _tpm_name(args.tpm), identity.device_id if binds else None))
                outcomes = Applier(plan, state, root, tpm, now, identity.device_id, journal).run(rec.steps)
        except ApplyRefused as exc:
            with state.best_effort():
                state.set_condition("plan", False, exc.reason, f"refused {args.signed}: {exc.message}", now)
            stays = "the applied plan stays in force" if state.applied_envelope() is not None else "no plan has been applied"
            # recovery finishes what an interrupted rotation began whatever the plan: it is no part of this one
            changed = "nothing else was changed (" + "; ".join(f"vault {r.vault}: {r.describe()}" for r in recovered) \
                + ")" if recovered else "nothing was changed"
            raise ApplyRefused(exc.reason, f"plan {args.signed} not applied ({_tag(exc.reason)}), {changed}: "
                               f"{exc.message}; {stays}", hint=exc.hint) from None
        current = state.records()
        records = {v.name: record_for(plan, v, current.get(v.name)) for v in plan.vaults}
        committed = (state.applied_envelope(), state.floor(), state.trust_bytes())
        # a commit an older enforcer left half done (the plan written, not its floor) is finished here
        if committed != (envelope, (plan.plan_version, verified.sha256), trust_bytes) \
                or any(current.get(n) != r for n, r in records.items() if n in current):
            with journal.step({"action": "commit", "plan_version": plan.plan_version}):
                for name, record in records.items():
                    if name in current:  # vaults never created get their record with their first step
                        state.save_record(record)
                state.commit_plan(envelope, plan.plan_version, verified.sha256, trust_bytes, journal.checkpoint)
        state.set_condition("plan", True, "applied", f"plan version {plan.plan_version} applied", now)
        journal.finish()

        failed = [o for o in outcomes.values() if o.error is not None]
        done = {id(s) for o in outcomes.values() for s in o.done}
        for outcome in outcomes.values():
            # a key not escrowed is no condition of its vault: status and gate would keep apps from their
            # data for the controller's copy of a key; the drift report says escrow-missing (S9)
            if outcome.error is not None and outcome.failed.action is not Action.ESCROW_KEY:
                state.set_condition(f"vault/{outcome.vault}", False, outcome.error.reason or "step-failed",
                                    f"{outcome.failed.action.value} failed: {outcome.error.message}", now)
            elif outcome.done:
                state.clear_condition(f"vault/{outcome.vault}")
    lines = [f"plan version {plan.plan_version} verified ({verified.sha256[:12]})"]
    if replaced is not None:
        lines.append(f"  trust root: the recorded root changed from version {replaced.version} to {trust.version} "
                     f"({state.trust_path})")
    if interrupted:
        lines.append(f"resumed after an interrupted apply (stopped at {interrupted[-1]['action']} "
                     f"{interrupted[-1].get('vault', '')})")
    lines += [f"  vault {r.vault}: {r.describe()}" for r in recovered]
    escrowing = plan.device.escrow_public_key is not None
    for outcome in outcomes.values():
        for step in outcome.done:
            lines.append(f"  vault {step.vault}: {step.action.value} ({step.reason})")
            if escrowing and step.action in (Action.CREATE_KEY, Action.ESCROW_KEY):  # apply.Applier._escrow wraps it
                lines.append(f"  vault {step.vault}: key escrowed: wrapped for the controller's escrow key, pending "
                             "until the controller acknowledges it (`device escrow-deposit`)")
        if outcome.error is not None:
            hint = f"; {outcome.error.hint}" if outcome.error.hint else ""  # what to do, as `rotate` says it
            lines.append(f"  vault {outcome.vault}: {outcome.failed.action.value} FAILED: {outcome.error.message}{hint}")
    lines += [f"  vault {p.vault}: not changed ({_tag(p.reason)}): {p.message}" for p in rec.problems]
    if not rec.steps and not rec.problems:
        lines.append("  nothing to do: the device matches the plan")
    _emit(args, {
        "plan_version": plan.plan_version,
        "plan_sha256": verified.sha256,
        "trust_root_version": trust.version,
        "trust_root_replaced": replaced.version if replaced is not None else None,
        "resumed": interrupted,
        "recovered": [r.vault for r in recovered],
        "recovery": [asdict(r) for r in recovered],
        "steps": [{"vault": s.vault, "action": s.action.value, "reason": s.reason, "done": id(s) in done}
                  for s in rec.steps],
        "failed": [{"vault": o.vault, "action": o.failed.action.value, "error": o.error.message} for o in failed],
        "problems": [asdict(p) for p in rec.problems],
    }, lines)
    return status_codes.ERROR if failed or rec.problems else status_codes.SUCCESS


def _identity(args, state):
    """This device as the plan's targets are matched against: its id (`attest.resolve_device_id`) and
    where that came from, for a refusal."""
    from enforcer.attest import resolve_device_id
    from enforcer.verify import DeviceIdentity

    device_id = resolve_device_id(args.device_id, state.root)
    if args.device_id:
        return DeviceIdentity(device_id)
    recorded = state.device_id()
    return DeviceIdentity(device_id, origin=f"recorded in {recorded[1]}" if recorded else HOST_NAME)


def _verify_offered(args, state, envelope: bytes, now: datetime, device):
    """(trust root bytes, TrustRoot, the recorded root it replaces or None, VerifiedPlan) of the offered
    plan, or the refusal, recorded as the `plan` condition when the device has a state dir. Reads the
    state dir only; touches no TPM. `device`: this device's `DeviceIdentity`."""
    from enforcer.state import StateCorrupt
    from enforcer.verify import verify_plan

    try:
        managed = state.records()  # what protection the device keeps (S16): a damaged record stops it
        floor = state.checked_floor()  # and what no plan may go below: a damaged floor stops it too
    except StateCorrupt as exc:
        raise StateCorrupt(f"plan {args.signed} not applied, nothing was changed: {exc.message}", hint=exc.hint) from None
    try:
        trust_bytes, trust, replaced = _trust(args, state, rotate=True)
        return trust_bytes, trust, replaced, verify_plan(envelope, trust, now=now, floor=floor,
                                                         device=device, managed=managed,
                                                         source=args.signed)
    except PlanRejected as exc:
        if state.root.is_dir():
            with state.best_effort():
                state.set_condition("plan", False, exc.reason, f"refused {args.signed}: {exc.message}", now)
        stays = "the applied plan stays in force" if state.applied_envelope() is not None else "no plan has been applied"
        code = code_for(exc.reason)
        raise PlanRejected(exc.reason, f"plan {args.signed} refused ({_tag(exc.reason)}): {exc.message}; {stays}",
                           exc.hint or (f"see `vaultpolicy explain {code}`" if code else None)) from None


def _status(args, state, root) -> int:
    from enforcer.observe import observe
    from enforcer.tpm import Tpm
    from enforcer.unlock import report

    plan = _applied(args, state)
    tcti = _tcti(args, state)
    with Tpm(tcti) as tpm:
        status = report(plan, observe(plan, state, root, tpm), state)
    # A refused plan alone also exits 3 (DRIFT): the device still enforces the older plan, not the one
    # its controller sent, and someone may be feeding it bad plans. The header says which it is.
    vaults_match = all(v.matches for v in status.vaults)
    refused = status.plan_condition is not None and not status.plan_condition.ok
    if refused:
        header = ("every vault matches it" if vaults_match else "DRIFT") + \
            "; the last plan offered was REFUSED and this one stays in force"
    else:
        header = "device matches the plan" if vaults_match else "DRIFT"
    lines = [f"plan version {status.plan_version}: {header}"]
    if refused:
        lines.append(f"  last plan refused ({_tag(status.plan_condition.reason)}) at {status.plan_condition.since}: "
                     f"{status.plan_condition.message}")
    for vault in status.vaults:
        usage = ""
        if vault.used_bytes is not None and vault.limit_bytes:
            usage = f"  {format_measured(vault.used_bytes)} of {format_size(vault.limit_bytes)} used"
        lines.append(f"  vault {vault.vault}: {vault.state}, {'matches' if vault.matches else 'DRIFT'}  {vault.path}{usage}")
        lines += [f"    - {reason}" for reason in vault.reasons]
    recorded = state.host()
    if not vaults_match and recorded is not None and recorded.tpm is not None and args.tpm not in (None, recorded.tpm):
        # another TPM loads none of the sealed keys and reads other PCR values: every vault looks wrong
        lines.append(f"  hint: use the same TPM as `device apply` did: --tpm {recorded.tpm}")
    _emit(args, {
        "plan_version": status.plan_version,
        "matches": status.matches,
        "vaults_match": vaults_match,
        "plan_condition": asdict(status.plan_condition) if status.plan_condition else None,
        "vaults": [asdict(v) for v in status.vaults],
    }, lines)
    return status_codes.SUCCESS if status.matches else status_codes.DRIFT


def _unlock(args, state, root) -> int:
    from enforcer.attest import resolve_device_id
    from enforcer.release import Release, unlock_released
    from enforcer.rotate import Rotator
    from enforcer.unlock import VaultResult, unlock_all

    release = None
    # a boot unlock needs no id: a damaged host record must not stop it
    device_id = resolve_device_id(args.device_id, state.root) if args.release or args.device_id else None
    if args.release:  # read and checked before anything: a bad file changes nothing and opens no TPM
        release = Release.from_bytes(_read(args.release, "release file"), args.release)
        release.require_device(device_id)
    plan = _applied(args, state)
    now = datetime.now(timezone.utc)
    with _tpm(args, state) as tpm:  # one connection: a boot unlock's fixed cost is mostly TPM round trips
        tpm.flush_leftovers()
        # a rotation or re-encryption cut by power loss; one that cannot be recovered fails its vault only
        recovered, unrecovered = Rotator(plan, state, root, tpm, now).recover()
        if release is None:
            results = unlock_all(plan, state, root, tpm, now, unrecovered)
    if release is not None:  # its own connections (the attestation key's too), after this one closed
        usable = replace(release, keys=tuple(k for k in release.keys if k.vault not in unrecovered))
        released = set(unlock_released(state, plan, root, _tcti(args, state), usable, device_id, now))
        # then every other vault unlocks as a boot unlock does (those released are in already), so each
        # vault of the plan is accounted for and one left locked fails the command as it does there
        with _tpm(args, state) as tpm:
            results = [VaultResult(r.vault, "unlocked", "controller-release", "re-sealed to the current PCRs")
                       if r.vault in released else r for r in unlock_all(plan, state, root, tpm, now, unrecovered)]
    return _results(args, "unlock", results, ok=("unlocked", "already-unlocked", "unencrypted"), recovered=recovered)


def _lock(args, state, root) -> int:
    from enforcer.tcti import stop_embedded
    from enforcer.unlock import NoAppliedPlan, lock_all

    try:
        code = _results(args, "lock", lock_all(state, root, force=args.force), ok=("locked",))
    except NoAppliedPlan as exc:
        if not args.stop_tpm:
            raise
        # a refused first apply may have started the embedded swtpm: stopping it needs no vault
        print(exc.message, file=sys.stderr)
        code = status_codes.SUCCESS
    if args.stop_tpm:  # after the keys are out: the embedded swtpm outlives every other command
        stopped = stop_embedded(state.root)
        print("embedded swtpm stopped" if stopped else "no embedded swtpm was running", file=sys.stderr)
    return code


def _results(args, verb: str, results, ok: tuple[str, ...], recovered: list | None = None) -> int:
    """`recovered`: the `rotate.Recovered` of the rotations and re-encryptions a crash interrupted."""
    lines = [f"  vault {r.vault}: {r.describe()}" for r in recovered or ()]
    for result in results:
        detail = f" ({_tag(result.reason)})" if result.reason else ""
        detail += f": {result.message}" if result.message else ""
        lines.append(f"  vault {result.vault}: {result.outcome}{detail}")
        if result.hint:
            lines.append(f"    hint: {result.hint}")
    data = {verb: [asdict(r) for r in results]}
    if recovered is not None:
        data["recovered"] = [r.vault for r in recovered]
        data["recovery"] = [asdict(r) for r in recovered]
    _emit(args, data, lines)
    return status_codes.SUCCESS if all(r.outcome in ok for r in results) else status_codes.ERROR


def _gate(args, state, root) -> int:
    from enforcer.unlock import gate

    plan = _applied(args, state)
    with _tpm(args, state) as tpm:
        decision = gate(plan, state, root, tpm, args.app)
    if args.json:
        _emit(args, {"app": args.app, "allowed": decision.allowed,
                     "path" if decision.allowed else "reason": decision.detail,
                     **({} if decision.allowed else {"hint": decision.hint})}, [])
    elif decision.allowed:
        print(decision.detail)
    else:
        print(f"gate: app `{args.app}` may not start: {decision.detail}", file=sys.stderr)
        if decision.hint:
            print(f"  = help: {decision.hint}", file=sys.stderr)
    return status_codes.SUCCESS if decision.allowed else status_codes.ERROR


def _tag(reason: str) -> str:
    """`reason` with its `vaultpolicy explain` code, when it has one."""
    code = code_for(reason)
    return f"{reason}, {code}" if code else reason


