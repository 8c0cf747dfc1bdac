"""What recent windows used, as `chalicelib.cost.Usage` (pure).

From the admin API's window views (GET /v1/windows/{id}): each shard's instance is billed from
its launch (the shard entered OPENING) until it stopped (SNAPSHOTTING); it and its volumes
exist until its snapshots are complete (CLOSED), when they are deleted. A window recorded
before shards existed has the same states at the window level. The window's length is open to
deadline; what hosts sent comes from their reports. What the volumes hold is not recorded, so
it is estimated as each host's largest transfer (its first, full backup) unless given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import fmean
from typing import Any

from chalicelib.cost import GIB, SNAPSHOT_SETTLE_S, ShardRun, Usage

USED_STATES = ("CLOSED",)
DEFAULT_INSTANCE_TYPE = "t4g.small"


class NoUsageError(LookupError):
    pass


@dataclass(frozen=True)
class Observed:
    window_ids: tuple[str, ...]
    usage: Usage
    stored_estimated: bool


def _seconds(entered: Mapping[str, Any], since: str, until: str) -> float | None:
    start, end = entered.get(since), entered.get(until)
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _run(window_id: str, entered: Mapping[str, Any], hosts: int, instance_type: str,
         settle_s: float) -> ShardRun | None:
    stopped = _seconds(entered, "OPENING", "SNAPSHOTTING")
    if stopped is None:  # never launched, or never stopped
        return None
    closed = _seconds(entered, "OPENING", "CLOSED")
    return ShardRun(window_id, instance_type, hosts, stopped,
                    stopped + settle_s if closed is None else closed)


def shard_runs(window: Mapping[str, Any], *, instance_type: str | None = None,
               snapshot_settle_s: float = SNAPSHOT_SETTLE_S) -> tuple[ShardRun, ...]:
    """The window's billed shards; `instance_type` overrides what the shards recorded and
    names the type of a window without shards; `snapshot_settle_s` stands for a missing
    CLOSED time."""
    window_id = str(window["window_id"])
    shards = window.get("shards")
    if shards is None:  # recorded before shards: one instance, times at the window level
        entered = {"OPENING": window.get("opened_at"), **(window.get("entered") or {})}
        run = _run(window_id, entered, len(window.get("expected") or []),
                   instance_type or DEFAULT_INSTANCE_TYPE, snapshot_settle_s)
        return () if run is None else (run,)
    runs = (_run(window_id, s.get("entered") or {}, len(s.get("hosts") or []),
                 instance_type or s.get("instance_type") or DEFAULT_INSTANCE_TYPE,
                 snapshot_settle_s) for s in shards)
    return tuple(r for r in runs if r is not None)


def window_seconds(window: Mapping[str, Any]) -> float:
    return (datetime.fromisoformat(window["deadline"])
            - datetime.fromisoformat(window["opened_at"])).total_seconds()


def sent_by_host(window: Mapping[str, Any]) -> dict[str, int]:
    return {str(r["host"]): int(r.get("bytes_sent", 0))
            for r in window.get("host_reports") or []}


def observe(windows: Sequence[Mapping[str, Any]], *, volume_gib: float, retention_days: int,
            instance_type: str | None = None, stored_bytes: int | None = None,
            snapshot_settle_s: float = SNAPSHOT_SETTLE_S) -> Observed:
    """The usage of the closed backup windows among `windows` (each as GET /v1/windows/{id});
    `volume_gib` is each host's data volume."""
    runs = {str(w["window_id"]): shard_runs(w, instance_type=instance_type,
                                            snapshot_settle_s=snapshot_settle_s)
            for w in windows}
    used = [w for w in windows if w.get("state") in USED_STATES
            and w.get("purpose", "backup") == "backup" and runs[str(w["window_id"])]]
    if not used:
        raise NoUsageError("no closed backup window in the history yet: run or open one first")
    largest: dict[str, int] = {}
    for window in used:
        for host, sent in sent_by_host(window).items():
            largest[host] = max(largest.get(host, 0), sent)
    stored = sum(largest.values()) if stored_bytes is None else stored_bytes
    usage = Usage(
        shards=tuple(run for w in used for run in runs[str(w["window_id"])]),
        window_s=fmean(window_seconds(w) for w in used),
        stored_gib=stored / GIB,
        changed_gib=fmean(sum(sent_by_host(w).values()) for w in used) / GIB,
        volume_gib=volume_gib, retention_days=retention_days)
    return Observed(tuple(str(w["window_id"]) for w in used), usage, stored_bytes is None)
