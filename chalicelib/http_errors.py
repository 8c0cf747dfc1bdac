"""Domain errors as the API answers them: `{"error": code, "message": text}`, never a trace."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.adapters.store import WindowActiveError
from chalicelib.payloads import InvalidPayloadError
from chalicelib.windows import (
    HostNotExpectedError,
    NoHostsError,
    NotClosableError,
    UnknownHostError,
    UnknownWindowError,
    WindowNotOpenError,
)

logger = Logger(service="offsite", child=True)

# (error class, HTTP status, stable code); the first match wins.
ERRORS: list[tuple[type[Exception], int, str]] = [
    (InvalidPayloadError, 400, "bad_request"),
    (UnknownHostError, 400, "unknown_host"),
    (UnknownWindowError, 404, "unknown_window"),
    (WindowActiveError, 409, "window_active"),
    (NoHostsError, 409, "no_hosts"),
    (WindowNotOpenError, 409, "window_not_open"),
    (HostNotExpectedError, 409, "host_not_expected"),
    (NotClosableError, 409, "not_closable"),
]


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def describe_error(exc: Exception) -> tuple[int, dict[str, Any]]:
    """The status and body for `exc`; anything unexpected is logged and answered as 500."""
    for error_type, status, code in ERRORS:
        if isinstance(exc, error_type):
            return status, error_body(code, str(exc))
    logger.exception("unhandled error")
    return 500, error_body("internal", "internal error; see the control plane's logs")


def from_chalice_error(body: dict[str, Any], status: int) -> dict[str, Any]:
    """Chalice answers some requests itself (405, 415, ...) as {"Code", "Message"}."""
    code = str(body.get("Code", "error"))
    return error_body(code[:1].lower() + code[1:] if status < 500 else "internal",
                      str(body.get("Message", "")))
