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


def settled(host: str, days_ago: int, reported: bool = True, state: str = "completed",
            hour: int = 0) -> RecoveryPoint:
    started = T0 - timedelta(days=days_ago) + timedelta(hours=hour)
    return RecoveryPoint(f"snap-{host}-{days_ago}-{hour}-{state}", host,
                         f"w-{started:%Y%m%dT%H%M%SZ}-0", started, reported, 20, state)


def test_a_point_is_complete_only_when_reported_and_completed_by_ebs() -> None:
    assert settled("c", 0).complete
    assert not settled("c", 0, reported=False).complete
    assert not settled("c", 0, state="error").complete
    assert not settled("c", 0, state="pending").complete


def test_a_reported_snapshot_that_ebs_failed_never_stands_for_the_last_good_one() -> None:
    """The issue's sequence: day 2 reported success but its snapshot ended in error, day 3
    is incomplete; day 1 is the newest complete point and must stay."""
    day1, day2 = settled("o", 2), settled("o", 1, state="error")
    day3 = settled("o", 0, reported=False)
    gone = deleted([day1, day2, day3], 1)
    assert day1.snapshot_id not in gone
    assert day2.snapshot_id in gone  # not restorable: nothing to keep it for
    assert day3.snapshot_id not in gone  # today's point


def test_pending_snapshots_and_snapshots_in_use_are_never_deleted() -> None:
    old_pending = settled("c", 30, state="pending")
    old_in_use = settled("c", 40)
    points = [settled("c", d) for d in range(3)] + [old_pending, old_in_use]
    gone = {d.snapshot_id for d in choose_deletions(points, 1, frozenset({old_in_use.snapshot_id}))}
    assert old_pending.snapshot_id not in gone and old_in_use.snapshot_id not in gone
    assert gone == {settled("c", 1).snapshot_id, settled("c", 2).snapshot_id}


def test_a_day_keeps_its_complete_point_over_a_newer_incomplete_one() -> None:
    morning, evening = settled("c", 1, hour=0), settled("c", 1, reported=False, hour=12)
    today = settled("c", 0, reported=False)
    gone = deleted([morning, evening, today], 2)
    assert gone == {evening.snapshot_id}


def test_the_day_is_the_day_the_window_opened() -> None:
    """A window opened at 23:59 whose snapshot starts after midnight is that evening's."""
    late = RecoveryPoint("snap-late", "c", "w-20261128T235900Z-abc123",
                         datetime(2026, 11, 29, 0, 20, tzinfo=timezone.utc), True)
    assert late.day == "2026-11-28"
    assert point("c", 0).day == "2026-11-29"  # no date in the id: the snapshot's start


def test_a_cut_off_night_after_a_complete_one_of_the_same_day_is_kept_to_resume_from() -> None:
    """The next window's volume is made from the host's newest restorable snapshot: a night
    cut off after the day's complete backup stays until a newer one exists, beside the
    complete one, which stays too (the newest complete)."""
    complete, cut_off = settled("c", 0, hour=0), settled("c", 0, reported=False, hour=5)
    assert deleted([complete, cut_off], 20) == set()
    resumed = settled("c", 0, hour=9)
    assert deleted([complete, cut_off, resumed], 20) == {complete.snapshot_id,
                                                         cut_off.snapshot_id}
