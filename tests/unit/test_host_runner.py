"""rsync runs until it ends or the session's time is up."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from offsite_host.runner import (
    Failure,
    Finished,
    connection_failure,
    next_try,
    run_until,
    run_until_reachable,
)


def test_a_process_that_ends_in_time() -> None:
    progress: list[str] = []
    done = run_until([sys.executable, "-c",
                      "import sys; sys.stdout.write('a\\r b\\rTotal bytes sent: 5\\n');"
                      "sys.stderr.write('warn\\n'); sys.exit(3)"],
                     time.time() + 30, progress.append)
    assert (done.returncode, done.stopped) == (3, False)
    assert progress == ["a", "b"]  # pieces ended by "\r" are progress, not output
    assert "Total bytes sent: 5" in done.stdout and done.stderr == "warn\n"


def test_a_process_still_running_at_the_stop_time_is_stopped() -> None:
    done = run_until([sys.executable, "-c", "import time; time.sleep(30)"], time.time() + 0.5)
    assert done.stopped
    assert done.returncode != 0  # killed: a sleep left to its end exits 0


UNREACHABLE = ("ssh: connect to host 127.0.0.1 port 2222: Connection refused\n"
               "rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n"
               "rsync error: unexplained error (code 255) at io.c(232) [sender=3.2.7]\n")
LOST = ("rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n"
        "rsync error: unexplained error (code 255) at io.c(232) [sender=3.2.7]\n")
DENIED = "c@127.0.0.1: Permission denied (publickey).\n" + LOST


def _failing_then_ok(tmp_path: Path, failures: int, stderr: str) -> list[str]:
    """A stand-in for rsync: exits 255 with `stderr` `failures` times, then 0."""
    counter = tmp_path / "tries"
    script = (f"import pathlib, sys; p = pathlib.Path({str(counter)!r}); "
              "n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1)); "
              f"sys.stderr.write({stderr!r}) if n < {failures} else None; "
              f"sys.exit(255 if n < {failures} else 0)")
    return [sys.executable, "-c", script]


# What rsync 3.5.0 and OpenSSH print, captured against the e2e sshd and `rrsync -wo`.
BUSY = ("/usr/bin/rrsync error: Another instance of rrsync is already accessing this "
        "directory.\n" + LOST.replace("unexplained error (code 255) at io.c(232)",
                                      "error in rsync protocol data stream (code 12) at io.c(285)"))
DROPPED = ("Connection to 127.0.0.1 closed by remote host.\n"
           "rsync: [sender] write error: Broken pipe (32)\n"
           "rsync error: unexplained error (code 255) at io.c(949) [sender=3.5.0]\n")
DROPPED_10 = ("client_loop: send disconnect: Broken pipe\n"
              "rsync: [sender] write error: Broken pipe (32)\n"
              "rsync error: error in socket IO (code 10) at io.c(949) [sender=3.5.0]\n")
CLOSING = ("rsync error: received SIGINT, SIGTERM, or SIGHUP (code 20) at io.c(586) "
           "[generator=3.5.0]\nrsync: [sender] write error: Broken pipe (32)\n")
DATA = ("rsync: [sender] read errors mapping \"/v/a\": Input/output error (5)\n"
        "rsync error: some files/attrs were not transferred (code 23) at main.c(1338) "
        "[sender=3.5.0]\n")


@pytest.mark.parametrize("stderr, expected", [
    (UNREACHABLE, Failure.UNREACHABLE), (LOST, Failure.UNREACHABLE), (DENIED, None),
    ("rrsync: sorry, -ro restricted\n" + LOST, None),
    ("Host key verification failed.\n" + LOST, None),
    (DROPPED, Failure.DROPPED), (BUSY, Failure.BUSY), (CLOSING, Failure.CLOSING),
])
def test_connection_failures_are_told_from_refusals(stderr: str,
                                                    expected: Failure | None) -> None:
    assert connection_failure(Finished(255, "", stderr, False)) is expected
    assert connection_failure(Finished(255, "", stderr, True)) is None


@pytest.mark.parametrize("code, stderr, expected", [
    (12, BUSY, Failure.BUSY), (10, DROPPED_10, Failure.DROPPED), (20, CLOSING, Failure.CLOSING),
    (12, LOST.replace("code 255", "code 12"), Failure.UNREACHABLE),
    (12, UNREACHABLE.replace("(0 bytes received so far)", "(8192 bytes received so far)"), None),
    (23, DATA, None), (23, UNREACHABLE, None), (0, "", None),
    (20, CLOSING.replace("generator=", "sender="), None),  # our own rsync was signalled
])
def test_rsync_exit_codes_with_what_was_said(code: int, stderr: str,
                                             expected: Failure | None) -> None:
    assert connection_failure(Finished(code, "", stderr, False)) is expected


def test_the_session_end_turns_a_connection_failure_into_the_cut() -> None:
    assert next_try(Failure.BUSY, 0, 100.0, 220.0, 500.0).delay_s == 2.0
    assert next_try(Failure.DROPPED, 3, 100.0, 220.0, 500.0).delay_s == 15.0
    late = next_try(Failure.DROPPED, 0, 499.0, 620.0, 500.0)
    assert (late.delay_s, late.cut) == (None, True)
    closing = next_try(Failure.CLOSING, 0, 100.0, 220.0, 500.0)
    assert (closing.delay_s, closing.cut) == (None, True)
    spent = next_try(Failure.UNREACHABLE, 5, 215.0, 220.0, 500.0)
    assert (spent.delay_s, spent.cut) == (None, False)
    assert next_try(None, 0, 100.0, 220.0, 500.0) == next_try(None, 9, 0.0, 0.0, 0.0)


def test_an_archive_not_listening_yet_is_tried_again(tmp_path: Path) -> None:
    notes: list[str] = []
    slept: list[float] = []
    done = run_until_reachable(_failing_then_ok(tmp_path, 2, UNREACHABLE), time.time() + 60,
                               120, notes.append, sleep=slept.append)
    assert done.returncode == 0
    assert slept == [2.0, 4.0]
    assert len(notes) == 2 and "Connection refused" in notes[0]


def test_a_refused_certificate_is_not_tried_again(tmp_path: Path) -> None:
    slept: list[float] = []
    done = run_until_reachable(_failing_then_ok(tmp_path, 1, DENIED), time.time() + 60, 120,
                               lambda _: None, sleep=slept.append)
    assert done.returncode == 255 and slept == []


def test_retries_end_with_the_wait(tmp_path: Path) -> None:
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    done = run_until_reachable(_failing_then_ok(tmp_path, 100, UNREACHABLE), 10**10, 20,
                               lambda _: None, clock=lambda: now[0], sleep=sleep)
    assert done.returncode == 255
    assert now[0] - 1000.0 <= 20  # 2 + 4 + 8 s, then the next 15 s would pass the wait
    assert (tmp_path / "tries").read_text() == "4"


def test_a_volume_still_locked_by_the_last_connection_is_tried_again(tmp_path: Path) -> None:
    slept: list[float] = []
    done = run_until_reachable(_failing_then_ok(tmp_path, 2, BUSY), time.time() + 60, 120,
                               lambda _: None, sleep=slept.append)
    assert (done.returncode, done.cut, done.attempts) == (0, False, 3)
    assert slept == [2.0, 4.0]


def test_a_connection_failure_at_the_stop_time_is_the_cut(tmp_path: Path) -> None:
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    done = run_until_reachable(_failing_then_ok(tmp_path, 100, DROPPED), 1010.0, 120,
                               lambda _: None, clock=lambda: now[0], sleep=sleep)
    assert (done.returncode, done.cut) == (255, True)
    assert "session's end" in done.reason
    assert now[0] < 1010.0  # it never slept past the stop time


def test_a_drop_gets_a_fresh_wait_but_a_lasting_lock_does_not(tmp_path: Path) -> None:
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    dropped = run_until_reachable(_failing_then_ok(tmp_path, 6, DROPPED), 10**10, 20,
                                  lambda _: None, clock=lambda: now[0], sleep=sleep)
    assert dropped.returncode == 0  # 2 + 4 + 8 + 15 + 15 + 15 s: each drop restarts the wait
    (tmp_path / "tries").unlink()
    busy = run_until_reachable(_failing_then_ok(tmp_path, 100, BUSY), 10**10, 20,
                               lambda _: None, clock=lambda: now[0], sleep=sleep)
    assert (busy.returncode, busy.cut, busy.attempts) == (255, False, 4)
    assert "still after 4 tries" in busy.reason


def test_a_lock_is_waited_for_as_long_as_the_archive_rsync_may_keep_it(tmp_path: Path) -> None:
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    busy = run_until_reachable(_failing_then_ok(tmp_path, 100, BUSY), 10**10, 20,
                               lambda _: None, clock=lambda: now[0], sleep=sleep,
                               busy_wait_s=90)
    assert busy.returncode == 255 and 75 < now[0] - 1000.0 <= 90
    (tmp_path / "tries").unlink()
    now[0] = 1000.0
    unreachable = run_until_reachable(_failing_then_ok(tmp_path, 100, UNREACHABLE), 10**10, 20,
                                      lambda _: None, clock=lambda: now[0], sleep=sleep,
                                      busy_wait_s=90)
    assert unreachable.returncode == 255 and now[0] - 1000.0 <= 20
