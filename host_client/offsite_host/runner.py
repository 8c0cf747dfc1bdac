"""Runs rsync until it ends or the session's time is up, whichever comes first.

At the stop time rsync (and the ssh it started) get SIGTERM, then SIGKILL ten seconds later;
the archive's rsync then keeps what it received (see `transfer`), so the next run resumes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

GRACE_S = 10.0
RETRY_DELAYS_S = (2.0, 4.0, 8.0, 15.0)  # then 15 s apart
# ssh could not reach sshd at all: nothing was sent, so trying again is safe. EC2 reports an
# instance `running` (and the window OPEN) a little before its sshd listens.
_UNREACHABLE = re.compile(r"Connection refused|Connection reset|Connection timed out|"
                          r"Connection closed by|kex_exchange_identification|No route to host|"
                          r"Network is unreachable")
_CONNECTION_LOST = "connection unexpectedly closed (0 bytes received so far)"
_REFUSED = re.compile(r"Permission denied|Host key verification failed|IDENTIFICATION HAS "
                      r"CHANGED|rrsync", re.IGNORECASE)


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


def unreachable(done: Finished) -> bool:
    """True when nothing was exchanged with the archive: ssh could not reach its sshd (rsync's
    exit 255), or the connection ended before the first byte with no word from either side
    (255 or 12); not when sshd or the certificate's forced command refused us."""
    if done.returncode not in (12, 255) or done.stopped or _REFUSED.search(done.stderr):
        return False
    if done.returncode == 255 and _UNREACHABLE.search(done.stderr):
        return True
    own = [line for line in done.stderr.splitlines()
           if line.strip() and not line.startswith("rsync error:")]
    return len(own) == 1 and _CONNECTION_LOST in own[0]


def run_until_reachable(argv: list[str], stop_at: float, wait_s: float,
                        note: Callable[[str], None],
                        progress: Callable[[str], None] | None = None,
                        clock: Callable[[], float] = time.time,
                        sleep: Callable[[float], None] = time.sleep) -> Finished:
    """`run_until`, tried again while the archive cannot be reached yet: for at most `wait_s`
    after the first try, and never past `stop_at`."""
    give_up = min(clock() + wait_s, stop_at)
    attempt = 0
    while True:
        done = run_until(argv, stop_at, progress, clock)
        delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
        if not unreachable(done) or clock() + delay >= give_up:
            return done
        reason = next((line for line in done.stderr.splitlines() if line.strip()), "")
        note(f"the archive is not reachable yet ({reason.strip()}); trying again in "
             f"{delay:.0f} s")
        sleep(delay)
        attempt += 1


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
