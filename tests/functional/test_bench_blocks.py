"""bench/blocks: its naming of a changed file block, on a directory tree made here, and a run
on a data set of 3 MB (root, sshd, loop devices: serialised with the e2e tests)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.blocks import VARIANTS, file_class, measure, report
from bench.volumes import EBS_BLOCK, JOURNAL

from .bench_rig import assert_left_nothing, real_tools


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


@real_tools
def test_a_run_names_the_changed_blocks_and_leaves_nothing() -> None:
    result = measure(3.0, ["ext4 no journal"])
    volumes = result["volumes"]
    today, unjournaled = volumes["encrypted"]["classes"], volumes["ext4 no journal"]["classes"]
    # the change's edits and appends land in files the volume already had
    assert today["file rewritten in place: the data set's mirror"][0] > 0
    assert today["new file: rdiff-backup increments"][0] > 0
    assert JOURNAL in today and JOURNAL not in unjournaled
    assert "file rewritten in place: the data set" in volumes["plain"]["classes"]
    for figures in volumes.values():  # every changed 4 KiB block is in exactly one class
        classes, blocks = figures["classes"].values(), figures["changed_bytes"] // EBS_BLOCK
        assert sum(kind[0] for kind in classes) == figures["fs_blocks_changed"] > 0
        assert sum(kind[2] for kind in classes) <= blocks <= sum(kind[1] for kind in classes)
    assert_left_nothing(Path(result["work"]), "offsite-bench-blocks-", result["sshd_pid"],
                        result["account"])
