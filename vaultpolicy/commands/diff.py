"""`vaultpolicy diff OLD NEW`: what changes between two policies, plans or signed plans, and what it
does to the data. `--exit-code`: 0 no change, 2 changes, 1 error, 64 a usage error (as every command)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

from compiler import BuildOptions, compile_policy
from compiler.diff import diff_plans, json_data
from compiler.files import load_plan, plan_payload, read_input
from compiler.plan import Plan
from compiler.render import render
from compiler.source import load_policy, print_diagnostics
from vaultpolicy import status_codes
from vaultpolicy.encoding import is_json_document
from vaultpolicy.errors import InputError

_TEMPLATES = {"text": "diff.txt", "markdown": "diff.md", "html": "diff.html", "json": "diff.json"}
# Only the content of a policy is compared, never plan metadata, so these values never show.
_POLICY_OPTIONS = BuildOptions(
    plan_version=1, issued_at=datetime(2000, 1, 1, tzinfo=timezone.utc), valid_for_seconds=1, source_sha256="0" * 64
)


def add_arguments(parser, key) -> None:
    parser.add_argument("old", metavar="OLD", help="a policy (.vpol), a plan or a signed plan")
    parser.add_argument("new", metavar="NEW", help="a policy (.vpol), a plan or a signed plan")
    parser.add_argument("--format", choices=("text", "markdown", "html", "json"), default="text")
    parser.add_argument("--exit-code", action="store_true", help="exit 0 when nothing changes, 2 when something does")


def _plan_file(path: str) -> Plan | None:
    """The plan of a plan or signed plan file; None for a policy."""
    data = read_input(path, "input")
    # JSON, whole or broken (its error says where it breaks), is a plan; anything else a policy, whose
    # stray leading `{` is a policy error like any other, as `check` says
    return load_plan(plan_payload(data, path), path) if is_json_document(data) else None


def _compiled(path: str, targets: tuple[str, ...]) -> Plan:
    policy, sources, diagnostics, _ = load_policy(path)
    plan = None
    if policy is not None and not diagnostics.has_errors():
        plan, compile_diagnostics = compile_policy(policy, replace(_POLICY_OPTIONS, targets=targets))
        diagnostics.extend(compile_diagnostics)
    if plan is None:
        print_diagnostics(diagnostics, sources)
        raise InputError(f"cannot diff `{path}`: the policy has errors")
    return plan


def run(args) -> int:
    old, new = _plan_file(args.old), _plan_file(args.new)
    # A policy names no targets (`compile --target` does): beside a plan it is compiled for the plan's.
    targets = next((side.targets for side in (old, new) if side is not None), ())
    old = old if old is not None else _compiled(args.old, targets)
    new = new if new is not None else _compiled(args.new, targets)
    changeset = diff_plans(old, new, args.old, args.new)
    print(render(_TEMPLATES[args.format], cs=changeset, data=json_data(changeset)), end="")
    if args.exit_code and changeset.has_changes:
        return status_codes.CHANGES
    return status_codes.SUCCESS
