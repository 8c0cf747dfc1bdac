"""Finding and running the external programs: always an argument list, never a shell."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from offsite_host.config import Tools
from offsite_host.exitcodes import ConfigError, LocalStageError

SUBSTITUTES = {
    "rsync": "Linux: the rsync package; macOS: `brew install rsync`; Windows: cwRsync, or "
             "the rsync of MSYS2/Cygwin",
    "ssh": "Linux: openssh-client; macOS: built in; Windows: the OpenSSH client feature "
           "(C:\\Windows\\System32\\OpenSSH\\ssh.exe)",
    "rdiff_backup": "Linux: the rdiff-backup package; macOS: `brew install rdiff-backup`; "
                    "Windows: rdiff-backup's Windows build (rdiff-backup.exe)",
    "gocryptfs": "Linux: the gocryptfs package (with fuse3); macOS: gocryptfs with macFUSE; "
                 "Windows: cppcryptfs with offsite-host's wrapper, offsite-gocryptfs-cppcryptfs",
    "fusermount": "Linux: fusermount3 (the fuse3 package); macOS: umount; Windows: "
                  "offsite-host's offsite-unmount-cppcryptfs",
}


@dataclass(frozen=True)
class ResolvedTools:
    """Absolute paths of the programs, checked to exist."""

    rsync: str
    ssh: str
    rdiff_backup: str
    gocryptfs: str
    fusermount: str


def resolve(tools: Tools, needed: tuple[str, ...] | None = None) -> ResolvedTools:
    """Finds each tool (a bare name on PATH, or a path); a missing one is a configuration error
    that names it, the `[tools]` key to set, and the usual package or substitute."""
    found = {}
    for key in ("rsync", "ssh", "rdiff_backup", "gocryptfs", "fusermount"):
        configured = getattr(tools, key)
        if needed is not None and key not in needed:
            found[key] = configured
            continue
        path = shutil.which(configured)
        if path is None:
            raise ConfigError(
                f"{key.replace('_', '-')} not found: {configured!r} is not an executable "
                f"(set tools.{key} in host.toml; {SUBSTITUTES[key]})")
        found[key] = path
    return ResolvedTools(**found)


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


class ToolTimeoutError(LocalStageError):
    pass


def run(argv: list[str], timeout: float, cwd: Path | None = None) -> Completed:
    """Runs one program to completion, capturing its output as text."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=cwd,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ToolTimeoutError(f"{Path(argv[0]).name} did not finish in {timeout:.0f} s") \
            from exc
    except OSError as exc:
        raise ConfigError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    return Completed(done.returncode, _text(done.stdout), _text(done.stderr))


MIN_RSYNC = (3, 1)
"""`--info=progress2`, `--delete-missing-args` (3.1.0) and the itemized output `transfer.py`
reads; Apple's rsync 2.6.9 (up to macOS 14) and openrsync (macOS 15) lack them."""


def rsync_version_problem(version_output: str) -> str | None:
    """What is wrong with the rsync whose `--version` printed this, or None for 3.1+."""
    first = version_output.strip().splitlines()[0] if version_output.strip() else ""
    if "openrsync" in first.lower():
        return "it is openrsync (macOS' /usr/bin/rsync since macOS 15)"
    match = re.match(r"rsync\s+version\s+v?(\d+)\.(\d+)", first)
    if not match:
        return f"it does not answer --version like rsync ({first[:60]!r})"
    version = (int(match.group(1)), int(match.group(2)))
    if version < MIN_RSYNC:
        return f"it is rsync {version[0]}.{version[1]} (macOS' /usr/bin/rsync is 2.6.9)"
    return None


def check_rsync(rsync: str) -> None:
    """Refuses an rsync older than 3.1 before anything runs, naming the fix."""
    done = run([rsync, "--version"], timeout=30)
    problem = rsync_version_problem(done.stdout + done.stderr)
    if problem:
        raise ConfigError(f"{rsync} cannot be used: {problem}; offsite-host needs rsync 3.1 or "
                          "later (macOS: `brew install rsync`, then set tools.rsync to "
                          "/opt/homebrew/bin/rsync, or /usr/local/bin/rsync on Intel)")


def tail(text: str, lines: int = 3) -> str:
    """The last meaningful lines of a program's output, joined for a one-line message."""
    kept = [line.strip() for line in text.splitlines() if line.strip()
            and "syslog" not in line.lower()]
    return " | ".join(kept[-lines:])


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
