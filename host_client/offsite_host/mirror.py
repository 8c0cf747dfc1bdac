"""Restoring the newest state by copying rdiff-backup's mirror out of the decrypted copy.

The mirror directory of a repository is its newest backup, file for file. Copying it, with
every regular file read once, hashed while it is written and checked against the size and
SHA-1 that rdiff-backup recorded for it (mirror_meta.py), then given the recorded permissions,
times and (as root) owners, restores what `rdiff-backup restore --at now` restores, with the
same check, but reads the FUSE mount with a few threads instead of rdiff-backup's one, file
after file (bench/README.md `restore`: the copy's time is FUSE's round trips). A file that
differs from its record, is missing, or cannot be read (gocryptfs answers a block that fails
authentication with EIO) fails the restore; nothing is reported restored that was not checked.
What the copy cannot reproduce exactly (hard links, special files, ACLs, quoted names, older
points) is left to rdiff-backup: `plan` says which, and why.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from offsite_host import mirror_meta
from offsite_host.exitcodes import ConfigError, RestoreError
from offsite_host.mirror_meta import DATA_DIR, Entry
from offsite_host.restore_plan import IO_DAMAGE

if TYPE_CHECKING:
    from offsite_host.early import Copies

# Reading the 200 MB bench set through the gocryptfs mount (2 cores): 1 thread 4.9 s, 2 3.8 s,
# 4 2.9 s, 8 3.1 s: the FUSE daemon answers requests in parallel, and a thread waiting on one
# costs no CPU.
COPY_THREADS = 4
CHUNK = 1 << 20


@dataclass(frozen=True)
class Plan:
    """The newest state of one repository, to copy: its metadata snapshot; or the reason it
    cannot be copied."""

    metadata: Path | None
    refused: str | None


@dataclass(frozen=True)
class Copied:
    files: int
    bytes: int
    early: int = 0  # of them, copied while the fetch ran (early.py) and still the same file

    def describe(self) -> str:
        during = f" ({self.early} of them while the fetch ran)" if self.early else ""
        return (f"copied the newest mirror: {self.files} files, {self.bytes} bytes, each "
                f"checked against rdiff-backup's recorded size and SHA-1{during}")


def plan(repo: Path) -> Plan:
    """Whether the newest state of the decrypted repository `repo` can be copied: one pass over
    its metadata, record by record."""
    data = repo / DATA_DIR
    try:
        names = [p.name for p in data.iterdir()]
        refused = mirror_meta.refusal(names, _read(data / "chars_to_quote"),
                                      _read(data / "special_escapes"))
        if refused:
            return Plan(None, refused)
        when = mirror_meta.newest_time(names)
        assert when is not None  # refusal() checked it
        metadata = data / mirror_meta.snapshot_name(when)
        with gzip.open(metadata, "rb") as f:
            return Plan(metadata, mirror_meta.refusal(names, b"", b"", mirror_meta.records(f)))
    except (OSError, EOFError, mirror_meta.MetadataError) as exc:
        raise _unreadable(data, exc) from None


def copy(repo: Path, metadata: Path, inner: tuple[str, ...], out: Path, label: str,
         early: Copies | None = None) -> Copied:
    """Copies the entries at or below `inner` of the mirror `repo` to `out` (which must not
    exist), reading `metadata` record by record and checking each file; a path (`label`)
    absent from the newest backup is a ConfigError. Directories get their attributes last,
    once their content is written. A file `early` copied while the fetch ran is taken from it
    when that copy has the recorded size and SHA-1 and was read from the file its path still
    is (early.py); any other is copied here."""
    chosen = tuple(os.fsencode(part) for part in inner)
    owners = _owners() if _is_root() else None
    files = _Files(repo.joinpath(*inner), out, owners, early)
    directories: list[Entry] = []
    try:
        with gzip.open(metadata, "rb") as f:
            for entry in mirror_meta.below(mirror_meta.records(f), chosen):
                if not directories and not files.count and entry.path != ():
                    break  # (the chosen path's own record comes first)
                if entry.kind == "dir":
                    _at(out, entry).mkdir(mode=0o700)
                    directories.append(entry)
                elif entry.kind == "sym":
                    assert entry.link is not None
                    os.symlink(entry.link, _at(out, entry))
                    _set_attributes(_at(out, entry), entry, owners)
                else:
                    files.add(entry)
            files.finish()
    except (EOFError, mirror_meta.MetadataError) as exc:
        raise _unreadable(metadata.parent, exc) from None
    finally:
        files.close()
    if not directories and not files.count and not (out.exists() or out.is_symlink()):
        raise ConfigError(f"{label} is not in the backup at now: nothing to restore")
    if files.bad:
        raise RestoreError(f"{len(files.bad)} restored files fail rdiff-backup's recorded "
                           f"SHA-1 check (the copy is damaged), e.g. {files.bad[0]}; nothing "
                           "was written to the target")
    for entry in reversed(directories):  # a directory's content before the directory itself
        _set_attributes(_at(out, entry), entry, owners)
    return Copied(files.count, files.bytes, files.taken)


class _Files:
    """The regular files being copied: `COPY_THREADS` at a time, at most `_AHEAD` queued."""

    _AHEAD = 64 * COPY_THREADS

    def __init__(self, source: Path, out: Path, owners: _Owners | None,
                 early: Copies | None = None) -> None:
        self.source, self.out, self.owners, self.early = source, out, owners, early
        self.pool = ThreadPoolExecutor(COPY_THREADS)
        self.pending: deque[Future[tuple[str | None, bool]]] = deque()
        self.bad: list[str] = []
        self.count = self.bytes = self.taken = 0

    def add(self, entry: Entry) -> None:
        self.count += 1
        self.bytes += entry.size or 0
        self.pending.append(self.pool.submit(self._copy, entry))
        while len(self.pending) > self._AHEAD:
            self._collect()

    def finish(self) -> None:
        while self.pending:
            self._collect()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _collect(self) -> None:
        # a RestoreError in a thread is raised here; the counts are kept by this one thread
        problem, taken = self.pending.popleft().result()
        self.taken += taken
        if problem:
            self.bad.append(problem)

    def _copy(self, entry: Entry) -> tuple[str | None, bool]:
        """What is wrong with the file, and whether it was the early copy's."""
        taken = self.early is not None and self.early.take(_at(self.source, entry),
                                                           _at(self.out, entry), entry)
        problem = None if taken else _copy_file(self.source, self.out, entry)
        if problem is None:
            _set_attributes(_at(self.out, entry), entry, self.owners)
        return problem, taken


def _unreadable(where: Path, exc: BaseException) -> RestoreError:
    return RestoreError(f"cannot read rdiff-backup's metadata in {where}: {_why(exc)}; the "
                        "copy is damaged")


def _copy_file(source: Path, out: Path, entry: Entry) -> str | None:
    """Copies one regular file, hashing it as it goes; what is wrong with it, or None."""
    digest, size = hashlib.sha1(usedforsecurity=False), 0
    name = os.fsdecode(b"/".join(entry.path)) or "."
    try:
        with open(_at(source, entry), "rb") as src, open(_at(out, entry), "xb") as dst:
            os.chmod(dst.fileno(), 0o600)
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return f"{name} is missing from the mirror"
    except OSError as exc:
        if exc.errno == errno.EIO:
            raise RestoreError(f"restoring {name} failed: {IO_DAMAGE}; nothing was written to "
                               "the target") from None
        raise RestoreError(f"restoring {name} failed: {_why(exc)}; nothing was written to "
                           "the target") from None
    if size != entry.size or digest.hexdigest() != entry.sha1:
        return f"{name}: calculated hash {digest.hexdigest()} doesn't match recorded hash " \
               f"{entry.sha1} ({size} bytes, {entry.size} recorded)"
    return None


def _set_attributes(path: Path, entry: Entry, owners: _Owners | None) -> None:
    if owners is not None:
        os.lchown(path, owners.uid(entry), owners.gid(entry))
    if entry.kind == "sym":
        return
    if entry.perms is not None:
        os.chmod(path, entry.perms)
    if entry.mtime is not None:
        os.utime(path, (entry.mtime, entry.mtime))


class _Owners:
    """rdiff-backup's default: an owner's name where this system knows it, else its number."""

    def __init__(self) -> None:
        import grp
        import pwd
        self._user = {u.pw_name: u.pw_uid for u in pwd.getpwall()}
        self._group = {g.gr_name: g.gr_gid for g in grp.getgrall()}

    def uid(self, entry: Entry) -> int:
        return self._user.get(entry.uname or "", -1 if entry.uid is None else entry.uid)

    def gid(self, entry: Entry) -> int:
        return self._group.get(entry.gname or "", -1 if entry.gid is None else entry.gid)


def _owners() -> _Owners | None:
    try:
        return _Owners()
    except ImportError:  # no pwd/grp (Windows): owners are left as they are
        return None


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _at(root: Path, entry: Entry) -> Path:
    return root.joinpath(*map(os.fsdecode, entry.path)) if entry.path else root


def _read(path: Path) -> bytes:
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    return b""


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
