"""A host's recovery points and which one a restore serves, as pure code.

What a point's day is, and when it is complete, is defined once, on `RecoveryPoint`
(retention.py). Only snapshots EBS has completed can become a volume, so only those are listed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from chalicelib.names import InvalidHostNameError, check_host_name
from chalicelib.payloads import InvalidPayloadError
from chalicelib.retention import RecoveryPoint, newest_first

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_SNAPSHOT_ID = re.compile(r"snap-[0-9a-f]{8,17}")


class NoRecoveryPointError(LookupError):
    def __init__(self, message: str, days: list[str]) -> None:
        super().__init__(message)
        self.days = days


class IncompleteSnapshotError(Exception):
    def __init__(self, message: str, days: list[str]) -> None:
        super().__init__(message)
        self.days = days


@dataclass(frozen=True)
class RestoreRequest:
    host: str
    day: str | None
    snapshot_id: str | None
    allow_incomplete: bool


def parse_restore_request(body: Mapping[str, Any], host: str | None = None) -> RestoreRequest:
    """A host's body (`host` given by the path) or an admin's (`host` in the body)."""
    allowed = {"day", "snapshot_id", "allow_incomplete"} | ({"host"} if host is None else set())
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidPayloadError(f"unknown field(s): {', '.join(unknown)}")
    try:
        name = check_host_name(body.get("host") if host is None else host)
    except InvalidHostNameError as exc:
        raise InvalidPayloadError(str(exc)) from exc
    day, snapshot_id = body.get("day"), body.get("snapshot_id")
    if (day is None) == (snapshot_id is None):
        raise InvalidPayloadError("give exactly one of day (YYYY-MM-DD) and snapshot_id")
    if day is not None and not (isinstance(day, str) and _DAY.fullmatch(day) and _is_date(day)):
        raise InvalidPayloadError("day must be a date, YYYY-MM-DD")
    if snapshot_id is not None and not (isinstance(snapshot_id, str)
                                        and _SNAPSHOT_ID.fullmatch(snapshot_id)):
        raise InvalidPayloadError("snapshot_id must be an EBS snapshot id (snap-...)")
    allow = body.get("allow_incomplete", False)
    if not isinstance(allow, bool):
        raise InvalidPayloadError("allow_incomplete must be true or false")
    return RestoreRequest(name, day, snapshot_id, allow)


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def host_points(points: Iterable[RecoveryPoint], host: str) -> list[RecoveryPoint]:
    """The host's usable recovery points, newest first."""
    return newest_first(p for p in points if p.host == host and p.restorable)


def choose_point(points: Iterable[RecoveryPoint], request: RestoreRequest) -> RecoveryPoint:
    """The point a restore serves: the snapshot asked for, or the day's newest complete one
    (its newest incomplete one only when the request allows it)."""
    mine = host_points(points, request.host)
    days = sorted({p.day for p in mine}, reverse=True)
    if request.snapshot_id is not None:
        chosen = [p for p in mine if p.snapshot_id == request.snapshot_id]
        wanted = f"snapshot {request.snapshot_id}"
    else:
        chosen = [p for p in mine if p.day == request.day]
        wanted = f"a snapshot on {request.day}"
    if not chosen:
        raise NoRecoveryPointError(f"{request.host} has no {wanted}", days)
    complete = [p for p in chosen if p.complete]
    if complete:
        return complete[0]
    if not request.allow_incomplete:
        raise IncompleteSnapshotError(
            f"{wanted} of {request.host} is incomplete (the host did not finish that backup); "
            "ask again with allow_incomplete to restore it anyway", days)
    return chosen[0]


def point_view(point: RecoveryPoint) -> dict[str, Any]:
    return {"snapshot_id": point.snapshot_id, "window_id": point.window_id,
            "day": point.day, "started_at": point.started.isoformat(),
            "complete": point.complete, "size_gib": point.size_gib}
