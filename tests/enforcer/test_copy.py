"""What the copy of a vault's files carries over, on real fscrypt + swtpm through the CLI. Migration (into a
vault with its own image and into a plain one), rotation and re-encryption all copy with `apply.copy_tree`,
so each case is carried all four ways; what a copy cannot carry is refused before anything changes."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from enforcer import fscrypt
from enforcer.apply import copy_needs, copy_tree
from enforcer.state import StateDir
from vp_helpers import make_plan, tree, vault

pytestmark = pytest.mark.device

MiB = 1 << 20
ANYONE = 0xFFFFFFFF  # the qualifier of an ACL entry that names no user or group


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL as the kernel stores it in `system.posix_acl_*`: (tag, permissions, user or group id)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


# user::rw- user:1234:r-- group::r-- mask::rw- other::r--, and a directory's default ACL with user:1234:rwx
FILE_ACL = acl((0x01, 6, ANYONE), (0x02, 4, 1234), (0x04, 4, ANYONE), (0x10, 6, ANYONE), (0x20, 4, ANYONE))
DEFAULT_ACL = acl((0x01, 7, ANYONE), (0x02, 7, 1234), (0x04, 5, ANYONE), (0x10, 7, ANYONE), (0x20, 5, ANYONE))
CAP_NET_RAW = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)  # `setcap cap_net_raw+ep`, revision 2
WAYS = ["migrate-own-image", "migrate-plain", "rotate", "re-encrypt"]


def carry(device, way: str, make):
    """Have `make(directory)` put files where the vault `v` is, then carry them `way`: migrate the plaintext
    directory into the vault, rotate the vault's key, or re-encrypt it from `encryption none`; the
    command's result. A way ending in `-plain` is a vault without a limit, on the persist filesystem; the
    others have their own 16 MiB image."""
    path = device.path("/persist/vault/v")
    limit = 0 if way.endswith("-plain") else 16 * MiB
    if way.startswith("migrate"):
        path.mkdir(parents=True)
        make(path)
        return device.apply(make_plan([vault("v", limit=limit)]))
    made = device.apply(make_plan([vault("v", limit=limit, encryption="none" if way.startswith("re-encrypt")
                                         else "aes-256-xts")]))
    assert made.returncode == 0, made.stdout + made.stderr
    make(path)
    os.sync()
    if way.startswith("rotate"):
        return device.cli("device", "rotate")
    return device.apply(make_plan([vault("v", limit=limit)], version=2))


def carried(device, result) -> os.PathLike:
    """The vault's path, once `result` says its files were carried into the encrypted vault."""
    assert result.returncode == 0, result.stdout + result.stderr
    path = device.path("/persist/vault/v")
    assert fscrypt.get_policy(str(path)) is not None
    assert not [name for name in os.listdir(path.parent) if ".vp-" in name], "scratch left beside the vault"
    return path


def refused(device, way: str, result, *said: str) -> None:
    """`result` failed for the vault `v` saying each of `said`, and changed nothing: the vault's key,
    encryption and scratch are as before the command (the caller checks the files)."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for text in said:
        assert text in result.stdout, result.stdout
    path = device.path("/persist/vault/v")
    policy = fscrypt.get_policy(str(path))
    if way.startswith("migrate"):
        assert policy is None and StateDir(device.state).sealed("v") is None
        assert not StateDir(device.state).image_path("v").exists(), "the image made to measure the vault is left"
    elif way.startswith("rotate"):
        assert policy.key_identifier.hex() == StateDir(device.state).sealed("v")["key_identifier"]
    else:
        assert policy is None and StateDir(device.state).records()["v"].encryption == "none"
    assert not [name for name in os.listdir(path.parent) if ".vp-" in name], "scratch left beside the vault"
    rotating = device.state / "rotating"
    assert not rotating.exists() or not list(rotating.iterdir()), "a pending rotation is left"


def digest(path) -> str:
    with open(path, "rb") as data:
        return hashlib.file_digest(data, "sha256").hexdigest()


def data_of(path) -> list[tuple[int, bytes]]:
    """Where a file holds data and what: its holes, which read as zeros, are all the rest."""
    found = []
    with open(path, "rb") as file:
        offset, size = 0, os.fstat(file.fileno()).st_size
        while offset < size:
            try:
                start = os.lseek(file.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            offset = os.lseek(file.fileno(), start, os.SEEK_HOLE)
            found.append((start, os.pread(file.fileno(), offset - start, start)))
    return found


def attributes(root) -> dict[str, dict[str, bytes]]:
    """The extended attributes of every entry under `root`, the top included, links not followed."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for path in [directory] * (directory == str(root)) + [os.path.join(directory, n) for n in dirs + files]:
            found[os.path.relpath(path, root)] = {name: os.getxattr(path, name, follow_symlinks=False)
                                                  for name in os.listxattr(path, follow_symlinks=False)}
    return found


def inodes(root) -> list[list[str]]:
    """The names under `root` grouped by the file they are (hard links share a group)."""
    groups: dict[int, list[str]] = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            groups.setdefault(os.lstat(path).st_ino, []).append(os.path.relpath(path, root))
    return sorted(sorted(names) for names in groups.values())


@pytest.mark.parametrize("way", WAYS)
def test_names_modes_and_times_are_carried_exactly(device, way):
    """What every copy already carried, kept so: a name of 255 bytes (the most an encrypted name may
    have), a name that is not UTF-8, an empty directory, setuid, setgid and sticky bits, times to the
    nanosecond, each directory's mtime set after its entries are in."""
    long_name, latin1_name = "n" * 255, os.fsdecode(b"caf\xe9.txt")

    def named(path):
        (path / long_name).write_bytes(b"long")
        (path / latin1_name).write_bytes(b"latin-1")
        (path / "empty").mkdir()
        (path / "setuid").write_bytes(b"#!/bin/sh")
        os.chown(path / "setuid", 1234, 4321)
        os.chmod(path / "setuid", 0o4755)
        (path / "shared").mkdir()
        os.chown(path / "shared", 0, 4321)
        os.chmod(path / "shared", 0o2775)
        (path / "shared" / "tmp").mkdir()
        os.chmod(path / "shared" / "tmp", 0o1777)
        for entry, mtime in (("empty", 1_111_111_111_000_000_001), (latin1_name, 1_234_567_891_987_654_321),
                             ("shared", 1_300_000_000_000_000_007), (".", 1_400_000_000_000_000_009)):
            os.utime(path / entry, ns=(mtime, mtime))
        expected.update(tree=tree(path), top=os.stat(path))

    expected = {}
    path = carried(device, carry(device, way, named))
    assert tree(path) == expected["tree"]
    top = os.stat(path)
    assert (top.st_mode, top.st_mtime_ns) == (expected["top"].st_mode, expected["top"].st_mtime_ns)


@pytest.mark.parametrize("way", WAYS)
def test_hard_links_stay_one_file_and_are_counted_once(device, way):
    """Three names of one 6 MiB file became three files, 18 MiB: a 16 MiB vault refused them as too
    big (`needs 18.0 MiB`) though they fit, and where they were copied, writing through one name no
    longer changed what the others show."""
    data = os.urandom(6 * MiB)

    def linked(path):
        (path / "sub").mkdir()
        (path / "data").write_bytes(data)
        os.link(path / "data", path / "sub" / "same")
        os.link(path / "data", path / "also")
        (path / "alone").write_bytes(b"one name")

    path = carried(device, carry(device, way, linked))
    assert inodes(path) == [["alone"], ["also", "data", "sub/same"]]
    assert os.lstat(path / "data").st_nlink == 3 and (path / "sub" / "same").read_bytes() == data


@pytest.mark.parametrize("way", ["migrate-own-image", "migrate-plain", "re-encrypt-plain"])
def test_a_file_with_a_name_outside_the_directory_is_refused(device, way):
    """A migrated file with another name outside the directory left its plaintext readable there, and
    the vault held another file than that name showed. Now nothing changes until the other name is gone,
    and apply says what to do (its failed steps left out the hint of their error)."""
    outside = device.path("/persist/elsewhere")

    def linked_from_outside(path):
        outside.mkdir(exist_ok=True)
        (path / "shared").write_bytes(b"plaintext the vault should hold")
        os.link(path / "shared", outside / "shared")

    path = device.path("/persist/vault/v")
    refused(device, way, carry(device, way, linked_from_outside),
            f"`{path / 'shared'}` has 1 more name outside `", "its plaintext would stay readable there",
            "; remove the other names, or replace them with copies (`cp`), and run the command again")
    assert (path / "shared").read_bytes() == b"plaintext the vault should hold" and os.lstat(path / "shared").st_nlink == 2

    (outside / "shared").unlink()
    again = device.apply(make_plan([vault("v", limit=0 if way.endswith("-plain") else 16 * MiB)], version=3))
    assert carried(device, again) and (path / "shared").read_bytes() == b"plaintext the vault should hold"


@pytest.mark.parametrize("way", WAYS)
def test_a_sparse_file_stays_sparse(device, way):
    """A 1 GiB file holding 12 KiB of data was copied byte for byte, holes as zeros: the space check
    refused it (`needs 1024.0 MiB`) for a vault of 16 MiB and for the 64 MiB persist partition alike,
    and a vault big enough would have filled 1 GiB with encrypted zeros."""

    def sparse(path):
        with open(path / "disk.img", "wb") as file:
            for offset in (0, 512 * MiB, (1 << 30) - 4096):
                file.seek(offset)
                file.write(os.urandom(4096))
        (path / "dense").write_bytes(os.urandom(MiB))
        os.sync()
        expected.update(disk=data_of(path / "disk.img"), dense=digest(path / "dense"))

    expected = {}
    path = carried(device, carry(device, way, sparse))
    copy = os.stat(path / "disk.img")
    assert copy.st_size == 1 << 30 and copy.st_blocks * 512 < MiB, copy
    assert data_of(path / "disk.img") == expected["disk"] and digest(path / "dense") == expected["dense"]


@pytest.mark.parametrize("way", WAYS)
def test_extended_attributes_acls_and_file_capabilities_are_carried(device, way):
    """Every extended attribute was dropped: a file's `user.*` attributes and POSIX ACLs, a directory's
    default ACL, a program's file capabilities (`ping` lost cap_net_raw), a link's `trusted.*`."""

    def attributed(path):
        (path / "notes.txt").write_bytes(b"notes")
        os.setxattr(path / "notes.txt", "user.origin", b"scanner 7")
        os.setxattr(path / "notes.txt", "system.posix_acl_access", FILE_ACL)
        (path / "shared").mkdir()
        os.setxattr(path / "shared", "system.posix_acl_default", DEFAULT_ACL)
        os.setxattr(path / "shared", "user.origin", b"a directory")
        (path / "ping").write_bytes(b"\x7fELF")
        os.chmod(path / "ping", 0o755)
        os.setxattr(path / "ping", "security.capability", CAP_NET_RAW)
        os.symlink("notes.txt", path / "link")
        os.setxattr(path / "link", "trusted.origin", b"the link's own", follow_symlinks=False)
        os.setxattr(path, "user.origin", b"the top")
        expected.update(attributes=attributes(path), tree=tree(path))

    expected = {}
    path = carried(device, carry(device, way, attributed))
    assert attributes(path) == expected["attributes"] and tree(path) == expected["tree"]
    assert stat.S_IMODE(os.stat(path / "notes.txt").st_mode) == 0o664  # the mode's group bits are the ACL's mask


@pytest.mark.parametrize("values", ["distinct", "shared"])
def test_the_space_check_counts_the_blocks_of_extended_attributes(ext4_image, values):
    """An encrypted inode keeps its encryption context in its spare room, so a 1 KiB attribute takes a
    block of its own (ext4 shares one among inodes with identical attributes): 200 one-byte files with
    distinct attributes take 400 blocks where the check counted 200. What the copy takes is measured
    once the source is gone, as after a migration: until then ext4 shares its blocks of attributes."""
    mount = Path(ext4_image)
    source, vault_directory = mount / "source", mount / "vault"
    vault_directory.mkdir()
    fscrypt.set_policy(str(vault_directory), fscrypt.add_key(ext4_image, bytearray(os.urandom(64))), "aes-256-xts")
    os.sync()
    free = os.statvfs(mount).f_bfree
    source.mkdir()
    shared = os.urandom(1000)
    for index in range(200):
        (source / f"{index:03}").write_bytes(b"1")
        os.setxattr(source / f"{index:03}", "user.tag", os.urandom(1000) if values == "distinct" else shared)
    expected, needs = attributes(source), copy_needs(source, encrypted=True)
    copy_tree(source, vault_directory, [], "v")
    shutil.rmtree(source)
    os.sync()
    used = (free - os.statvfs(mount).f_bfree) * 4096
    assert attributes(vault_directory) == expected
    assert used <= needs.bytes <= used + 8 * 4096, (used, needs)


@pytest.mark.parametrize("way", WAYS)
def test_fifos_and_sockets_are_carried(device, way):
    """A FIFO or a socket refused the whole migration, rotation or re-encryption, for good: an app's
    named pipe or a socket it left behind kept its vault unencrypted until someone deleted it."""

    def special(path):
        (path / "run").mkdir()
        os.mkfifo(path / "run" / "queue", 0o620)
        os.mknod(path / "run" / "control.sock", 0o600 | stat.S_IFSOCK)  # what bind() leaves behind
        os.chown(path / "run" / "queue", 1234, 4321)
        os.utime(path / "run" / "control.sock", ns=(1_300_000_000_123_456_789,) * 2)
        expected.update(tree(path))

    expected = {}
    path = carried(device, carry(device, way, special))
    assert tree(path) == expected
    assert stat.S_ISFIFO(os.lstat(path / "run" / "queue").st_mode)
    assert stat.S_ISSOCK(os.lstat(path / "run" / "control.sock").st_mode)


@pytest.mark.parametrize("way", WAYS)
def test_a_device_node_is_refused_before_anything_moves(device, way):
    """What is written through a device node goes to the device, never encrypted: it has no place in a
    vault, and the refusal says so (it said only `neither a file, a directory nor a symlink`)."""

    def with_a_device(path):
        (path / "kept").write_bytes(b"kept")
        os.mknod(path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        expected.update(tree(path))

    expected = {}
    result = carry(device, way, with_a_device)
    path = device.path("/persist/vault/v")
    refused(device, way, result, f"`{path}/null` is a character device: a vault holds no device nodes (what is "
            "written through one goes to the device, never encrypted); nothing was changed; move it out of the "
            "directory and run the command again")
    assert tree(path) == expected


@pytest.fixture
def unfreeze(device):
    """Clears every immutable and append-only flag under the device after the test: pytest removes it."""
    yield
    for top in (device.root, device.state):
        subprocess.run(["chattr", "-R", "-f", "-i", "-a", str(top)], capture_output=True)


@pytest.mark.parametrize("flag,what", [("+i", "data.db"), ("+a", "logs")], ids=["immutable-file", "append-only-dir"])
@pytest.mark.parametrize("way", WAYS)
def test_an_immutable_or_append_only_entry_is_refused_before_anything_moves(device, unfreeze, way, flag, what):
    """The copy dropped the flag and went on; then the original could not be removed: a migration left the
    plaintext in `.v.vp-erase` and failed at every apply after, a rotation stopped after its swap with an
    internal error, the old key still in the kernel. Now nothing changes until the flag is cleared."""

    def frozen(path):
        (path / "data.db").write_bytes(b"records")
        (path / "logs").mkdir()
        (path / "logs" / "1.log").write_bytes(b"line")
        subprocess.run(["chattr", flag, str(path / what)], check=True)
        expected.update(tree(path))

    expected = {}
    result = carry(device, way, frozen)
    path = device.path("/persist/vault/v")
    name = "immutable (chattr +i)" if flag == "+i" else "append-only (chattr +a)"
    refused(device, way, result, f"`{path / what}` is {name}: once copied, it could not be removed; nothing was "
            f"changed; clear the flag (`chattr -{flag[1]}`), run the command again, and set it again", )
    assert tree(path) == expected

    subprocess.run(["chattr", f"-{flag[1]}", str(path / what)], check=True)
    again = device.cli("device", "rotate") if way == "rotate" else device.apply(
        make_plan([vault("v", limit=0 if way.endswith("-plain") else 16 * MiB)], version=3))
    assert carried(device, again) and tree(path) == expected


def cli_in_this_process(device, capsys):
    """`device.cli` run by `cli.main` in this process, so a test can patch what the command calls."""
    from vaultpolicy import cli

    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        code = cli.main([*args, "--state-dir", str(device.state), "--root", str(device.root), "--tpm", device.tcti])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)
    return run


@pytest.mark.parametrize("change", ["a file appears", "a copied file grows"])
@pytest.mark.parametrize("way", ["migrate-own-image", "migrate-plain", "rotate-plain", "re-encrypt-plain"])
def test_a_change_during_the_copy_fails_it_and_loses_nothing(device, monkeypatch, capsys, way, change):
    """What an app wrote while the files were copied was lost: a file made after its directory was
    listed, or a write to a file already copied, was not in the copy, and the original was then erased
    (migration) or swapped out and removed (rotation and re-encryption of a vault without its own image,
    which apps can still reach). Now the copy fails, is removed, and the next run carries everything."""
    from enforcer import apply

    copy_file = apply._copy_file

    def an_app_writes_after_the_first_file(name, source_fd, *rest):
        copy_file(name, source_fd, *rest)
        monkeypatch.setattr(apply, "_copy_file", copy_file)
        written = os.open("late.txt" if change == "a file appears" else name, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                          0o600, dir_fd=source_fd)
        os.write(written, b"written during the copy")
        os.close(written)

    def files(path):
        (path / "a.txt").write_bytes(b"first")
        (path / "sub").mkdir()
        (path / "sub" / "b.txt").write_bytes(b"second")
        monkeypatch.setattr(apply, "_copy_file", an_app_writes_after_the_first_file)

    monkeypatch.setattr(device, "cli", cli_in_this_process(device, capsys))
    result = carry(device, way, files)
    path = device.path("/persist/vault/v")
    source = path.with_name(".v.vp-plaintext") if way.startswith("migrate") else path
    what = "late.txt` appeared" if change == "a file appears" else "a.txt` changed"
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"`{source}/{what} while the vault's files were copied" in result.stdout, result.stdout
    assert (source / ("late.txt" if change == "a file appears" else "a.txt")).read_bytes().endswith(
        b"written during the copy")
    if way.startswith("migrate"):
        assert os.listdir(path) == [], "the copy was left in the vault"
    else:
        assert not [name for name in os.listdir(path.parent) if ".vp-" in name], "the copy was left beside the vault"
        assert not list((device.state / "rotating").iterdir())
    expected = tree(source)

    again = device.apply(make_plan([vault("v", limit=0 if way.endswith("-plain") else 16 * MiB)], version=3)) \
        if not way.startswith("rotate") else device.cli("device", "rotate")
    assert tree(carried(device, again)) == expected
