"""The newest mirror copied while the fetch still runs: a restore's decryption behind its fetch.

The ciphertext arrives file by file (rsync renames each file into place once it is whole).
Meanwhile a thread mounts the staging copy (gocryptfs forward mode, read-only) once its
gocryptfs.conf is there and, pass after pass, copies each regular file of the mirror that has
arrived (rdiff-backup-data left out) into a directory beside the target, hashing it (SHA-1) as
it goes and noting the identity of the file it read (inode, size, modification and change
times, which gocryptfs passes through from the ciphertext file; read before and after the
copy). What cannot be read yet (its directory's IV not arrived, a block that fails
authentication) is tried again on a later pass; a file whose identity changed is copied again.
Nothing of it is trusted: the manifest check comes after the fetch, and rdiff-backup's
metadata may not have arrived. Afterwards mirror.copy takes an early copy only when the record
of the authenticated copy's metadata has that size and SHA-1 and the same path still shows the
same identity through the mount of the authenticated copy; it copies everything else itself.
A file rsync wrote again after its copy has a new inode or a new change time. Anything
unexpected ends the early copy: it never fails a restore (bench/README.md `restore`: across a
link, the copy after the fetch was three quarters of what a restore adds).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from offsite_host import mirror, mirror_meta
from offsite_host.encrypt import FORWARD_CONF
from offsite_host.mirror_meta import Entry

Identity = tuple[int, int, int, int]  # st_ino, st_size, st_mtime_ns, st_ctime_ns
# Past this many files the early copy stops: each pass looks up every file through FUSE.
MAX_FILES = 200_000
PAUSE_S = 0.3
DATA_DIR = mirror_meta.DATA_DIR


def identity(st: os.stat_result) -> Identity:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Copied:
    """One early copy: what it was read from, and the SHA-1 of what was written."""

    read_from: Identity
    sha1: str


@dataclass
class Copies:
    """The early copies of one selection, laid out below `root` as its output will be, by
    their path below the selection (as rdiff-backup's metadata names them)."""

    root: Path
    files: dict[tuple[bytes, ...], Copied] = field(default_factory=dict)
    # The fetched copy's files once the fetch is done, by inode: (mtime, ctime) in ns
    present: dict[int, tuple[int, int]] | None = None

    def take(self, source: Path, out: Path, entry: Entry) -> bool:
        """Moves the copy of `entry` to `out` if it has the recorded size and SHA-1 and the
        ciphertext file it was read from is still in the fetched copy as it was then (found by
        its inode, which gocryptfs passes through: no lookup through the mount); without that
        list, `source` (through the mount of the authenticated copy) must be that file."""
        copied = self.files.pop(entry.path, None)
        if copied is None or copied.sha1 != entry.sha1 or copied.read_from[1] != entry.size:
            return False
        ino, _, mtime_ns, ctime_ns = copied.read_from
        try:
            if self.present is not None:
                if self.present.get(ino) != (mtime_ns, ctime_ns):
                    return False
            elif identity(os.stat(source)) != copied.read_from:
                return False
            os.rename(_at(self.root, entry.path), out)
        except OSError:
            return False
        return True


class EarlyCopy(threading.Thread):
    """Copies the mirror of each selection (repository, inner path) out of `staging` while
    it is being fetched, into `into`/<selection's index>; `stop()` ends it (promptly: a copy
    in progress is dropped), unmounts, and gives what it copied."""

    def __init__(self, staging: Path, mountpoint: Path, into: Path,
                 selections: list[tuple[str, tuple[str, ...]]],
                 mount: Callable[[Path, Path], AbstractContextManager[Path]],
                 pause_s: float = PAUSE_S) -> None:
        super().__init__(daemon=True)
        self.staging, self.mountpoint, self.into = staging, mountpoint, into
        self.selections, self.mount, self.pause_s = selections, mount, pause_s
        self.copies = {index: Copies(into / str(index)) for index in range(len(selections))}
        self.note = ""  # why it ended before the fetch did, if it did
        self._failed: dict[Path, Identity] = {}  # not read again unless it changes
        self._done = threading.Event()

    def stop(self) -> dict[int, Copies]:
        """Call once the fetch has ended: what it copied, with the fetched copy's files as
        they are now (the manifest check that follows reads them as they are)."""
        self._done.set()
        if self.ident is not None:
            self.join()
        present = _present(self.staging)
        for copies in self.copies.values():
            copies.present = present
        return self.copies

    def run(self) -> None:
        _lowest_priority()
        try:
            while not (self.staging / FORWARD_CONF).is_file():
                if self._done.wait(self.pause_s):
                    return
            with self.mount(self.staging, self.mountpoint) as plain, \
                    ThreadPoolExecutor(mirror.COPY_THREADS, initializer=_lowest_priority) as pool:
                while not self._done.is_set():
                    started = time.monotonic()
                    work = [(copies, source, path) for copies, source, path in self._arrived(plain)
                            if not self._done.is_set()]
                    looked = time.monotonic() - started
                    list(pool.map(lambda item: self._copy(*item), work))
                    # Looking is a walk of the tree through FUSE: on a fast fetch, where the
                    # CPU is the limit, it must not take much of it from the fetch itself.
                    self._done.wait(max(self.pause_s, 3 * looked))
        except Exception as exc:  # provisional work: mirror.copy does it all after the fetch
            self.note = f"ended early: {exc!r}"

    def _arrived(self, plain: Path) -> Iterator[tuple[Copies, Path, tuple[bytes, ...]]]:
        """Every regular file of the selections' mirrors, through the mount, not copied as
        it is now."""
        seen = 0
        for index, (repository, inner) in enumerate(self.selections):
            repo, copies = plain / repository, self.copies[index]
            top = repo.joinpath(*inner)
            if _is_file(top):
                yield from self._if_new(copies, top, ())
                continue
            for dirpath, dirnames, filenames in os.walk(top):
                here = Path(dirpath)
                if here == repo:
                    dirnames[:] = [d for d in dirnames if d != DATA_DIR]
                rel = tuple(os.fsencode(p) for p in here.relative_to(top).parts)
                for name in filenames:
                    seen += 1
                    if seen > MAX_FILES:
                        raise OverflowError(f"more than {MAX_FILES} files")
                    yield from self._if_new(copies, here / name, (*rel, os.fsencode(name)))

    def _if_new(self, copies: Copies, source: Path, path: tuple[bytes, ...]) -> Iterator[
            tuple[Copies, Path, tuple[bytes, ...]]]:
        copied = copies.files.get(path)
        try:
            st = os.lstat(source)
        except OSError:
            return
        now = identity(st)
        if stat.S_ISREG(st.st_mode) and self._failed.get(source) != now and (
                copied is None or copied.read_from != now):
            yield copies, source, path

    def _copy(self, copies: Copies, source: Path, path: tuple[bytes, ...]) -> None:
        if self._done.is_set():
            return
        out = _at(copies.root, path)
        try:
            # Not blocking, not following: whatever the path has become since it was looked at
            # (a fifo would block the open), only a regular file is read.
            fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as src:
                st = os.fstat(src.fileno())
                if not stat.S_ISREG(st.st_mode):
                    return
                before = identity(st)
                out.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha1(usedforsecurity=False)
                with open(out, "wb") as dst:
                    os.chmod(dst.fileno(), 0o600)
                    while chunk := src.read(mirror.CHUNK):
                        if self._done.is_set():
                            raise InterruptedError
                        digest.update(chunk)
                        dst.write(chunk)
                after = identity(os.fstat(src.fileno()))
            if after == before:
                copies.files[path] = Copied(before, digest.hexdigest())
                return
        except InterruptedError:
            pass
        except OSError:  # e.g. a block that fails authentication: not again while unchanged
            with contextlib.suppress(OSError):
                self._failed[source] = identity(os.stat(source))
        copies.files.pop(path, None)
        with contextlib.suppress(OSError):
            out.unlink()


def _lowest_priority() -> None:
    """This thread at nice 19 (Linux sets it per thread): when the fetch is bound by the CPU
    (a fast link), the copy takes only what the fetch leaves; over a slow link the CPU is
    idle and it runs at full speed."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _present(root: Path) -> dict[int, tuple[int, int]]:
    found = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                found[st.st_ino] = (st.st_mtime_ns, st.st_ctime_ns)
    return found


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _at(root: Path, path: tuple[bytes, ...]) -> Path:
    return root.joinpath(*map(os.fsdecode, path)) if path else root
