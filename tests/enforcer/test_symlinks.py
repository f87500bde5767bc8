"""Symlinks an app writes into its vault are counted as what they are: links, never what they point to."""

from __future__ import annotations

import os

from enforcer.apply import CopyNeeds, copy_needs


def test_the_space_a_copy_needs_counts_links_to_directories(tmp_path):
    """os.walk lists a link to a directory with the directories: it was counted as neither an inode nor,
    when too long to sit in its inode, a block."""
    (tmp_path / "top").mkdir()
    os.symlink(tmp_path / ("far-" * 20), tmp_path / "top" / "to-dir")  # a target too long for the inode
    (tmp_path / ("far-" * 20)).mkdir()
    assert copy_needs(tmp_path / "top", encrypted=False) == CopyNeeds(bytes=2 * 4096, inodes=2)
