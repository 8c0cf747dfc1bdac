"""How fast a host gets its data back: `python -m bench.restore [--size-mb N] [--json]`.

The data set of bench/wire (seeded; about 200 MB by default) is backed up once through the real
path (rdiff-backup, gocryptfs `-reverse`, rsync to a throwaway sshd on loopback under an
`rrsync -wo` certificate), as bench/wire does, with a plain copy of the tree beside it. Then,
under a read-only (`rrsync -ro`) certificate from the same sshd:

1. the restore the host client does, stage by stage and with its own functions: the fetch of the
   ciphertext into a staging directory (`transfer.pull_argv`) and of its manifest
   (`sealing.pull_argv`; the backup sealed and shipped it as a run does), the check of the copy
   against the manifest (`sealing.authenticate`, with what `compare.Prehash` hashed during the
   fetch), the gocryptfs forward-mode, read-only mount of
   it (`encrypt.mounted_plain`), and the restore of the newest state (`unpack.restore_into`:
   the mirror copied out and checked against rdiff-backup's metadata, or `rdiff-backup
   restore` where the copy cannot reproduce the tree), built beside an empty target and renamed
   into it (`unpack.place`); then, on the same mount and untimed in the total, `rdiff-backup
   restore --at now` into another directory: the way every restore went before, for the
   before/after figures of one run;
2. plain rsync of the plaintext tree, same flags, into an empty directory: the baseline.

Each is timed whole, with the time to its first restored file (see `FirstFile`); both copies
must be byte-identical to the data set, or the bench fails. The sshd, its account, the FUSE
mounts and every file are removed at the end, also after a failure or Ctrl-C.
See bench/README.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import os
import platform
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

# mypy cannot follow setuptools' editable-install finder to offsite_host (see bench/sessions.py)
from offsite_host import (  # type: ignore[import-not-found, unused-ignore]
    compare,
    encrypt,
    restore_plan,
    sealing,
    transfer,
    unpack,
)
from offsite_host.early import (  # type: ignore[import-not-found, unused-ignore]
    Copies,
    EarlyCopy,
)
from offsite_host.restore_plan import Selection  # type: ignore[import-not-found, unused-ignore]
from offsite_host.session import Session  # type: ignore[import-not-found, unused-ignore]

from bench.wire import (
    MB,
    SEED,
    Bench,
    BenchError,
    Shape,
    data_set_parser,
    generate,
    run,
    table,
    tool,
    workspace,
)

POLL_S = 0.005
TIMEOUT_S = 3600.0
HOST = "bench-restore"  # the host name the manifest is sealed for and checked against


# ---- the time to the first file ------------------------------------------------------------

def is_complete(parts: Sequence[str], size: int, sizes: Mapping[str, int]) -> bool:
    """Whether a file at `parts` (below the watched directory) of `size` bytes is a complete
    file of the data set: some tail of its path is a data set path of exactly that size. The
    tail, because a restore nests the tree below directories of its own."""
    return any(sizes.get("/".join(parts[i:])) == size for i in range(len(parts)))


class FirstFile(threading.Thread):
    """Watches `root` for the first complete file of the data set (`is_complete`), walking it
    every `POLL_S` seconds; `seen_at` is the monotonic time of the walk that found it.

    A file's final name with its full size is a complete file: rsync and rdiff-backup both
    write into a temporary name and rename the file once written. Empty files are not in
    `sizes` (they would be complete the moment they are created)."""

    def __init__(self, root: Path, sizes: Mapping[str, int]) -> None:
        super().__init__(daemon=True)
        self.root, self.sizes = root, sizes
        self.seen_at: float | None = None
        self._finished = threading.Event()

    def run(self) -> None:
        while not self._finished.is_set():
            if self._found():
                self.seen_at = time.monotonic()
                return
            self._finished.wait(POLL_S)

    def _found(self) -> bool:
        for directory, _, names in os.walk(self.root):
            for name in names:
                path = Path(directory, name)
                with contextlib.suppress(FileNotFoundError):  # renamed while we looked
                    st = path.lstat()
                    if stat.S_ISREG(st.st_mode) and is_complete(
                            path.relative_to(self.root).parts, st.st_size, self.sizes):
                        return True
        return False

    def stop(self, started: float) -> float | None:
        """Seconds from `started` to the first complete file, or None if none came."""
        self._finished.set()
        self.join()
        return None if self.seen_at is None else self.seen_at - started


def file_sizes(root: Path) -> dict[str, int]:
    """The data set's non-empty regular files: relative path -> size."""
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in _files(root)
            if p.stat().st_size > 0}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


# ---- the check -----------------------------------------------------------------------------

def tree_differences(original: Path, copy: Path) -> list[str]:
    """Every path that differs between two trees: present in one only, of another type, or
    with other bytes (compared in full, not by size and time)."""
    def kinds(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): _kind(p) for p in root.rglob("*")}

    a, b = kinds(original), kinds(copy)
    found = [f"only in the original: {p}" for p in sorted(a.keys() - b.keys())]
    found += [f"only in the copy: {p}" for p in sorted(b.keys() - a.keys())]
    for rel in sorted(a.keys() & b.keys()):
        if a[rel] != b[rel]:
            found.append(f"{a[rel]} became {b[rel]}: {rel}")
        elif a[rel] == "file" and not filecmp.cmp(original / rel, copy / rel, shallow=False):
            found.append(f"other bytes: {rel}")
    return found


def _kind(path: Path) -> str:
    return "symlink" if path.is_symlink() else "directory" if path.is_dir() else \
        "file" if path.is_file() else "other"


def checked(original: Path, copy: Path, what: str) -> tuple[int, int]:
    """(files, bytes) of `copy`, which must be identical to `original`."""
    found = tree_differences(original, copy)
    if found:
        raise BenchError(f"{what} differs from the data set in {len(found)} paths: "
                         f"{'; '.join(found[:3])}")
    files = _files(copy)
    return len(files), sum(p.stat().st_size for p in files)


# ---- the runs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pulled:
    """One rsync pull: its wall time and `Total bytes received`."""

    seconds: float
    bytes_received: int


@dataclass(frozen=True)
class Restored:
    """The client's restore, stage by stage; times in seconds, `*_at_s` from the start of
    the fetch."""

    fetch: Pulled
    manifest_s: float
    authenticate_s: float
    authenticated_entries: int
    mount_s: float
    restore_s: float
    unmount_s: float
    first_file_at_s: float | None
    in_target_at_s: float
    how: str = ""  # what unpack.restore_into said it did
    rdiff_backup_s: float = 0.0  # `rdiff-backup restore --at now` of the same mount
    early_stop_s: float = 0.0  # after the fetch: the early copy ended, its mount released

    @property
    def total_by_rdiff_backup_s(self) -> float:
        """The whole restore as it was when every restore went through rdiff-backup."""
        return self.total_s - self.restore_s + self.rdiff_backup_s

    @property
    def total_s(self) -> float:
        return (self.fetch.seconds + self.early_stop_s + self.manifest_s + self.authenticate_s
                + self.mount_s + self.restore_s + self.unmount_s)

    @property
    def decrypt_starts_at_s(self) -> float:
        """When the mount of the authenticated copy starts: nothing is restored before (the
        early copy's files, made during the fetch, are provisional until then)."""
        return self.fetch.seconds + self.early_stop_s + self.manifest_s + self.authenticate_s


@dataclass(frozen=True)
class Copied:
    """The plain rsync of the plaintext tree."""

    pull: Pulled
    first_file_at_s: float | None


@dataclass
class Figures:
    size_mb: float
    seed: int
    files: int
    plaintext_bytes: int
    backup_s: float
    restore: Restored
    plain: Copied
    restored_files: int
    restored_bytes: int
    plain_files: int
    plain_bytes: int
    identical: bool
    poll_s: float = POLL_S
    cpus: int | None = field(default_factory=os.cpu_count)
    when: str = field(default_factory=lambda: f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    work: str = ""
    account: str = ""
    sshd_pid: int = 0
    link: str = "loopback"  # what lay between the host and sshd (bench/link.py)
    link_namespace: str = ""  # its network namespace, removed with the rest


class Restore:
    """The restore side of the bench: a read-only session on bench/wire's archive."""

    def __init__(self, bench: Bench) -> None:
        self.bench, self.work = bench, bench.work
        self.session, files = bench.archive.session("-ro")
        self.rsh = transfer.rsh_command(transfer.ssh_argv(tool("ssh"), files, self.session))
        self.sizes = file_sizes(bench.source)

    def pull(self, session: Session, into: Path) -> Pulled:
        return _rsync(transfer.pull_argv(tool("rsync"), self.rsh, session,
                                         transfer.rsync_local_path(into, sys.platform),
                                         io_timeout_s=600), session.remote_path)

    def plain_copy(self) -> tuple[Copied, Path]:
        into = self.work / "plain-copy"
        into.mkdir(mode=0o700)
        watch = FirstFile(into, self.sizes)
        started = time.monotonic()
        watch.start()
        try:
            pulled = self.pull(replace(self.session, remote_path="plain/"), into)
        finally:
            first = watch.stop(started)
        return Copied(pulled, first), into

    def restore(self) -> tuple[Restored, Path]:
        staging, area = self.work / "staging", self.work / "restore"
        sealed = self.work / "staging.sealed"
        for directory in (staging, area, sealed):
            directory.mkdir(mode=0o700)
        target = area / "target"
        watch = FirstFile(area, self.sizes)  # place() builds beside the target, in `area`
        started = time.monotonic()
        watch.start()
        try:
            prehash = compare.Prehash(staging)  # as Restorer._fetch: hashing behind the fetch
            prehash.start()
            # as Restorer._fetch: the mirror copied while the fetch runs (beside the watched
            # area: those copies are provisional, not yet restored files)
            early = EarlyCopy(staging, self.work / "plain-early", self.work / "early",
                              [(self.bench.repos[0].target.name, ())], self._mount)
            early.start()
            # as Restorer._fetch: the manifest over a second connection, beside the fetch
            with ThreadPoolExecutor(1) as beside:
                manifest = beside.submit(_rsync, sealing.pull_argv(
                    tool("rsync"), self.rsh, self.session,
                    transfer.rsync_local_path(sealed, sys.platform), io_timeout_s=600),
                    "the manifest")
                try:
                    fetch = self.pull(self.session, staging)
                finally:
                    digests = prehash.stop()
                    mark = time.monotonic()
                    copies = early.stop()
                early_stop_s, mark = _lap(mark)
                manifest.result()
            manifest_s, mark = _lap(mark)  # what the manifest kept us waiting after the fetch
            verdict = sealing.authenticate(staging, sealed, self.bench.password, HOST,
                                           self.session.window_id, True, True, digests)
            authenticate_s, mark = _lap(mark)
            with encrypt.mounted_plain(tool("gocryptfs"), tool("fusermount"),
                                       self.bench.password, staging, self.work / "plain",
                                       self.bench.say) as plain:
                mount_s, mark = _lap(mark)
                how: list[str] = []
                unpack.place(target, False, lambda tree: how.append(
                    self._build(plain, tree, copies.get(0))), None)
                restore_s, mark = _lap(mark)
                in_target = mark - started
                rdiff_backup_s = self._by_rdiff_backup(plain)
                mark = time.monotonic()
            unmount_s, mark = _lap(mark)
        finally:
            first = watch.stop(started)
        entries = _entries(verdict.reason)
        return Restored(fetch, manifest_s, authenticate_s, entries, mount_s, restore_s,
                        unmount_s, first, in_target, how[0], rdiff_backup_s,
                        early_stop_s), target

    def _mount(self, cipherdir: Path, mountpoint: Path) -> AbstractContextManager[Path]:
        return encrypt.mounted_plain(tool("gocryptfs"), tool("fusermount"), self.bench.password,
                                     cipherdir, mountpoint, self.bench.say, nice=True)

    def _build(self, plain: Path, tree: Path, early: Copies | None) -> str:
        """What `Restorer._unpack` does for a restore of every path: here, one."""
        repo = self.bench.repos[0]
        sel = Selection(repo.source, repo.target.name, ())
        return unpack.restore_into(tool("rdiff_backup"), plain, "now", sel,
                                   tree / sel.repository, early)

    def _by_rdiff_backup(self, plain: Path) -> float:
        """`rdiff-backup restore --at now` of the same mount, checked as a restore checks it;
        its seconds."""
        out = self.work / "by-rdiff-backup"
        started = time.monotonic()
        done = subprocess.run(restore_plan.restore_argv(
            tool("rdiff_backup"), "now", plain / self.bench.repos[0].target.name, out),
            capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        seconds = time.monotonic() - started
        problem = restore_plan.restore_problem(done.returncode, done.stderr)
        if problem:
            raise BenchError(f"rdiff-backup restore of the same mount: {problem}")
        checked(self.bench.source, out, "rdiff-backup's restore")
        return seconds


def seal(bench: Bench, view: Path) -> None:
    """What a run does once its view is sent and verified: seal the view and ship the manifest
    beside the copy (`Run`'s seal step). Untimed: it is part of the backup."""
    out = bench.work / "seal"
    out.mkdir(mode=0o700, exist_ok=True)
    sealing.write(view, bench.repository, bench.password, HOST, bench.session.window_id,
                  time.time(), out, bench.work / "seal-digests.json")
    _rsync(sealing.push_argv(tool("rsync"), bench.rsh, str(out), bench.session,
                             io_timeout_s=600), "the manifest push")


def _rsync(argv: list[str], what: str) -> Pulled:
    """Runs one rsync; its wall time and `Total bytes received`."""
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise BenchError(f"rsync of {what} failed ({done.returncode}): "
                         f"{done.stderr.strip()[-400:]}")
    return Pulled(seconds, transfer.received(done.stdout))


def _entries(reason: str) -> int:
    """The entry count `sealing.authenticate` states: '... matches its manifest (N entries'."""
    found = re.search(r"\((\d+) entries", reason)
    return int(found.group(1)) if found else 0


def _lap(mark: float) -> tuple[float, float]:
    now = time.monotonic()
    return now - mark, now


def measure(size_mb: float, seed: int = SEED, quiet: bool = True,
            link_mbit: float | None = None) -> Figures:
    """The whole bench (`link_mbit`: sshd across a shaped link); everything it made is gone
    when it returns or raises."""
    with contextlib.ExitStack() as cleanup:
        work, archive = workspace(cleanup, "restore", link_mbit)
        bench = Bench(work, archive, quiet)
        bench.say(f"generating {size_mb:g} MB under {bench.source}")
        data = generate(bench.source, Shape.of(size_mb), seed)
        bench.initialise()
        bench.say("backing up through the real path, and a plain copy beside it")
        backup = bench.run_pass(lambda view: seal(bench, view))
        side = Restore(bench)
        bench.say("plain rsync of the plaintext")
        plain, plain_copy = side.plain_copy()
        bench.say("restore: fetch, decrypt, rdiff-backup restore")
        restored, target = side.restore()
        bench.say("comparing both copies with the data set")
        files, size = checked(bench.source, target / bench.repos[0].target.name, "the restore")
        plain_files, plain_bytes = checked(bench.source, plain_copy, "the plain rsync copy")
        assert archive.process is not None
        return Figures(size_mb, seed, data.files, data.bytes, backup.full_path_s, restored,
                       plain, files, size, plain_files, plain_bytes, identical=True,
                       work=str(work), account=archive.user, sshd_pid=archive.process.pid,
                       link=archive.link.describe() if archive.link else "loopback",
                       link_namespace=archive.link.namespace if archive.link else "")
    raise AssertionError("unreachable")  # for mypy: ExitStack never swallows here


# ---- the report ----------------------------------------------------------------------------

def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _rate(f: Figures, seconds: float) -> str:
    return f"{f.plaintext_bytes / MB / seconds:,.1f}" if seconds > 0 else "-"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:,.2f}" if a is not None and b else "-"


def stages(f: Figures) -> str:
    r = f.restore
    at = [0.0]
    for seconds in (r.fetch.seconds, r.early_stop_s, r.manifest_s, r.authenticate_s, r.mount_s,
                    r.restore_s):
        at.append(at[-1] + seconds)
    rows = [["fetch: rsync pull of the ciphertext (rrsync -ro)", _s(r.fetch.seconds),
             _rate(f, r.fetch.seconds), _s(at[0])],
            ["the copy during the fetch: its end and unmount", _s(r.early_stop_s), "-",
             _s(at[1])],
            ["the manifest (beside the fetch): waited after it", _s(r.manifest_s), "-",
             _s(at[2])],
            [f"authenticate: the copy against it ({r.authenticated_entries:,} entries)",
             _s(r.authenticate_s), _rate(f, r.authenticate_s), _s(at[3])],
            ["decrypt: gocryptfs forward mount, read-only", _s(r.mount_s), "-", _s(at[4])],
            [f"restore: {_short(r.how)}, then the rename", _s(r.restore_s),
             _rate(f, r.restore_s), _s(at[5])],
            ["unmount", _s(r.unmount_s), "-", _s(at[6])],
            ["whole restore", _s(r.total_s), _rate(f, r.total_s), ""],
            ["before: rdiff-backup restore --at now, same mount", _s(r.rdiff_backup_s),
             _rate(f, r.rdiff_backup_s), "-"],
            ["before: whole restore with it", _s(r.total_by_rdiff_backup_s),
             _rate(f, r.total_by_rdiff_backup_s), ""]]
    return table(["stage", "s", "MB/s", "starts at s"], rows)


def _short(how: str) -> str:
    return "copy of the newest mirror" if how.startswith("copied") else \
        how.split(" (")[0] or "rdiff-backup restore"


def comparison(f: Figures) -> str:
    r, p = f.restore, f.plain
    rows = [["restore (fetch, authenticate, decrypt, copy)", _s(r.total_s),
             _rate(f, r.total_s),
             _s(r.first_file_at_s), _s(r.in_target_at_s), f"{r.fetch.bytes_received:,}"],
            ["plain rsync of the plaintext", _s(p.pull.seconds), _rate(f, p.pull.seconds),
             _s(p.first_file_at_s), _s(p.first_file_at_s), f"{p.pull.bytes_received:,}"],
            ["restore / plain rsync", _ratio(r.total_s, p.pull.seconds),
             _ratio(p.pull.seconds, r.total_s), _ratio(r.first_file_at_s, p.first_file_at_s),
             _ratio(r.in_target_at_s, p.first_file_at_s),
             _ratio(r.fetch.bytes_received, p.pull.bytes_received)],
            ["before: restore with rdiff-backup / plain rsync",
             _ratio(r.total_by_rdiff_backup_s, p.pull.seconds),
             _ratio(p.pull.seconds, r.total_by_rdiff_backup_s), "-", "-", "-"]]
    return table(["", "total s", "MB/s", "first file s", "in target s", "bytes received"], rows)


def report(f: Figures) -> str:
    r = f.restore
    after_fetch = None if r.first_file_at_s is None else \
        r.first_file_at_s - r.decrypt_starts_at_s - r.mount_s
    return "\n".join([
        f"Offsite restore, {f.when}, {f.cpus} CPUs, Python {platform.python_version()}",
        f"between the host and sshd: {f.link}",
        f"data set: {f.files:,} files, {f.plaintext_bytes:,} bytes (--size-mb {f.size_mb:g}, "
        f"seed {f.seed}), backed up through the real path in {f.backup_s:,.1f} s",
        f"restored: {f.restored_files:,} files, {f.restored_bytes:,} bytes, identical to the "
        f"data set; plain rsync copy: {f.plain_files:,} files, {f.plain_bytes:,} bytes, "
        "identical", "",
        f"The restore, stage by stage ({f.plaintext_bytes / MB:,.1f} MB of plaintext, "
        "MB = 10^6 bytes):", "", stages(f), "",
        "Against plain rsync of the same plaintext, same sshd, read-only certificate and flags:",
        "", comparison(f), "",
        "first file s: from the start of the fetch to the first complete file of the data set "
        f"(a poll every {f.poll_s * 1000:g} ms);",
        "  the restore's is in the directory that unpack.place() builds beside the target, "
        f"{_s(after_fetch)} s after the mount;",
        "  in target s: when the restored tree is renamed into the target, all at once",
        f"the restore said: {r.how}"])


def as_json(f: Figures) -> str:
    data = asdict(f)
    data["restore"]["total_s"] = f.restore.total_s
    data["restore"]["decrypt_starts_at_s"] = f.restore.decrypt_starts_at_s
    data["restore"]["total_by_rdiff_backup_s"] = f.restore.total_by_rdiff_backup_s
    return json.dumps(data, indent=2)


# ---- the command ---------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return data_set_parser("python -m bench.restore", __doc__).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    figures = run(lambda: measure(args.size_mb, args.seed, quiet=args.quiet,
                                  link_mbit=args.link_mbit))
    if isinstance(figures, int):
        return figures
    print(as_json(figures) if args.json else report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
