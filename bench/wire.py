"""What a host's nightly run puts on the wire, and on the archive volume:
`python -m bench.wire [--size-mb N] [--scaling MB,MB] [--json]`.

A seeded data set (by default about 200 MB: a few large binary files, log files, several
thousand small text and binary files) is sent, then changed (edits inside the large files,
appended logs, new files, deleted files) and sent again, three ways over the same ssh:

1. the full encrypted path the host client takes: `rdiff-backup backup` into a local
   repository (offsite_host.history), its gocryptfs `-reverse` view (offsite_host.encrypt),
   rsync of the view with the client's own arguments (offsite_host.transfer) into a real sshd
   on loopback, the account confined by a certificate whose force-command is `rrsync -wo`;
2. plain rsync of the plaintext tree with the same arguments, same sshd and account: the limit;
3. each changed or new file re-encrypted and sent whole, as an encrypt-then-copy setup (encfs in
   forward mode) does: counted, not sent (see `whole_file_bytes`).

Each way writes to its own archive volume, ext4 on a loop device (bench/volumes.py): after the
change, the 512 KiB blocks whose content changed, what the next EBS snapshot stores. restic and
borg back up the same tree before and after the change (bench/peers.py). `--scaling` makes the
same change on data sets of other sizes and compares the nightly run times.

The sshd, its account, the FUSE mount, the volumes and their loop devices and every file are
removed at the end, also after a failure or Ctrl-C. See bench/README.md for how to read the
figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

# mypy cannot follow setuptools' editable-install finder to offsite_host (see bench/sessions.py)
from offsite_host import (  # type: ignore[import-not-found, unused-ignore]
    encrypt,
    history,
    sealing,
    transfer,
    verify_plan,
    verify_state,
)
from offsite_host.exitcodes import OffsiteError  # type: ignore[import-not-found, unused-ignore]
from offsite_host.session import Session  # type: ignore[import-not-found, unused-ignore]

from bench.link import Link, LinkError, shaped_link
from bench.peers import PEERS, PeerError, PeerFigures
from bench.volumes import EBS_BLOCK, LoopVolume, VolumeError
from local.aws import free_port

SEED = 2026
TIMEOUT_S = 3600.0
VERIFY_CYCLE_DAYS = 20  # the client's default
BLOCK, BLOCK_OVERHEAD, HEADER = 4096, 32, 18  # gocryptfs: 16-byte nonce + 16-byte GCM tag
ACCOUNT_PREFIX = "offsite-bw-"
VOLUMES = ("encrypted", "plain")  # one archive volume per way, each under its remote path
MB = 1_000_000
T = TypeVar("T")


class BenchError(Exception):
    pass


# ---- the data set and the change set (pure but for the writes) ----------------------------

@dataclass(frozen=True)
class Shape:
    """How `size_mb` is split: half in large files, a tenth in logs, the rest small files."""

    large: tuple[int, ...]
    logs: tuple[int, ...]
    small_bytes: int

    @classmethod
    def of(cls, size_mb: float) -> Shape:
        total = int(size_mb * MB)
        return cls(large=(total // 4, total // 6, total // 12), logs=(total // 80,) * 8,
                   small_bytes=total - total // 2 - 8 * (total // 80))


_WORDS = ("backup", "window", "host", "volume", "snapshot", "rsync", "ssh", "certificate",
          "deadline", "report", "retention", "increment", "mirror", "cipher", "block", "delta",
          "archive", "instance", "schedule", "request", "nonce", "key", "error", "warning",
          "started", "finished", "bytes", "files", "seconds", "user", "disk", "database", "page")


def _text_lines(rng: random.Random, count: int) -> list[str]:
    return [" ".join(rng.choices(_WORDS, k=rng.randint(3, 14))) + "\n" for _ in range(count)]


def _text(rng: random.Random, pool: list[str], size: int) -> bytes:
    out = "".join(rng.choices(pool, k=size // 45 + 1)).encode()
    return out[:size]


def _log_lines(rng: random.Random, size: int, start: int) -> bytes:
    lines, done, n = [], 0, start
    while done < size:
        line = (f"2026-11-{1 + n // 86400 % 28:02d}T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:"
                f"{n % 60:02d}Z app[{1000 + n % 97}]: {' '.join(rng.choices(_WORDS, k=8))} "
                f"id={rng.getrandbits(48):012x}\n")
        lines.append(line)
        done += len(line)
        n += 7
    return "".join(lines).encode()


def _write_random(path: Path, rng: random.Random, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for start in range(0, size, MB):
            out.write(rng.randbytes(min(MB, size - start)))


def _small_size(rng: random.Random) -> int:
    return min(256 * 1024, max(64, int(rng.lognormvariate(math.log(6000), 1.2))))


@dataclass(frozen=True)
class DataSet:
    files: int
    bytes: int
    large: tuple[str, ...]
    logs: tuple[str, ...]
    small: tuple[str, ...]


def generate(root: Path, shape: Shape, seed: int = SEED) -> DataSet:
    """Writes the data set under `root`; the same seed gives the same bytes."""
    rng = random.Random(seed)
    pool = _text_lines(rng, 4000)
    large = [f"srv/vm/disk-{i}.img" for i in range(len(shape.large))]
    for rel, size in zip(large, shape.large, strict=True):
        _write_random(root / rel, rng, size)
    logs = [f"var/log/app-{i}.log" for i in range(len(shape.logs))]
    logged = 0  # whole lines: each log ends up a little longer than its share
    for rel, size in zip(logs, shape.logs, strict=True):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        logged += (root / rel).write_bytes(_log_lines(rng, size, 0))
    small: list[str] = []
    planned = written = 0  # a text file can come out a little shorter than planned
    while planned < shape.small_bytes:
        size = min(_small_size(rng), shape.small_bytes - planned)
        rel = _small_name(rng, len(small))
        written += _write_small(root / rel, rng, pool, size)
        small.append(rel)
        planned += size
    total = sum(shape.large) + logged + written
    return DataSet(len(large) + len(logs) + len(small), total, tuple(large), tuple(logs),
                   tuple(small))


def _small_name(rng: random.Random, index: int) -> str:
    kind = "txt" if rng.random() < 0.7 else "bin"
    return f"home/user-{rng.randrange(12)}/project-{rng.randrange(40)}/file-{index:05d}.{kind}"


def _write_small(path: Path, rng: random.Random, pool: list[str], size: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _text(rng, pool, size) if path.suffix == ".txt" else rng.randbytes(size)
    return path.write_bytes(data)


@dataclass(frozen=True)
class Change:
    """One kind of change: how many files, the plaintext bytes written, and what those files
    cost re-encrypted whole (their gocryptfs ciphertext size after the change)."""

    kind: str
    files: int
    plaintext_bytes: int
    whole_file_bytes: int


EDITS_PER_LARGE_FILE, EDIT_BYTES = 8, 4096


def apply_changes(root: Path, data: DataSet, seed: int = SEED + 1,
                  scale: float = 1.0) -> list[Change]:
    """The nightly change; `scale` sizes the appends and the new and deleted files (not the
    edits, a fixed number per large file), so that `scale = 200 / 2000` on a 2 GB data set
    makes the same change as 1 on a 200 MB one."""
    rng = random.Random(seed)
    pool = _text_lines(rng, 500)
    edited = 0
    for rel in data.large:
        size = (root / rel).stat().st_size
        with (root / rel).open("r+b") as f:
            for _ in range(EDITS_PER_LARGE_FILE):
                f.seek(rng.randrange(max(1, size - EDIT_BYTES)))
                edited += f.write(rng.randbytes(min(EDIT_BYTES, size)))
    appended = 0
    for i, rel in enumerate(data.logs):
        with (root / rel).open("ab") as f:
            appended += f.write(_log_lines(rng, int((root / rel).stat().st_size // 20 * scale),
                                           10**6 * i))
    some = max(3, int(len(data.small) * scale) // 100)
    new = [f"home/user-new/inbox/new-{i:04d}.{'txt' if i % 3 else 'bin'}" for i in range(some)]
    for rel in new:
        _write_small(root / rel, rng, pool, _small_size(rng))
    deleted = rng.sample(data.small,
                         k=min(len(data.small), max(2, int(len(data.small) * scale) // 100)))
    gone = 0
    for rel in deleted:
        gone += (root / rel).stat().st_size
        (root / rel).unlink()
    return [Change("edits inside large files", len(data.large), edited, _whole(root, data.large)),
            Change("appended log files", len(data.logs), appended, _whole(root, data.logs)),
            Change("new files", len(new), _sizes(root, new), _whole(root, new)),
            Change("deleted files", len(deleted), gone, 0)]


def _sizes(root: Path, rels: Sequence[str]) -> int:
    return sum((root / rel).stat().st_size for rel in rels)


def _whole(root: Path, rels: Sequence[str]) -> int:
    return sum(ciphertext_size((root / rel).stat().st_size) for rel in rels)


def ciphertext_size(plaintext: int) -> int:
    """gocryptfs' file format (forward and reverse alike): an 18-byte header (version, file
    id), then each 4096-byte plaintext block as nonce + ciphertext + tag; an empty file stays
    empty. Checked against the real view in every run (`formula_check`)."""
    if plaintext == 0:
        return 0
    return HEADER + plaintext + BLOCK_OVERHEAD * math.ceil(plaintext / BLOCK)


_GOCRYPTFS_OWN = ("gocryptfs.diriv", "gocryptfs.conf")


def formula_check(repository: Path, view: Path) -> tuple[int, int, int]:
    """(files, ciphertext bytes predicted from the repository, bytes the view shows): the
    view's own files (per-directory IVs, the config, long-name files) left out."""
    predicted, files = 0, 0
    for path in _regular_files(repository):
        if path.name != encrypt.REVERSE_CONF:
            predicted += ciphertext_size(path.stat().st_size)
            files += 1
    shown = sum(p.stat().st_size for p in _regular_files(view)
                if p.name not in _GOCRYPTFS_OWN and not p.name.endswith(".name"))
    return files, predicted, shown


def _regular_files(root: Path) -> Iterator[Path]:
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                yield path


# ---- the archive side: a throwaway sshd and account ----------------------------------------

def _must(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise BenchError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return done.stdout


class Archive:
    """sshd on 127.0.0.1 (or across `link`, bench/link.py) with its own host key and CA; one
    account whose certificate forces `rrsync -wo <volume>`, as the archive instance does."""

    def __init__(self, work: Path, link: Link | None = None) -> None:
        self.keys = work / "keys"
        self.keys.mkdir(mode=0o700)
        self.volume = work / "volume"
        self.principals = work / "principals"
        self.user = ACCOUNT_PREFIX + secrets.token_hex(3)
        self.work, self.port, self.uid = work, 0, -1
        self.link = link
        self.address = link.address if link else "127.0.0.1"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, cleanup: contextlib.ExitStack) -> None:
        cleanup.callback(self.remove_account)
        _must(["useradd", "-M", "-N", "-d", str(self.volume), "-s", "/bin/sh", "-p", "*",
               "-c", "offsite bench/wire", self.user])
        self.uid = int(_must(["id", "-u", self.user]))
        self.volume.mkdir(mode=0o700)
        os.chown(self.volume, self.uid, 0)
        self.principals.mkdir(mode=0o755)
        (self.principals / self.user).write_text(self.user + "\n")
        for name in ("ca", "host"):
            _must(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f",
                   str(self.keys / name)])
        cleanup.callback(self.stop)
        for _ in range(3):  # another process may take the free port before sshd binds it
            self.port = free_port()
            self._spawn()
            if self._banner():
                return
            self.stop()
        raise BenchError(f"sshd did not start: {(self.work / 'sshd.log').read_text()[-400:]}")

    def _spawn(self) -> None:
        config = self.work / "sshd_config"
        config.write_text(
            f"ListenAddress {self.address}:{self.port}\nHostKey {self.keys / 'host'}\n"
            f"PidFile none\nTrustedUserCAKeys {self.keys / 'ca.pub'}\n"
            f"AuthorizedPrincipalsFile {self.principals}/%u\nAuthorizedKeysFile none\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n"
            "PermitTTY no\nAllowTcpForwarding no\nX11Forwarding no\nStrictModes no\n"
            "UsePAM no\nLogLevel ERROR\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with (self.work / "sshd.log").open("ab") as log:
            argv = [tool("sshd"), "-D", "-e", "-f", str(config)]
            self.process = subprocess.Popen(self.link.enter(argv) if self.link else argv,
                                            stderr=log, start_new_session=True)

    def _banner(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process and self.process.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.address, self.port), timeout=1) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return True
            time.sleep(0.05)
        return False

    def session(self, access: str = "-wo") -> tuple[Session, transfer.SessionFiles]:
        """An ephemeral key, its certificate and the known_hosts line, as a session gives;
        `access` is rrsync's: `-wo` for a backup session, `-ro` for a restore session."""
        key = self.keys / f"session{access}"
        _must(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)])
        rrsync = shutil.which("rrsync") or "/usr/bin/rrsync"
        _must(["ssh-keygen", "-q", "-s", str(self.keys / "ca"), "-I", "bench-wire", "-n",
               self.user, "-V", "-1m:+12h", "-O", "clear",
               "-O", f"force-command={rrsync} {access} {self.volume}", f"{key}.pub"])
        kind, blob = (self.keys / "host.pub").read_text().split()[:2]
        known = self.work / "known_hosts"
        known.write_text(f"[{self.address}]:{self.port} {kind} {blob}\n")
        now = time.time()
        session = Session("bench-wire", self.address, self.port, self.user,
                          Path(f"{key}-cert.pub").read_text().strip(), known.read_text().strip(),
                          "encrypted/", now + 12 * 3600, now + 12 * 3600)
        return session, transfer.SessionFiles(key, Path(f"{key}-cert.pub"), known)

    def attach_volumes(self, cleanup: contextlib.ExitStack,
                       size_mib: int) -> dict[str, LoopVolume]:
        """An ext4 volume on a loop device at each of VOLUMES' remote paths, so that each
        way's writes are measured alone; the account owns its root (lost+found removed, as
        rsync --delete would try to delete it)."""
        images = self.work / "images"
        images.mkdir(mode=0o700)
        volumes = {}
        for name in VOLUMES:
            volume = LoopVolume(images / f"{name}.img", self.volume / name, size_mib)
            volume.attach(cleanup)
            (volume.mount / "lost+found").rmdir()
            os.chown(volume.mount, self.uid, 0)
            volume.mount.chmod(0o700)
            volumes[name] = volume
        return volumes

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def remove_account(self) -> None:
        if self.uid >= 0:
            for pid in _processes_of(self.uid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for _ in range(20):  # another useradd/userdel may hold the passwd lock
            done = subprocess.run(["userdel", self.user], capture_output=True, check=False)
            if done.returncode in (0, 6):  # 6: no such user
                return
            time.sleep(0.2)


def _processes_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
    return found


def mounts_under(root: Path) -> list[str]:
    with open("/proc/mounts") as mounts:
        points = [line.split()[1].encode().decode("unicode_escape") for line in mounts]
    return [p for p in points if p == str(root) or p.startswith(f"{root}/")]


def _unmount_all(root: Path) -> None:
    for point in sorted(mounts_under(root), reverse=True):
        subprocess.run([tool("fusermount"), "-u", "-z", point], capture_output=True,
                       timeout=30, check=False)


# ---- the runs ------------------------------------------------------------------------------

_TOOLS = {"rsync": "rsync", "ssh": "ssh", "rdiff_backup": "rdiff-backup",
          "gocryptfs": "gocryptfs", "fusermount": "fusermount3", "sshd": "/usr/sbin/sshd",
          "ssh-keygen": "ssh-keygen", "useradd": "useradd", "userdel": "userdel"}


def tool(key: str) -> str:
    path = shutil.which(_TOOLS[key])
    if path is None:
        raise BenchError(f"{_TOOLS[key]} not found (make system installs it)")
    return path


@dataclass(frozen=True)
class Sent:
    """One rsync run: `Total bytes sent`, `Total transferred file size` (the files it
    updated, counted whole) and its wall time."""

    bytes_sent: int
    transferred_file_bytes: int
    seconds: float


@dataclass
class Pass:
    """One nightly run of each way: the full path's stages, and plain rsync."""

    encrypted: Sent
    plain: Sent
    history_s: float
    mount_s: float
    verify_s: float
    """The run's own check: what it sent, what changed since the last verified pass, the day's
    slice (the initial pass knows nothing yet: everything)."""
    verify_full_s: float
    """`verify --full`: every file."""
    verified: str
    """What the run's check read (its report detail)."""
    seal_s: float = 0.0
    """The run's seal: the manifest of the view (`sealing.write`: SHA-256 of every file the
    digest cache does not know, through the FUSE view), not its push."""

    @property
    def full_path_s(self) -> float:
        return self.history_s + self.mount_s + self.encrypted.seconds


@dataclass
class Figures:
    size_mb: float
    seed: int
    files: int
    plaintext_bytes: int
    initial: Pass
    change: Pass
    changes: list[Change]
    formula_files: int
    formula_predicted: int
    formula_shown: int
    encrypted_volume_changed: int  # bytes of the 512 KiB blocks the change pass changed
    plain_volume_changed: int
    peers: list[PeerFigures] = field(default_factory=list)
    change_mb: float = 0.0  # the data set size the change was made for (scaling)
    cpus: int | None = field(default_factory=os.cpu_count)
    when: str = field(default_factory=lambda: f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    work: str = ""
    account: str = ""
    sshd_pid: int = 0
    link: str = "loopback"  # what lay between the host and sshd (bench/link.py)

    @property
    def whole_file_bytes(self) -> int:
        return sum(c.whole_file_bytes for c in self.changes)

    @property
    def changed_plaintext_bytes(self) -> int:
        """What the change wrote: edits, appends and new files (deletions write nothing)."""
        return sum(c.plaintext_bytes for c in self.changes if c.kind != "deleted files")

    @property
    def nightly_s(self) -> float:
        """The host's whole nightly run: history, view, rsync and verification."""
        return self.change.full_path_s + self.change.verify_s


class Bench:
    def __init__(self, work: Path, archive: Archive, quiet: bool) -> None:
        self.work, self.archive, self.quiet = work, archive, quiet
        self.source, self.repository = work / "source", work / "repository"
        self.view = work / "view"
        self.password = archive.keys / "password"
        self.password.write_text(secrets.token_urlsafe(24) + "\n")
        self.password.chmod(0o600)
        self.repos = history.plan((self.source,), (), self.repository, ())
        self.session, files = archive.session()
        self.rsh = transfer.rsh_command(transfer.ssh_argv(tool("ssh"), files, self.session))
        self.pushed = ""  # the last push's itemized output
        self.verified: dict[str, verify_plan.Stat] | None = None  # the view at the last check

    def initialise(self) -> None:
        self.repository.mkdir(mode=0o700)
        encrypt.initialise(tool("gocryptfs"), self.password, self.repository)

    def run_pass(self, on_view: Callable[[Path], None] | None = None) -> Pass:
        started = time.monotonic()
        history.back_up(tool("rdiff_backup"), self.repos, 20, self.say)
        history_s = time.monotonic() - started
        started = time.monotonic()
        with encrypt.mounted_view(tool("gocryptfs"), tool("fusermount"), self.password,
                                  self.repository, self.view, self.say) as view:
            mount_s = time.monotonic() - started
            encrypted = self._rsync(view, self.session)
            verify_s, verify_full_s, verified = self._verify(view)
            seal_s = self._seal(view)
            if on_view is not None:
                on_view(view)
            started = time.monotonic()
        mount_s += time.monotonic() - started
        plain = self._rsync(self.source, replace(self.session, remote_path="plain/"))
        return Pass(encrypted, plain, history_s, mount_s, verify_s, verify_full_s, verified,
                    seal_s)

    def _seal(self, view: Path) -> float:
        """What a run's seal reads and computes, timed; the manifest is not pushed."""
        out = self.work / "wire-seal"
        out.mkdir(mode=0o700, exist_ok=True)
        started = time.monotonic()
        sealing.write(view, self.repository, self.password, "bench-wire",
                      self.session.window_id, time.time(), out, self.work / "wire-digests.json")
        return time.monotonic() - started

    def _rsync(self, source: Path, session: Session) -> Sent:
        argv = transfer.rsync_argv(tool("rsync"), self.rsh, str(source), session,
                                   io_timeout_s=600)
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise BenchError(f"rsync of {source} failed ({done.returncode}): "
                             f"{done.stderr.strip()[-400:]}")
        self.pushed = done.stdout
        return Sent(transfer.parse_stats(done.stdout).bytes_sent,
                    _stat(done.stdout, "Total transferred file size"), seconds)

    def _verify(self, view: Path) -> tuple[float, float, str]:
        """The run's check as `offsite-host run` plans it, in steady state (every other slice
        read within the cycle), then `verify --full`: the seconds of each (the first includes
        listing the view), and what the first read."""
        started = time.monotonic()
        now = time.time()
        files = verify_state.survey(view)
        sent = transfer.differing_paths(transfer.differences(self.pushed))
        plan = verify_plan.make_plan(files, sent, self.verified,
                                     [now - verify_plan.DAY_S] * VERIFY_CYCLE_DAYS, now,
                                     VERIFY_CYCLE_DAYS)
        listing = self.work / "verify.list"
        listing.write_bytes(b"".join(p.encode("utf-8", "surrogateescape") + b"\0"
                                     for p in plan.paths()))
        self._check(view, "" if plan.everything else str(listing))
        nightly_s = time.monotonic() - started
        full_s = nightly_s if plan.everything else self._check(view, "")
        self.verified = files
        return nightly_s, full_s, plan.describe()

    def _check(self, view: Path, files_from: str) -> float:
        argv = transfer.rsync_argv(tool("rsync"), self.rsh, str(view), self.session,
                                   io_timeout_s=600, verify=True, files_from=files_from)
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
        if done.returncode != 0 or transfer.differences(done.stdout):
            raise BenchError(f"the archive copy does not match the view ({done.returncode}): "
                             f"{transfer.differences(done.stdout)[:3]} {done.stderr[-300:]}")
        return time.monotonic() - started

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"  {message}", file=sys.stderr)


def _stat(stdout: str, name: str) -> int:
    for line in stdout.splitlines():
        if line.startswith(name + ":"):
            return int("".join(c for c in line.partition(":")[2].split("bytes")[0]
                               if c.isdigit()) or 0)
    return 0


def workspace(cleanup: contextlib.ExitStack, name: str,
              link_mbit: float | None = None) -> tuple[Path, Archive]:
    """A work directory `offsite-bench-<name>-*` and a started Archive in it (across a shaped
    link of `link_mbit` Mbit/s, or on loopback), all removed by `cleanup` (sshd stopped, the
    account's processes killed and the account deleted, FUSE mounts under it detached, every
    file deleted, the link's namespace and veth pair deleted), also after a failure or
    Ctrl-C."""
    if os.geteuid() != 0:
        raise BenchError(f"bench/{name} must run as root: it adds a Unix account for its sshd")
    work = Path(tempfile.mkdtemp(prefix=f"offsite-bench-{name}-"))
    cleanup.callback(shutil.rmtree, work, ignore_errors=True)
    work.chmod(0o711)  # sshd reads the principals file as the account
    cleanup.callback(_unmount_all, work)
    archive = Archive(work, shaped_link(cleanup, link_mbit) if link_mbit else None)
    archive.start(cleanup)
    return work, archive


def volume_mib(size_mb: float) -> int:
    """Room for the data set's ciphertext, rdiff-backup's increments and, with
    `--delay-updates`, a second copy of every changed file until the end of the run."""
    return 64 + math.ceil(size_mb * 2.5 * MB / 2**20)


def measure(size_mb: float, seed: int = SEED, quiet: bool = True,
            change_mb: float | None = None, peers: bool = True,
            link_mbit: float | None = None) -> Figures:
    """The whole bench (`change_mb`: make the change that data set size gets, for the scaling
    row; `peers`: also run restic and borg where installed; `link_mbit`: sshd across a shaped
    link); everything it made is gone when it returns or raises."""
    with contextlib.ExitStack() as cleanup:
        work, archive = workspace(cleanup, "wire", link_mbit)
        volumes = archive.attach_volumes(cleanup, volume_mib(size_mb))
        bench = Bench(work, archive, quiet)
        log = bench.say
        log(f"generating {size_mb:g} MB under {bench.source}")
        data = generate(bench.source, Shape.of(size_mb), seed)
        bench.initialise()
        log("initial send")
        initial = bench.run_pass()
        ran = [kind(work / "peers", bench.source) for kind in PEERS if peers and kind.installed()]
        first = [(peer, peer.backup("initial")) for peer in ran]
        for name, volume in volumes.items():
            volume.copy_image(work / "images" / f"{name}-before.img")
        change_scale = (change_mb or size_mb) / size_mb
        changes = apply_changes(bench.source, data, seed + 1, change_scale)
        checked: list[tuple[int, int, int]] = []
        log("change")
        change = bench.run_pass(
            lambda view: checked.append(formula_check(bench.repository, view)))
        changed = {name: volume.changed_bytes(work / "images" / f"{name}-before.img")
                   for name, volume in volumes.items()}
        compared = [PeerFigures(peer.name, peer.version(), run, peer.backup("nightly"))
                    for peer, run in first]
        assert archive.process is not None
        return Figures(size_mb, seed, data.files, data.bytes, initial, change, changes, *checked[0],
                       changed["encrypted"], changed["plain"], compared, change_mb or size_mb,
                       work=str(work), account=archive.user, sshd_pid=archive.process.pid,
                       link=archive.link.describe() if archive.link else "loopback")
    raise AssertionError("unreachable")  # for mypy: ExitStack never swallows here


# ---- the report ----------------------------------------------------------------------------

def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = [[c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
              enumerate(zip(row, widths, strict=True))] for row in (header, *rows)]
    return "\n".join("  ".join(line).rstrip() for line in lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:,.2f}" if b else "-"


def report(f: Figures) -> str:
    enc, plain, whole = f.change.encrypted.bytes_sent, f.change.plain.bytes_sent, \
        f.whole_file_bytes
    changes = table(["change", "files", "plaintext bytes", "re-encrypted whole"],
                    [[c.kind, f"{c.files:,}", f"{c.plaintext_bytes:,}",
                      f"{c.whole_file_bytes:,}"] for c in f.changes])
    bytes_rows = [
        ["full encrypted path (rdiff-backup, gocryptfs -reverse, rsync)",
         f"{f.initial.encrypted.bytes_sent:,}", f"{enc:,}"],
        ["plain rsync of the plaintext (the limit)", f"{f.initial.plain.bytes_sent:,}",
         f"{plain:,}"],
        ["changed and new files re-encrypted, sent whole (counted)", "-", f"{whole:,}"],
        ["  the repository's changed files, whole (rsync's transferred size)",
         f"{f.initial.encrypted.transferred_file_bytes:,}",
         f"{f.change.encrypted.transferred_file_bytes:,}"],
    ]
    check = "exact" if f.formula_predicted == f.formula_shown else "MISMATCH"
    return "\n".join([
        f"Offsite on the wire, {f.when}, {f.cpus} CPUs, Python {platform.python_version()}",
        f"between the host and sshd: {f.link}",
        f"data set: {f.files:,} files, {f.plaintext_bytes:,} bytes (--size-mb {f.size_mb:g}, "
        f"seed {f.seed}); the change:", "", changes, "",
        "Bytes sent (rsync --stats \"Total bytes sent\"), over the same ssh and rrsync -wo:", "",
        table(["", "initial", "change"], bytes_rows), "",
        f"change: encrypted path / plain rsync = {_ratio(enc, plain)}; "
        f"whole-file / encrypted path = {_ratio(whole, enc)}",
        f"gocryptfs size formula against the view: {f.formula_files:,} files, predicted "
        f"{f.formula_predicted:,}, shown {f.formula_shown:,} bytes: {check}",
        f"the change's run {f.change.verified}", "",
        f"Seconds per step, and MB/s of the initial send ({f.plaintext_bytes / MB:,.1f} MB of "
        "plaintext, MB = 10^6 bytes):", "", throughput(f), "", volumes(f), "", peers(f)])


def volumes(f: Figures) -> str:
    plain, sent = f.change.plain.bytes_sent, f.change.encrypted.bytes_sent

    def row(name: str, changed: int) -> list[str]:
        return [name, f"{changed // EBS_BLOCK:,}", f"{changed:,}", _ratio(changed, plain)]

    return "\n".join([
        "The archive volumes after the change: 512 KiB blocks whose content changed (what the "
        "next EBS snapshot stores, at least),",
        f"each way on its own ext4 volume on a loop device; rsync's flags: "
        f"{' '.join(transfer.TRANSFER_FLAGS)}", "",
        table(["", "blocks", "bytes", "/ plain rsync's bytes sent"], [
            row("full encrypted path", f.encrypted_volume_changed),
            row("plain rsync of the plaintext", f.plain_volume_changed)]), "",
        f"change: encrypted path's changed blocks / plain rsync's bytes sent "
        f"({plain:,}) = {_ratio(f.encrypted_volume_changed, plain)} (goal <= 4); "
        f"per plaintext byte the change wrote ({f.changed_plaintext_bytes:,}): "
        f"{_ratio(f.encrypted_volume_changed, f.changed_plaintext_bytes)}; per byte the "
        f"encrypted path sent: {_ratio(f.encrypted_volume_changed, sent)}"])


def peers(f: Figures) -> str:
    rows = [["Offsite: history + view + rsync, then verify",
             f"{f.initial.full_path_s:,.1f} + {f.initial.verify_s:,.1f}",
             f"{f.change.full_path_s:,.1f} + {f.change.verify_s:,.1f}",
             f"{f.encrypted_volume_changed:,}", "the volume's changed blocks"]]
    rows += [[p.version, f"{p.initial.seconds:,.1f}", f"{p.nightly.seconds:,.1f}",
              f"{p.added_bytes:,}", "repository growth"] for p in f.peers]
    missing = [kind.name for kind in PEERS if kind.name not in {p.name for p in f.peers}]
    notes = [f"not run: {', '.join(missing)} (not installed: make bench-wire installs them as "
             "root)" if missing else "restic and borg: local repositories, no ssh"]
    initial_s = f.initial.full_path_s + f.initial.verify_s
    notes += [f"Offsite / restic: initial {_ratio(initial_s, p.initial.seconds)}, nightly "
              f"{_ratio(f.nightly_s, p.nightly.seconds)}, storage added "
              f"{_ratio(f.encrypted_volume_changed, p.added_bytes)} (goal of issue 12: <= 1, "
              "<= 1, <= 0.5)" for p in f.peers if p.name == "restic"]
    return "\n".join([
        "Beside the peers, on the same data set and change, one run each (seconds):", "",
        table(["", "initial s", "nightly s", "storage added", "counted as"], rows), "", *notes])


def scaling(runs: Sequence[Figures]) -> str:
    """The same change on data sets of several sizes: the nightly run should follow the
    change, not the data."""
    rows = [[f"{f.size_mb:g}", f"{f.files:,}", f"{f.change.encrypted.bytes_sent:,}",
             f"{f.encrypted_volume_changed:,}", f"{f.change.history_s:,.1f}",
             f"{f.change.encrypted.seconds:,.1f}", f"{f.change.verify_s:,.1f}",
             f"{f.nightly_s:,.1f}"] for f in runs]
    first, last = runs[0], runs[-1]
    return "\n".join([
        f"Scaling: the same change (made for {first.change_mb:g} MB) on data sets of "
        f"{', '.join(f'{f.size_mb:g}' for f in runs)} MB:", "",
        table(["data set MB", "files", "sent", "changed blocks", "history s", "rsync s",
               "verify s", "nightly s"], rows), "",
        f"nightly run time {last.size_mb:g} MB / {first.size_mb:g} MB = "
        f"{_ratio(last.nightly_s, first.nightly_s)} (goal <= 1.3: the run follows the change)"])


def throughput(f: Figures) -> str:
    p, c = f.initial, f.change

    def row(name: str, first: float, then: float | None) -> list[str]:
        return [name, f"{first:,.1f}", f"{f.plaintext_bytes / MB / first:,.1f}",
                "-" if then is None else f"{then:,.1f}"]

    whole = p.full_path_s + p.verify_s + p.seal_s
    return "\n".join([table(["", "initial s", "MB/s", "change s"], [
        row("full path: history + view + rsync", p.full_path_s, c.full_path_s),
        row("  rdiff-backup (history)", p.history_s, c.history_s),
        row("  mounting and unmounting the view", p.mount_s, c.mount_s),
        row("  rsync of the view", p.encrypted.seconds, c.encrypted.seconds),
        row("  verify, the run's (sent, changed, 1/20)", p.verify_s, c.verify_s),
        row("  verify --full (rsync --checksum, all)", p.verify_full_s, c.verify_full_s),
        row("  seal: the view's manifest (SHA-256)", p.seal_s, c.seal_s),
        row("plain rsync of the plaintext", p.plain.seconds, c.plain.seconds),
    ]), "", f"initial send: plain rsync / full path = {_ratio(p.plain.seconds, p.full_path_s)} "
        "(goal of issue 12: >= 0.5); with the run's verify and seal, the whole run: "
        f"{_ratio(p.plain.seconds, whole)}"])


def as_dict(f: Figures) -> dict[str, Any]:
    data = asdict(f)
    data["whole_file_bytes"] = f.whole_file_bytes
    data["changed_plaintext_bytes"] = f.changed_plaintext_bytes
    data["nightly_s"] = f.nightly_s
    for name in ("initial", "change"):
        data[name]["full_path_s"] = getattr(f, name).full_path_s
    for peer, figures in zip(data["peers"], f.peers, strict=True):
        peer["added_bytes"] = figures.added_bytes
    return data


def as_json(f: Figures, scaled: Sequence[Figures] = ()) -> str:
    data = as_dict(f)
    if scaled:
        data["scaling"] = [as_dict(run) for run in scaled]
    return json.dumps(data, indent=2)


# ---- the command ---------------------------------------------------------------------------

def _size(text: str) -> float:
    value = float(text)
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"{text}: want 1 to 100000 (MB)")
    return value


def data_set_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The options of a bench over a generated data set (this one and bench.restore)."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=_size, default=200.0,
                   help="size of the generated data set (default 200)")
    p.add_argument("--seed", type=int, default=SEED, help=f"data seed (default {SEED})")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--link-mbit", type=float, metavar="MBIT",
                   help="reach sshd over a link of this many Mbit/s each way (a veth pair into "
                        "a network namespace, shaped by tc), as a host's uplink; default: "
                        "loopback, where the CPU, not the link, bounds every transfer")
    return p


def _size_list(text: str) -> list[float]:
    return sorted({_size(part) for part in text.split(",") if part.strip()})


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = data_set_parser("python -m bench.wire", __doc__)
    parser.add_argument("--scaling", type=_size_list, metavar="MB,MB",
                        help="also make the change of --size-mb on data sets of these sizes "
                             "(e.g. 200,2000) and compare the nightly run times")
    return parser.parse_args(argv)


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(measure_it: Callable[[], T]) -> T | int:
    """`measure_it()` with SIGTERM turned into Ctrl-C, so that the cleanup runs for both;
    an exit code (130 interrupted, 1 failed) when it did not finish."""
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return measure_it()
    except KeyboardInterrupt:
        print("interrupted; everything the bench made is removed", file=sys.stderr)
        return 130
    except (BenchError, LinkError, OffsiteError, PeerError, VolumeError, OSError,
            subprocess.SubprocessError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def measure_all(args: argparse.Namespace) -> tuple[Figures, list[Figures]]:
    """The bench at --size-mb, then each other --scaling size with the same change."""
    figures = measure(args.size_mb, args.seed, quiet=args.quiet, link_mbit=args.link_mbit)
    scaled = [figures if size == args.size_mb else
              measure(size, args.seed, args.quiet, change_mb=args.size_mb, peers=False,
                      link_mbit=args.link_mbit)
              for size in args.scaling or ()]
    return figures, sorted(scaled, key=lambda f: f.size_mb)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    measured = run(lambda: measure_all(args))
    if isinstance(measured, int):
        return measured
    figures, scaled = measured
    if args.json:
        print(as_json(figures, scaled))
    else:
        print(report(figures) + (f"\n\n{scaling(scaled)}" if scaled else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
