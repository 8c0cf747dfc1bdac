"""Reading a tree for `verify --deep` and the manifest, with and without a digest cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from offsite_host.compare import Digests, Prehash, inventory


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


def test_prehash_hashes_what_has_arrived_and_the_check_rereads_what_changed_since(
        tmp_path: Path) -> None:
    """A restore's fetch: files hashed while they arrive are taken from the cache by the check
    after it only if nothing was written to them since; rsync's temporary files are skipped."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "arrived").write_bytes(b"complete ciphertext")
    (tmp_path / "written-again").write_bytes(b"first content")
    (tmp_path / ".written-again.Xy12Zq").write_bytes(b"rsync's temporary file")
    prehash = Prehash(tmp_path)
    prehash.sweep()
    assert set(prehash.digests) == {"dir/arrived", "written-again"}
    assert prehash.digests["dir/arrived"][4] == sha(b"complete ciphertext")

    # written in place after it was hashed, same size, its mtime put back: its ctime moved
    victim = tmp_path / "written-again"
    info = victim.stat()
    victim.write_bytes(b"other content")
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))
    (tmp_path / ".written-again.Xy12Zq").unlink()
    (tmp_path / "late").write_bytes(b"arrived after the sweep")

    digests = prehash.stop()  # (never started: nothing more is hashed)
    checked = inventory(tmp_path, digests=digests)
    assert checked == inventory(tmp_path)
    assert checked["written-again"][2] == sha(b"other content")
    assert checked["late"][2] == sha(b"arrived after the sweep")


def test_prehash_runs_until_stopped(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    prehash = Prehash(tmp_path, pause_s=0.01)
    prehash.start()
    for _ in range(3000):  # the thread's first sweep (bounded: a broken thread fails, not hangs)
        if "f" in prehash.digests:
            break
        prehash.join(0.01)
    assert prehash.stop()["f"][4] == sha(b"data")
    assert not prehash.is_alive()
