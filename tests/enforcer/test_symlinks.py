"""Symlinks in vaults are never followed, on real fscrypt + swtpm through the CLI.

An app can write a symlink into its vault, and the enforcer runs as root: migration, rotation and
re-encryption followed a link to a directory and gave the link's owner and mode 0777 to a directory
outside the vault. They copy links as links and leave what they point to alone."""

from __future__ import annotations

import os

import pytest

from enforcer.apply import CopyNeeds, copy_needs
from vp_helpers import fill, make_plan, tree, vault

MiB = 1 << 20
APP = (4242, 4242)  # the uid and gid of an app that writes into its vault
LONG_AGO = 1_100_000_000_000_000_000
LINKED_AT = 1_300_000_000_000_000_000  # the links' own mtime: a copy that followed them gave it to their targets


def test_the_space_a_copy_needs_counts_links_to_directories(tmp_path):
    """os.walk lists a link to a directory with the directories: it was counted as neither an inode nor,
    when too long to sit in its inode, a block."""
    (tmp_path / "top").mkdir()
    os.symlink(tmp_path / ("far-" * 20), tmp_path / "top" / "to-dir")  # a target too long for the inode
    (tmp_path / ("far-" * 20)).mkdir()
    assert copy_needs(tmp_path / "top", encrypted=False) == CopyNeeds(bytes=2 * 4096, inodes=2)


@pytest.fixture
def outside(device):
    """A root-only directory (with a file in it) and a root-only file, outside every vault."""
    base = device.root / "outside"
    (base / "dir").mkdir(parents=True)
    (base / "dir" / "kept").write_bytes(b"root's own")
    (base / "file").write_bytes(b"root's own")
    os.chmod(base / "dir", 0o700)
    os.chmod(base / "file", 0o600)
    for path in (base / "dir" / "kept", base / "dir", base / "file"):
        os.utime(path, ns=(LONG_AGO, LONG_AGO))
    return base


def plant_links(directory, outside) -> None:
    """What an app can write into its vault: its own links to a directory and to a file outside it, at
    the top (os.walk lists a link to a directory with the directories) and one level down."""
    (directory / "sub").mkdir(exist_ok=True)
    for link, target in ((directory / "to-dir", outside / "dir"), (directory / "sub" / "to-dir", outside / "dir"),
                         (directory / "sub" / "to-file", outside / "file")):
        os.symlink(target, link)
        os.lchown(link, *APP)
        os.utime(link, ns=(LINKED_AT, LINKED_AT), follow_symlinks=False)


def assert_links_copied_and_targets_untouched(device, names, expected: dict, outside, before_outside: dict) -> None:
    assert tree(outside) == before_outside  # owner, mode and mtime of the targets and what is in them
    for name in names:
        path = device.path(f"/persist/vault/{name}")
        assert tree(path) == expected[name], name  # every link still a link, to the same target, with its owner
        assert os.readlink(path / "to-dir") == str(outside / "dir")


@pytest.mark.device
@pytest.mark.parametrize("limit", [16 * MiB, 0], ids=["own-image", "plain"])
def test_migration_copies_links_as_links_and_leaves_their_targets_alone(device, outside, limit):
    """Reproduced: a 0700 root directory outside became 0777 and owned by the app after the migration."""
    target = device.path("/persist/vault/config")
    target.mkdir(parents=True)
    fill(target)
    plant_links(target, outside)
    os.chown(target, *APP)
    expected, before_outside = {"config": tree(target)}, tree(outside)

    result = device.apply(make_plan([vault("config", limit=limit)]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "migrate" in result.stdout
    assert_links_copied_and_targets_untouched(device, ["config"], expected, outside, before_outside)


@pytest.mark.device
def test_rotation_copies_links_as_links_and_leaves_their_targets_alone(device, outside):
    names = ("config", "logs")  # one vault with its own image, one plain directory
    assert device.apply(make_plan([vault("config", limit=16 * MiB), vault("logs")])).returncode == 0
    for name in names:
        fill(device.path(f"/persist/vault/{name}"))
        plant_links(device.path(f"/persist/vault/{name}"), outside)
    expected = {name: tree(device.path(f"/persist/vault/{name}")) for name in names}
    before_outside = tree(outside)

    result = device.cli("device", "rotate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_links_copied_and_targets_untouched(device, names, expected, outside, before_outside)


@pytest.mark.device
def test_re_encryption_copies_links_as_links_and_leaves_their_targets_alone(device, outside):
    names = ("config", "logs")

    def plan(encryption: str, version: int):
        return make_plan([vault("config", limit=16 * MiB, encryption=encryption),
                          vault("logs", encryption=encryption)], version=version)

    assert device.apply(plan("none", 1)).returncode == 0
    for name in names:
        fill(device.path(f"/persist/vault/{name}"))
        plant_links(device.path(f"/persist/vault/{name}"), outside)
    expected = {name: tree(device.path(f"/persist/vault/{name}")) for name in names}
    before_outside = tree(outside)

    result = device.apply(plan("aes-256-xts", 2))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("re-encrypt (") == 2, result.stdout
    assert_links_copied_and_targets_untouched(device, names, expected, outside, before_outside)
