"""Plan builders for the enforcer tests (plans are built from compiler.plan models directly)."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import shutil
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

from compiler.plan import Device, Plan, Seal, Vault, App, encode_plan, format_time
from compiler.signing import PLAN_PAYLOAD_TYPE, sign

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.now(timezone.utc).replace(microsecond=0)  # CLI applies read the real clock


def vault(name: str, *, limit: int = 0, pcrs=(0, 7), encryption: str = "aes-256-xts", on_remove: str = "retain",
          protected: bool = False, path: str | None = None) -> Vault:
    return Vault(
        name=name,
        path=path or f"/persist/vault/{name}",
        encryption=encryption,
        limit_bytes=limit,
        seal=None if encryption == "none" else Seal(bank="sha256", pcrs=tuple(pcrs)),
        on_remove=on_remove,
        protected=protected,
    )


def make_plan(vaults=(), *, version: int = 1, apps=(), targets=(), issued: datetime = NOW,
              lifetime: timedelta = timedelta(days=30), allow_unmeasured_boot: bool = False,
              escrow_public_key: str | None = None) -> Plan:
    return Plan(
        plan_version=version,
        issued_at=format_time(issued),
        expires=format_time(issued + lifetime),
        source_sha256="0" * 64,
        targets=tuple(targets),
        device=Device(persist="/persist", allow_unmeasured_boot=allow_unmeasured_boot,
                      escrow_public_key=escrow_public_key),
        vaults=tuple(vaults),
        apps=tuple(apps),
    )


def app(name: str, vault_name: str | None, end_to_end: bool = False) -> App:
    return App(name=name, vault=vault_name, end_to_end=end_to_end)


def signed(plan: Plan, *keys) -> bytes:
    return sign(PLAN_PAYLOAD_TYPE, encode_plan(plan), list(keys)).to_bytes()


def mounts_under(*prefixes: Path) -> list[str]:
    """Mount points below any of `prefixes`, deepest first (from the kernel's mount table)."""
    found = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            target = line.split()[4].encode().decode("unicode_escape")
            if any(target == str(p) or target.startswith(f"{p}/") for p in prefixes):
                found.append(target)
    return sorted(set(found), key=lambda t: t.count("/"), reverse=True)


def reboot(device) -> None:
    """Keys gone from the kernel, every vault image unmounted, the TPM restarted and measured again."""
    assert device.cli("device", "lock").returncode in (0, 1)
    for mountpoint in mounts_under(device.path("/persist/vault"), device.state):
        subprocess.run(["umount", mountpoint], check=True)
    device.swtpm.restart()
    device.swtpm.measure_boot()


def fill(target) -> None:
    (target / "nested" / "deeper").mkdir(parents=True)
    (target / "a.txt").write_bytes(b"alpha" * 1000)
    (target / "nested" / "b.bin").write_bytes(os.urandom(300_000))
    (target / "nested" / "empty").write_bytes(b"")
    os.symlink("../a.txt", target / "nested" / "link")
    os.chmod(target / "a.txt", 0o640)
    os.chown(target / "nested" / "b.bin", 1234, 4321)
    os.chmod(target / "nested" / "deeper", 0o750)
    os.utime(target / "a.txt", ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    os.lchown(target / "nested" / "link", 99, 98)
    os.utime(target / "nested" / "deeper", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))


def tree(root) -> dict[str, tuple]:
    """Every entry's content hash (or link target), mode, owner and mtime."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(open(path, "rb").read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            else:
                content = "dir"
            out[os.path.relpath(path, root)] = (content, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


def kernel_has_adiantum(device) -> bool:
    """Whether this kernel encrypts files with Adiantum: one built without the cipher accepts the policy
    but refuses every new file (ENOPKG). Probed on the device's persist filesystem."""
    from enforcer import fscrypt

    directory = device.path("/persist/adiantum-probe")
    directory.mkdir()
    fscrypt.set_policy(str(directory), fscrypt.add_key(str(directory.parent), bytearray(os.urandom(64))), "adiantum")
    try:
        (directory / "f").touch()
    except OSError as exc:
        assert exc.errno == errno.ENOPKG, exc
        return False
    finally:
        shutil.rmtree(directory)
    return True


def key_leaks(key: bytes, data: bytes) -> list[str]:
    """How `key` (or either half of it) appears in `data`: raw, hex or base64, the ways a careless
    write of a key into a JSON state file or a log would show it."""
    found = []
    for part in (key, key[:32], key[32:]):
        spellings = {"raw": part, "hex": part.hex().encode(), "HEX": part.hex().upper().encode(),
                     "base64": base64.b64encode(part).rstrip(b"="), "base64url": base64.urlsafe_b64encode(part).rstrip(b"=")}
        found += [name for name, spelling in spellings.items() if spelling in data]
    return found


def guest_skip_or_fail(reason: str) -> None:
    """As tests/conftest.py's skip_or_fail, for the qemu guests (tests/vm/harness.py): a CI machine must
    boot them."""
    import pytest

    if os.environ.get("VAULTPOLICY_REQUIRE_DEVICE") == "1":
        pytest.fail(f"VAULTPOLICY_REQUIRE_DEVICE=1 but the guest cannot boot here: {reason}")
    pytest.skip(reason)
