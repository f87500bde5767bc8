"""Device verification order and refusals (issue 5 'Verify before anything', S12-S14, S16)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from compiler.plan import encode_plan, plan_digest
from compiler.signing import PLAN_PAYLOAD_TYPE, TrustRoot, generate_key, key_id, sign
from enforcer.state import VaultRecord
from enforcer.verify import CLOCK_SLACK, DeviceIdentity, verify_plan
from vaultpolicy.errors import PlanRejected
from vp_helpers import NOW, make_plan, signed, vault

KEY = generate_key()
TRUST = TrustRoot.single(KEY.public_key())
ANYONE = DeviceIdentity()


def reason_of(envelope: bytes, **kwargs) -> str:
    options = {"now": NOW, "floor": None, "device": ANYONE} | kwargs
    with pytest.raises(PlanRejected) as caught:
        verify_plan(envelope, options.pop("trust", TRUST), **options)
    return caught.value.reason


def test_good_plan_verifies_and_keeps_exact_bytes():
    envelope = signed(make_plan([vault("config")]), KEY)
    verified = verify_plan(envelope, TRUST, now=NOW, floor=None, device=ANYONE)
    assert verified.envelope == envelope
    assert verified.plan.vault("config").name == "config"
    assert verified.sha256 == plan_digest(encode_plan(verified.plan))


def test_one_changed_byte_is_refused():
    envelope = bytearray(signed(make_plan([vault("config")]), KEY))
    index = envelope.index(b'"payload":"') + 20
    envelope[index] = ord("A") if envelope[index] != ord("A") else ord("B")
    assert reason_of(bytes(envelope)) in {"bad-signature", "malformed-envelope"}


def test_other_key_is_refused():
    assert reason_of(signed(make_plan(), generate_key())) == "unknown-key"


def test_rollback_refused_but_same_bytes_reapply():
    current = signed(make_plan(version=5), KEY)
    payload_sha = verify_plan(current, TRUST, now=NOW, floor=None, device=ANYONE).sha256
    floor = (5, payload_sha)
    assert verify_plan(current, TRUST, now=NOW, floor=floor, device=ANYONE).plan.plan_version == 5
    assert reason_of(signed(make_plan(version=4), KEY), floor=floor) == "rollback"
    # Same version, other content: a replay of a different plan at the floor is a rollback too.
    assert reason_of(signed(make_plan([vault("x")], version=5), KEY), floor=floor) == "rollback"
    assert verify_plan(signed(make_plan(version=6), KEY), TRUST, now=NOW, floor=floor, device=ANYONE)


def test_expired_and_future_dated():
    assert reason_of(signed(make_plan(lifetime=timedelta(seconds=1)), KEY), now=NOW + timedelta(seconds=1)) == "expired"
    ahead = make_plan(issued=NOW + CLOCK_SLACK + timedelta(seconds=1))
    assert reason_of(signed(ahead, KEY)) == "future-dated"
    within = make_plan(issued=NOW + CLOCK_SLACK - timedelta(seconds=1))
    assert verify_plan(signed(within, KEY), TRUST, now=NOW, floor=None, device=ANYONE)


def test_targets():
    plan = signed(make_plan(targets=["gw-1", "class:gateway"]), KEY)
    assert reason_of(plan, device=DeviceIdentity("gw-2")) == "wrong-target"
    assert reason_of(plan) == "wrong-target"
    assert verify_plan(plan, TRUST, now=NOW, floor=None, device=DeviceIdentity("gw-1"))
    assert verify_plan(plan, TRUST, now=NOW, floor=None, device=DeviceIdentity("gw-9", ("gateway",)))


def test_unknown_schema_is_refused_after_the_other_checks():
    data = encode_plan(make_plan()).replace(b'"schema_version":"1.0"', b'"schema_version":"2.0"')
    assert reason_of(sign(PLAN_PAYLOAD_TYPE, data, [KEY]).to_bytes()) == "unknown-schema"
    # Order: an expired plan with an unknown schema is refused as expired (expiry comes first).
    assert reason_of(sign(PLAN_PAYLOAD_TYPE, data, [KEY]).to_bytes(), now=NOW + timedelta(days=365)) == "expired"


def test_each_check_comes_in_the_issue_s_order():
    """signature -> version floor -> expiry -> target -> schema: a plan failing several checks is refused
    for the first of them, so the reason a device records never depends on which check ran first."""
    floor = (5, "0" * 64)
    later = NOW + timedelta(days=365)
    elsewhere = DeviceIdentity("gw-2")
    unknown_schema = encode_plan(make_plan(version=4, targets=["gw-1"])).replace(b'"schema_version":"1.0"',
                                                                                 b'"schema_version":"2.0"')
    everything_wrong = sign(PLAN_PAYLOAD_TYPE, unknown_schema, [generate_key()]).to_bytes()
    assert reason_of(everything_wrong, floor=floor, now=later, device=elsewhere) == "unknown-key"
    signed_well = sign(PLAN_PAYLOAD_TYPE, unknown_schema, [KEY]).to_bytes()
    assert reason_of(signed_well, floor=floor, now=later, device=elsewhere) == "rollback"
    assert reason_of(signed_well, now=later, device=elsewhere) == "expired"
    assert reason_of(signed_well, device=elsewhere) == "wrong-target"
    assert reason_of(signed_well, device=DeviceIdentity("gw-1")) == "unknown-schema"


def test_threshold_counts_distinct_keys():
    second = generate_key()
    root = TrustRoot(1, 2, ((key_id(KEY.public_key()), KEY.public_key()), (key_id(second.public_key()), second.public_key())))
    plan = make_plan()
    assert reason_of(signed(plan, KEY, KEY), trust=root) == "threshold-not-met"
    assert verify_plan(signed(plan, KEY, second), root, now=NOW, floor=None, device=ANYONE)


def test_protected_vault_cannot_be_destroyed_even_when_the_flag_is_dropped():
    managed = {"config": VaultRecord("config", "/persist/vault/config", "aes-256-xts", "destroy", True, 0)}
    assert reason_of(signed(make_plan(version=2), KEY), managed=managed) == "destroys-protected"
    replaced = make_plan([vault("config", encryption="none")], version=2)
    assert reason_of(signed(replaced, KEY), managed=managed) == "destroys-protected"
    kept = make_plan([vault("config")], version=2)
    assert verify_plan(signed(kept, KEY), TRUST, now=NOW, floor=None, device=ANYONE, managed=managed)
