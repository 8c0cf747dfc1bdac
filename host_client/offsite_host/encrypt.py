"""The encrypted view: gocryptfs `-reverse` over the local repository.

Reverse mode shows a plaintext directory as ciphertext, read-only, without storing a second
copy. It is deterministic (AES-SIV names, IVs derived from the path), so unchanged plaintext
blocks stay byte-identical ciphertext and rsync's delta transfer keeps working. Its
configuration, `.gocryptfs.reverse.conf` in the repository, holds the master key encrypted with
the password; the view shows it as `gocryptfs.conf`, so the archive copy carries it too and a
restore needs only the password: `gocryptfs -passfile PW <copy> <mountpoint>`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from offsite_host import tools
from offsite_host.exitcodes import ConfigError, LocalStageError, RestoreError

REVERSE_CONF = ".gocryptfs.reverse.conf"
FORWARD_CONF = "gocryptfs.conf"  # how the reverse view (and so the archive copy) shows it
FSCK_TIMEOUT_S = 24 * 3600.0
PASSWORD_INCORRECT = 12  # gocryptfs' documented exit code
MOUNT_TIMEOUT_S = 120.0


def init_argv(gocryptfs: str, password_file: Path, repository: Path) -> list[str]:
    return [gocryptfs, "-init", "-reverse", "-q", "-passfile", str(password_file),
            str(repository)]


def mount_argv(gocryptfs: str, password_file: Path, repository: Path,
               mountpoint: Path) -> list[str]:
    return [gocryptfs, "-reverse", "-ro", "-q", "-passfile", str(password_file),
            str(repository), str(mountpoint)]


def plain_mount_argv(gocryptfs: str, password_file: Path, cipherdir: Path,
                     mountpoint: Path) -> list[str]:
    """Forward mode over a fetched copy, read-only: every block is authenticated (AES-SIV, the
    content cipher the reverse view was made with), and one that fails is an I/O error (EIO),
    never wrong bytes."""
    return [gocryptfs, "-ro", "-q", "-passfile", str(password_file), str(cipherdir),
            str(mountpoint)]


def fsck_argv(gocryptfs: str, password_file: Path, cipherdir: Path) -> list[str]:
    return [gocryptfs, "-fsck", "-q", "-passfile", str(password_file), str(cipherdir)]


def unmount_argv(fusermount: str, mountpoint: Path, platform: str, lazy: bool = False) -> list[str]:
    if platform.startswith("linux"):
        return [fusermount, "-u", *(["-z"] if lazy else []), str(mountpoint)]
    return [fusermount, *(["-f"] if lazy else []), str(mountpoint)]


def initialise(gocryptfs: str, password_file: Path, repository: Path) -> Path:
    """Creates the reverse-mode configuration; gocryptfs prints the master key, which is
    captured here and dropped, never shown (the password file and the conf recover it)."""
    conf = repository / REVERSE_CONF
    if conf.exists():
        raise ConfigError(f"{conf} already exists: this repository is initialised")
    done = _run(init_argv(gocryptfs, password_file, repository))
    if done.returncode != 0:
        raise LocalStageError(f"gocryptfs -init failed ({done.returncode}): "
                              f"{tools.tail(done.stderr)}")
    return conf


@contextlib.contextmanager
def mounted_view(gocryptfs: str, fusermount: str, password_file: Path, repository: Path,
                 mountpoint: Path, warn: Callable[[str], None]) -> Iterator[Path]:
    """Mounts the view on `mountpoint` and always unmounts it, whatever happens inside. An
    unmount failure is only warned about: the next run detaches a stale mount first."""
    if not (repository / REVERSE_CONF).exists():
        raise ConfigError(f"{repository} has no {REVERSE_CONF}: run `offsite-host init`")
    with _mounted(mount_argv(gocryptfs, password_file, repository, mountpoint), fusermount,
                  mountpoint, password_file, repository / REVERSE_CONF, warn,
                  "the encrypted view"):
        yield mountpoint


@contextlib.contextmanager
def mounted_plain(gocryptfs: str, fusermount: str, password_file: Path, cipherdir: Path,
                  mountpoint: Path, warn: Callable[[str], None],
                  nice: bool = False) -> Iterator[Path]:
    """Mounts the decrypted, read-only view of a fetched copy; always unmounts it. `nice`:
    its daemon at the lowest CPU priority (nice(1), where there is one), for work that should
    only take what others leave."""
    if not (cipherdir / FORWARD_CONF).is_file():
        raise RestoreError(f"the fetched copy in {cipherdir} has no {FORWARD_CONF}: it is not "
                           "an Offsite archive copy")
    argv = plain_mount_argv(gocryptfs, password_file, cipherdir, mountpoint)
    lowest = shutil.which("nice") if nice else None
    with _mounted([lowest, "-n", "19", *argv] if lowest else argv,
                  fusermount, mountpoint, password_file, cipherdir / FORWARD_CONF, warn,
                  "the fetched copy"):
        yield mountpoint


def fsck(gocryptfs: str, password_file: Path, cipherdir: Path) -> str | None:
    """Reads and authenticates every name and block of a fetched copy; what is wrong, or
    None."""
    done = tools.run(fsck_argv(gocryptfs, password_file, cipherdir), timeout=FSCK_TIMEOUT_S)
    if done.returncode == 0:
        return None
    if done.returncode == PASSWORD_INCORRECT:
        raise ConfigError(f"gocryptfs refused the password in {password_file} for the fetched "
                          "copy (password incorrect)")
    found = [line.strip() for line in (done.stdout + done.stderr).splitlines()
             if "corrupt" in line.lower() or "error" in line.lower()]
    return (f"gocryptfs -fsck found damage (exit {done.returncode}): "
            f"{' | '.join(found[-3:]) or tools.tail(done.stderr)}")


@contextlib.contextmanager
def _mounted(argv: list[str], fusermount: str, mountpoint: Path, password_file: Path,
             conf: Path, warn: Callable[[str], None], what: str) -> Iterator[None]:
    release_stale(fusermount, mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = _run(argv)
    if done.returncode == PASSWORD_INCORRECT:
        raise ConfigError(f"gocryptfs refused the password in {password_file} for {conf} "
                          "(password incorrect)")
    if done.returncode != 0:
        raise LocalStageError(f"cannot mount {what} ({done.returncode}): "
                              f"{tools.tail(done.stderr)}")
    try:
        yield
    finally:
        try:
            unmount(fusermount, mountpoint)
        except LocalStageError as exc:
            warn(str(exc))


def unmount(fusermount: str, mountpoint: Path) -> None:
    """Unmounts, retrying while the mount is busy, then detaches it lazily as a last resort."""
    for _ in range(5):
        if _run(unmount_argv(fusermount, mountpoint, sys.platform)).returncode == 0:
            return
        time.sleep(0.5)
    done = _run(unmount_argv(fusermount, mountpoint, sys.platform, lazy=True))
    if done.returncode != 0:
        raise LocalStageError(f"cannot unmount {mountpoint}: {tools.tail(done.stderr)}")


def release_stale(fusermount: str, mountpoint: Path) -> None:
    """A run that was killed can leave its view mounted (or its FUSE daemon dead, where any
    access fails with ENOTCONN); detach it before mounting again."""
    try:
        mountpoint.stat()
    except FileNotFoundError:
        return
    except OSError:  # ENOTCONN: a dead FUSE daemon's mount
        mounted = True
    else:
        mounted = os.path.ismount(mountpoint)
    if mounted:
        _run(unmount_argv(fusermount, mountpoint, sys.platform, lazy=True))


def _run(argv: list[str]) -> tools.Completed:
    return tools.run(argv, timeout=MOUNT_TIMEOUT_S)
