"""Recovery points: parsing the list, choosing the point to restore, the restore answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from offsite_host import points
from offsite_host.api import Answer
from offsite_host.exitcodes import ConfigError, NoWindowError, ServerError
from offsite_host.points import (
    RecoveryPoint,
    check_day,
    check_snapshot_id,
    choose,
    choose_snapshot,
    describe,
    parse_points,
    parse_restore_answer,
)
from offsite_host.restore import RestoreRequest


def point(day: str, hour: int, complete: bool = True) -> RecoveryPoint:
    return RecoveryPoint(f"snap-{day}-{hour}", f"w-{day}", day,
                         1_900_000_000 + int(day[-2:]) * 86400 + hour * 3600, complete, 3)


POINTS = [point("2030-03-03", 1, complete=False), point("2030-03-02", 5),
          point("2030-03-02", 1), point("2030-03-01", 1, complete=False)]


def test_the_newest_complete_point_of_the_day() -> None:
    assert choose(POINTS, "2030-03-02", False).point.snapshot_id == "snap-2030-03-02-5"


def test_no_day_means_the_newest_complete_point() -> None:
    chosen = choose(POINTS, None, False)
    assert chosen.point.snapshot_id == "snap-2030-03-02-5"
    assert "complete" in chosen.reason


def test_an_unknown_day_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"no recovery point on 2031-01-01.*2030-03-03, "
                                          r"2030-03-02, 2030-03-01"):
        choose(POINTS, "2031-01-01", False)
    with pytest.raises(ConfigError, match="none"):
        choose([], None, False)


def test_an_incomplete_point_only_when_allowed() -> None:
    with pytest.raises(ConfigError, match="--allow-incomplete"):
        choose(POINTS, "2030-03-03", False)
    chosen = choose(POINTS, "2030-03-03", True)
    assert chosen.point.snapshot_id == "snap-2030-03-03-1" and "INCOMPLETE" in chosen.reason


def test_snapshot_picks_an_older_point_of_a_day_with_several() -> None:
    chosen = choose_snapshot(POINTS, "snap-2030-03-02-1", None, False)
    assert chosen.point.snapshot_id == "snap-2030-03-02-1" and "--snapshot" in chosen.reason
    assert choose_snapshot(POINTS, "snap-2030-03-02-1", "2030-03-02", False).point == POINTS[2]


def test_snapshot_must_exist_and_match_the_date() -> None:
    with pytest.raises(ConfigError, match=r"no recovery point snap-x; .*snap-2030-03-02-5"):
        choose_snapshot(POINTS, "snap-x", None, False)
    with pytest.raises(ConfigError, match="is of 2030-03-02, not of 2030-03-01"):
        choose_snapshot(POINTS, "snap-2030-03-02-1", "2030-03-01", False)


def test_snapshot_incomplete_only_when_allowed() -> None:
    with pytest.raises(ConfigError, match="--allow-incomplete"):
        choose_snapshot(POINTS, "snap-2030-03-03-1", None, False)
    chosen = choose_snapshot(POINTS, "snap-2030-03-03-1", None, True)
    assert "INCOMPLETE" in chosen.reason


@pytest.mark.parametrize("text", ["-rf", "snap/../x", "", "snap 1"])
def test_a_bad_snapshot_id(text: str) -> None:
    with pytest.raises(ConfigError, match="not a snapshot id"):
        check_snapshot_id(text)
    assert check_snapshot_id("snap-0a1b2c3d") == "snap-0a1b2c3d"


@pytest.mark.parametrize("text", ["2030-3-01", "2030-02-30", "yesterday", "2030-03-01T00:00"])
def test_a_bad_date(text: str) -> None:
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        check_day(text)
    assert check_day("2030-02-28") == "2030-02-28"


def test_parse_points_sorts_newest_first_and_is_strict() -> None:
    data = {"host": "web-1", "snapshots": [
        {"snapshot_id": "snap-a", "window_id": "w-1", "day": "2030-03-01",
         "started_at": "2030-03-01T01:00:00Z", "complete": True, "size_gib": 8},
        {"snapshot_id": "snap-b", "window_id": "w-2", "day": "2030-03-02",
         "started_at": "2030-03-02T01:00:00+00:00", "complete": False, "size_gib": 8}]}
    assert [p.snapshot_id for p in parse_points(data)] == ["snap-b", "snap-a"]
    data["snapshots"][0]["complete"] = "yes"
    with pytest.raises(ServerError, match="complete"):
        parse_points(data)
    with pytest.raises(ServerError):
        parse_points({"host": "web-1"})
    with pytest.raises(ServerError, match="snapshot_id"):
        parse_points({"snapshots": [{"snapshot_id": "-rf", "window_id": "w", "day": "2030-03-01",
                                     "started_at": "2030-03-01T01:00:00Z", "complete": True}]})


def test_describe_lists_every_point() -> None:
    lines = describe(POINTS)
    assert lines[1].startswith("2030-03-03") and "INCOMPLETE" in lines[1]
    assert "complete" in lines[2] and "snap-2030-03-02-5" in lines[2]
    assert describe([]) == ["no recovery point yet"]


def answer(status: int, body: object) -> Answer:
    return Answer(status, {}, json.dumps(body).encode())


def test_the_restore_answer() -> None:
    window = parse_restore_answer(answer(202, {
        "window_id": "r-1", "snapshot_id": "snap-a", "day": "2030-03-01", "complete": True,
        "deadline": "2030-03-01T05:00:00Z"}))
    assert (window.window_id, window.snapshot_id, window.complete) == ("r-1", "snap-a", True)
    with pytest.raises(ConfigError, match="2030-03-01"):
        parse_restore_answer(answer(404, {"error": "no_recovery_point", "message": "none",
                                          "days": ["2030-03-01"]}))
    with pytest.raises(ConfigError, match="--allow-incomplete"):
        parse_restore_answer(answer(409, {"error": "incomplete_snapshot"}))
    with pytest.raises(NoWindowError, match="busy"):
        parse_restore_answer(answer(409, {"error": "window_active", "message": "backup"}))
    with pytest.raises(ServerError):
        parse_restore_answer(answer(500, {"error": "boom"}))
    with pytest.raises(ServerError, match="deadline"):
        parse_restore_answer(answer(202, {"window_id": "r-1", "snapshot_id": "snap-a",
                                          "day": "2030-03-01", "complete": True}))


def test_a_restore_request_chooses_by_snapshot_or_by_day() -> None:
    by_day = RestoreRequest("2030-03-02", "now", None, Path("/tmp/x"), False, False)
    assert by_day.choose(POINTS).point.snapshot_id == "snap-2030-03-02-5"
    by_id = RestoreRequest(None, "now", None, Path("/tmp/x"), False, False,
                           snapshot="snap-2030-03-02-1")
    assert by_id.choose(POINTS).point.snapshot_id == "snap-2030-03-02-1"


def test_freshness_warns_without_any_complete_point() -> None:
    data = {"host": "web-1", "stale_after_hours": 36, "snapshots": []}
    assert points.freshness(data, 0.0)[-1] == "WARNING: this host has no complete off-site backup"


def test_freshness_without_a_threshold_judges_nothing() -> None:
    """An older control plane answers no stale_after_hours: the age is shown, no warning."""
    data = {"host": "web-1", "snapshots": [
        {"snapshot_id": "snap-0a", "window_id": "w-1", "day": "2026-12-02",
         "started_at": "2026-12-02T02:00:00+00:00", "complete": True, "size_gib": 20}]}
    (line,) = points.freshness(data, 1_800_000_000.0)
    assert line.startswith("newest point: snap-0a of 2026-12-02")
