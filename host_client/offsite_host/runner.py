"""Runs rsync until it ends or the session's time is up, whichever comes first.

At the stop time rsync (and the ssh it started) get SIGTERM, then SIGKILL ten seconds later;
the archive's rsync then keeps what it received (see `transfer`), so the next run resumes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

GRACE_S = 10.0


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str
    stopped: bool
    """True when the stop time ended the process."""


def run_until(argv: list[str], stop_at: float, progress: Callable[[str], None] | None = None,
              clock: Callable[[], float] = time.time) -> Finished:
    """Runs `argv` until it exits or `stop_at` (epoch seconds) passes. Lines rsync ends with a
    carriage return (its progress) go to `progress`; the others are collected."""
    posix = os.name == "posix"
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=posix)
    assert proc.stdout is not None and proc.stderr is not None
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=_pump, args=(proc.stdout, out, progress), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, err, None), daemon=True)]
    for reader in readers:
        reader.start()
    stopped = False
    try:
        proc.wait(timeout=max(stop_at - clock(), 0.0))
    except subprocess.TimeoutExpired:
        stopped = True
        _signal(proc, signal.SIGTERM, posix)
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL if posix else signal.SIGTERM, posix)
            proc.wait()
    finally:
        if proc.returncode is None:  # interrupted ourselves: never leave rsync behind
            _signal(proc, signal.SIGKILL if posix else signal.SIGTERM, posix)
            proc.wait()
        for reader in readers:
            reader.join(timeout=5)
    return Finished(proc.returncode, "".join(out), "".join(err), stopped)


def _signal(proc: subprocess.Popen[bytes], sig: int, posix: bool) -> None:
    """Signals rsync's whole process group (rsync and its ssh) on POSIX."""
    try:
        if posix:
            os.killpg(proc.pid, sig)
        elif sig == signal.SIGTERM:
            proc.terminate()
        else:
            proc.kill()
    except ProcessLookupError:
        pass


def _pump(stream: IO[bytes], sink: list[str], progress: Callable[[str], None] | None) -> None:
    pending = b""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        pending += chunk
        while True:
            cut = min((i for i in (pending.find(b"\n"), pending.find(b"\r")) if i >= 0),
                      default=-1)
            if cut < 0:
                break
            line, ending, pending = pending[:cut], pending[cut:cut + 1], pending[cut + 1:]
            text = line.decode("utf-8", errors="replace")
            if ending == b"\r":
                if progress is not None and text.strip():
                    progress(text.strip())
            else:
                sink.append(text + "\n")
    if pending:
        sink.append(pending.decode("utf-8", errors="replace"))
    stream.close()
