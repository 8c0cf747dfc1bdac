"""rsync runs until it ends or the session's time is up."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from offsite_host.runner import Finished, run_until, run_until_reachable, unreachable


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
    started = time.monotonic()
    done = run_until([sys.executable, "-c", "import time; time.sleep(30)"], time.time() + 0.5)
    assert done.stopped
    assert done.returncode != 0
    assert time.monotonic() - started < 10


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


@pytest.mark.parametrize("stderr, expected", [
    (UNREACHABLE, True), (LOST, True), (DENIED, False),
    ("rrsync: sorry, -ro restricted\n" + LOST, False),
    ("Host key verification failed.\n" + LOST, False),
])
def test_only_a_failure_to_reach_sshd_counts_as_unreachable(stderr: str, expected: bool) -> None:
    assert unreachable(Finished(255, "", stderr, False)) is expected
    assert not unreachable(Finished(255, "", stderr, True))
    assert not unreachable(Finished(23, "", stderr, False))


def test_a_connection_ended_before_the_first_byte_counts_as_unreachable() -> None:
    assert unreachable(Finished(12, "", LOST.replace("code 255", "code 12"), False))
    assert not unreachable(Finished(12, "", UNREACHABLE.replace(
        "(0 bytes received so far)", "(8192 bytes received so far)"), False))


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
