"""The service's log lines and EMF metrics, and moto's request log, sent nowhere while a bench
runs. They are still formatted, so what they cost stays in the figures."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout


@contextmanager
def quiet_output() -> Iterator[None]:
    offsite = [h for h in logging.getLogger("offsite").handlers
               if isinstance(h, logging.StreamHandler)]
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    with open(os.devnull, "w") as sink, redirect_stdout(sink):
        streams = [h.setStream(sink) for h in offsite]
        werkzeug.setLevel(logging.WARNING)
        try:
            yield
        finally:
            werkzeug.setLevel(level)
            for handler, stream in zip(offsite, streams, strict=True):
                if stream is not None:
                    handler.setStream(stream)
