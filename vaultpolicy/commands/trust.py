"""`vaultpolicy trust init|rotate`: trust roots listing public keys and an M-of-N threshold.

A root is an envelope signed by its own threshold; the next root (version N+1) must also be signed by
a threshold of the current one. Both are checked before anything is written.
"""

from __future__ import annotations

from compiler.files import (
    check_private_mode, read_input, refuse_overwriting_inputs, refuse_repeated_keys, write_output,
)
from compiler.signing import (
    TRUST_ROOT_PAYLOAD_TYPE, TrustRoot, key_id, load_private_key, load_public_key, load_trust, sign,
)
from vaultpolicy import status_codes
from vaultpolicy.errors import InputError, PlanRejected, UsageError


def add_arguments(parser, key) -> None:
    if key == ("trust", "rotate"):
        parser.add_argument("--current", required=True, metavar="ROOT", help="the trust root in force now")
    parser.add_argument("--key", action="append", required=True, metavar="KEY.pub", help="a public key of the new root (repeat)")
    parser.add_argument("--threshold", type=int, required=True, metavar="M", help="distinct keys needed to sign a plan")
    parser.add_argument(
        "--sign-with", action="append", required=True, metavar="KEY",
        help="private key signing the root (repeat); a rotation needs a threshold of the current and of the new keys",
    )
    parser.add_argument("-o", "--output", required=True, metavar="ROOT")


def _public_keys(paths: list[str]):
    """The keys of the new root, each once: a threshold counts distinct keys (S13), so a key listed
    twice would silently make `2 of 3` a `2 of 2`."""
    try:
        keys = [load_public_key(read_input(path, "public key"), path, "--key") for path in paths]
    except PlanRejected as exc:
        raise InputError(exc.message) from None
    refuse_repeated_keys("--key", list(zip(paths, keys)), "a threshold counts distinct keys: list each key once")
    return tuple((key_id(k), k) for k in keys)


def _private_keys(paths: list[str]):
    try:
        keys = [load_private_key(read_input(path, "signing key"), path, "--sign-with") for path in paths]
        for path in paths:
            check_private_mode(path, "signing key")
    except PlanRejected as exc:
        raise InputError(exc.message) from None
    refuse_repeated_keys("--sign-with", [(path, key.public_key()) for path, key in zip(paths, keys)],
                         "a key signs once: list each signing key once")
    return keys


def run(args) -> int:
    rotating = args.command == ("trust", "rotate")
    refuse_overwriting_inputs(args.output, {key: "a public key (--key)" for key in args.key}
                              | {key: "a signing key (--sign-with)" for key in args.sign_with}
                              | ({args.current: "the current trust root"} if rotating else {}))
    current = None
    if rotating:
        current = load_trust(read_input(args.current, "trust root"), args.current)
    root = TrustRoot(version=current.version + 1 if current else 1, threshold=args.threshold, keys=_public_keys(args.key))
    if not 1 <= args.threshold <= len(root.distinct_keys()):
        raise UsageError(f"--threshold: {args.threshold} must be between 1 and the {len(root.distinct_keys())} "
                         "distinct keys listed")
    envelope = sign(TRUST_ROOT_PAYLOAD_TYPE, root.payload(), _private_keys(args.sign_with))
    data = envelope.to_bytes()
    if current is None:
        load_trust(data, args.output)  # signed by its own threshold
    else:
        current.rotate(envelope)  # by the current root's threshold and by its own
    write_output(args.output, data)
    print(f"wrote {args.output}: trust root version {root.version}, {args.threshold} of {len(root.distinct_keys())} keys")
    return status_codes.SUCCESS
