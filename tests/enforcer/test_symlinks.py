"""Symlinks in vaults and on the way to them are never followed, on real fscrypt + swtpm through the CLI.

The enforcer runs as root. An app can write a symlink into its vault: migration, rotation and
re-encryption followed a link to a directory and gave the link's owner and mode 0777 to a directory
outside the vault; they copy links as links and leave what they point to alone. Whoever can write on
the way to a vault can put a symlink there: destroy followed it and deleted a directory no plan named;
it is refused (`unsafe-path`) and destroys nothing until the symlink is gone."""

from __future__ import annotations

import errno
import os

import pytest

from enforcer.apply import CopyNeeds, copy_needs
from vp_helpers import NOW, fill, make_plan, tree, vault

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


def symlinked_vault(device, link: str):
    """Apply a plan with the vault `tmp` (`on_remove destroy`) at /persist/d/tmp, then put a symlink to
    /persist/other, which holds a `tmp` of its own, where `link` says: the vault's directory moves aside.
    (the plan that drops `tmp`, /persist/other, where the vault's directory went, the link)"""
    kept = vault("config")
    assert device.apply(make_plan([kept, vault("tmp", on_remove="destroy", path="/persist/d/tmp")])).returncode == 0
    path = device.path("/persist/d/tmp")
    (path / "f").write_text("the vault's own")
    other = device.path("/persist/other")
    (other / "tmp").mkdir(parents=True)
    (other / "tmp" / "data").write_text("no plan names this")
    linked = path.parent if link == "a directory on the way" else path
    moved = linked.with_name(f"{linked.name}-moved")
    linked.rename(moved)
    linked.symlink_to(other if linked == path.parent else other / "tmp")
    return make_plan([kept], version=2), other, moved, linked


@pytest.mark.device
@pytest.mark.parametrize("link", ["a directory on the way", "the vault path"])
def test_destroy_through_a_symlink_is_refused_until_the_symlink_is_gone(device, link):
    """Reproduced: with /persist/d a symlink to /persist/other, applying a plan that destroys the vault at
    /persist/d/tmp exited 0 and deleted /persist/other/tmp, while the vault's own directory stayed."""
    from enforcer.state import StateDir

    removed, other, moved, linked = symlinked_vault(device, link)
    state = StateDir(device.state)
    # a migration's copied plaintext not yet erased: it was erased through the link before the refusal
    erasing = device.path("/persist/d/.tmp.vp-erase")
    erasing.mkdir()
    (erasing / "plain").write_text("copied in")
    sealed, before = state.sealed("tmp"), tree(other)

    refused = device.apply(removed)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"vault tmp: not changed (unsafe-path, VP1101): `{device.path('/persist/d/tmp')}` is a" in refused.stdout
    assert "vault tmp: destroy" not in refused.stdout
    assert tree(other) == before and (erasing / "plain").read_text() == "copied in"
    assert state.sealed("tmp") == sealed and "tmp" in state.records()  # not even its key is erased
    vault_files = moved / "f" if link == "the vault path" else moved / "tmp" / "f"
    assert vault_files.read_text() == "the vault's own"

    linked.unlink()  # the vault's directory back at its path: the next apply destroys it, and only it
    moved.rename(linked)
    again = device.apply(removed)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "vault tmp: destroy" in again.stdout
    assert not device.path("/persist/d/tmp").exists()
    assert state.sealed("tmp") is None and "tmp" not in state.records()
    assert tree(other) == before
    if link == "the vault path":  # the erase was beside the vault, in a real directory: done with the destroy
        assert not erasing.exists()


@pytest.mark.device
def test_the_destroy_step_checks_the_path_again_where_the_data_dies(device):
    """Reconcile looked before the steps ran: a symlink put on the way since is refused by the step."""
    from enforcer.apply import Applier
    from enforcer.reconcile import Action, Step
    from enforcer.state import StateDir
    from enforcer.tpm import Tpm

    removed, other, _, _ = symlinked_vault(device, "a directory on the way")
    state = StateDir(device.state)
    sealed, before = state.sealed("tmp"), tree(other)
    with Tpm(device.tcti) as tpm:
        outcome = Applier(removed, state, device.root, tpm, NOW).run([Step(Action.DESTROY, "tmp", "left the plan")])
    error = outcome["tmp"].error
    assert error.reason == "unsafe-path", error.message
    assert error.message.startswith(f"vault `tmp`: `{device.path('/persist/d/tmp')}` is a symlink-in-path")
    assert tree(other) == before
    assert state.sealed("tmp") == sealed and "tmp" in state.records()


def test_the_directory_a_destroy_removes_from_is_reached_without_following_a_symlink(tmp_path):
    """What the destroy removes is named relative to its parent's descriptor, opened one component at a
    time: a symlink on the way, even one put there after the path was checked, is never followed."""
    from enforcer.observe import open_parent

    (tmp_path / "real" / "vault").mkdir(parents=True)
    (tmp_path / "elsewhere" / "vault").mkdir(parents=True)
    fd = open_parent(tmp_path, tmp_path / "real" / "vault")
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "real"))
    finally:
        os.close(fd)
    (tmp_path / "real").rename(tmp_path / "moved")
    (tmp_path / "real").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError) as refused:
        os.close(open_parent(tmp_path, tmp_path / "real" / "vault"))
    assert refused.value.errno in (errno.ENOTDIR, errno.ELOOP)  # O_DIRECTORY is checked before O_NOFOLLOW
