"""The ssh and rsync command lines (pure), and reading rsync's answers.

Why these rsync flags (the archive side is `rrsync -wo <volume>`, a forced command):

- `-rlpt --chmod=D0700,F0600`: tree, symlinks, times; owner/group are meaningless for
  ciphertext written by a non-root account, and fixed modes keep every file readable by that
  account on the next run (rdiff-backup keeps the real metadata itself, inside the ciphertext).
- `--inplace --no-whole-file`: a changed file is updated where it lies, by the delta algorithm
  (rsync's default for a remote copy, said so because `--whole-file` would rewrite every changed
  file whole), and rsync does not rewrite a block it matched at its own offset: the volume's
  changed blocks, which the next EBS snapshot stores and bills, are those of the change, not the
  whole of every changed file. gocryptfs' reverse view is deterministic, so unchanged plaintext
  blocks are unchanged ciphertext at the same offsets.
  The guarantee for a cut-off run is the snapshot's: such a run leaves files half updated on the
  volume, its window's snapshot is incomplete (the host reported no `succeeded`), and the
  host's newest *complete* recovery point is an earlier snapshot, which retention keeps and a
  restore chooses. What arrived is not lost: the next window's volume is made from the cut-off
  window's snapshot (retention keeps it for that), a half-updated file differs from the view's
  in time or size, and rsync takes it as the basis of its delta, so the next run (or this run's
  next try) does not resend what had arrived.
  (`--delay-updates`, used before, kept the live volume's last copy whole but wrote each changed
  file anew; the `.~tmp~` directories it may have left are not in the view, so `--delete-delay`
  removes them, and a restore's pull excludes them.)
- `--delete-delay`: deletions happen only after the transfer has completed.
- `--timeout`: an I/O timeout, so a dead link ends the run instead of hanging it.
- no `--compress`: ciphertext does not compress.

The push itemizes what it changes (`--itemize-changes`): those are the entries its run's
verification must read (`verify_plan`).

Verification is the same command with `--dry-run --checksum --itemize-changes`: the receiver
checksums its files and the sender lists what it would change. That is still a push, which
`rrsync -wo` allows, so a write-only certificate can verify. The nightly check reads only a
list of entries (`--files-from`, with `--delete-missing-args` so that a listed entry the view
no longer has but the archive still holds shows as `*deleting`); `verify --full` reads all.

A repair resends exactly the entries verification listed (`--files-from`), with `--checksum`
(a file damaged on the archive keeps its size and time, so the quick check would skip it) and
`--delete-missing-args` (a listed entry the view no longer has is deleted on the archive);
every list is NUL-separated (`--from0`), since a name may hold any byte but NUL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from offsite_host import windows
from offsite_host.session import Session

TRANSFER_FLAGS = ("-rlpt", "--chmod=D0700,F0600", "--inplace", "--no-whole-file",
                  "--delete-delay")
VERIFY_FLAGS = ("--dry-run", "--checksum", "--itemize-changes")
LIST_FLAGS = ("--delete-missing-args", "--from0")
REPAIR_FLAGS = ("--checksum", *LIST_FLAGS)


@dataclass(frozen=True)
class SessionFiles:
    """The run's ephemeral key, its certificate and the archive's known_hosts line."""

    key: Path
    certificate: Path
    known_hosts: Path


def ssh_argv(ssh: str, files: SessionFiles, session: Session) -> list[str]:
    """ssh with nothing from the user's config or agent: this key, this certificate, this
    host key, no prompt, no forwarding."""
    def option(name: str, value: str) -> list[str]:
        return ["-o", f"{name}={value}"]

    return [
        ssh, "-F", "none", "-p", str(session.port), "-l", session.user, "-i", str(files.key),
        *option("CertificateFile", _ssh_path(files.certificate)),
        *option("IdentitiesOnly", "yes"), *option("IdentityAgent", "none"),
        *option("BatchMode", "yes"), *option("StrictHostKeyChecking", "yes"),
        *option("UserKnownHostsFile", _ssh_path(files.known_hosts)),
        *option("GlobalKnownHostsFile", "none"), *option("UpdateHostKeys", "no"),
        *option("CheckHostIP", "no"), *option("PasswordAuthentication", "no"),
        *option("KbdInteractiveAuthentication", "no"), *option("ForwardAgent", "no"),
        *option("ForwardX11", "no"), *option("ClearAllForwardings", "yes"),
        *option("RequestTTY", "no"), *option("ConnectTimeout", "30"),
        *option("ServerAliveInterval", "15"), *option("ServerAliveCountMax", "4"),
        *option("LogLevel", "ERROR"),
    ]


def rsh_command(argv: list[str]) -> str:
    """The `-e` string for rsync, which splits on spaces and honours ' and " (no backslash
    escapes, so a Windows path's backslashes pass through as they are)."""
    words = []
    for arg in argv:
        if arg and not any(c in arg for c in " '\""):
            words.append(arg)
        elif "'" not in arg:
            words.append(f"'{arg}'")
        elif '"' not in arg:
            words.append(f'"{arg}"')
        else:
            raise ValueError(f"cannot pass {arg!r} to rsync -e")
    return " ".join(words)


def destination(session: Session) -> str:
    host = f"[{session.address}]" if ":" in session.address else session.address
    return f"{host}:{session.remote_path}"


def rsync_argv(rsync: str, rsh: str, view: str, session: Session, *, io_timeout_s: int,
               bwlimit_kib: int = 0, progress: bool = False, verify: bool = False,
               files_from: str = "") -> list[str]:
    """The push of the encrypted view's content (`view/`) to the session's remote path; with
    `files_from` (a local NUL-separated list of paths in the view), the repair of those entries
    only; with `verify`, the check of the whole view, or of the listed entries only."""
    argv = [rsync, *TRANSFER_FLAGS, f"--timeout={io_timeout_s}", "-e", rsh]
    if verify:
        argv += VERIFY_FLAGS
        if files_from:
            argv += [*LIST_FLAGS, f"--files-from={files_from}"]
    else:
        if files_from:
            argv += [*REPAIR_FLAGS, f"--files-from={files_from}"]
        argv += ["--itemize-changes", "--stats"]
        if progress:
            argv.append("--info=progress2")
        if bwlimit_kib:
            argv.append(f"--bwlimit={bwlimit_kib}")
    return [*argv, "--", view.rstrip("/") + "/", destination(session)]


PULL_FLAGS = ("-rlt", "--partial", "--delete", "--exclude=.~tmp~/")


def pull_argv(rsync: str, rsh: str, session: Session, staging: str, *, io_timeout_s: int,
              bwlimit_kib: int = 0, progress: bool = False) -> list[str]:
    """The fetch of a restore session's copy (`rrsync -ro`) into the local staging directory.

    `--partial` keeps a cut-off file as the delta basis of the next attempt, and finished files
    stay, so a new attempt fetches only what is missing; `--delete` makes the staging an exact
    copy; the `.~tmp~` directories a cut-off backup of an older client (`--delay-updates`) may
    have left in an old snapshot are not part of any copy."""
    argv = [rsync, *PULL_FLAGS, f"--timeout={io_timeout_s}", "-e", rsh, "--stats"]
    if progress:
        argv.append("--info=progress2")
    if bwlimit_kib:
        argv.append(f"--bwlimit={bwlimit_kib}")
    return [*argv, "--", destination(session).rstrip("/") + "/", staging.rstrip("/") + "/"]


def received(stdout: str) -> int:
    """`Total bytes received` of `rsync --stats` (0 when absent)."""
    match = re.search(r"^Total bytes received:\s*([\d,.' ]+)$", stdout, re.M)
    return int(re.sub(r"\D", "", match.group(1)) or 0) if match else 0


def rsync_local_path(path: Path, platform: str, rsync: str = "") -> str:
    """How rsync names a local directory: as is, except Windows drive paths, which the
    Cygwin-based rsync builds (cwRsync, Cygwin) take as /cygdrive/<drive>/... and MSYS2's
    (told by the `rsync` it runs) as /<drive>/..."""
    if platform != "win32":
        return str(path)
    return windows.rsync_path(path, windows.path_style(rsync) if rsync else windows.CYGDRIVE)


@dataclass(frozen=True)
class TransferStats:
    bytes_sent: int
    files_transferred: int
    files_total: int


_STAT_LINES = {
    "bytes_sent": re.compile(r"^Total bytes sent:\s*([\d,.' ]+)$", re.M),
    "files_transferred": re.compile(r"^Number of regular files transferred:\s*([\d,.' ]+)$",
                                    re.M),
    "files_total": re.compile(r"^Number of files:\s*([\d,.']+)", re.M),
}


def parse_stats(stdout: str) -> TransferStats:
    """The figures of `rsync --stats` (0 for one rsync did not print); digit grouping, which
    depends on the locale, is ignored."""
    values = {}
    for name, pattern in _STAT_LINES.items():
        match = pattern.search(stdout)
        values[name] = int(re.sub(r"\D", "", match.group(1)) or 0) if match else 0
    return TransferStats(**values)


# rsync 3's `%i %n`: an 11-character change string (`*deleting` padded), one space, the name,
# which may itself begin with spaces
_ITEM = re.compile(r"^(\*deleting  |[<>ch.][fdLDS][^ ]{9}) (.*)$")


def differences(itemized: str) -> list[str]:
    """The lines of `--itemize-changes` output that mean the copies differ: anything to send,
    create or delete. A directory whose only difference is an attribute (`.d..t......`) is not
    one: rsync touches directory times while it works."""
    found = []
    for line in itemized.splitlines():
        match = _ITEM.match(line)
        if match and not match.group(1).startswith(".d"):
            found.append(line)  # not stripped: a name may end in spaces
    return found


def differing_paths(found: list[str]) -> list[str]:
    """The paths (relative to the view) of `differences` lines, once each, in order: what a
    repair resends (or deletes). rsync escapes unprintable bytes in names as `\\#ooo`, and
    shows a symlink as `name -> target`."""
    paths: list[str] = []
    for line in found:
        match = _ITEM.match(line)
        if not match:
            continue
        path = match.group(2)
        if match.group(1)[1:2] == "L":
            path = path.split(" -> ", 1)[0]
        path = _unescape(path)
        if path not in paths:
            paths.append(path)
    return paths


def _unescape(name: str) -> str:
    data = re.sub(rb"\\#([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]),
                  name.encode("utf-8", "surrogateescape"))
    return data.decode("utf-8", "surrogateescape")


def _ssh_path(path: Path) -> str:
    """A path inside an ssh `-o` value: forward slashes, quoted when it has spaces."""
    text = path.as_posix()
    return f'"{text}"' if " " in text else text
