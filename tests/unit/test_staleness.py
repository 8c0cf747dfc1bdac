"""The dead man's switch's decisions (chalicelib/staleness.py): pure, time given."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from chalicelib.records import Host
from chalicelib.retention import RecoveryPoint
from chalicelib.settings import InvalidSettingError, Settings
from chalicelib.staleness import Change, changes, host_ages

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc)
LIMIT = timedelta(hours=36)


def host(name: str, enabled: bool = True, enrolled: datetime = T0) -> Host:
    return Host(name, "ssh-ed25519 KEY", enabled, enrolled)


def point(name: str, started: datetime, reported: bool = True, state: str = "completed",
          snapshot_id: str = "snap-1") -> RecoveryPoint:
    return RecoveryPoint(snapshot_id, name, f"w-{started:%Y%m%dT%H%M%SZ}-a", started, reported,
                         20, state)


def test_the_age_is_that_of_the_newest_complete_point() -> None:
    points = [point("c", T0, snapshot_id="snap-old"),
              point("c", T0 + timedelta(days=1), reported=False, snapshot_id="snap-cut"),
              point("c", T0 + timedelta(days=2), state="pending", snapshot_id="snap-pending")]
    (age,) = host_ages([host("c")], points, T0 + timedelta(hours=40), LIMIT)
    assert age.newest is not None and age.newest.snapshot_id == "snap-old"
    assert age.age_hours == 40 and age.stale


def test_a_host_without_a_point_counts_from_its_enrolment() -> None:
    enrolled = T0 - timedelta(hours=10)
    (age,) = host_ages([host("h", enrolled=enrolled)], [], T0, LIMIT)
    assert (age.newest, age.age_hours, age.stale) == (None, 10, False)
    (age,) = host_ages([host("h", enrolled=enrolled)], [], T0 + timedelta(hours=27), LIMIT)
    assert age.stale


def test_a_revoked_host_is_never_stale() -> None:
    ages = host_ages([host("o", enabled=False), host("c")], [], T0 + timedelta(days=30), LIMIT)
    assert [a.host for a in ages] == ["c"]


def test_told_once_when_stale_once_when_recovered_quietly_forgotten_when_revoked() -> None:
    stale = host_ages([host("h")], [], T0 + timedelta(hours=37), LIMIT)
    (verdict,) = changes(stale, {}, LIMIT)
    assert verdict.change is Change.STALE and "more than 36 h" in verdict.reason
    assert changes(stale, {"h": T0}, LIMIT) == []  # marked already: nothing again
    fresh = host_ages([host("h")], [point("h", T0 + timedelta(hours=36))],
                      T0 + timedelta(hours=37), LIMIT)
    assert [v.change for v in changes(fresh, {"h": T0}, LIMIT)] == [Change.RECOVERED]
    assert changes(fresh, {}, LIMIT) == []
    assert [v.change for v in changes([], {"o": T0}, LIMIT)] == [Change.FORGOTTEN]


REQUIRED = {"TABLE_NAME": "t", "TOPIC_ARN": "a", "DEADLINE_TARGET_ARN": "d",
            "SCHEDULER_ROLE_ARN": "r"}


def test_the_threshold_is_a_setting_and_a_wrong_one_names_the_variable() -> None:
    assert Settings.from_env(REQUIRED).stale_after_hours == 36
    assert Settings.from_env({**REQUIRED, "STALE_AFTER_HOURS": "48"}).stale_after_hours == 48
    for wrong in ("0", "-1", "a day", "nan"):
        with pytest.raises(InvalidSettingError, match="STALE_AFTER_HOURS"):
            Settings.from_env({**REQUIRED, "STALE_AFTER_HOURS": wrong})
