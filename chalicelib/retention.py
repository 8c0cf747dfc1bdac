"""Recovery points, and which snapshots retention deletes, as pure code.

One definition of a *complete* recovery point serves retention, the snapshot listing, restore
and the cost report: the host reported success in that window **and** EBS says the snapshot
is `completed`. The host's report is known when the snapshot is made; EBS's verdict only when
it settles, and a snapshot can still end in `error` after its host succeeded. So neither the
report nor a tag written at creation can say "complete" alone.

A point's *day* is the UTC day its window opened (read from the window id, see
`windows.new_window_id`), whatever time its snapshot started: a window opened at 23:59 whose
snapshot starts at 00:10 is that evening's backup.

Per host, retention keeps: one point for each of the `keep_days` most recent days that have a
restorable one (the day's newest complete point, else its newest restorable one); the host's
newest complete point, however old; the host's newest restorable point, complete or not, which
the next backup window's volume is made from (a cut-off night's half-updated files are the
basis the next run resumes from: without it, a night cut off after a complete backup of the
same day would start again from that backup); every snapshot EBS is still making; and every
snapshot a volume is being made from (`in_use`). Everything else of that host goes, snapshots
that ended in `error` included. The caller never runs this for a window whose own snapshots
failed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

_WINDOW_DAY = re.compile(r"w-(\d{4})(\d{2})(\d{2})T")

PENDING, COMPLETED, ERROR = "pending", "completed", "error"  # EBS snapshot states


@dataclass(frozen=True)
class RecoveryPoint:
    snapshot_id: str
    host: str
    window_id: str
    started: datetime
    reported: bool  # the host reported success in that window
    size_gib: int = 0
    state: str = COMPLETED  # pending | completed | error, as EBS says

    @property
    def restorable(self) -> bool:
        """EBS can make a volume from it."""
        return self.state == COMPLETED

    @property
    def complete(self) -> bool:
        return self.reported and self.restorable

    @property
    def day(self) -> str:
        match = _WINDOW_DAY.match(self.window_id)
        if match:
            return "-".join(match.groups())
        return self.started.date().isoformat()


@dataclass(frozen=True)
class Deletion:
    snapshot_id: str
    host: str
    reason: str


def newest_first(points: Iterable[RecoveryPoint]) -> list[RecoveryPoint]:
    return sorted(points, key=lambda p: (p.day, p.started, p.snapshot_id), reverse=True)


def newest_complete(points: Iterable[RecoveryPoint]) -> RecoveryPoint | None:
    return next((p for p in newest_first(points) if p.complete), None)


def choose_deletions(points: Iterable[RecoveryPoint], keep_days: int,
                     in_use: frozenset[str] = frozenset()) -> list[Deletion]:
    """`in_use`: snapshots a volume is being made from (a restore, a window's volume); never
    deleted, whatever their age."""
    if keep_days < 1:
        raise ValueError("keep_days must be at least 1")
    by_host: dict[str, list[RecoveryPoint]] = defaultdict(list)
    for point in points:
        by_host[point.host].append(point)
    deletions: list[Deletion] = []
    for host in sorted(by_host):
        deletions.extend(_host_deletions(by_host[host], keep_days, in_use))
    return deletions


def _host_deletions(points: list[RecoveryPoint], keep_days: int,
                    in_use: frozenset[str]) -> list[Deletion]:
    ordered = newest_first(points)
    daily: dict[str, RecoveryPoint] = {}  # day -> the point kept for it
    for point in ordered:
        if not point.restorable:
            continue
        kept = daily.get(point.day)
        if kept is None or (point.complete and not kept.complete):
            daily[point.day] = point
    kept_days = sorted(daily, reverse=True)[:keep_days]
    keep = {daily[day].snapshot_id for day in kept_days}
    last_good = newest_complete(ordered)
    if last_good is not None:
        keep.add(last_good.snapshot_id)
    next_basis = next((p for p in ordered if p.restorable), None)
    if next_basis is not None:
        keep.add(next_basis.snapshot_id)
    return [Deletion(p.snapshot_id, p.host, _why(p, kept_days))
            for p in ordered
            if p.snapshot_id not in keep and p.snapshot_id not in in_use
            and p.state != PENDING]


def _why(point: RecoveryPoint, kept_days: list[str]) -> str:
    if not point.restorable:
        return f"EBS could not complete this snapshot of {point.host} ({point.state})"
    if point.day in kept_days:
        return f"a better or newer snapshot of {point.host} was kept for {point.day}"
    return f"{point.day} is older than the {len(kept_days)} retained days of {point.host}"
