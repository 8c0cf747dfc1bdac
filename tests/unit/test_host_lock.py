"""One run at a time; a dead holder never blocks the next run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from offsite_host.exitcodes import LockedError
from offsite_host.lock import RunLock


def test_a_second_holder_is_refused_with_the_pid(tmp_path: Path) -> None:
    path = tmp_path / "state" / "run.lock"
    with RunLock(path), pytest.raises(LockedError,
                                      match=f"holds {path} \\(pid {os.getpid()}\\)"):
        RunLock(path).acquire()
    with RunLock(path):  # released: free again
        pass


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom offsite_host.lock import RunLock\n"
         f"RunLock(__import__('pathlib').Path({str(path)!r})).acquire()\n"
         "print('held', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            RunLock(path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(path):  # no stale lock left by the killed holder
        pass
