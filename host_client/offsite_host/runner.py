"""Runs rsync until it ends or the session's time is up, whichever comes first, and tries again
when the failure was the connection's, not the data's.

At the stop time rsync (and the ssh it started) get SIGTERM, then SIGKILL ten seconds later;
the archive's rsync then keeps what it received (see `transfer`), so the next run resumes.

Trying again is safe: a push resumes from what arrived (`--inplace`: the half-updated file is
the basis of the next delta) and a dry run or a pull changes nothing on the archive. Why a
connection can fail while the data is fine:
- the archive cannot be reached yet: EC2 reports an instance `running` (and the window OPEN) a
  little before its sshd listens;
- the volume is busy: `rrsync -wo` holds a lock on the volume while its rsync runs, and refuses
  a second connection ("Another instance of rrsync ..."); after a dropped connection the
  archive's rsync lives on until it notices (measured: about 0.2 s after ssh's end on loopback,
  up to rsync's `--timeout` when the peer just went silent). rrsync has no option to wait for
  the lock, and `-no-lock` would let that rsync race the next one on the same volume;
- the connection dropped (ssh exits 255, or rsync reports the broken link first);
- the archive is shutting down (its rsync reports the signal it got): that is the window
  ending, not worth another try.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import IO

GRACE_S = 10.0
RETRY_DELAYS_S = (2.0, 4.0, 8.0, 15.0)  # then 15 s apart
_BUSY = re.compile(r"Another instance of rrsync is already accessing")
_CLOSING = re.compile(r"received SIGINT, SIGTERM, or SIGHUP .*\[(?!sender)\w+=")
_UNREACHABLE = re.compile(r"Connection refused|Connection reset|Connection timed out|"
                          r"Connection closed by|kex_exchange_identification|No route to host|"
                          r"Network is unreachable")
# ssh's own words for a link that broke after it was up (rsync may exit 10 or 12 before ssh's
# 255 is collected)
_DROPPED = re.compile(r"closed by remote host|client_loop: send disconnect|Connection reset|"
                      r"Timeout, server .* not responding|Read from remote host|"
                      r"packet_write_wait")
_CONNECTION_LOST = "connection unexpectedly closed (0 bytes received so far)"
_REFUSED = re.compile(r"Permission denied|Host key verification failed|IDENTIFICATION HAS "
                      r"CHANGED|rrsync", re.IGNORECASE)


class Failure(Enum):
    """A failure of the connection, not of the data: trying again may well work."""

    UNREACHABLE = "the archive is not reachable yet"
    BUSY = "the archive volume is still held by the previous connection (rrsync lock)"
    DROPPED = "the connection to the archive dropped"
    CLOSING = "the archive is shutting down"


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str
    stopped: bool
    """True when the stop time ended the process."""
    cut: bool = False
    """True when a connection-level failure came too close to the stop time (or the archive
    was shutting down) to try again: the session's end, not the data, ended the run."""
    attempts: int = 1
    reason: str = ""
    """Why trying again stopped after a connection-level failure ("" otherwise)."""


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


def connection_failure(done: Finished) -> Failure | None:
    """Which connection-level failure ended `done`, if any. None for success, for the stop
    time, for a refusal (sshd or the certificate's forced command said no) and for rsync's own
    errors, which another try would only repeat."""
    if done.returncode == 0 or done.stopped:
        return None
    if _BUSY.search(done.stderr):
        return Failure.BUSY
    if _CLOSING.search(done.stderr):
        return Failure.CLOSING
    if _REFUSED.search(done.stderr):
        return None
    if done.returncode == 255 and _UNREACHABLE.search(done.stderr):
        return Failure.UNREACHABLE
    own = [line for line in done.stderr.splitlines()
           if line.strip() and not line.startswith("rsync error:")]
    if done.returncode in (12, 255) and len(own) == 1 and _CONNECTION_LOST in own[0]:
        return Failure.UNREACHABLE  # ended before the first byte, with no word from either side
    if done.returncode == 255 or (done.returncode in (10, 12) and _DROPPED.search(done.stderr)):
        return Failure.DROPPED  # rsync exits 255 only with ssh's own 255
    return None


@dataclass(frozen=True)
class Retry:
    """What to do after an attempt: try again after `delay_s`, or stop (`delay_s` None)."""

    delay_s: float | None
    cut: bool
    """Stopped because the session (or the archive) is ending, not because of the data."""
    reason: str


def next_try(failure: Failure | None, attempt: int, now: float, give_up: float,
             stop_at: float) -> Retry:
    """Backs off 2, 4, 8, then 15 s apart; never past `give_up` (the wait for a connection that
    keeps failing) nor `stop_at` (the session's end, after which the failure is the cut)."""
    if failure is None:
        return Retry(None, False, "done")
    if failure is Failure.CLOSING:
        return Retry(None, True, failure.value)
    delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
    if now + delay >= stop_at:
        return Retry(None, True, f"{failure.value}, too close to the session's end to try again")
    if now + delay >= give_up:
        return Retry(None, False, f"{failure.value}, and still after {attempt + 1} tries")
    return Retry(delay, False, f"{failure.value}; trying again in {delay:.0f} s")


def run_until_reachable(argv: list[str], stop_at: float, wait_s: float,
                        note: Callable[[str], None],
                        progress: Callable[[str], None] | None = None,
                        clock: Callable[[], float] = time.time,
                        sleep: Callable[[float], None] = time.sleep,
                        busy_wait_s: float = 0.0) -> Finished:
    """`run_until`, tried again after a connection-level failure: for at most `wait_s` after
    the first failure (counted again after a connection that had worked, then dropped), or
    `busy_wait_s` if longer while the volume is locked (the archive's rsync of a connection
    that went silent keeps the lock until its I/O timeout), and never past `stop_at`."""
    attempt = 0
    since: float | None = None  # when the current run of failures began
    while True:
        done = run_until(argv, stop_at, progress, clock)
        failure = connection_failure(done)
        now = clock()
        if since is None or failure is Failure.DROPPED:
            since = now
        budget = max(wait_s, busy_wait_s) if failure is Failure.BUSY else wait_s
        retry = next_try(failure, attempt, now, since + budget, stop_at)
        if retry.delay_s is None:
            return replace(done, cut=retry.cut, attempts=attempt + 1,
                           reason=retry.reason if failure else "")
        reason = next((line for line in done.stderr.splitlines() if line.strip()), "")
        note(f"{retry.reason} ({reason.strip()})")
        sleep(retry.delay_s)
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
