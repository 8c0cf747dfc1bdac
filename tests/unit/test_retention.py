from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from chalicelib.retention import RecoveryPoint, choose_deletions

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)


def point(host: str, days_ago: int, complete: bool = True, hour: int = 0) -> RecoveryPoint:
    started = T0 - timedelta(days=days_ago) + timedelta(hours=hour)
    return RecoveryPoint(f"snap-{host}-{days_ago}-{hour}", host, f"w-{days_ago}-{hour}",
                         started, complete)


def deleted(points: list[RecoveryPoint], keep: int) -> set[str]:
    return {d.snapshot_id for d in choose_deletions(points, keep)}


def test_keeps_the_newest_n_days_per_host() -> None:
    points = [point(h, d) for h in "ch" for d in range(25)]
    gone = deleted(points, 20)
    assert gone == {f"snap-{h}-{d}-0" for h in "ch" for d in range(20, 25)}


def test_keeps_one_snapshot_a_day() -> None:
    points = [point("c", 0, hour=0), point("c", 0, hour=5), point("c", 1)]
    assert deleted(points, 20) == {"snap-c-0-0"}


def test_never_deletes_the_newest_complete_snapshot() -> None:
    points = [point("c", d, complete=False) for d in range(3)] + [point("c", 10)]
    assert deleted(points, 3) == set()  # day 10 is outside 3 days but is the last complete one


def test_old_complete_snapshots_go_once_a_newer_complete_one_exists() -> None:
    points = [point("c", 0), point("c", 1, complete=False), point("c", 10)]
    assert deleted(points, 2) == {"snap-c-10-0"}


def test_reasons_name_the_host_and_day() -> None:
    [deletion] = choose_deletions([point("c", 0), point("c", 5)], 1)
    assert deletion.host == "c" and "2026-11-24" in deletion.reason


def test_refuses_to_keep_nothing() -> None:
    with pytest.raises(ValueError):
        choose_deletions([point("c", 0)], 0)
