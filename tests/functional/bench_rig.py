"""What the tests of bench/wire and bench/restore share: the mark for runs that need the real
tools, and the check that a bench run left nothing behind."""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.wire import mounts_under

TOOLS = ("rsync", "ssh", "rdiff-backup", "gocryptfs", "fusermount3", "ssh-keygen", "useradd",
         "rrsync")

_needs_root_and_tools = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/sbin/sshd")
    or any(shutil.which(t) is None for t in TOOLS),
    reason="the bench needs root (it adds a Unix account), sshd, rsync, rdiff-backup, gocryptfs")


def real_tools(test: Callable[..., None]) -> Callable[..., None]:
    """Runs sshd, rsync, gocryptfs and rdiff-backup: wrap runs in
    `flock /tmp/offsite-e2e.lock` beside the e2e tests."""
    marked: Callable[..., None] = pytest.mark.e2e(_needs_root_and_tools(test))
    return marked


def assert_left_nothing(work: Path, prefix: str, sshd_pid: int, account: str) -> None:
    """No work directory, mount, sshd or account of the run is left."""
    assert work.name.startswith(prefix)
    assert not work.exists()
    assert mounts_under(work) == []
    assert not Path(f"/proc/{sshd_pid}").exists() or \
        str(work) not in Path(f"/proc/{sshd_pid}/cmdline").read_text(errors="replace")
    with pytest.raises(KeyError):
        pwd.getpwnam(account)
