"""The applied plan, its version floor and the trust root are committed as one (a kill inside the commit
leaves the old three or the new three), damaged floor and journal files are named, never an internal
error, and a repeated apply writes nothing (real swtpm, loop-mounted ext4, the CLI in a subprocess)."""

from __future__ import annotations

import os
import signal

import pytest

from compiler.signing import TRUST_ROOT_PAYLOAD_TYPE, TrustRoot, generate_key, key_id, sign
from enforcer.state import StateDir
from vp_helpers import app, make_plan, signed, vault

pytestmark = pytest.mark.device

MiB = 1 << 20


def boot_commands_work(device, context: str) -> None:
    """What a boot runs, after a lock: unlock, status and the gate, all on the stored plan."""
    assert device.cli("device", "lock").returncode == 0, context
    for command in (["unlock"], ["status"], ["gate", "historian"]):
        result = device.cli("device", *command)
        assert result.returncode == 0, f"{context}: {command}: {result.stdout}{result.stderr}"
    assert (device.path("/persist/vault/config") / "f").read_text() == "kept", context


def kill_at_every_point(device, apply, expected_version: int):
    """SIGKILL `apply` at each of its crash points until it completes; after each kill the boot commands
    work on whichever plan is stored. (the crash points, the apply that completed)"""
    crashed_at = []
    for point in range(1, 10):
        killed = apply({"VAULTPOLICY_CRASH_AT": str(point)})
        if killed.returncode == 0:
            break
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        crashed_at.append(point)
        boot_commands_work(device, f"killed at crash point {point}")
        state = StateDir(device.state)
        assert state.floor()[0] in (expected_version - 1, expected_version) and state.warnings == []
    assert StateDir(device.state).floor()[0] == expected_version
    boot_commands_work(device, "after the apply completed")
    return crashed_at, killed


def base_plan(version: int = 1):
    return make_plan([vault("config")], version=version, apps=[app("historian", "config")])


def test_a_kill_inside_the_commit_leaves_a_plan_every_boot_command_takes(device):
    """plan.signed was written before floor.json: a kill between the two left a plan the floor called
    "not the one that was applied", and unlock, status and gate refused every vault."""
    assert device.apply(base_plan()).returncode == 0
    (device.path("/persist/vault/config") / "f").write_text("kept")
    crashed_at, _ = kill_at_every_point(device, lambda env: device.apply(base_plan(2), env=env), 2)
    assert crashed_at == [1, 2], crashed_at  # the commit's intent, then its files staged before the swap
    assert not (device.state / "applied.next").exists()


def test_a_kill_inside_a_trust_root_rotation_leaves_a_root_the_stored_plan_verifies_under(device):
    """The rotated root was recorded after the plan signed by its successor: a kill between the two left
    a stored plan that does not verify under the recorded root. The rotation is said, with versions."""
    assert device.apply(base_plan()).returncode == 0
    (device.path("/persist/vault/config") / "f").write_text("kept")
    successor = generate_key()
    root2 = TrustRoot(2, 1, ((key_id(successor.public_key()), successor.public_key()),))
    root2_file = device.work / "root2"
    root2_file.write_bytes(sign(TRUST_ROOT_PAYLOAD_TYPE, root2.payload(), [device.key, successor]).to_bytes())
    plan2 = device.work / "plan2.signed"
    plan2.write_bytes(signed(base_plan(2), successor))

    def apply(env):
        return device.cli("device", "apply", str(plan2), "--trust", str(root2_file), env=env)

    crashed_at, rotated = kill_at_every_point(device, apply, 2)
    assert crashed_at == [1, 2], crashed_at
    assert StateDir(device.state).trust_bytes() == root2_file.read_bytes()
    assert f"trust root: the recorded root changed from version 1 to 2 ({device.state}/applied/trust)" in rotated.stdout
    assert not (device.state / "trust").exists(), "the root is kept in one place"
    assert "trust root" not in device.cli("device", "apply", str(plan2)).stdout, "said only when it changes"


def test_applying_the_plan_again_finishes_a_commit_an_older_enforcer_left_half_done(device):
    """The state a kill left with enforcers before the joint commit: the new plan stored, the old floor.
    Applying that plan again skipped the commit (its bytes were stored already), so the device stayed stuck."""
    assert device.apply(base_plan()).returncode == 0
    (device.path("/persist/vault/config") / "f").write_text("kept")
    device.state.joinpath("applied", "plan.signed").write_bytes(device.sign(base_plan(2)).read_bytes())
    stuck = device.cli("device", "status")
    assert stuck.returncode == 1 and "is not the one that was applied" in stuck.stderr
    assert "apply the controller's current signed plan again" in stuck.stderr
    again = device.apply(base_plan(2))
    assert again.returncode == 0, again.stdout + again.stderr
    assert StateDir(device.state).floor()[0] == 2
    boot_commands_work(device, "after applying again")


@pytest.mark.parametrize("content", ["{}", "[]", '{"plan_version": "2", "plan_sha256": "' + "0" * 64 + '"}',
                                     '{"plan_version": 1, "plan_sha256": 7}', "{\n"])
def test_a_damaged_version_floor_is_named_and_stops_no_boot(device, content):
    assert device.apply(make_plan([vault("config"), vault("img", limit=8 * MiB)], apps=[app("historian", "config")])) \
        .returncode == 0
    (device.path("/persist/vault/config") / "f").write_text("kept")
    assert device.cli("device", "lock").returncode == 0
    floor = device.state / "applied" / "floor.json"
    floor.write_text(content)
    for command in (["unlock"], ["status"], ["gate", "historian"]):
        result = device.cli("device", *command)
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
        assert f"warning: the version floor {floor} is unreadable" in result.stderr, result.stderr
        assert "the stored applied plan was checked against the trust root only" in result.stderr
    assert (device.path("/persist/vault/config") / "f").read_text() == "kept"

    before = sorted((p, p.read_bytes()) for p in device.state.rglob("*") if p.is_file() and ".img" not in p.name)
    refused = device.apply(make_plan([vault("config"), vault("new")], version=2))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith(f"error: plan {device.work}/plan.signed not applied, nothing was changed: the "
                                     f"version floor {floor} is unreadable"), refused.stderr
    assert "= help: restore it from a backup" in refused.stderr and "internal error" not in refused.stderr
    assert not device.path("/persist/vault/new").exists()
    assert sorted((p, p.read_bytes()) for p in device.state.rglob("*") if p.is_file() and ".img" not in p.name) == before


@pytest.mark.parametrize("content", ["1\n", "null\n", "[1]\n", '{"intent": {"action": "create-key"}}\n',
                                     '{"seq": 1, "intent": 5}\n{"seq": 1, "done": true}\n'])
def test_a_damaged_journal_is_a_warning_and_the_apply_goes_on(device, content):
    """The journal only says where an earlier run stopped; recovery reads the kernel and the filesystem."""
    journal = device.state / "journal.jsonl"
    assert device.apply(make_plan([vault("config")])).returncode == 0
    journal.write_text(content)
    applied = device.apply(make_plan([vault("config"), vault("logs")], version=2))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"warning: the journal {journal}:1 is unreadable: not a journal entry; started anew" in applied.stderr
    assert "vault logs: create-key" in applied.stdout and not journal.exists()
    journal.write_text(content)
    rotated = device.cli("device", "rotate")
    assert rotated.returncode == 0 and f"warning: the journal {journal}:1 is unreadable" in rotated.stderr


def test_a_repeated_apply_writes_nothing_in_the_state_dir(device):
    """A 64 KiB probe was written, fsynced and deleted in the state dir by every apply."""
    plan = make_plan([vault("config"), vault("logs")])
    assert device.apply(plan).returncode == 0

    def stamps():
        paths = [device.state, *device.state.rglob("*")]
        return {str(p): (os.lstat(p).st_mtime_ns, os.lstat(p).st_ctime_ns) for p in paths}

    before = stamps()
    again = device.apply(plan)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    assert stamps() == before
