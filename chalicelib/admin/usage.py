"""What recent windows used, as `chalicelib.cost.WindowUsage` (pure).

From the admin API's window history: the instance is billed from the window's open (the start
request) until it stopped (the window entered SNAPSHOTTING); the window's full length is open to
deadline; what hosts sent comes from their reports. What the volumes hold is not recorded, so
it is estimated as each host's largest transfer (its first, full backup) unless given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import fmean
from typing import Any

from chalicelib.cost import WindowUsage

USED_STATES = ("CLOSED",)


class NoUsageError(LookupError):
    pass


@dataclass(frozen=True)
class Observed:
    window_ids: tuple[str, ...]
    usage: WindowUsage
    stored_estimated: bool


def billed_seconds(window: Mapping[str, Any]) -> float | None:
    """Open to stopped, or None if the instance never stopped within this window."""
    entered = window.get("entered") or {}
    stopped = entered.get("SNAPSHOTTING")
    if not stopped:
        return None
    opened = entered.get("OPENING") or window["opened_at"]
    return (datetime.fromisoformat(stopped) - datetime.fromisoformat(opened)).total_seconds()


def window_seconds(window: Mapping[str, Any]) -> float:
    return (datetime.fromisoformat(window["deadline"])
            - datetime.fromisoformat(window["opened_at"])).total_seconds()


def sent_by_host(window: Mapping[str, Any]) -> dict[str, int]:
    return {str(r["host"]): int(r.get("bytes_sent", 0))
            for r in window.get("host_reports") or []}


def observe(windows: Sequence[Mapping[str, Any]], *, instance_type: str, volume_gib: float,
            retention_days: int, stored_bytes: int | None = None) -> Observed:
    """The mean usage of the closed windows among `windows` (each as GET /v1/windows/{id})."""
    used = [w for w in windows if w.get("state") in USED_STATES and billed_seconds(w) is not None]
    if not used:
        raise NoUsageError("no closed window in the history yet: run or open one first")
    largest: dict[str, int] = {}
    for window in used:
        for host, sent in sent_by_host(window).items():
            largest[host] = max(largest.get(host, 0), sent)
    usage = WindowUsage(
        instance_type=instance_type,
        hosts=len(used[0].get("expected") or []),
        billed_seconds=fmean(billed_seconds(w) or 0.0 for w in used),
        window_seconds=fmean(window_seconds(w) for w in used),
        volume_gib=volume_gib,
        stored_bytes=sum(largest.values()) if stored_bytes is None else stored_bytes,
        sent_bytes=round(fmean(sum(sent_by_host(w).values()) for w in used)),
        retention_days=retention_days)
    return Observed(tuple(str(w["window_id"]) for w in used), usage, stored_bytes is None)
