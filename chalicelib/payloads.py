"""Parsing request bodies and events into checked values; bad input raises InvalidPayloadError
with a message fit to show the caller."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib.names import InvalidHostNameError, check_host_name
from chalicelib.records import REPORT_STATUSES

MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 16  # our deepest body is an object holding a list; anything deeper is abuse
MAX_WINDOW_HOURS = 24.0
MAX_DETAIL_CHARS = 2000
MAX_WINDOW_ID = 64  # ours are 25 characters (windows.new_window_id)
MAX_COUNT = 2**63 - 1  # any int64 holds it; DynamoDB refuses numbers of more than 38 digits


class InvalidPayloadError(ValueError):
    pass


@dataclass(frozen=True)
class OpenRequest:
    duration_hours: float | None
    hosts: frozenset[str] | None


@dataclass(frozen=True)
class ReportRequest:
    host: str
    window_id: str
    status: str
    bytes_sent: int
    files: int
    duration_s: float
    detail: str


def parse_json_object(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None or raw in (b"", ""):
        return {}
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidPayloadError(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except RecursionError:  # json's C decoder recurses once per level: ~1000 `[` are enough
        raise InvalidPayloadError(f"body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidPayloadError("body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise InvalidPayloadError("body must be a JSON object")
    if json_depth(body) > MAX_JSON_DEPTH:
        raise InvalidPayloadError(f"body nests deeper than {MAX_JSON_DEPTH} levels")
    try:  # JSON may escape a lone surrogate (`"\udcff"`); no store or log can hold one
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPayloadError("body holds a string that is not Unicode text (an unpaired "
                                  "surrogate escape such as \\udcff)") from None
    return body


def json_depth(value: object) -> int:
    """How deeply lists and objects nest in `value` (a scalar is 0). Counted with a stack, not
    recursion, so a body too deep for recursive code (logging, copying) is refused first."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        children = (item.values() if isinstance(item, dict)
                    else item if isinstance(item, list) else None)
        if children is None:
            continue
        deepest = max(deepest, depth + 1)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def parse_open_request(body: Mapping[str, Any]) -> OpenRequest:
    _only(body, {"duration_hours", "hosts"})
    duration = body.get("duration_hours")
    if duration is not None:
        if (isinstance(duration, bool) or not isinstance(duration, int | float)
                or not math.isfinite(duration) or not 0 < duration <= MAX_WINDOW_HOURS):
            raise InvalidPayloadError(
                f"duration_hours must be a number above 0 and at most {MAX_WINDOW_HOURS:g}")
        duration = float(duration)
    hosts = body.get("hosts")
    if hosts is not None:
        if not isinstance(hosts, list) or not hosts:
            raise InvalidPayloadError("hosts must be a non-empty list of host names")
        hosts = frozenset(_host(h) for h in hosts)
    return OpenRequest(duration, hosts)


def parse_report(body: Mapping[str, Any]) -> ReportRequest:
    _only(body, {"host", "window_id", "status", "bytes_sent", "files", "duration_s", "detail"})
    status = body.get("status")
    if status not in REPORT_STATUSES:
        raise InvalidPayloadError(f"status must be one of {', '.join(REPORT_STATUSES)}")
    window_id = body.get("window_id")
    if not isinstance(window_id, str) or not 0 < len(window_id) <= MAX_WINDOW_ID:
        raise InvalidPayloadError("window_id must be a window id string")
    detail = body.get("detail", "")
    if not isinstance(detail, str):
        raise InvalidPayloadError("detail must be a string")
    return ReportRequest(
        host=_host(body.get("host")), window_id=window_id, status=status,
        bytes_sent=_count(body, "bytes_sent"), files=_count(body, "files"),
        duration_s=_seconds(body, "duration_s"), detail=detail[:MAX_DETAIL_CHARS])


def _only(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidPayloadError(f"unknown field(s): {', '.join(unknown)}")


def _host(value: object) -> str:
    try:
        return check_host_name(value)
    except InvalidHostNameError as exc:
        raise InvalidPayloadError(str(exc)) from exc


def _count(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise InvalidPayloadError(f"{name} must be an integer from 0 to 2**63 - 1")
    return value


def _seconds(body: Mapping[str, Any], name: str) -> float:
    value = body.get(name, 0)
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value < 0):
        raise InvalidPayloadError(f"{name} must be a non-negative number")
    return float(value)
