"""What the boot and shutdown units rely on when something is wrong: `device lock` says "locked" only
when the kernel says so, and one damaged vault or a read-only or full state dir never stops the others
(real swtpm, loop-mounted ext4, real read-only bind mounts and a full tmpfs)."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from enforcer.state import StateDir
from vp_helpers import REPO, make_plan, vault

pytestmark = pytest.mark.device

MiB = 1 << 20


def by_vault(result, verb: str) -> dict[str, dict]:
    return {r["vault"]: r for r in json.loads(result.stdout)[verb]}


def readable(path: Path) -> bool:
    """Whether the file reads back; a locked vault shows encrypted names, so its name is not found."""
    try:
        return path.read_text() != ""
    except OSError as exc:
        assert exc.errno in (errno.ENOKEY, errno.ENOENT), exc
        return False


def vaultpolicy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaultpolicy", *args], capture_output=True, text=True, cwd=REPO)


def test_lock_where_a_vault_path_is_not_there_fails_while_the_files_stay_readable(device):
    """A root other than the recorded one is refused whole (test_host.py); a vault whose path is not
    there under the right root (its directory moved away) is `failed`, never `locked`."""
    assert device.apply(make_plan([vault("config"), vault("img", limit=8 * MiB)])).returncode == 0
    files = {name: device.path(f"/persist/vault/{name}") / "f" for name in ("config", "img")}
    for name, path in files.items():
        path.write_text(name)
    path = device.path("/persist/vault/config")
    moved = device.path("/persist/moved")
    path.rename(moved)
    text = device.cli("device", "lock")
    assert text.returncode == 1, text.stdout + text.stderr
    assert f"vault config: failed (path-not-found, VP1205): {path}: not found" in text.stdout
    assert "hint: pass the --root" in text.stdout
    result = device.cli("device", "lock", "--json")
    records = by_vault(result, "lock")
    assert {name: r["outcome"] for name, r in records.items()} == {"config": "failed", "img": "locked"}
    assert records["config"]["reason"] == "path-not-found" and "may still be in the kernel" in records["config"]["message"]
    assert readable(moved / "f") and not readable(files["img"]), "config is still readable: nothing locked it"
    moved.rename(path)
    assert device.cli("device", "lock").returncode == 0
    assert not any(readable(path) for path in files.values())


def test_a_damaged_sealed_record_fails_only_its_own_vault(device):
    assert device.apply(make_plan([vault("config"), vault("notes"), vault("img", limit=8 * MiB)])).returncode == 0
    files = {name: device.path(f"/persist/vault/{name}") / "f" for name in ("config", "notes", "img")}
    for name, path in files.items():
        path.write_text(name)
    state = StateDir(device.state)
    damaged = state.sealed_path("notes")
    damaged.write_text("{\n")

    locked = device.cli("device", "lock", "--json")
    assert locked.returncode == 1, locked.stdout + locked.stderr
    records = by_vault(locked, "lock")
    assert {name: r["outcome"] for name, r in records.items()} == {"config": "locked", "notes": "failed", "img": "locked"}
    assert records["notes"]["reason"] == "state-damaged" and str(damaged) in records["notes"]["message"]
    assert "its key is out of the kernel" in records["notes"]["message"], "its directory names the key to remove"
    assert not any(readable(path) for path in files.values())
    text = device.cli("device", "lock")
    assert [line.split(":")[0] for line in text.stdout.splitlines() if line.startswith("  vault")] == \
        ["  vault config", "  vault img", "  vault notes"]

    unlocked = device.cli("device", "unlock", "--json")
    assert unlocked.returncode == 1, unlocked.stdout + unlocked.stderr
    records = by_vault(unlocked, "unlock")
    assert {name: r["outcome"] for name, r in records.items()} == \
        {"config": "unlocked", "notes": "failed", "img": "unlocked"}
    assert records["notes"]["reason"] == "state-damaged" and str(damaged) in records["notes"]["message"]
    assert "--release" in records["notes"]["hint"]
    assert readable(files["config"]) and readable(files["img"]) and not readable(files["notes"])
    assert damaged.read_text() == "{\n", "a damaged record is never replaced by unlock"


def test_a_damaged_vault_record_fails_only_its_own_vault(device):
    """`device unlock` read every vault record up front, so one damaged record stopped every vault.
    apply and status refuse, naming the file; nothing changes and no traceback."""
    assert device.apply(make_plan([vault("config"), vault("notes"), vault("img", limit=8 * MiB)])).returncode == 0
    files = {name: device.path(f"/persist/vault/{name}") / "f" for name in ("config", "notes", "img")}
    for name, path in files.items():
        path.write_text(name)
    assert device.cli("device", "lock").returncode == 0
    state = StateDir(device.state)
    damaged = state.record_path("notes")
    damaged.write_text("{\n")

    unlocked = device.cli("device", "unlock", "--json")
    assert unlocked.returncode == 1, unlocked.stdout + unlocked.stderr
    records = by_vault(unlocked, "unlock")
    assert {name: r["outcome"] for name, r in records.items()} == \
        {"config": "unlocked", "notes": "failed", "img": "unlocked"}
    assert records["notes"]["reason"] == "state-damaged" and str(damaged) in records["notes"]["message"]
    assert "restore it from a backup" in records["notes"]["hint"]
    assert readable(files["config"]) and readable(files["img"]) and not readable(files["notes"])
    assert state.conditions()["vault/notes"].reason == "state-damaged"
    text = device.cli("device", "unlock")
    assert f"vault notes: failed (state-damaged, VP1206): the vault record {damaged} is unreadable" in text.stdout

    before = sorted((p, p.read_bytes()) for p in device.state.rglob("*.json") if p.is_file())
    for command in (["apply", str(device.sign(make_plan([vault("config"), vault("notes"), vault("img", limit=8 * MiB)],
                                                           version=2))), "--trust", str(device.trust)], ["status"]):
        refused = device.cli("device", *command)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"the vault record {damaged} is unreadable" in refused.stderr.splitlines()[0], refused.stderr
        assert "Traceback" not in refused.stderr and "= help: restore it from a backup" in refused.stderr
    assert refused.stderr.startswith("error: the vault record")
    assert "not applied, nothing was changed: the vault record" in device.apply(make_plan([vault("config")])).stderr
    after = sorted((p, p.read_bytes()) for p in device.state.rglob("*.json") if p.is_file())
    assert after == before, "a refused apply changed the state dir"
    assert damaged.read_text() == "{\n"
    locked = device.cli("device", "lock", "--json")
    assert {name: r["outcome"] for name, r in by_vault(locked, "lock").items()} == \
        {"config": "locked", "notes": "failed", "img": "locked"}


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def fill(directory: Path) -> Path:
    """Write zeros into `directory` until its filesystem is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(bytes(64 * 1024))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with open(filler, "ab", buffering=0) as handle:  # the last partial block too
        try:
            while True:
                handle.write(b"x")
        except OSError:
            pass
    return filler


def unchanged_by_a_refused_apply(device, reason: str) -> None:
    """A new plan adds a vault; the apply is refused before anything changes."""
    from enforcer.tpm import Tpm

    with Tpm(device.tcti) as tpm:
        handles = tpm.loaded_handles()
    before = sorted(p.relative_to(device.state) for p in device.state.rglob("*"))
    applied = device.apply(make_plan([vault("config"), vault("notes"), vault("new")], version=2))
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert f"error: the state dir {device.state} cannot be written ({reason}); nothing was changed" in applied.stderr
    assert "internal error" not in applied.stderr
    assert not device.path("/persist/vault/new").exists()
    assert sorted(p.relative_to(device.state) for p in device.state.rglob("*")) == before
    with Tpm(device.tcti) as tpm:
        assert tpm.loaded_handles() == handles


def test_a_damaged_conditions_file_stops_nothing(device):
    """Conditions are the device's account of what went wrong; a damaged conditions.json stopped
    `device unlock` and `status` with an error before any vault was unlocked."""
    assert device.apply(make_plan([vault("config"), vault("img", limit=8 * MiB)])).returncode == 0
    files = {name: device.path(f"/persist/vault/{name}") / "f" for name in ("config", "img")}
    for name, path in files.items():
        path.write_text(name)
    assert device.cli("device", "lock").returncode == 0
    conditions = StateDir(device.state).conditions_path
    conditions.write_text("{\n")

    unlocked = device.cli("device", "unlock")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert all(readable(path) for path in files.values())
    assert f"warning: state file {conditions} is unreadable" in unlocked.stderr
    assert "read as empty, earlier conditions are lost" in unlocked.stderr
    status = device.cli("device", "status")
    assert status.returncode == 0 and "warning: state file" in status.stderr, status.stdout + status.stderr

    conditions.write_text('["not", "conditions"]\n')  # JSON, but not a conditions file
    assert device.cli("device", "lock").returncode == 0
    unlocked = device.cli("device", "unlock")
    assert unlocked.returncode == 0 and f"state file {conditions} is not a conditions file" in unlocked.stderr


def test_a_read_only_state_dir_still_unlocks_at_boot_and_apply_refuses_cleanly(device):
    assert device.apply(make_plan([vault("config"), vault("notes")])).returncode == 0
    for name in ("config", "notes"):
        (device.path(f"/persist/vault/{name}") / "f").write_text(name)
    assert device.cli("device", "lock").returncode == 0
    mount("--bind", str(device.state), str(device.state))
    try:
        mount("-o", "remount,bind,ro", str(device.state))
        with pytest.raises(OSError):
            (device.state / "probe").write_text("x")  # really read-only
        unlocked = device.cli("device", "unlock", "--json")
        assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
        assert {name: r["outcome"] for name, r in by_vault(unlocked, "unlock").items()} == \
            {"config": "unlocked", "notes": "unlocked"}
        assert "internal error" not in unlocked.stderr
        for name in ("config", "notes"):
            warning = f"warning: cannot write state file {device.state}/attest/last-unlock/{name}.json: Read-only file system"
            assert warning in unlocked.stderr
            assert readable(device.path(f"/persist/vault/{name}") / "f")
        assert device.cli("device", "status").returncode == 0
        unchanged_by_a_refused_apply(device, "Read-only file system")
        assert device.cli("device", "lock").returncode == 0
    finally:
        subprocess.run(["umount", str(device.state)], check=True)


def test_a_full_state_dir_still_unlocks_at_boot_and_apply_refuses_cleanly(device):
    mount("-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(device.state))
    try:
        assert device.apply(make_plan([vault("config"), vault("notes")])).returncode == 0
        for name in ("config", "notes"):
            (device.path(f"/persist/vault/{name}") / "f").write_text(name)
        assert device.cli("device", "lock").returncode == 0
        filler = fill(device.state)
        unlocked = device.cli("device", "unlock", "--json")
        assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
        assert {name: r["outcome"] for name, r in by_vault(unlocked, "unlock").items()} == \
            {"config": "unlocked", "notes": "unlocked"}
        assert "internal error" not in unlocked.stderr
        assert f"warning: cannot write state file {device.state}/attest/last-unlock/config.json: No space left on device" \
            in unlocked.stderr
        assert all(readable(device.path(f"/persist/vault/{name}") / "f") for name in ("config", "notes"))
        unchanged_by_a_refused_apply(device, "No space left on device")
        filler.unlink()
        assert device.apply(make_plan([vault("config"), vault("notes"), vault("new")], version=2)).returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(device.state)], check=True)


def leave_a_transient_object(tcti: str) -> None:
    """What a killed client leaves in a TPM without a resource manager: a loaded primary."""
    import tpm2_pytss

    from enforcer.tpm import storage_primary_template

    esys = tpm2_pytss.ESAPI(tcti)
    try:
        esys.create_primary(tpm2_pytss.TPM2B_SENSITIVE_CREATE(), storage_primary_template(), tpm2_pytss.ESYS_TR.OWNER)
    finally:
        esys.close()


def transient_objects(tcti: str) -> int:
    from enforcer.tpm import Tpm

    with Tpm(tcti) as tpm:
        return tpm.loaded_handles()["transient"]


def test_a_refused_plan_touches_no_tpm_and_leaves_no_state_dir(device, tmp_path):
    from compiler.signing import generate_key, public_key_pem
    from enforcer.tcti import stop_embedded

    other = device.work / "other.pub"
    other.write_bytes(public_key_pem(generate_key().public_key()))
    junk = device.work / "junk.pub"
    junk.write_text("not a key\n")
    signed = device.sign(make_plan([vault("config")]))
    fresh = tmp_path / "fresh-state"
    try:
        for trust, says in ((other, "refused (unknown-key"), (junk, "not a trust root envelope or a PEM public key")):
            # no --tpm: the embedded swtpm would be started under the state dir
            result = vaultpolicy("device", "apply", str(signed), "--trust", str(trust), "--state-dir", str(fresh),
                                 "--root", str(device.root))
            assert result.returncode == 1 and says in result.stderr, result.stderr
            assert not fresh.exists(), "a refused first plan leaves no state dir and starts no swtpm"
        assert "no plan has been applied" in vaultpolicy("device", "apply", str(signed), "--trust", str(other),
                                                         "--state-dir", str(fresh)).stderr
    finally:
        stop_embedded(fresh)

    assert device.apply(make_plan([vault("config")])).returncode == 0
    leave_a_transient_object(device.tcti)
    refused = device.cli("device", "apply", str(signed), "--trust", str(other))
    assert refused.returncode == 1 and "the applied plan stays in force" in refused.stderr, refused.stderr
    stored = device.state / "applied" / "plan.signed"
    good = stored.read_bytes()
    tampered = bytearray(good)
    tampered[tampered.index(b'"payload":"') + 40] ^= 1  # the stored plan no longer verifies
    stored.write_bytes(bytes(tampered))
    assert device.cli("device", "unlock").returncode == 1
    assert transient_objects(device.tcti) == 1, "neither command touched the TPM: the leftover is still loaded"
    stored.write_bytes(good)
    assert device.cli("device", "unlock").returncode == 0
    assert transient_objects(device.tcti) == 0, "the unlock flushed the leftover"


def test_a_damaged_stored_plan_is_named_and_applying_the_plan_again_repairs_it(device):
    plan = make_plan([vault("config")], apps=[])
    signed = device.sign(plan)
    assert device.cli("device", "apply", str(signed), "--trust", str(device.trust)).returncode == 0
    stored = device.state / "applied" / "plan.signed"
    stored.write_bytes(stored.read_bytes() + b"x")  # JSON with extra data
    quote = ["device", "quote", "--nonce", "00" * 16, "--state-dir", str(device.state), "--tpm", device.tcti]
    for result in [device.cli("device", *command) for command in (["status"], ["unlock"], ["gate", "app"], ["report"])] \
            + [vaultpolicy(*quote)]:
        command = result.args[4]
        assert result.returncode == 1, (command, result.stderr)
        assert f"error: the stored applied plan is damaged: `{stored}`: malformed envelope" in result.stderr, command
        assert "apply the controller's current signed plan again" in result.stderr and "internal" not in result.stderr
    assert device.cli("device", "lock").returncode == 0, "locking needs no plan"
    again = device.cli("device", "apply", str(signed), "--trust", str(device.trust))
    assert again.returncode == 0, again.stdout + again.stderr
    assert stored.read_bytes() == signed.read_bytes()
    assert device.cli("device", "unlock").returncode == 0 and device.cli("device", "status").returncode == 0
