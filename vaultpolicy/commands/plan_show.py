"""`vaultpolicy plan show PLAN`: a readable summary of a plan or signed plan (rendered by jinja2)."""

from __future__ import annotations

from compiler.files import is_envelope, load_plan, plan_payload, read_input
from compiler.render import render
from vaultpolicy import status_codes


def add_arguments(parser, key) -> None:
    parser.add_argument("plan", metavar="PLAN", help="a plan or a signed plan")


def run(args) -> int:
    data = read_input(args.plan, "plan")
    plan = load_plan(plan_payload(data, args.plan), args.plan)
    print(render("plan_show.txt", plan=plan, signed=is_envelope(data)), end="")
    return status_codes.SUCCESS
