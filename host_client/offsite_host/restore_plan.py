"""What a restore is asked to do, checked before anything is fetched (pure): the time inside
the recovery point, the path inside the backup, the target directory, and the rdiff-backup
command line; and how to read rdiff-backup's answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePath

from offsite_host.exitcodes import ConfigError
from offsite_host.history import repository_name

RET_WARN = 2  # rdiff-backup's RET_CODE_WARN: on a read-only repository, "cannot open the log"
_AT = re.compile(
    r"now"
    r"|(\d+[smhDWMY])+"                             # an interval: 3D, 1W2D, 90m
    r"|\d+B"                                        # N backups back
    r"|\d{9,11}"                                    # seconds since the epoch
    r"|\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2})?(Z|[+-]\d{2}:\d{2})?)?"  # w3 datetime / date
    r"|\d{1,2}/\d{1,2}/\d{4}")                      # MM/DD/YYYY
_NOISE = ("Unable to open logfile", "emitted warnings", "syslog")
IO_DAMAGE = ("input/output error reading the decrypted copy: its ciphertext is damaged (a block "
             "failed gocryptfs' authentication)")
_IO_ERROR = re.compile(r"Errno 5\b|Input/output error", re.I)
# rdiff-backup checks each restored file against the SHA-1 its metadata recorded, but only
# warns (exit 0) when it differs or is missing: that is wrong or unverifiable data.
_BAD_HASH = re.compile(r"^.*(?:doesn't match recorded hash|Hash for file .* missing).*$", re.M)


class TargetState(Enum):
    ABSENT = "absent"
    EMPTY = "empty"
    NOT_EMPTY = "not empty"
    NOT_A_DIRECTORY = "not a directory"
    MOUNT_POINT = "a mount point"  # rename(2) and rmdir(2) refuse it (EBUSY): never replaced


@dataclass(frozen=True)
class Selection:
    """A path inside the backup: its repository's name and the part below that repository."""

    path: PurePath
    repository: str
    inner: tuple[str, ...]


def check_at(text: str) -> str:
    """`--at`: an rdiff-backup time spec (checked here so a typo fails before the fetch)."""
    if not _AT.fullmatch(text):
        raise ConfigError(f"--at {text!r} is not an rdiff-backup time: use now, an interval "
                          "(3D, 2W, 36h), N backups back (2B), a date (2030-03-17) or a time "
                          "(2030-03-17T01:30:00Z)")
    return text


def select(path: PurePath | None, paths: tuple[PurePath, ...]) -> list[Selection]:
    """`--path`: one of the configured paths or below it (the deepest that contains it); no
    `--path`: every configured path."""
    if path is None:
        return [Selection(p, repository_name(p), ()) for p in paths]
    if not path.is_absolute() or ".." in path.parts:
        raise ConfigError(f"--path {str(path)!r} must be an absolute path without '..'")
    owners = [p for p in paths if p == path or p in path.parents]
    if not owners:
        raise ConfigError(f"--path {path} is not in the backup: it is under none of the "
                          f"configured paths ({', '.join(str(p) for p in paths)})")
    owner = max(owners, key=lambda p: len(p.parts))
    return [Selection(path, repository_name(owner), path.parts[len(owner.parts):])]


def check_target(target: PurePath, state: TargetState, live: tuple[PurePath, ...],
                 private: tuple[PurePath, ...], overwrite: bool) -> None:
    """`--to`: absent or an empty directory, never a configured (live) path nor one that holds
    one, unless `--force-overwrite`; never the repository or the state directory at all. A new
    directory inside a live path is fine: nothing there is overwritten."""
    if not target.is_absolute():
        raise ConfigError(f"--to {target} must be an absolute path")
    for inner in private:
        if _overlap(target, inner):
            raise ConfigError(f"--to {target} overlaps {inner}, which offsite-host itself "
                              "uses; choose another directory")
    if state is TargetState.NOT_A_DIRECTORY:
        raise ConfigError(f"--to {target} exists and is not a directory")
    if state is TargetState.MOUNT_POINT:
        raise ConfigError(f"--to {target} is a mount point, which a restore cannot replace: "
                          f"restore into a new directory inside it (e.g. {target / 'restored'})")
    if overwrite:
        return
    for path in live:
        if target == path or target in path.parents:
            raise ConfigError(f"--to {target} would restore over the live data of {path}; "
                              "restore elsewhere, or pass --force-overwrite to replace it")
    if state is TargetState.NOT_EMPTY:
        raise ConfigError(f"--to {target} is not empty; nothing was changed (restore into an "
                          "empty or new directory, or pass --force-overwrite to replace it)")


def restore_argv(rdiff_backup: str, at: str, source: Path, target: Path) -> list[str]:
    return [rdiff_backup, "restore", "--at", at, str(source), str(target)]


def restore_problem(returncode: int, stderr: str) -> str | None:
    """Why an rdiff-backup restore must count as failed, or None. Strict: anything beyond a
    plain warning, or any I/O error (gocryptfs' answer to a block that fails authentication),
    is a failure: a restore must never hand back wrong data quietly."""
    if _IO_ERROR.search(stderr):
        return IO_DAMAGE
    bad = _BAD_HASH.findall(stderr)
    if bad:
        return (f"{len(bad)} restored files fail rdiff-backup's recorded SHA-1 check (the copy "
                f"is damaged), e.g. {bad[0].strip()}")
    if returncode & ~RET_WARN:
        return f"rdiff-backup failed (code {returncode}): {noise_free(stderr)}"
    return None


def noise_free(stderr: str) -> str:
    """rdiff-backup's messages without the ones a read-only repository always causes."""
    kept = [line.strip() for line in stderr.splitlines()
            if line.strip() and not any(n in line for n in _NOISE)]
    return " | ".join(kept[-3:]) or "no message"


def _overlap(a: PurePath, b: PurePath) -> bool:
    return a == b or a in b.parents or b in a.parents
