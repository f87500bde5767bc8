"""enforcer.fscrypt against the kernel: a loop-mounted ext4 image made with `-O encrypt`."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
from pathlib import Path

import pytest

from enforcer import blockdev, fscrypt
from enforcer.fscrypt import KeyStatus


def _new_key() -> bytearray:
    return bytearray(os.urandom(fscrypt.RAW_KEY_SIZE))


def _vault(mountpoint: str, name: str = "vault", contents: str = "aes-256-xts") -> tuple[Path, bytes]:
    identifier = fscrypt.add_key(mountpoint, _new_key())
    directory = Path(mountpoint, name)
    directory.mkdir()
    fscrypt.set_policy(str(directory), identifier, contents)
    return directory, identifier


def test_add_key_returns_the_kernel_identifier_and_is_present(ext4_image):
    key = _new_key()
    identifier = fscrypt.add_key(ext4_image, key)
    assert len(identifier) == fscrypt.KEY_IDENTIFIER_SIZE
    assert fscrypt.key_status(ext4_image, identifier) is KeyStatus.PRESENT
    # the identifier is derived from the key: the same key gives the same one, another key another
    assert fscrypt.add_key(ext4_image, bytes(key)) == identifier
    assert fscrypt.add_key(ext4_image, _new_key()) != identifier
    assert key != bytearray(fscrypt.RAW_KEY_SIZE), "the caller's buffer is the caller's to wipe"


def test_key_identifier_is_the_one_the_kernel_derives_without_adding_the_key(ext4_image):
    for _ in range(8):
        key = _new_key()
        identifier = fscrypt.key_identifier(key)
        assert fscrypt.key_status(ext4_image, identifier) is KeyStatus.ABSENT  # computing it added nothing
        assert fscrypt.add_key(ext4_image, key) == identifier


def test_unknown_identifier_is_absent(ext4_image):
    assert fscrypt.key_status(ext4_image, os.urandom(16)) is KeyStatus.ABSENT


def test_policy_round_trip_and_inheritance(ext4_image):
    directory, identifier = _vault(ext4_image)
    expected = fscrypt.EncryptionPolicy(2, "aes-256-xts", "aes-256-cts", fscrypt.POLICY_FLAG_PAD_32, identifier)
    assert fscrypt.get_policy(str(directory)) == expected
    (directory / "sub").mkdir()
    (directory / "sub" / "file").write_text("data")
    assert fscrypt.get_policy(str(directory / "sub")) == expected
    assert fscrypt.get_policy(str(directory / "sub" / "file")) == expected
    assert fscrypt.get_policy(ext4_image) is None
    # setting the identical policy again is accepted (idempotent apply)
    fscrypt.set_policy(str(directory), identifier)


def test_adiantum_uses_direct_key(ext4_image):
    directory, identifier = _vault(ext4_image, contents="adiantum")
    policy = fscrypt.get_policy(str(directory))
    assert (policy.contents_mode, policy.filenames_mode) == ("adiantum", "adiantum")
    assert policy.flags == fscrypt.POLICY_FLAG_PAD_32 | fscrypt.POLICY_FLAG_DIRECT_KEY
    try:
        (directory / "f").write_bytes(b"x" * 10000)
    except OSError as exc:  # a kernel built without the Adiantum cipher refuses new files this way
        assert exc.errno == errno.ENOPKG
    else:
        assert (directory / "f").read_bytes() == b"x" * 10000


def test_locked_vault_shows_encrypted_names_and_refuses_reads(ext4_image):
    key = _new_key()
    identifier = fscrypt.add_key(ext4_image, key)
    directory = Path(ext4_image, "vault")
    directory.mkdir()
    fscrypt.set_policy(str(directory), identifier)
    (directory / "secret.txt").write_text("the plaintext")
    os.sync()

    result = fscrypt.remove_key(ext4_image, identifier)
    assert result == fscrypt.RemovalResult(files_busy=False, other_users=False)
    assert fscrypt.key_status(ext4_image, identifier) is KeyStatus.ABSENT
    names = os.listdir(directory)
    assert len(names) == 1 and names[0] != "secret.txt"
    with pytest.raises(OSError) as raised:
        (directory / names[0]).read_bytes()
    assert raised.value.errno == errno.ENOKEY
    # the policy stays readable while locked: status can report it without the key
    assert fscrypt.get_policy(str(directory)).key_identifier == identifier

    assert fscrypt.add_key(ext4_image, key) == identifier
    assert os.listdir(directory) == ["secret.txt"]
    assert (directory / "secret.txt").read_text() == "the plaintext"


def test_open_file_leaves_key_incompletely_removed(ext4_image):
    directory, identifier = _vault(ext4_image)
    with open(directory / "busy", "w") as handle:
        handle.write("open")
        handle.flush()
        result = fscrypt.remove_key(ext4_image, identifier)
        assert result.files_busy
        assert fscrypt.key_status(ext4_image, identifier) is KeyStatus.INCOMPLETELY_REMOVED
    # once closed, removing again finishes the job
    assert not fscrypt.remove_key(ext4_image, identifier).files_busy
    assert fscrypt.key_status(ext4_image, identifier) is KeyStatus.ABSENT


def test_set_policy_errors_are_specific(ext4_image):
    identifier = fscrypt.add_key(ext4_image, _new_key())
    full = Path(ext4_image, "full")
    full.mkdir()
    (full / "plain.txt").write_text("plaintext")
    with pytest.raises(fscrypt.DirectoryNotEmpty, match="not empty"):
        fscrypt.set_policy(str(full), identifier)

    directory, _ = _vault(ext4_image)
    with pytest.raises(fscrypt.PolicyConflict, match="different encryption policy"):
        fscrypt.set_policy(str(directory), identifier)

    empty = Path(ext4_image, "empty")
    empty.mkdir()
    with pytest.raises(fscrypt.KeyRequired, match="not in the filesystem keyring"):
        fscrypt.set_policy(str(empty), os.urandom(16))
    assert fscrypt.get_policy(str(empty)) is None, "a refused policy leaves the directory untouched"

    with pytest.raises(ValueError, match="unknown contents mode"):
        fscrypt.set_policy(str(empty), identifier, "rot13")
    with pytest.raises(ValueError, match="64 bytes"):
        fscrypt.add_key(ext4_image, b"short")


def test_filesystem_without_encrypt_feature_is_unsupported(needs_device, tmp_path):
    image, mountpoint = tmp_path / "plain.img", tmp_path / "mnt"
    blockdev.make_image(image, 16 * 2**20, features="^encrypt")
    mountpoint.mkdir()
    blockdev.mount_image(image, mountpoint)
    try:
        with pytest.raises(fscrypt.FscryptUnsupported) as raised:
            fscrypt.add_key(str(mountpoint), _new_key())
        assert "mkfs.ext4 -O encrypt" in raised.value.hint
        assert isinstance(raised.value, fscrypt.BackendUnavailable)
    finally:
        blockdev.detach(mountpoint)


def test_v1_policy_is_reported_not_managed(ext4_image):
    legacy = Path(ext4_image, "legacy")
    legacy.mkdir()
    fd = os.open(legacy, os.O_RDONLY | os.O_DIRECTORY)
    try:  # a v1 policy (version byte 0) as old tools set it; root may set it without the key
        fcntl.ioctl(fd, fscrypt.FS_IOC_SET_ENCRYPTION_POLICY, struct.pack("4B8s", 0, 1, 4, 3, b"v1legacy"))
    finally:
        os.close(fd)
    with pytest.raises(fscrypt.UnsupportedPolicyVersion, match="v1"):
        fscrypt.get_policy(str(legacy))


def test_mountpoint_of(ext4_image):
    nested = Path(ext4_image, "a", "b")
    nested.mkdir(parents=True)
    assert fscrypt.mountpoint_of(str(nested)) == os.path.realpath(ext4_image)
    assert fscrypt.mountpoint_of("/") == "/"


def test_mountpoint_of_sees_bind_mounts_within_one_filesystem(ext4_image):
    source, target = Path(ext4_image, "source"), Path(ext4_image, "target")
    source.mkdir()
    target.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        assert fscrypt.mountpoint_of(str(target / ".")) == str(target)
    finally:
        blockdev.detach(target)
