"""EBS on this machine, keyed by the AWS ids the moto server gave: a volume is a directory, a
snapshot a point-in-time copy of its volume's directory, and a volume made from a snapshot
starts as a copy of that snapshot's directory.

Every directory appears whole or not at all (copied beside it, then renamed), so a copy cut
off by the end of the stack is never taken for a finished one. Copies are made one at a time
(the app's CreateSnapshot, in an API or bus thread, and the fleet's step may ask for the same
one at once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

COPY_TIMEOUT = 600.0  # seconds


class EbsError(RuntimeError):
    pass


class LocalEbs:
    def __init__(self, root: Path) -> None:
        self.volumes = root / "volumes"
        self.snapshots = root / "snapshots"
        self._copying = threading.Lock()
        # A host's account reaches its volume through MOUNT_ROOT/<host>, a link to the volume's
        # directory: every directory above it must let the account through (0755); each
        # volume's own root is its account's alone (0700). Snapshots are read by root only.
        for directory, mode in ((root, 0o755), (self.volumes, 0o755), (self.snapshots, 0o700)):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(mode)

    def volume(self, volume_id: str) -> Path:
        return self.volumes / _checked(volume_id, "vol-")

    def snapshot(self, snapshot_id: str) -> Path:
        return self.snapshots / _checked(snapshot_id, "snap-")

    def volume_ids(self) -> set[str]:
        return {p.name for p in self.volumes.iterdir() if not p.name.startswith(".")}

    def snapshot_ids(self) -> set[str]:
        return {p.name for p in self.snapshots.iterdir() if not p.name.startswith(".")}

    def make_volume(self, volume_id: str, snapshot_id: str | None = None) -> Path:
        """The volume's directory: a copy of the snapshot's, or empty for a blank volume."""
        if snapshot_id is None:
            return self._make_once(self.volume(volume_id), None, "")
        return self._make_once(self.volume(volume_id), self.snapshot(snapshot_id),
                               f"{volume_id}: snapshot {snapshot_id} is not on this machine")

    def take_snapshot(self, snapshot_id: str, volume_id: str) -> Path:
        """The volume's content now. AWS: "The snapshot includes only the data that was
        written to the volume at the time the snapshot was requested"
        (https://docs.aws.amazon.com/ebs/latest/userguide/ebs-creating-snapshot.html)."""
        return self._make_once(self.snapshot(snapshot_id), self.volume(volume_id),
                               f"{snapshot_id}: volume {volume_id} is not on this machine")

    def _make_once(self, target: Path, source: Path | None, missing: str) -> Path:
        """`target`, made whole once: a copy of `source`, or empty when there is none."""
        with self._copying:
            if target.exists():
                return target
            if source is None:
                partial = _partial(target)
                partial.mkdir(mode=0o700)
                partial.rename(target)
                return target
            if not source.is_dir():
                raise EbsError(missing)
            return _copy(source, target)

    def delete_volume(self, volume_id: str) -> None:
        _remove(self.volume(volume_id))

    def delete_snapshot(self, snapshot_id: str) -> None:
        _remove(self.snapshot(snapshot_id))


def _checked(resource_id: str, prefix: str) -> str:
    """An id as a single path component: ids come from the moto server, but a path is built
    from them, so nothing but `<prefix><hex>` is taken."""
    rest = resource_id[len(prefix):]
    if not resource_id.startswith(prefix) or not rest.isalnum() or not rest.isascii():
        raise EbsError(f"not an id of the form {prefix}<hex>: {resource_id!r}")
    return resource_id


def _partial(target: Path) -> Path:
    partial = target.with_name(f".{target.name}.partial")
    _remove(partial)
    return partial


def _copy(source: Path, target: Path) -> Path:
    """`cp -a`: contents, owners, modes, times and links as they are (the copy is root's)."""
    partial = _partial(target)
    subprocess.run(["cp", "-a", "--", str(source), str(partial)], check=True,
                   timeout=COPY_TIMEOUT)
    partial.rename(target)
    return target


def _remove(path: Path) -> None:
    """Removes a tree, a read-only one too (a restore volume has no write bit left)."""
    if not os.path.lexists(path):
        return
    subprocess.run(["chmod", "-R", "u+w", "--", str(path)], check=False, timeout=COPY_TIMEOUT)
    shutil.rmtree(path)
