"""rsync runs until it ends or the session's time is up."""

from __future__ import annotations

import sys
import time

from offsite_host.runner import run_until


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
