"""Device-side defects a fresh-eyes audit found, each reproduced on swtpm and a loop-mounted ext4 image."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from compiler.signing import TRUST_ROOT_PAYLOAD_TYPE, TrustRoot, generate_key, key_id, public_key_pem, sign
from enforcer import blockdev, fscrypt
from enforcer.state import StateDir
from vp_helpers import REPO, make_plan, mounts_under, signed, vault

pytestmark = pytest.mark.device


def test_protection_is_sticky_and_a_protected_vault_is_never_destroyed(device):
    """S16: plan 1 protects `hist`; plan 2 drops `protected` and says destroy; plan 3 drops `hist`."""
    hist = device.path("/persist/vault/hist")
    assert device.apply(make_plan([vault("hist", protected=True)])).returncode == 0
    (hist / "record.csv").write_text("kept for ten years")
    state = StateDir(device.state)

    lifted = device.apply(make_plan([vault("hist", on_remove="destroy")], version=2))
    assert lifted.returncode == 1 and "destroys-protected" in lifted.stderr, lifted.stderr
    assert "on_remove destroy on protected vault `hist`" in lifted.stderr
    assert state.conditions()["plan"].reason == "destroys-protected"
    assert state.floor()[0] == 1 and state.records()["hist"].protected

    # a plan that only drops the flag is taken, but the device keeps the protection
    assert device.apply(make_plan([vault("hist")], version=3)).returncode == 0
    assert state.records()["hist"].protected and state.records()["hist"].on_remove == "retain"
    assert device.apply(make_plan([vault("hist", on_remove="destroy")], version=4)).returncode == 1

    removed = device.apply(make_plan([vault("other")], version=5))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "destroy" not in removed.stdout
    assert state.sealed("hist") is not None and state.records()["hist"].orphaned
    assert fscrypt.get_policy(str(hist)) is not None and len(list(hist.iterdir())) == 1  # locked, still there

    # back in the plan it unlocks with its data; changing its encryption is still refused
    assert device.apply(make_plan([vault("hist"), vault("other")], version=6)).returncode == 0
    assert (hist / "record.csv").read_text() == "kept for ten years"
    replaced = device.apply(make_plan([vault("hist", encryption="adiantum"), vault("other")], version=7))
    assert replaced.returncode == 1 and "encryption aes-256-xts -> adiantum" in replaced.stderr
    status = json.loads(device.cli("device", "status", "--json").stdout)
    assert {v["vault"]: v["state"] for v in status["vaults"]} == {"hist": "unlocked", "other": "unlocked"}


def test_trust_root_is_kept_and_changes_only_by_a_signed_rotation(device):
    assert device.apply(make_plan([vault("config")])).returncode == 0  # trust on first use records the key
    state = StateDir(device.state)
    recorded = state.trust_bytes()
    assert recorded == device.trust.read_bytes()

    attacker = generate_key()
    attacker_pub = device.work / "attacker.pub"
    attacker_pub.write_bytes(public_key_pem(attacker.public_key()))
    hostile = device.work / "hostile.signed"
    hostile.write_bytes(signed(make_plan([vault("config", on_remove="destroy")], version=2), attacker))
    self_signed_root = device.work / "attacker.root"
    attacker_root = TrustRoot(2, 1, ((key_id(attacker.public_key()), attacker.public_key()),))
    self_signed_root.write_bytes(sign(TRUST_ROOT_PAYLOAD_TYPE, attacker_root.payload(), [attacker]).to_bytes())
    for trust in (attacker_pub, self_signed_root):
        result = device.cli("device", "apply", str(hostile), "--trust", str(trust))
        assert result.returncode == 1 and "trust-root-changed" in result.stderr, result.stderr
        assert f"--trust {trust} is not the device's trust root" in result.stderr
        assert state.trust_bytes() == recorded and state.floor()[0] == 1
        assert state.conditions()["plan"].reason == "trust-root-changed"
        status = device.cli("device", "status", "--trust", str(trust))
        assert status.returncode == 1 and "is not the device's trust root" in status.stderr

    # the controller's plans still go through, with the recorded root as the default
    real = device.work / "real.signed"
    real.write_bytes(signed(make_plan([vault("config")], version=2), device.key))
    accepted = device.cli("device", "apply", str(real))
    assert accepted.returncode == 0, accepted.stderr

    # a proper rotation: root version 2 signed by the current key (threshold 1) and by its own key
    successor = generate_key()
    root2 = TrustRoot(2, 1, ((key_id(successor.public_key()), successor.public_key()),))
    root2_file = device.work / "root2"
    root2_file.write_bytes(sign(TRUST_ROOT_PAYLOAD_TYPE, root2.payload(), [device.key, successor]).to_bytes())
    plan3 = device.work / "plan3.signed"
    plan3.write_bytes(signed(make_plan([vault("config")], version=3), successor))
    rotated = device.cli("device", "apply", str(plan3), "--trust", str(root2_file))
    assert rotated.returncode == 0, rotated.stderr
    assert state.trust_bytes() == root2_file.read_bytes()
    assert device.cli("device", "status").returncode == 0
    old_key_plan = device.work / "plan4.signed"
    old_key_plan.write_bytes(signed(make_plan([vault("config")], version=4), device.key))
    assert device.cli("device", "apply", str(old_key_plan)).returncode == 1  # the old key is no longer trusted


def test_apply_help_and_behaviour_agree_on_trust(device):
    help_text = device.cli("device", "apply", "--help").stdout
    assert "required the first time" in " ".join(help_text.split())
    first = device.cli("device", "apply", str(device.sign(make_plan([vault("config")]))))
    assert first.returncode == 1 and "no trust root: pass --trust" in first.stderr
    assert device.apply(make_plan([vault("config")])).returncode == 0
    later = device.cli("device", "apply", str(device.sign(make_plan([vault("config")], version=2))))
    assert later.returncode == 0, later.stderr  # the recorded root is the default


def _states(device) -> tuple[int, dict[str, dict]]:
    result = device.cli("device", "status", "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, {v["vault"]: v for v in json.loads(result.stdout)["vaults"]}


def test_status_says_what_the_kernel_says(device):
    """S6: kernel state changed behind the tool's back is what status reports."""
    from enforcer.tpm import SealedBlob, Tpm


    assert device.apply(make_plan([vault("a"), vault("b", limit=8 << 20)])).returncode == 0
    persist, a = device.path("/persist"), device.path("/persist/vault/a")
    (a / "f").write_text("secret a")
    state = StateDir(device.state)
    sealed_a = state.sealed("a")
    identifier_a = bytes.fromhex(sealed_a["key_identifier"])

    fscrypt.remove_key(str(persist), identifier_a, all_users=True)
    rc, vaults = _states(device)
    assert rc == 3 and vaults["a"]["state"] == "locked" and "the key is not in the kernel" in vaults["a"]["reasons"]
    assert vaults["b"]["state"] == "unlocked" and vaults["b"]["matches"]

    with Tpm(device.tcti) as tpm:
        key = tpm.unseal(SealedBlob.from_json(json.dumps(sealed_a["blob"])))
    assert fscrypt.add_key(str(persist), key) == identifier_a
    rc, vaults = _states(device)
    assert rc == 0 and vaults["a"]["state"] == "unlocked"

    # the sealed key file gone, the key still in the kernel: readable, and said so
    state.sealed_path("b").rename(device.work / "b.sealed")
    rc, vaults = _states(device)
    assert rc == 3 and vaults["b"]["state"] == "unlocked" and not vaults["b"]["matches"]
    assert vaults["b"]["reasons"][0].startswith("no sealed key on disk")
    (device.work / "b.sealed").rename(state.sealed_path("b"))

    # a plaintext directory where the vault belongs, then an empty one
    a.rename(a.with_name("a.moved"))
    a.mkdir()
    (a / "clear.txt").write_text("in the clear")
    rc, vaults = _states(device)
    assert rc == 3 and vaults["a"]["state"] == "plaintext"
    assert "a non-empty plaintext directory is where the vault belongs" in vaults["a"]["reasons"]
    (a / "clear.txt").unlink()
    rc, vaults = _states(device)
    assert rc == 3 and vaults["a"]["state"] == "not-encrypted"

    # the vault path on a filesystem without fscrypt (tmpfs mounted over it)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(a)], check=True)
    try:
        (a / "clear.txt").write_text("in the clear")
        rc, vaults = _states(device)
        assert rc == 3 and vaults["a"]["state"] == "plaintext"
    finally:
        subprocess.run(["umount", str(a)], check=True)


def _vaultpolicy(*args: str):
    return subprocess.run([sys.executable, "-m", "vaultpolicy", *args], capture_output=True, text=True, cwd=REPO)


def test_bad_state_dir_and_trust_file_are_named_not_internal_errors(device):
    regular = device.work / "not-a-dir"
    regular.write_text("x")
    for command in ("status", "unlock", "lock", "gate", "rotate"):
        result = _vaultpolicy("device", command, *(["app"] if command == "gate" else []), "--state-dir", str(regular))
        assert result.returncode == 1, (command, result.stderr)
        assert f"--state-dir {regular}: not a directory" in result.stderr and "internal" not in result.stderr

    absent = device.work / "no-state"
    for command in ("status", "unlock", "lock", "rotate"):
        result = _vaultpolicy("device", command, "--state-dir", str(absent))
        assert result.returncode == 1 and "no plan has been applied" in result.stderr, (command, result.stderr)
        assert not absent.exists(), f"{command} created the state dir"
    absent.mkdir()
    for command in ("status", "unlock", "gate", "rotate"):
        result = _vaultpolicy("device", command, *(["app"] if command == "gate" else []), "--state-dir", str(absent))
        assert result.returncode == 1 and "no plan has been applied" in result.stderr, (command, result.stderr)

    policy = device.work / "some.vpol"
    policy.write_text('vault config { path "/persist/vault/config" }\n')
    result = device.cli("device", "apply", str(device.sign(make_plan([vault("config")]))), "--trust", str(policy))
    assert result.returncode == 1 and "internal" not in result.stderr
    assert f"--trust {policy}: not a trust root envelope or a PEM public key" in result.stderr

    garbage = device.work / "garbage.signed"
    garbage.write_text("not an envelope")
    result = device.cli("device", "apply", str(garbage), "--trust", str(device.trust))
    assert result.returncode == 1 and f"plan {garbage} refused (malformed-envelope" in result.stderr


def test_a_refused_plan_alone_is_signalled_clearly(device):
    assert device.apply(make_plan([vault("config")], version=2)).returncode == 0
    assert device.apply(make_plan([vault("config")], version=1)).returncode == 1  # rollback
    status = device.cli("device", "status")
    assert status.returncode == 3
    assert status.stdout.splitlines()[0] == \
        "plan version 2: every vault matches it; the last plan offered was REFUSED and this one stays in force"
    assert "last plan refused (rollback" in status.stdout and "vault config: unlocked, matches" in status.stdout


def tree_digests(root) -> dict[str, str]:
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(directory, name), root) + "/"] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_migration_that_passes_a_byte_count_but_does_not_fit_is_refused_before_anything_moves(device):
    """S21: 190 KB in 1900 small files is far under an 8 MiB limit, but each file takes a 4 KiB block
    and an inode: the vault's filesystem, made and measured first, cannot hold them. Refused with
    nothing changed: no image, no key, the plaintext where it was (the check used to count bytes only,
    so the plaintext was staged and an empty vault made before the copy ran out of space)."""
    target = device.path("/persist/vault/config")
    (target / "many").mkdir(parents=True)
    for index in range(1900):
        (target / "many" / f"{index:05}").write_bytes(b"%05d" % index * 20)
    (target / "top.txt").write_text("top")
    expected = tree_digests(target)
    assert sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(target) for f in fs) < 0.9 * (8 << 20)

    result = device.apply(make_plan([vault("config", limit=8 << 20)]))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "vault config: stage-plaintext FAILED" in result.stdout and "nothing was moved" in result.stdout
    assert "inodes free on the vault's own 8MiB filesystem" in result.stdout
    assert tree_digests(target) == expected and fscrypt.get_policy(str(target)) is None
    state = StateDir(device.state)
    assert not state.image_path("config").exists() and state.sealed("config") is None
    assert not target.with_name(".config.vp-plaintext").exists() and mounts_under(target) == []
    rc, vaults = _states(device)
    assert rc == 3 and vaults["config"]["state"] == "plaintext"

    grown = device.apply(make_plan([vault("config", limit=32 << 20)], version=2))
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert tree_digests(target) == expected


def test_migration_failing_halfway_keeps_the_original_and_cleans_up(device):
    """S21: a copy that fails after some files are in (here a file the vault already holds that even
    root cannot replace) removes what it copied and leaves the staged plaintext intact; the next run,
    once the obstacle is gone, migrates everything."""
    target = device.path("/persist/vault/config")
    (target / "many").mkdir(parents=True)
    for index in range(50):
        (target / "many" / f"{index:03}").write_bytes(b"%03d" % index * 100)
    (target / "top.txt").write_text("top")
    expected = tree_digests(target)
    plan = make_plan([vault("config", limit=8 << 20)])
    # stop the apply as the migration starts, the vault made; crash points: stage-plaintext, its image made,
    # create-storage, create-key, its key sealed and not saved, set-policy, the cipher probe inside it, migrate
    killed = device.apply(plan, env={"VAULTPOLICY_CRASH_AT": "8"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    staging = target.with_name(".config.vp-plaintext")
    assert tree_digests(staging) == expected and os.listdir(target) == []
    (target / "top.txt").write_text("an app wrote this")
    subprocess.run(["chattr", "+i", str(target / "top.txt")], check=True)
    try:
        result = device.apply(plan)
    finally:
        subprocess.run(["chattr", "-i", str(target / "top.txt")], check=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "vault config: migrate FAILED" in result.stdout and "top.txt" in result.stdout
    assert tree_digests(staging) == expected
    assert os.listdir(target) == ["top.txt"], "a partial copy was left"
    rc, vaults = _states(device)
    assert rc == 3 and "plaintext files wait to move into the vault" in vaults["config"]["reasons"]

    (target / "top.txt").unlink()
    again = device.apply(plan)
    assert again.returncode == 0, again.stdout + again.stderr
    assert tree_digests(target) == expected and not staging.exists()


def test_reboot_without_lock_drops_keys_and_unlock_restores_them(device):
    """S8: power loss — nothing runs `device lock`; every mount goes (the persist partition too, which
    drops every key from the kernel) and the TPM restarts. Status says locked; unlock restores."""
    assert device.apply(make_plan([vault("config", limit=8 << 20), vault("img")])).returncode == 0
    for name in ("config", "img"):
        (device.path(f"/persist/vault/{name}") / "f").write_text(name)
    for mountpoint in mounts_under(device.root, device.state):
        subprocess.run(["umount", mountpoint], check=True)
    device.swtpm.restart()
    device.swtpm.measure_boot()
    blockdev.mount_image(device.work / "persist.img", device.path("/persist"))

    rc, vaults = _states(device)
    assert rc == 3 and {n: v["state"] for n, v in vaults.items()} == {"config": "locked", "img": "locked"}
    assert "the vault's image is not mounted" in vaults["config"]["reasons"]
    assert "the key is not in the kernel" in vaults["img"]["reasons"]
    unlocked = device.cli("device", "unlock", "--json")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert {r["vault"]: r["outcome"] for r in json.loads(unlocked.stdout)["unlock"]} == \
        {"config": "unlocked", "img": "unlocked"}
    for name in ("config", "img"):
        assert (device.path(f"/persist/vault/{name}") / "f").read_text() == name
    assert device.cli("device", "status").returncode == 0


def test_a_bad_sealed_blob_or_a_refusing_tpm_destroys_nothing(device):
    """S20: an apply that cannot unseal never wipes or re-keys the vault; the data waits, intact."""
    from enforcer.tpm import Tpm

    plan = make_plan([vault("config"), vault("img", limit=8 << 20)])
    assert device.apply(plan).returncode == 0
    paths = {name: device.path(f"/persist/vault/{name}") for name in ("config", "img")}
    for name, path in paths.items():
        (path / "data.bin").write_bytes(name.encode() * 1000)
    assert device.cli("device", "lock").returncode == 0
    state = StateDir(device.state)
    original = {name: state.sealed_path(name).read_bytes() for name in paths}
    encrypted_names = {name: sorted(os.listdir(path)) for name, path in paths.items()}
    identifiers = {name: fscrypt.get_policy(str(path)).key_identifier for name, path in paths.items()}

    def nothing_destroyed(expected_sealed: dict[str, bytes]) -> None:
        device.cli("device", "lock")  # the apply may have unlocked the vault it could (as it should)
        for name, path in paths.items():
            assert state.sealed_path(name).read_bytes() == expected_sealed[name], f"{name}: sealed key replaced"
            assert fscrypt.get_policy(str(path)).key_identifier == identifiers[name], f"{name}: re-keyed"
            assert sorted(os.listdir(path)) == encrypted_names[name], f"{name}: files changed"

    broken = dict(sealed := json.loads(original["config"]))
    broken["blob"] = dict(sealed["blob"], private=sealed["blob"]["private"][::-1])
    for garbage in (b"", b'{"blob": {}, "key_identifier": "00"}', json.dumps(broken).encode()):
        state.sealed_path("config").write_bytes(garbage)
        result = device.apply(plan)
        assert result.returncode == 1 and "Traceback" not in result.stderr, (garbage[:20], result.stderr)
        assert "config" in result.stdout + result.stderr
        nothing_destroyed({"config": garbage, "img": state.sealed_path("img").read_bytes()})
    state.sealed_path("config").write_bytes(original["config"])

    with Tpm(device.tcti) as tpm:  # the TPM refuses to unseal: a sealed PCR moved
        tpm.extend_pcr(7, "sha256", b"another boot loader")
    refused = device.apply(plan)
    assert refused.returncode == 1 and "PCR" in refused.stdout, refused.stdout + refused.stderr
    nothing_destroyed(original)

    device.swtpm.restart()
    device.swtpm.measure_boot()
    assert device.cli("device", "unlock").returncode == 0
    for name, path in paths.items():
        assert (path / "data.bin").read_bytes() == name.encode() * 1000


def test_lock_reports_failed_when_the_key_cannot_be_reached(device):
    """S7 `failed`: a filesystem mounted over the vault path hides the vault's filesystem from lock;
    it says so instead of claiming success, and locks once the path is back."""
    assert device.apply(make_plan([vault("img")])).returncode == 0
    path = device.path("/persist/vault/img")
    identifier = bytes.fromhex(StateDir(device.state).sealed("img")["key_identifier"])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True)
    try:
        result = device.cli("device", "lock", "--json")
    finally:
        subprocess.run(["umount", str(path)], check=True)
    assert result.returncode == 1
    (record,) = json.loads(result.stdout)["lock"]
    assert record["outcome"] == "failed" and record["reason"] == "lock-failed" and record["message"]
    persist = str(device.path("/persist"))
    assert fscrypt.key_status(persist, identifier) is fscrypt.KeyStatus.PRESENT  # honestly not locked
    assert device.cli("device", "lock").returncode == 0
    assert fscrypt.key_status(persist, identifier) is fscrypt.KeyStatus.ABSENT


def _power_loss(device) -> None:
    """Every mount gone (the persist partition too, which drops every key from the kernel), the TPM
    restarted, then the persist partition mounted again as a boot would."""
    for mountpoint in mounts_under(device.root, device.state):
        subprocess.run(["umount", mountpoint], check=True)
    device.swtpm.restart()
    device.swtpm.measure_boot()
    blockdev.mount_image(device.work / "persist.img", device.path("/persist"))


@pytest.mark.parametrize("case", ["keys-in-kernel", "after-reboot", "image-unbound"])
def test_a_lost_sealed_key_is_key_lost_for_every_storage_kind_and_its_escrow_blob_is_kept(device, case):
    """S20: the sealed key file of a plain vault and of one with its own image deleted (then a reboot,
    or the image's bind mount at the vault path taken away): apply makes no new key for either, keeps
    the escrow blob (the only way left to recover the data), and says key-lost. The image vault after
    a reboot used to get a new key and its escrow blob overwritten: unmounted, its directory showed no
    policy."""
    from enforcer import escrow

    controller = escrow.generate_escrow_key()
    plan = make_plan([vault("plain"), vault("img", limit=8 << 20)], escrow_public_key=escrow.escrow_public_text(controller))
    assert device.apply(plan).returncode == 0
    state = StateDir(device.state)
    blobs = {name: (device.state / "escrow" / f"{name}.json").read_bytes() for name in ("plain", "img")}
    identifiers = {name: state.sealed(name)["key_identifier"] for name in ("plain", "img")}
    for name in ("plain", "img"):
        (device.path(f"/persist/vault/{name}") / "data").write_text(f"only the escrowed key opens {name}")
        state.sealed_path(name).unlink()
    if case == "after-reboot":
        _power_loss(device)
    elif case == "image-unbound":
        subprocess.run(["umount", str(device.path("/persist/vault/img"))], check=True)

    for _ in range(2):  # and again: nothing changes on a second try either
        result = device.apply(plan, "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        out = json.loads(result.stdout)
        assert out["steps"] == [] and out["failed"] == [], out
        assert {(p["vault"], p["reason"]) for p in out["problems"]} == {("plain", "key-lost"), ("img", "key-lost")}
        for name in ("plain", "img"):
            assert (device.state / "escrow" / f"{name}.json").read_bytes() == blobs[name], f"{name}: escrow blob replaced"
            assert state.sealed(name) is None
    assert fscrypt.get_policy(str(device.path("/persist/vault/plain"))).key_identifier.hex() == identifiers["plain"]
    assert state.image_path("img").exists()
    rc, vaults = _states(device)
    assert rc == 3 and all("no sealed key is recorded for it" in " ".join(vaults[n]["reasons"]) for n in ("plain", "img"))

    # the escrowed key still opens the data: the controller releases it and the device unlocks with it
    blob = escrow.EscrowBlob.from_bytes(blobs["plain"])
    key = escrow.unwrap_key(controller, blob)
    assert fscrypt.key_identifier(key).hex() == identifiers["plain"]


def test_a_wrong_key_for_one_vault_never_locks_another(device):
    """Vault a's sealed blob replaced by vault b's (same filesystem): unlocking a unseals b's key, which
    is not a's. It is refused before the key reaches the kernel, so b, whose key that is, stays as it
    was, unlocked or locked, and the outcomes say what the kernel says (unlocking a used to add b's
    key a second time and then remove it: b was locked, and reported already unlocked)."""
    persist = str(device.path("/persist"))
    assert device.apply(make_plan([vault("a"), vault("b")])).returncode == 0
    state = StateDir(device.state)
    key_a, key_b = (bytes.fromhex(state.sealed(n)["key_identifier"]) for n in ("a", "b"))
    swapped = dict(state.sealed("a"), blob=state.sealed("b")["blob"])
    state.sealed_path("a").write_text(json.dumps(swapped))

    def unlock() -> dict[str, dict]:
        result = device.cli("device", "unlock", "--json")
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
        return {r["vault"]: r for r in json.loads(result.stdout)["unlock"]}

    fscrypt.remove_key(persist, key_a, all_users=True)  # a locked, b unlocked
    outcomes = unlock()
    assert outcomes["a"]["outcome"] == "locked" and "it was not added to the kernel" in outcomes["a"]["message"]
    assert outcomes["b"]["outcome"] == "already-unlocked"
    assert fscrypt.key_status(persist, key_b) is fscrypt.KeyStatus.PRESENT
    assert fscrypt.key_status(persist, key_a) is fscrypt.KeyStatus.ABSENT

    assert device.cli("device", "lock").returncode == 0  # both locked: b unlocks with its own blob only
    outcomes = unlock()
    assert outcomes["a"]["outcome"] == "locked" and outcomes["b"]["outcome"] == "unlocked"
    assert fscrypt.key_status(persist, key_b) is fscrypt.KeyStatus.PRESENT
    assert fscrypt.key_status(persist, key_a) is fscrypt.KeyStatus.ABSENT

    applied = device.apply(make_plan([vault("a"), vault("b")]))  # apply's unlock step alike
    assert applied.returncode == 1 and "vault a: unlock FAILED" in applied.stdout, applied.stdout + applied.stderr
    assert fscrypt.key_status(persist, key_b) is fscrypt.KeyStatus.PRESENT
    assert (device.path("/persist/vault/b") / "f").write_text("b is still open") and state.sealed("b") is not None


def test_status_names_a_vault_whose_sealed_key_the_tpm_no_longer_loads(device):
    """S6: a sealed blob whose private part is damaged still matches the plan's PCRs and policy digest,
    so status said the device matched and the next unlock failed. Status loads each blob under the
    storage primary (and flushes it; nothing is unsealed) and exits 3 naming the vault and why."""
    import base64

    from enforcer.tpm import Tpm

    assert device.apply(make_plan([vault("a"), vault("b", limit=8 << 20)])).returncode == 0
    state = StateDir(device.state)
    sealed = state.sealed("a")
    private = bytearray(base64.b64decode(sealed["blob"]["private"]))
    private[len(private) // 2] ^= 0x01  # inside the encrypted sensitive area: the TPM's integrity check fails
    sealed["blob"]["private"] = base64.b64encode(bytes(private)).decode()
    state.sealed_path("a").write_text(json.dumps(sealed))
    with Tpm(device.tcti) as tpm:
        before = tpm.loaded_handles()

    result = device.cli("device", "status")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "vault a: unlocked, DRIFT" in result.stdout and "the TPM does not load the sealed key" in result.stdout
    assert "unlocking the vault will fail" in result.stdout and "vault b: unlocked, matches" in result.stdout
    rc, vaults = _states(device)
    assert rc == 3 and not vaults["a"]["matches"] and vaults["b"]["matches"]
    with Tpm(device.tcti) as tpm:
        assert tpm.loaded_handles() == before  # the loaded blobs were flushed
    assert device.cli("device", "lock").returncode == 0
    assert device.cli("device", "unlock").returncode == 1  # what status foretold
