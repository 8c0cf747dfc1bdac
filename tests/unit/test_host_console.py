"""One line per step for cron; a progress line only on a terminal."""

from __future__ import annotations

import io

from offsite_host.console import Console


def test_steps_are_single_lines_and_progress_is_dropped_without_a_tty() -> None:
    out = io.StringIO()
    console = Console(out, tty=False)
    console.step("history", "/etc -> repo/etc (0.5 s)")
    console.progress("  1,024  50%  1.00MB/s")
    console.error("rsync failed")
    assert out.getvalue() == ("offsite-host: history: /etc -> repo/etc (0.5 s)\n"
                              "offsite-host: error: rsync failed\n")


def test_progress_rewrites_itself_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(out, tty=True)
    console.progress("10%")
    console.progress("20%")
    console.step("transfer", "done")
    assert out.getvalue() == "\r\x1b[K10%\r\x1b[K20%\r\x1b[Koffsite-host: transfer: done\n"
