"""Domain errors as the API answers them: `{"error": code, "message": text}`, never a trace."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.adapters.store import WindowActiveError
from chalicelib.host_auth import HostNotAllowedError, NotAuthenticatedError
from chalicelib.hosts import UnknownHostNameError
from chalicelib.payloads import InvalidPayloadError
from chalicelib.recovery import IncompleteSnapshotError, NoRecoveryPointError
from chalicelib.sessions import (
    NoOpenWindowError,
    NotExpectedError,
    WindowOpeningError,
    WrongHostError,
)
from chalicelib.windows import (
    ArchiveNotRunningError,
    HostNotExpectedError,
    NoHostsError,
    NotClosableError,
    UnknownArchiveError,
    UnknownHostError,
    UnknownWindowError,
    WindowNotOpenError,
)

logger = Logger(service="offsite", child=True)

# (error class, HTTP status, stable code); the first match wins.
ERRORS: list[tuple[type[Exception], int, str]] = [
    (InvalidPayloadError, 400, "bad_request"),
    (NotAuthenticatedError, 401, "unauthorized"),
    (HostNotAllowedError, 403, "forbidden"),
    (WrongHostError, 403, "wrong_host"),
    (UnknownHostNameError, 404, "unknown_host"),
    (NoOpenWindowError, 409, "no_open_window"),
    (NotExpectedError, 409, "not_expected"),
    (NoRecoveryPointError, 404, "no_recovery_point"),
    (IncompleteSnapshotError, 409, "incomplete_snapshot"),
    (WindowOpeningError, 503, "window_opening"),
    (UnknownHostError, 400, "unknown_host"),
    (UnknownWindowError, 404, "unknown_window"),
    (UnknownArchiveError, 404, "unknown_archive"),
    (ArchiveNotRunningError, 503, "archive_not_running"),
    (WindowActiveError, 409, "window_active"),
    (NoHostsError, 409, "no_hosts"),
    (WindowNotOpenError, 409, "window_not_open"),
    (HostNotExpectedError, 409, "host_not_expected"),
    (NotClosableError, 409, "not_closable"),
]


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def describe_error(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and headers for `exc`; anything unexpected is logged and answered 500."""
    for error_type, status, code in ERRORS:
        if isinstance(exc, error_type):
            return status, error_body(code, str(exc), **_extra(exc)), _headers(exc)
    logger.exception("unhandled error")
    return 500, error_body("internal", "internal error; see the control plane's logs"), {}


def _extra(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, NoOpenWindowError):
        upcoming = exc.next_window
        return {"next_window": upcoming.isoformat() if upcoming else None}
    if isinstance(exc, NoRecoveryPointError | IncompleteSnapshotError):
        return {"days": exc.days}
    return {}


def _headers(exc: Exception) -> dict[str, str]:
    if isinstance(exc, WindowOpeningError):
        return {"Retry-After": str(exc.retry_after)}
    return {}


def from_chalice_error(body: dict[str, Any], status: int) -> dict[str, Any]:
    """Chalice answers some requests itself (405, 415, ...) as {"Code", "Message"}."""
    code = str(body.get("Code", "error"))
    return error_body(code[:1].lower() + code[1:] if status < 500 else "internal",
                      str(body.get("Message", "")))
