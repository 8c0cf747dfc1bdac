"""Which snapshots to delete, as pure code.

Per host: keep the newest snapshot of each of the `keep_days` most recent days that have one,
and always keep the host's newest complete snapshot, however old. Everything else of that host
goes. The caller never runs this for a window whose own snapshots failed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class RecoveryPoint:
    snapshot_id: str
    host: str
    window_id: str
    started: datetime
    complete: bool
    size_gib: int = 0
    state: str = "completed"  # pending | completed | error, as EBS says


@dataclass(frozen=True)
class Deletion:
    snapshot_id: str
    host: str
    reason: str


def choose_deletions(points: Iterable[RecoveryPoint], keep_days: int,
                     in_use: frozenset[str] = frozenset()) -> list[Deletion]:
    """`in_use`: snapshots a restore is serving now; never deleted, whatever their age."""
    if keep_days < 1:
        raise ValueError("keep_days must be at least 1")
    by_host: dict[str, list[RecoveryPoint]] = defaultdict(list)
    for point in points:
        by_host[point.host].append(point)
    deletions: list[Deletion] = []
    for host in sorted(by_host):
        deletions.extend(_host_deletions(by_host[host], keep_days))
    return [d for d in deletions if d.snapshot_id not in in_use]


def _host_deletions(points: list[RecoveryPoint], keep_days: int) -> list[Deletion]:
    newest_first = sorted(points, key=lambda p: (p.started, p.snapshot_id), reverse=True)
    kept_days: list[str] = []
    keep: set[str] = set()
    for point in newest_first:
        day = point.started.date().isoformat()
        if day not in kept_days and len(kept_days) < keep_days:
            kept_days.append(day)
            keep.add(point.snapshot_id)
    newest_complete = next((p for p in newest_first if p.complete), None)
    if newest_complete is not None:
        keep.add(newest_complete.snapshot_id)
    return [
        Deletion(p.snapshot_id, p.host, _why(p, kept_days))
        for p in newest_first
        if p.snapshot_id not in keep
    ]


def _why(point: RecoveryPoint, kept_days: list[str]) -> str:
    day = point.started.date().isoformat()
    if day in kept_days:
        return f"a newer snapshot of {point.host} was taken on {day}"
    return f"{day} is older than the {len(kept_days)} retained days of {point.host}"
