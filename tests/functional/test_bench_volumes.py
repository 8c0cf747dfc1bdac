"""bench/volumes' attribution of changed blocks, on ext4 images made by the real mkfs.ext4 and
written by the real debugfs (an image file: no loop device, no mount, no root needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.volumes import (
    EBS_BLOCK,
    FS_BLOCK,
    GROUP_METADATA,
    JOURNAL,
    MKFS,
    SUPERBLOCK,
    UNOWNED,
    attribute,
    block_owners,
    changed_fs_blocks,
    ext4_metadata,
)

pytestmark = pytest.mark.skipif(not (shutil.which("mkfs.ext4") and shutil.which("debugfs")),
                                reason="needs e2fsprogs (mkfs.ext4, debugfs)")


def _image(path: Path, blocks: list[int], size: int = 4 * EBS_BLOCK) -> None:
    data = bytearray(size)
    for number in blocks:
        data[number * FS_BLOCK] = 1
    path.write_bytes(bytes(data))


def test_changed_fs_blocks_are_the_4k_blocks_whose_bytes_differ(tmp_path: Path) -> None:
    _image(tmp_path / "before", [1])
    _image(tmp_path / "after", [1, 3, 200])
    assert changed_fs_blocks(tmp_path / "before", tmp_path / "after") == [3, 200]
    assert changed_fs_blocks(tmp_path / "before", tmp_path / "before") == []


def test_a_longer_image_counts_its_new_blocks_against_zeros(tmp_path: Path) -> None:
    _image(tmp_path / "before", [], size=EBS_BLOCK)
    _image(tmp_path / "after", [130], size=2 * EBS_BLOCK)
    assert changed_fs_blocks(tmp_path / "before", tmp_path / "after") == [130]


def test_attribute_counts_512k_blocks_per_class_and_alone() -> None:
    per_ebs = EBS_BLOCK // FS_BLOCK  # 128
    changed = [0, 1, 2, per_ebs, per_ebs + 1, 2 * per_ebs]
    classes = {0: JOURNAL, 1: JOURNAL, 2: "data", per_ebs: "data", per_ebs + 1: "data"}
    assert attribute(changed, classes) == {
        "data": (3, 2, 1),  # 3 changed 4 KiB blocks, in 2 EBS blocks, alone in 1 of them
        JOURNAL: (2, 1, 0),
        UNOWNED: (1, 1, 1),
    }


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def test_a_written_file_and_the_file_systems_own_blocks_are_told_apart(tmp_path: Path) -> None:
    before, after, payload = tmp_path / "before.img", tmp_path / "after.img", tmp_path / "p"
    _run([*MKFS, "-b", str(FS_BLOCK), str(before), "64M"])
    shutil.copyfile(before, after)
    payload.write_bytes(bytes(range(256)) * 64)  # 16 KiB, 4 blocks
    _run(["debugfs", "-w", "-R", f"write {payload} data.bin", str(after)])

    metadata = ext4_metadata(after)
    assert JOURNAL in metadata.values() and GROUP_METADATA in metadata.values()
    assert metadata[0] == SUPERBLOCK
    changed = changed_fs_blocks(before, after)
    owners = block_owners(after, [b for b in changed if b not in metadata])
    data_blocks = [b for b, path in owners.items() if path == "/data.bin"]
    assert len(data_blocks) == 4
    counts = attribute(changed, {**metadata, **owners})
    assert counts["/data.bin"][0] == 4
    # the new inode and the allocation: an inode table block, the bitmaps
    assert counts[GROUP_METADATA][0] >= 2
