"""Reading a tree for `verify --deep` and the manifest, with and without a digest cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from offsite_host.compare import Digests, inventory


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_cache_spares_unchanged_files_and_follows_replaced_ones(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "same").write_bytes(b"unchanged")
    (tmp_path / "swapped").write_bytes(b"version 1")
    (tmp_path / "gone").write_bytes(b"x")
    digests: Digests = {}
    first = inventory(tmp_path, digests=digests)
    assert first["swapped"][2] == sha(b"version 1")
    assert set(digests) == {"d/same", "swapped", "gone"}

    # a cached digest is trusted while size, times and inode hold: poison one to prove it
    digests["d/same"] = (*digests["d/same"][:4], "from-the-cache")
    # rdiff-backup's way of changing a file: a new one renamed over it, same size and mtime
    info = (tmp_path / "swapped").stat()
    (tmp_path / "new").write_bytes(b"version 2")
    os.utime(tmp_path / "new", ns=(info.st_atime_ns, info.st_mtime_ns))
    os.replace(tmp_path / "new", tmp_path / "swapped")
    (tmp_path / "gone").unlink()

    second = inventory(tmp_path, digests=digests)
    assert second["d/same"][2] == "from-the-cache"
    assert second["swapped"][2] == sha(b"version 2")
    assert set(digests) == {"d/same", "swapped"}
    assert inventory(tmp_path)["d/same"][2] == sha(b"unchanged")  # no cache: read again
