"""What a run says on stderr: one line per step (cron mails it as is) and, only when stderr is a
terminal, a progress line that rewrites itself."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

PREFIX = "offsite-host"


class Console:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._progress_shown = False
        self._lock = threading.Lock()

    def step(self, name: str, message: str) -> None:
        self._line(f"{PREFIX}: {name}: {message}")

    def error(self, message: str) -> None:
        self._line(f"{PREFIX}: error: {message}")

    def progress(self, text: str) -> None:
        if not self.tty:
            return
        with self._lock:
            self.stream.write(f"\r\x1b[K{text}")
            self.stream.flush()
            self._progress_shown = True

    def _line(self, text: str) -> None:
        with self._lock:
            if self._progress_shown:
                self.stream.write("\r\x1b[K")
                self._progress_shown = False
            self.stream.write(text + "\n")
            self.stream.flush()
