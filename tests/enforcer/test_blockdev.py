"""enforcer.blockdev: per-vault ext4 images that make the kernel enforce a storage limit."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from enforcer import blockdev, fscrypt, quota

MiB = 2**20


def _loop_devices_of(image: Path) -> str:
    return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=True).stdout


def _fill(path: Path, chunk: bytes = b"\xa5" * MiB) -> int:
    """Write to `path` until the kernel says ENOSPC; return the bytes written."""
    written = 0
    with pytest.raises(OSError) as raised:
        with open(path, "wb") as handle:
            while True:
                handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
                written += len(chunk)
    assert raised.value.errno == errno.ENOSPC
    return written


def _allocated(image: Path) -> int:
    return image.stat().st_blocks * 512


@pytest.fixture
def vault(needs_device, tmp_path):
    """A 16 MiB vault image under a state dir, attached at a vault path; detached afterwards."""
    image, mountpoint = tmp_path / "state" / "images" / "data.img", tmp_path / "root" / "vault" / "data"
    blockdev.attach_image(image, mountpoint, 16 * MiB)
    try:
        yield image, mountpoint
    finally:
        if blockdev.is_mounted(mountpoint):
            blockdev.detach(mountpoint)
    assert _loop_devices_of(image) == "", "detach frees the loop device"


def test_project_quotas_are_asked_of_the_kernel_per_filesystem(needs_device, tmp_path):
    """`quota.enforced` says yes exactly where the kernel mounts a `-O quota,project` image with
    `prjquota` (this host's kernel has no quota support: there it says no, and vaults get images), and
    no for an image without quotas; it mounts nothing itself."""
    image, mountpoint = tmp_path / "q.img", tmp_path / "q"
    mountpoint.mkdir()
    blockdev.make_image(image, 16 * MiB, features="encrypt,quota,project")
    mounted = subprocess.run(["mount", "-o", "loop,prjquota", str(image), str(mountpoint)],
                             capture_output=True).returncode == 0
    try:
        assert quota.enforced(mountpoint) is mounted
        assert quota.enforced(tmp_path) is False or mounted
    finally:
        if mounted:
            blockdev.detach(mountpoint)
    plain = blockdev.make_image(tmp_path / "plain.img", 16 * MiB)
    (tmp_path / "p").mkdir()
    blockdev.mount_image(plain, tmp_path / "p")
    try:
        assert quota.enforced(tmp_path / "p") is False
    finally:
        blockdev.detach(tmp_path / "p")
    assert _loop_devices_of(image) == ""


def test_attach_makes_an_encryptable_vault_and_is_idempotent(vault):
    image, mountpoint = vault
    assert blockdev.is_mounted(mountpoint)
    assert blockdev.backing_image(mountpoint) == image.resolve()
    assert os.listdir(mountpoint) == []
    # the vault path itself takes an fscrypt policy (it is not the image's root directory)
    identifier = fscrypt.add_key(str(mountpoint), os.urandom(64))
    fscrypt.set_policy(str(mountpoint), identifier)
    (mountpoint / "kept").write_text("data")

    blockdev.attach_image(image, mountpoint, 16 * MiB)
    assert (mountpoint / "kept").read_text() == "data"
    assert _loop_devices_of(image).count("\n") == 1, "attaching again adds no loop device"


def test_an_image_is_allocated_in_full_and_again_after_a_discard(vault):
    """A sparse image takes blocks from the state filesystem only as the vault is written: a full state
    filesystem then fails writes under the limit and loses data (see test_storage_faults.py)."""
    image, mountpoint = vault
    assert _allocated(image) >= image.stat().st_size
    (mountpoint / "gone").write_bytes(os.urandom(4 * MiB))
    os.sync()
    (mountpoint / "gone").unlink()
    os.sync()
    assert blockdev.discard_free(mountpoint)  # a loop device punches the freed blocks out of the image file
    assert _allocated(image) >= image.stat().st_size


def test_writing_past_the_limit_fails_with_enospc(vault):
    _, mountpoint = vault
    identifier = fscrypt.add_key(str(mountpoint), os.urandom(64))
    fscrypt.set_policy(str(mountpoint), identifier)
    written = _fill(mountpoint / "big")
    used, limit = blockdev.usage(mountpoint)
    assert written <= limit <= 16 * MiB
    assert used >= limit - MiB, "the filesystem is full when the write fails"


@pytest.mark.parametrize("limit_mib", [8, 20, 160])
def test_a_vault_image_holds_close_to_its_limit_and_not_more(needs_device, tmp_path, limit_mib):
    """An encrypted vault takes at least 90% of its limit in file data (an 8 MiB limit held 3.5 MiB with
    mkfs's defaults: a 4 MiB journal, 6% inode tables); writing on past the limit fails with ENOSPC.
    160 MiB is past `JOURNAL_FROM_BYTES`: that image has a journal, of 4 MiB."""
    limit = limit_mib * MiB
    image, mountpoint = tmp_path / "images" / "v.img", tmp_path / "vault"
    blockdev.attach_image(image, mountpoint, limit)
    try:
        identifier = fscrypt.add_key(str(mountpoint), os.urandom(64))
        fscrypt.set_policy(str(mountpoint), identifier)
        written = 0
        with pytest.raises(OSError) as raised:
            with open(mountpoint / "fill", "wb") as handle:
                while True:
                    written += handle.write(b"\x5a" * (64 << 10))
                    handle.flush()  # the kernel reserves the blocks as each write lands: ENOSPC comes here
        assert raised.value.errno == errno.ENOSPC
        os.sync()
        assert 0.9 * limit <= written <= limit, f"{written / MiB:.1f} MiB of a {limit_mib} MiB limit"
        assert (limit >= blockdev.JOURNAL_FROM_BYTES) == ("has_journal" in subprocess.run(
            ["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True).stdout)
    finally:
        blockdev.detach(mountpoint)


def test_image_size_leaves_out_a_last_group_mkfs_would_drop(needs_device, tmp_path):
    """The filesystem is exactly as large as its image file, so its superblock says whether a resize
    finished; a limit a little past a 128 MiB block group boundary gives the boundary."""
    for limit_mib, expected_mib in ((8, 8), (129, 128), (150, 150), (257, 256)):
        assert blockdev.image_bytes_for(limit_mib * MiB) == expected_mib * MiB
    image = blockdev.make_image(tmp_path / "g.img", 129 * MiB)
    assert image.stat().st_size == blockdev.superblock(image).size_bytes == 128 * MiB


def test_raising_the_limit_keeps_encrypted_data_and_allows_more(vault):
    image, mountpoint = vault
    key = bytearray(os.urandom(64))
    identifier = fscrypt.add_key(str(mountpoint), key)
    fscrypt.set_policy(str(mountpoint), identifier)
    first = _fill(mountpoint / "first")
    content = (mountpoint / "first").read_bytes()
    _, old_limit = blockdev.usage(mountpoint)

    with open(mountpoint / "first", "rb") as still_open:
        if blockdev.can_resize_online():
            assert blockdev.attach_image(image, mountpoint, 48 * MiB) is False
            assert still_open.read(MiB) == content[:MiB]
        else:  # offline resize needs the vault idle and refuses before changing anything
            with pytest.raises(blockdev.MountpointBusy):
                blockdev.attach_image(image, mountpoint, 48 * MiB)
            assert image.stat().st_size == 16 * MiB and blockdev.is_mounted(mountpoint)
    remounted = blockdev.attach_image(image, mountpoint, 48 * MiB)
    assert remounted is not blockdev.can_resize_online()
    if remounted:
        assert fscrypt.key_status(str(mountpoint), identifier) is fscrypt.KeyStatus.ABSENT
        fscrypt.add_key(str(mountpoint), key)

    assert image.stat().st_size == 48 * MiB
    assert _allocated(image) >= 48 * MiB, "a grown image is allocated too"
    _, new_limit = blockdev.usage(mountpoint)
    assert new_limit >= old_limit + 30 * MiB
    (mountpoint / "second").write_bytes(b"\x5a" * (16 * MiB))
    assert (mountpoint / "first").read_bytes() == content and len(content) >= first
    assert fscrypt.get_policy(str(mountpoint / "second")).key_identifier == identifier


def test_lowering_the_limit_is_refused(vault):
    image, mountpoint = vault
    (mountpoint / "data").write_bytes(os.urandom(8 * MiB))
    os.sync()
    with pytest.raises(blockdev.LimitBelowUsage, match="below what the vault holds"):
        blockdev.grow(image, mountpoint, 4 * MiB)
    with pytest.raises(blockdev.ShrinkUnsupported, match="not supported"):
        blockdev.grow(image, mountpoint, 15 * MiB)
    assert image.stat().st_size == 16 * MiB


def test_detach_and_reattach_keep_an_encrypted_vault_locked(vault):
    image, mountpoint = vault
    key = bytearray(os.urandom(64))
    identifier = fscrypt.add_key(str(mountpoint), key)
    fscrypt.set_policy(str(mountpoint), identifier)
    (mountpoint / "note.txt").write_text("survives")
    with open(mountpoint / "note.txt") as busy:
        with pytest.raises(blockdev.MountpointBusy):
            blockdev.detach(mountpoint)
        busy.read()
    blockdev.detach(mountpoint)
    assert not blockdev.is_mounted(mountpoint) and _loop_devices_of(image) == ""

    blockdev.attach_image(image, mountpoint, 16 * MiB)
    assert fscrypt.key_status(str(mountpoint), identifier) is fscrypt.KeyStatus.ABSENT, "unmount dropped the key"
    assert os.listdir(mountpoint) != ["note.txt"]
    fscrypt.add_key(str(mountpoint), key)
    assert (mountpoint / "note.txt").read_text() == "survives"


def test_attach_refuses_to_hide_files_or_mount_garbage(needs_device, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "plain.txt").write_text("must stay visible")
    with pytest.raises(blockdev.MountpointNotEmpty, match="not empty"):
        blockdev.attach_image(tmp_path / "a.img", occupied, 16 * MiB)
    assert (occupied / "plain.txt").read_text() == "must stay visible"
    assert not blockdev.is_mounted(occupied)

    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(b"\0" * MiB)
    with pytest.raises(blockdev.BlockdevError, match="not an ext4 filesystem"):
        blockdev.attach_image(garbage, tmp_path / "g", 16 * MiB)
    assert garbage.read_bytes() == b"\0" * MiB, "a file that is not ours is left untouched"

    with pytest.raises(blockdev.BlockdevError, match="at least 8 MiB"):
        blockdev.attach_image(tmp_path / "tiny.img", tmp_path / "t", MiB)
    assert not (tmp_path / "tiny.img").exists()


def test_is_mounted_handles_escaped_paths(needs_device, tmp_path):
    spaced = tmp_path / "with space"
    blockdev.attach_image(tmp_path / "s p.img", spaced, 16 * MiB)
    try:
        assert blockdev.is_mounted(spaced)
        assert blockdev.backing_image(spaced) == (tmp_path / "s p.img").resolve()
    finally:
        blockdev.detach(spaced)
    assert not blockdev.is_mounted(spaced)


def test_a_detached_image_grows_before_it_is_mounted(vault):
    image, mountpoint = vault
    (mountpoint / "kept").write_bytes(b"k" * MiB)
    blockdev.detach(mountpoint)
    assert blockdev.attach_image(image, mountpoint, 32 * MiB) is False, "nothing mounted was remounted"
    assert image.stat().st_size == 32 * MiB and blockdev.usage(mountpoint)[1] > 24 * MiB
    assert (mountpoint / "kept").read_bytes() == b"k" * MiB
