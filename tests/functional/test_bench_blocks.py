"""bench/blocks' naming of a changed file block: what the file is, on a directory tree made
here (the bench itself needs root, sshd and loop devices: it is run by hand, see
bench/README.md)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.blocks import VARIANTS, file_class, report


def test_a_block_is_named_by_its_file_age_and_place_in_the_repository(tmp_path: Path) -> None:
    for rel in ("d/old", "d/new", "d/inc", "d/meta", "d/gocryptfs.diriv"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    before = {"d/old": os.lstat(tmp_path / "d/old").st_ino, "d/new": -1}
    plaintext = {"d/old": "src/a", "d/new": "src/b",
                 "d/inc": "src/rdiff-backup-data/increments/a.2026-12-07.diff.gz",
                 "d/meta": "src/rdiff-backup-data/mirror_metadata.2026-12-07.snapshot.gz"}
    assert file_class("d", tmp_path, before, plaintext) == "directories"
    assert file_class("d/old", tmp_path, before, plaintext) == (
        "file rewritten in place: the data set's mirror")
    assert file_class("d/new", tmp_path, before, plaintext) == "new file: the data set's mirror"
    assert file_class("d/inc", tmp_path, before, plaintext) == (
        "new file: rdiff-backup increments")
    assert file_class("d/meta", tmp_path, before, plaintext) == "new file: rdiff-backup metadata"
    assert file_class("d/gocryptfs.diriv", tmp_path, before, plaintext) == (
        "new file: gocryptfs.diriv (new directories)")
    assert file_class("d/old", tmp_path, before, {}) == "file rewritten in place: the data set"
    assert file_class("gone", tmp_path, before, plaintext) == "deleted since: gone"


def test_the_report_shows_each_volume_against_plain_rsyncs_bytes() -> None:
    classes = {"ext4 journal": (10, 2, 2)}
    result = {"sent": {"encrypted": 3_000_000, "plain": 2_097_152},
              "volumes": {"encrypted": {"changed_bytes": 8 * 512 * 1024,
                                        "fs_blocks_changed": 10, "classes": classes},
                          "plain": {"changed_bytes": 4 * 512 * 1024, "fs_blocks_changed": 10,
                                    "classes": classes},
                          "xfs": {"changed_bytes": 2 * 512 * 1024}}}
    text = report(result)
    assert "xfs" in VARIANTS
    assert "4,194,304" in text and "2.00" in text  # 8 blocks, twice plain rsync's bytes
    assert "ext4 journal" in text
