"""Writing the outputs a user names: atomic for regular files, and never replacing what is not one."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from compiler.files import write_output
from vaultpolicy.errors import InputError


def test_a_fifo_is_written_to_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_output(fifo, b"plan bytes")
    reader.join(timeout=10)
    assert received == [b"plan bytes"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # a rename over it would have made it a regular file


def test_a_symlink_is_written_through_to_its_target(tmp_path):
    target = tmp_path / "real.json"
    target.write_bytes(b"old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_output(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"


def test_a_directory_is_refused_by_name(tmp_path):
    with pytest.raises(InputError, match=f"cannot write `{tmp_path}`: is a directory"):
        write_output(tmp_path, b"x")


def test_a_regular_file_is_replaced_whole_with_the_mode_asked(tmp_path):
    out = tmp_path / "key"
    out.write_bytes(b"previous contents, longer than the new ones")
    write_output(out, b"k", mode=0o600)
    assert out.read_bytes() == b"k" and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temporary file left beside it
