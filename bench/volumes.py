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
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

EBS_BLOCK = 512 * 1024
MIB = 1024 * 1024
TIMEOUT_S = 600


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

    def attach(self, cleanup: contextlib.ExitStack) -> None:
        """Makes, formats and mounts the volume; `cleanup` unmounts and detaches it."""
        with self.image.open("wb") as file:
            file.truncate(self.size_mib * MIB)
        # lazy_*_init=0: no background zeroing of inode tables and journal after the mount,
        # which would change blocks between the two images that no run wrote.
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0",
              str(self.image)])
        self.device = _run(["losetup", "-f", "--show", str(self.image)]).strip()
        cleanup.callback(subprocess.run, ["losetup", "-d", self.device], capture_output=True,
                         timeout=60, check=False)
        self.mount.mkdir(parents=True, exist_ok=True)
        _run(["mount", "-o", "nodev,nosuid,noexec,noatime", self.device, str(self.mount)])
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
    changed = 0
    with before.open("rb") as old, after.open("rb") as new:
        while True:
            a, b = old.read(block), new.read(block)
            if not a and not b:
                return changed
            if a.ljust(block, b"\0") != b.ljust(block, b"\0"):
                changed += block
