"""Properties over generated policies: checking never raises, a policy without errors always
compiles (the plan decoder's `inconsistencies` find nothing the rules let through: a persist root of
`/` passed `check` and crashed `compile`), its plan decodes back to the same bytes, and a plan diffed
with itself is empty."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compiler
import policy_lang
from compiler.diff import diff_plans
from compiler.plan import decode_plan, encode_plan

OPTIONS = compiler.BuildOptions(
    plan_version=1, issued_at=datetime(2026, 1, 1, tzinfo=timezone.utc), valid_for_seconds=86400, source_sha256="0" * 64
)
NAMES = st.sampled_from(["config", "images", "data", "logs", "scratch"])
PATHS = st.sampled_from(["/persist/a", "/persist/a/b", "/persist/vault/config", "/persist/../x", "rel/p", "/var/x", "/persist/b"])
PCR_LISTS = st.lists(st.integers(0, 23), min_size=1, max_size=5).map(lambda pcrs: ", ".join(map(str, pcrs)))
PERSIST_ROOTS = st.sampled_from(["/persist", "/", "/data", "/persist/", "persist", "/persist/a"])
DIGESTS = st.sampled_from(["ab" * 32, "AB" * 32, "ab" * 20, "abc"])


@st.composite
def vaults(draw) -> str:
    settings_ = []
    if draw(st.booleans()):
        settings_.append(f'path "{draw(PATHS)}"')
    if draw(st.booleans()):
        settings_.append(f"encryption {draw(st.sampled_from(['aes-256-xts', 'adiantum', 'none']))}")
    if draw(st.booleans()):
        settings_.append(draw(st.sampled_from(["seal boot", "seal other"]) | PCR_LISTS.map(lambda p: f"seal pcrs {p}")))
    if draw(st.booleans()):
        settings_.append(f"limit {draw(st.integers(1, 64))}MiB")
    if draw(st.booleans()):
        settings_.append(f"rotate every {draw(st.sampled_from(['1h', '1d', '90d']))}")
    if draw(st.booleans()):
        settings_.append(f"on_remove {draw(st.sampled_from(['retain', 'destroy']))}")
    if draw(st.booleans()):
        settings_.append("protected")
    if draw(st.booleans()):
        settings_.append(f'holds "{draw(PATHS)}"')
    return f"vault {draw(NAMES)} {{ {'  '.join(settings_)} }}"


@st.composite
def devices(draw) -> str:
    settings_ = [f'persist "{draw(PERSIST_ROOTS)}"']
    if draw(st.booleans()):
        settings_.append(f"capacity {draw(st.integers(1, 512))}MiB")
    if draw(st.booleans()):
        settings_.append(f"reserve {draw(st.integers(1, 64))}MiB")
    return f"device {{ {'  '.join(settings_)} }}"


@st.composite
def attestations(draw, name: str) -> str:
    allow = f'  allow pcr {draw(st.integers(0, 23))} = "{draw(DIGESTS)}"' if draw(st.booleans()) else ""
    return f"attestation {name} {{ pcrs {draw(PCR_LISTS)}{allow} }}"


@st.composite
def policies(draw) -> str:
    items = []
    if draw(st.booleans()):
        items.append(draw(devices()))
    for name in draw(st.lists(st.sampled_from(["boot", "other"]), max_size=2)):
        items.append(draw(attestations(name)))
    if draw(st.booleans()):
        items.append(f"defaults {{ {draw(st.sampled_from(['seal boot', 'encryption adiantum', 'on_remove destroy']))} }}")
    items += draw(st.lists(vaults(), max_size=4))
    for n in range(draw(st.integers(0, 3))):
        protection = "  protection end_to_end" if draw(st.booleans()) else ""
        items.append(f"app app{n} {{ vault {draw(NAMES)}{protection} }}")
    if draw(st.booleans()):
        items.append(f'component comp {{ stores "{draw(PATHS)}/d" sensitive }}')
    return "\n".join(draw(st.permutations(items))) + "\n"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_checked_policies_compile_and_round_trip(text):
    policy, diagnostics = policy_lang.parse_text(text, "t.vpol")
    assert policy is not None and not diagnostics.has_errors(), (text, diagnostics)
    plan, found = compiler.compile_policy(policy, OPTIONS)
    assert (plan is None) == found.has_errors()
    for diagnostic in found:
        assert diagnostic.message and diagnostic.code.startswith("VP0")
    if plan is not None:
        payload = encode_plan(plan)
        assert encode_plan(decode_plan(payload)) == payload
        assert not diff_plans(plan, decode_plan(payload)).has_changes
        for vault in plan.vaults:
            assert (vault.seal is None) == (vault.encryption == "none")
            assert vault.seal is None or (vault.seal.pcrs and 5 not in vault.seal.pcrs)
