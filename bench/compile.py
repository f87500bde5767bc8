"""Compiler benchmark: check + compile + sign time as a ratio to lark parsing the same file alone.

Generates a policy with 2,000 vaults, 10,000 apps and 500 components (and one at 1/10 of that),
and prints ratios, never absolute pass/fail thresholds (target: total under 3x parse, about linear).
Run: .venv/bin/python bench/compile.py
"""

from __future__ import annotations

import gc
import time
from datetime import datetime, timezone

import compiler
import policy_lang
from compiler import BuildOptions, analyze
from compiler.build import build
from compiler.plan import encode_plan
from compiler.signing import PLAN_PAYLOAD_TYPE, generate_key, sign
from policy_lang.parse import parse

OPTIONS = BuildOptions(plan_version=1, issued_at=datetime(2026, 1, 1, tzinfo=timezone.utc), valid_for_seconds=86400, source_sha256="0" * 64)


def generate(vaults: int, apps: int, components: int) -> str:
    lines = [
        'device { persist "/persist"  capacity 64TiB reserve 4GiB }',
        "attestation boot { pcrs 0, 4, 7  nonce 32 bytes, valid 5m }",
        "defaults { seal boot  rotate every 90d }",
    ]
    lines += [f'vault v{i} {{ path "/persist/v/{i}"  limit 1GiB }}' for i in range(vaults)]
    lines += [f"app a{i} {{ vault v{i % vaults} }}" for i in range(apps)]
    lines += [
        f'component c{i} {{ stores "/persist/v/{i % vaults}/data" sensitive  stores "/persist/v/{(i + 1) % vaults}/cache" }}'
        for i in range(components)
    ]
    return "\n".join(lines) + "\n"


def best_of(runs: int, step, collect: bool = True) -> float:
    """Best CPU time of `runs` (CPU time is less disturbed by other load on the machine). With
    `collect=False` the cyclic GC is paused, which separates the algorithm's growth from the cost of
    the interpreter scanning a large live heap."""
    best = float("inf")
    for _ in range(runs):
        gc.collect()  # start each run from the same heap, so earlier garbage does not bill this step
        if not collect:
            gc.disable()
        try:
            start = time.process_time()
            step()
            best = min(best, time.process_time() - start)
        finally:
            gc.enable()
    return best


def measure(vaults: int, apps: int, components: int, runs: int) -> tuple[float, float, float]:
    text = generate(vaults, apps, components)
    policy, diagnostics = policy_lang.parse_text(text, "bench.vpol")
    assert policy is not None and not diagnostics.has_errors(), diagnostics[:3]
    key = generate_key()

    def pipeline():
        model, found = analyze(policy)
        assert not found.has_errors(), found[:3]
        plan, _ = build(model, OPTIONS)
        sign(PLAN_PAYLOAD_TYPE, encode_plan(plan), [key])

    parse_seconds = best_of(runs, lambda: parse(text, "bench.vpol"))
    pipeline_seconds = best_of(runs, pipeline)
    pipeline_without_gc = best_of(runs, pipeline, collect=False)
    assert len(compiler.check(policy)) == 0
    return parse_seconds, pipeline_seconds, pipeline_without_gc


def main() -> None:
    small = measure(200, 1000, 50, runs=5)
    full = measure(2000, 10000, 500, runs=3)
    for label, (parse_s, pipeline_s, _) in (("1/10 size", small), ("full size", full)):
        print(f"{label:>9}: check+compile+sign = {pipeline_s / parse_s:.2f}x lark parse")
    print(
        f"growth 1/10 -> full (10x input): parse {full[0] / small[0]:.1f}x, check+compile+sign {full[1] / small[1]:.1f}x "
        f"({full[2] / small[2]:.1f}x with the garbage collector paused)"
    )


if __name__ == "__main__":
    main()
