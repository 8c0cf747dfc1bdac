"""Recovery points: `GET /v1/hosts/{name}/snapshots`, choosing the one to restore, and
`POST /v1/hosts/{name}/restores`. Parsing and choosing are pure; an answer outside the
contract is the server's fault (exit 9).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone

from offsite_host.api import Answer, ApiClient
from offsite_host.exitcodes import ConfigError, NoWindowError, ServerError
from offsite_host.session import parse_time

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class RecoveryPoint:
    snapshot_id: str
    window_id: str
    day: str
    started_at: float
    complete: bool
    size_gib: int


@dataclass(frozen=True)
class Choice:
    point: RecoveryPoint
    reason: str


@dataclass(frozen=True)
class RestoreWindow:
    window_id: str
    snapshot_id: str
    day: str
    complete: bool
    deadline: float


def check_day(text: str) -> str:
    """`--date`: a real calendar day written YYYY-MM-DD."""
    try:
        if _DAY.fullmatch(text):
            date.fromisoformat(text)
            return text
    except ValueError:
        pass
    raise ConfigError(f"--date {text!r} is not a day written YYYY-MM-DD")


def parse_points(data: object) -> list[RecoveryPoint]:
    """The `snapshots` of the answer, newest first (sorted here too: the order is the
    contract's, but a wrong order must not pick the wrong point)."""
    items = data.get("snapshots") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ServerError("malformed snapshots answer: no `snapshots` list")
    points = [_point(item) for item in items]
    return sorted(points, key=lambda p: p.started_at, reverse=True)


def choose(points: list[RecoveryPoint], day: str | None, allow_incomplete: bool) -> Choice:
    """The newest complete point of `day` (or of all, when `day` is None); an incomplete one
    only when allowed and the day has no complete one."""
    candidates = [p for p in points if day is None or p.day == day]
    if not candidates:
        known = ", ".join(sorted({p.day for p in points}, reverse=True)) or "none"
        what = f"on {day}" if day else "at all"
        raise ConfigError(f"no recovery point {what}; the days with one: {known}")
    complete = [p for p in candidates if p.complete]
    if complete:
        return Choice(complete[0], f"the newest complete point of {complete[0].day}")
    if not allow_incomplete:
        raise ConfigError(f"the only recovery point on {candidates[0].day} is incomplete (its "
                          "backup did not report success); pass --allow-incomplete to restore "
                          "it anyway, or choose another day")
    return Choice(candidates[0], f"the newest point of {candidates[0].day}, INCOMPLETE "
                  "(--allow-incomplete)")


def check_snapshot_id(text: str) -> str:
    """`--snapshot`: a snapshot id as `offsite-host snapshots` prints it."""
    if not _ID.fullmatch(text):
        raise ConfigError(f"--snapshot {text!r} is not a snapshot id (e.g. snap-0a1b2c3d)")
    return text


def choose_snapshot(points: list[RecoveryPoint], snapshot_id: str, day: str | None,
                    allow_incomplete: bool) -> Choice:
    """The point named by `--snapshot` (one of several on a day); with `--date` too, it must
    be of that day."""
    found = next((p for p in points if p.snapshot_id == snapshot_id), None)
    if found is None:
        known = ", ".join(p.snapshot_id for p in points) or "none"
        raise ConfigError(f"no recovery point {snapshot_id}; the recovery points: {known}")
    if day is not None and found.day != day:
        raise ConfigError(f"recovery point {snapshot_id} is of {found.day}, not of {day}")
    if not found.complete and not allow_incomplete:
        raise ConfigError(f"recovery point {snapshot_id} is incomplete (its backup did not "
                          "report success); pass --allow-incomplete to restore it anyway")
    state = "complete" if found.complete else "INCOMPLETE (--allow-incomplete)"
    return Choice(found, f"the point of {found.day} named by --snapshot, {state}")


def describe(points: list[RecoveryPoint]) -> list[str]:
    """The lines `offsite-host snapshots` prints."""
    if not points:
        return ["no recovery point yet"]
    lines = [f"{'day':<10}  {'started (UTC)':<19}  {'state':<10}  {'size':>8}  snapshot"]
    for p in points:
        started = _utc(p.started_at)
        state = "complete" if p.complete else "INCOMPLETE"
        lines.append(f"{p.day:<10}  {started:<19}  {state:<10}  {p.size_gib:>4} GiB  "
                     f"{p.snapshot_id}")
    return lines


def parse_restore_answer(answer: Answer) -> RestoreWindow:
    """202 -> the restore window; the contract's refusals -> a clear error."""
    data = answer.json()
    error = data.get("error") if isinstance(data, dict) else None
    if answer.status == 202 and isinstance(data, dict):
        return RestoreWindow(_text(data, "window_id", _ID), _text(data, "snapshot_id", _ID),
                             _text(data, "day", _DAY), _flag(data, "complete"),
                             parse_time(data.get("deadline"), "deadline"))
    if answer.status == 404 and error == "no_recovery_point":
        days = data.get("days") if isinstance(data, dict) else None
        known = ", ".join(d for d in days if isinstance(d, str)) if isinstance(days, list) else ""
        raise ConfigError(f"no such recovery point ({answer.error_text()}); the days with one: "
                          f"{known or 'none'}")
    if answer.status == 409 and error == "incomplete_snapshot":
        raise ConfigError(f"that recovery point is incomplete ({answer.error_text()}); pass "
                          "--allow-incomplete to restore it anyway")
    if answer.status == 409 and error == "window_active":
        raise NoWindowError(f"the archive is busy with another window ({answer.error_text()}); "
                            "try again once it has closed")
    if answer.status in (400, 401, 403):
        raise ConfigError(f"the Offsite API refused the restore (HTTP {answer.status}, "
                          f"{answer.error_text()})")
    raise ServerError(f"unexpected answer to the restore request: HTTP {answer.status} "
                      f"({answer.error_text()})")


def fetch_points(client: ApiClient) -> list[RecoveryPoint]:
    return parse_points(fetch_snapshots(client))


def fetch_snapshots(client: ApiClient) -> object:
    """The answer of `GET /v1/hosts/{name}/snapshots`: the points, and the control plane's
    `stale_after_hours`."""
    answer = client.get(f"/v1/hosts/{client.host}/snapshots")
    if answer.status in (401, 403):
        raise ConfigError(f"the Offsite API refused this host (HTTP {answer.status}, "
                          f"{answer.error_text()})")
    if answer.status != 200:
        raise ServerError(f"unexpected answer listing the recovery points: HTTP "
                          f"{answer.status} ({answer.error_text()})")
    return answer.json()


def freshness(data: object, now: float) -> list[str]:
    """The `status` lines on what the control plane holds: the newest complete point, its age,
    and a warning when it is older than the control plane's staleness threshold (or there is
    none)."""
    complete = [p for p in parse_points(data) if p.complete]
    limit = data.get("stale_after_hours") if isinstance(data, dict) else None
    if isinstance(limit, bool) or not isinstance(limit, int | float) or limit <= 0:
        limit = None  # an older control plane: no threshold to judge by
    if not complete:
        return ["newest point: none complete (the control plane holds no complete backup "
                "of this host)", "WARNING: this host has no complete off-site backup"]
    newest = complete[0]
    age = max(0.0, now - newest.started_at) / 3600
    lines = [f"newest point: {newest.snapshot_id} of {newest.day}, started "
             f"{_utc(newest.started_at)} UTC, {age:.1f} h ago"]
    if limit is not None and age > limit:
        lines.append(f"WARNING: stale: no complete off-site backup for {age:.1f} h, more than "
                     f"{limit:g} h (the admins are told too)")
    return lines


def request_restore(client: ApiClient, point: RecoveryPoint) -> RestoreWindow:
    payload: dict[str, object] = {"snapshot_id": point.snapshot_id}
    if not point.complete:
        payload["allow_incomplete"] = True
    window = parse_restore_answer(client.post(f"/v1/hosts/{client.host}/restores", payload))
    if window.snapshot_id != point.snapshot_id:
        raise ServerError(f"asked to restore {point.snapshot_id}, the server opened a window "
                          f"for {window.snapshot_id}")
    return window


def _point(item: object) -> RecoveryPoint:
    if not isinstance(item, dict):
        raise ServerError("malformed snapshots answer: an entry is not an object")
    size = item.get("size_gib", 0)
    if isinstance(size, bool) or not isinstance(size, int | float) or size < 0:
        raise ServerError("malformed snapshots answer: size_gib is not a size")
    return RecoveryPoint(_text(item, "snapshot_id", _ID), _text(item, "window_id", _ID),
                         _text(item, "day", _DAY), parse_time(item.get("started_at"),
                                                              "started_at"),
                         _flag(item, "complete"), int(size))


def _text(data: dict[str, object], name: str, pattern: re.Pattern[str]) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ServerError(f"malformed answer: {name} is missing or invalid")
    return value


def _flag(data: dict[str, object], name: str) -> bool:
    value = data.get(name)
    if not isinstance(value, bool):
        raise ServerError(f"malformed answer: {name} is not true or false")
    return value


def _utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
