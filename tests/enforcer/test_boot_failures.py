"""What the boot and shutdown units rely on when something is wrong: `device lock` says "locked" only
when the kernel says so, and one damaged vault or a read-only or full state dir never stops the others
(real swtpm, loop-mounted ext4)."""

from __future__ import annotations

import errno
import json
import os
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


def test_lock_with_a_wrong_or_missing_root_fails_while_the_files_stay_readable(device):
    assert device.apply(make_plan([vault("config"), vault("img", limit=8 * MiB)])).returncode == 0
    files = {name: device.path(f"/persist/vault/{name}") / "f" for name in ("config", "img")}
    for name, path in files.items():
        path.write_text(name)
    elsewhere = device.work / "elsewhere"
    elsewhere.mkdir()
    assert not Path("/persist/vault").exists(), "this test needs a host without /persist/vault"
    for root in (["--root", str(elsewhere)], []):
        result = vaultpolicy("device", "lock", "--json", "--state-dir", str(device.state), *root)
        assert result.returncode == 1, result.stdout + result.stderr
        records = by_vault(result, "lock")
        assert {name: r["outcome"] for name, r in records.items()} == {"config": "failed", "img": "failed"}, root
        for record in records.values():
            assert record["reason"] == "path-not-found" and "may still be in the kernel" in record["message"]
        assert all(readable(path) for path in files.values()), "the files are still readable: nothing was locked"
    text = vaultpolicy("device", "lock", "--state-dir", str(device.state), "--root", str(elsewhere))
    wrong = elsewhere / "persist/vault/config"
    assert f"vault config: failed (path-not-found, VP1205): {wrong}: not found" in text.stdout
    assert "hint: pass the --root" in text.stdout

    assert device.cli("device", "lock").returncode == 0
    # the image vault's filesystem is mounted in the state dir: there the kernel confirms its key is out
    result = vaultpolicy("device", "lock", "--json", "--state-dir", str(device.state), "--root", str(elsewhere))
    assert {name: r["outcome"] for name, r in by_vault(result, "lock").items()} == {"config": "failed", "img": "locked"}
    assert result.returncode == 1


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

