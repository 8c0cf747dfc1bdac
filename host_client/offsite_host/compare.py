"""Comparing two trees for `verify --deep`: names, kinds, content, symlink targets and modes.

`inventory` reads a tree into a plain mapping (the only I/O); `differences` compares two such
mappings and is pure. The manifest (sealing.py) reads the encrypted view with `inventory` too,
every run, so it can hand in a digest cache: a file whose size, times and inode are unchanged
is not read again (the view passes the repository's own through, and rdiff-backup replaces a
changed file, so its inode and ctime change even when its size and mtime do not).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

Entry = tuple[str, int, str]
"""(kind, permission bits, sha-256 of the content or the link's target; "" for others)."""

Digests = dict[str, tuple[int, int, int, int, str]]
"""A digest cache: relative path -> (size, mtime_ns, ctime_ns, inode, sha-256)."""

CHUNK = 1024 * 1024
# SHA-256 and reads release the GIL: on 2 cores, hashing a fetched copy (local disk) takes about
# half the time with threads, and a FUSE view (the seal of the reverse view) gains as the
# restore's mirror copy does (mirror.py: 4 threads best).
HASH_THREADS = 4


def inventory(root: Path, skip: tuple[str, ...] = (),
              digests: Digests | None = None) -> dict[str, Entry]:
    """Every entry below `root` (not `root` itself), by relative POSIX path; top-level names in
    `skip` (rdiff-backup's own `rdiff-backup-data`) are left out with all below them. With
    `digests`, unchanged files take their digest from it, and it is left holding exactly the
    files found. The files to read are hashed by `HASH_THREADS` threads at once."""
    found: dict[str, Entry] = {}
    fresh: Digests = {}
    to_hash: list[tuple[str, Path, tuple[int, int, int, int]]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in sorted(dirnames) + sorted(filenames):
            path = here / name
            relative = path.relative_to(root).as_posix()
            found[relative] = _entry(path, relative, digests, fresh, to_hash)
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        hashed = pool.map(lambda job: _sha256(job[1]), to_hash)
        for (relative, _path, key), hexdigest in zip(to_hash, hashed, strict=True):
            fresh[relative] = (*key, hexdigest)
            found[relative] = ("file", found[relative][1], hexdigest)
    if digests is not None:
        digests.clear()
        digests.update(fresh)
    return found


class Prehash(threading.Thread):
    """Hashes the files of a tree while it is still being written (a restore's fetch), so that
    `inventory(root, digests=prehash.stop())` afterwards reads only what changed since. A file
    is taken from the cache only with the same size, times and inode it had when it was hashed;
    anything written to it after that changes its ctime, and it is read again. rsync's
    temporary files (dot names; gocryptfs' ciphertext names never start with a dot) are left
    alone: they are renamed, or deleted, before the fetch ends."""

    def __init__(self, root: Path, pause_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.pause_s = root, pause_s
        self.digests: Digests = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.sweep()
            self._done.wait(self.pause_s)

    def stop(self) -> Digests:
        self._done.set()
        if self.ident is not None:  # started
            self.join()
        return self.digests

    def sweep(self) -> None:
        """One pass over the tree: hashes every file not hashed as it is now."""
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if self._done.is_set():
                    return
                if not name.startswith("."):
                    with contextlib.suppress(OSError):  # renamed or deleted meanwhile
                        self._hash(Path(dirpath, name))

    def _hash(self, path: Path) -> None:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            return
        relative = path.relative_to(self.root).as_posix()
        key = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
        known = self.digests.get(relative)
        if known is None or known[:4] != key:
            self.digests[relative] = (*key, _sha256(path))


def differences(expected: dict[str, Entry], actual: dict[str, Entry]) -> list[str]:
    """What differs, one line each, sorted by path."""
    lines = []
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        if got is None:
            lines.append(f"missing: {name}")
        elif want is None:
            lines.append(f"unexpected: {name}")
        elif want[0] != got[0]:
            lines.append(f"kind: {name} is a {got[0]}, expected a {want[0]}")
        elif want[2] != got[2]:
            lines.append(f"{'target' if want[0] == 'link' else 'content'}: {name}")
        elif want[1] != got[1] and want[0] != "link":
            lines.append(f"mode: {name} is {got[1]:04o}, expected {want[1]:04o}")
    return lines


def _entry(path: Path, relative: str, known: Digests | None, fresh: Digests,
           to_hash: list[tuple[str, Path, tuple[int, int, int, int]]]) -> Entry:
    """The entry at `path`; a regular file not in `known` gets its digest later, from
    `to_hash`."""
    info = path.lstat()
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return ("link", mode, os.readlink(path))
    if stat.S_ISDIR(info.st_mode):
        return ("dir", mode, "")
    if stat.S_ISREG(info.st_mode):
        key = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
        cached = known.get(relative) if known is not None else None
        if cached is None or cached[:4] != key:
            to_hash.append((relative, path, key))
            return ("file", mode, "")
        fresh[relative] = (*key, cached[4])
        return ("file", mode, cached[4])
    return ("special", mode, str(stat.S_IFMT(info.st_mode)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
