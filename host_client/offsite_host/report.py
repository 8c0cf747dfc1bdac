"""`POST /v1/reports`: how a run ended, once its window is known."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from offsite_host.api import ApiClient
from offsite_host.exitcodes import OffsiteError, ServerError

MAX_DETAIL_CHARS = 2000  # what the server keeps


@dataclass(frozen=True)
class Report:
    window_id: str
    status: str
    bytes_sent: int
    files: int
    duration_s: float
    detail: str

    def payload(self, host: str) -> dict[str, Any]:
        return {"host": host, "window_id": self.window_id, "status": self.status,
                "bytes_sent": self.bytes_sent, "files": self.files,
                "duration_s": round(self.duration_s, 1),
                "detail": unicode_text(self.detail)[:MAX_DETAIL_CHARS]}


def unicode_text(text: str) -> str:
    """`text` as valid Unicode: a name that is not UTF-8 reaches Python as lone surrogates
    (surrogateescape), which the server refuses; its bytes are shown as `\\xe9` instead."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte made
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def send_report(client: ApiClient, report: Report, attempts: int = 3,
                sleep: Callable[[float], None] = time.sleep) -> None:
    """`POST /v1/reports`; the server accepts the same report once, so a retry is safe."""
    problem: OffsiteError = ServerError("no attempt made")
    for attempt in range(attempts):
        try:
            answer = client.post("/v1/reports", report.payload(client.host))
        except ServerError as exc:
            problem = exc
        else:
            if 200 <= answer.status < 300:
                return
            problem = ServerError(f"the report was refused: HTTP {answer.status} "
                                  f"({answer.error_text()})")
            if answer.status < 500:
                break
        if attempt + 1 < attempts:
            sleep(2.0 * (attempt + 1))
    raise problem
