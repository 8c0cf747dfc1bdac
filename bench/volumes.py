"""Archive volumes for the benches: an ext4 file system on a loop device over a sparse image
file, made as the archive instance makes a blank volume (chalicelib/instance/boot.sh:
`mkfs.ext4 -m 0`, mounted `noatime`), and what the next EBS snapshot of it would store.

EBS snapshots are incremental in 512 KiB blocks: "successive snapshots are incremental,
containing only the volume data that changed since the previous snapshot", and "A block index is
a logical index in units of 512 KiB blocks" (EBS User Guide, "Concepts for EBS direct APIs",
https://docs.aws.amazon.com/ebs/latest/userguide/ebsapi-elements.html). `changed_bytes` compares
a copy of the image taken before a run with the image after it, block by block: a block written
with the bytes it already held compares equal, so the figure is a lower bound of what EBS,
which tracks writes, would store.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

EBS_BLOCK = 512 * 1024
MIB = 1024 * 1024
TIMEOUT_S = 600
# As chalicelib/instance/boot.sh makes and mounts a blank archive volume, with the lazy
# initialisation off: no background zeroing of inode tables and journal after the mount,
# which would change blocks between the two images that no run wrote. 4 KiB blocks, as
# mke2fs gives any EBS volume (1 GiB and more), also to a small bench volume.
MKFS = ("mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", "-E",
        "lazy_itable_init=0,lazy_journal_init=0")
MOUNT_OPTIONS = "nodev,nosuid,noexec,noatime"


class VolumeError(Exception):
    pass


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise VolumeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return done.stdout


@dataclass
class LoopVolume:
    """`image` (sparse, `size_mib`) on a loop device, mounted at `mount`."""

    image: Path
    mount: Path
    size_mib: int
    device: str = ""
    mkfs: tuple[str, ...] = MKFS
    mount_options: str = MOUNT_OPTIONS

    def attach(self, cleanup: contextlib.ExitStack) -> None:
        """Makes, formats and mounts the volume; `cleanup` unmounts and detaches it."""
        with self.image.open("wb") as file:
            file.truncate(self.size_mib * MIB)
        _run([*self.mkfs, str(self.image)])
        self.device = _run(["losetup", "-f", "--show", str(self.image)]).strip()
        cleanup.callback(subprocess.run, ["losetup", "-d", self.device], capture_output=True,
                         timeout=60, check=False)
        self.mount.mkdir(parents=True, exist_ok=True)
        _run(["mount", "-o", self.mount_options, self.device, str(self.mount)])
        cleanup.callback(subprocess.run, ["umount", "-l", str(self.mount)], capture_output=True,
                         timeout=60, check=False)

    def copy_image(self, target: Path) -> None:
        """A copy of the image as the file system is now: written out and frozen meanwhile."""
        with self.frozen():
            _run(["cp", "--sparse=always", "--", str(self.image), str(target)])

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        os.sync()
        _run(["fsfreeze", "-f", str(self.mount)])
        try:
            yield
        finally:
            _run(["fsfreeze", "-u", str(self.mount)])

    def changed_bytes(self, before: Path) -> int:
        """The bytes of the 512 KiB blocks that differ between `before` and the image now."""
        with self.frozen():
            return changed_bytes(before, self.image)


def changed_bytes(before: Path, after: Path, block: int = EBS_BLOCK) -> int:
    """Bytes of the `block`-sized blocks whose content differs between two images (the
    shorter one read as if padded with zeros, as a grown volume's new blocks start)."""
    return block * sum(1 for _ in _changed_chunks(before, after, block))


def _changed_chunks(before: Path, after: Path, block: int) -> Iterator[tuple[int, bytes, bytes]]:
    """(index, old, new) of each `block`-sized chunk whose content differs, both padded to
    `block` with zeros."""
    with before.open("rb") as old, after.open("rb") as new:
        for index in itertools.count():
            a, b = old.read(block), new.read(block)
            if not a and not b:
                return
            a, b = a.ljust(block, b"\0"), b.ljust(block, b"\0")
            if a != b:
                yield index, a, b


# ---- what the changed blocks are (ext4 only) ------------------------------------------------

FS_BLOCK = 4096
JOURNAL, GROUP_METADATA, SUPERBLOCK, UNOWNED = (
    "ext4 journal", "ext4 bitmaps and inode tables", "ext4 superblocks and group descriptors",
    "no owner now (written, then freed)")


def changed_fs_blocks(before: Path, after: Path, block: int = FS_BLOCK) -> list[int]:
    """The numbers of the `block`-sized blocks whose content differs between two images."""
    per_chunk = EBS_BLOCK // block
    return [index * per_chunk + i // block
            for index, a, b in _changed_chunks(before, after, EBS_BLOCK)
            for i in range(0, EBS_BLOCK, block) if a[i:i + block] != b[i:i + block]]


_RANGE = r"(\d+)(?:-(\d+))?"
_METADATA = {SUPERBLOCK: (rf"superblock at {_RANGE}", rf"Group descriptors at {_RANGE}",
                          rf"Reserved GDT blocks at {_RANGE}"),
             GROUP_METADATA: (rf"Block bitmap at {_RANGE}", rf"Inode bitmap at {_RANGE}",
                              rf"Inode table at {_RANGE}")}


def ext4_metadata(image: Path) -> dict[int, str]:
    """Each block of the file system's own structures, by `dumpe2fs` and the journal's inode
    (8) by `debugfs`: its class."""
    owner: dict[int, str] = {}
    text = _run(["dumpe2fs", str(image)])
    if f"Block size:               {FS_BLOCK}\n" not in text:
        raise VolumeError(f"{image}: not an ext4 file system of {FS_BLOCK}-byte blocks")
    for kind, patterns in _METADATA.items():
        for pattern in patterns:
            for match in re.finditer(pattern, text):
                first = int(match.group(1))
                for number in range(first, int(match.group(2) or first) + 1):
                    owner[number] = kind
    for number in _numbers(_run(["debugfs", "-R", "blocks <8>", str(image)])):
        owner[number] = JOURNAL
    return owner


def _numbers(text: str) -> list[int]:
    return [int(word) for word in text.split() if word.isdigit()]


def block_owners(image: Path, blocks: list[int]) -> dict[int, str]:
    """Each of `blocks`' owning file, as a path from the file system's root (`debugfs`
    icheck, then ncheck); blocks no inode owns are left out."""
    inode_of: dict[int, int] = {}
    for start in range(0, len(blocks), 500):
        listing = _run(["debugfs", "-R", "icheck " + " ".join(map(str, blocks[start:start + 500])),
                        str(image)])
        for line in listing.splitlines()[1:]:
            words = line.split()
            if len(words) == 2 and words[1].isdigit():
                inode_of[int(words[0])] = int(words[1])
    inodes = sorted(set(inode_of.values()))
    path_of: dict[int, str] = {}
    for start in range(0, len(inodes), 500):
        some = " ".join(map(str, inodes[start:start + 500]))
        listing = _run(["debugfs", "-R", f"ncheck -c {some}", str(image)])
        for line in listing.splitlines()[1:]:
            number, _, path = line.partition("\t")
            if number.strip().isdigit():
                path_of.setdefault(int(number), "/" + path.strip().lstrip("/"))  # "//a" at the root
    return {block: path_of.get(inode, f"<{inode}>") for block, inode in inode_of.items()}


def attribute(changed: list[int], classify: dict[int, str]) -> dict[str, tuple[int, int, int]]:
    """Per class: (changed fs blocks, 512 KiB blocks it touches, 512 KiB blocks it alone
    touches). A 512 KiB block with blocks of several classes counts for each."""
    per_ebs: dict[int, set[str]] = {}
    counts: dict[str, int] = {}
    for number in changed:
        kind = classify.get(number, UNOWNED)
        counts[kind] = counts.get(kind, 0) + 1
        per_ebs.setdefault(number * FS_BLOCK // EBS_BLOCK, set()).add(kind)
    return {kind: (count, sum(kind in kinds for kinds in per_ebs.values()),
                   sum(kinds == {kind} for kinds in per_ebs.values()))
            for kind, count in sorted(counts.items(), key=lambda item: -item[1])}
