"""What the smoke prints and prices (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.admin.smoke_report import (
    LOOK_AT,
    Leftovers,
    StepResult,
    billed_shards,
    render,
    step_line,
    summary_data,
    window_cost,
)
from chalicelib.cost import load_prices

T0 = "2026-12-07T10:00:00+00:00"


def shard(entered: dict[str, str], instance_id: str | None = "i-1") -> dict[str, Any]:
    return {"shard_id": "s1", "hosts": ["smoke-1"], "instance_id": instance_id,
            "instance_type": "t4g.small", "entered": {"OPENING": T0, **entered}}


def window(*shards: dict[str, Any]) -> dict[str, Any]:
    return {"window_id": "w-1", "shards": list(shards)}


@pytest.mark.parametrize(("entered", "stopped_s", "closed_s"), [
    ({"SNAPSHOTTING": "2026-12-07T10:02:00+00:00", "CLOSED": "2026-12-07T10:05:00+00:00"},
     120, 300),
    ({"CLOSING": "2026-12-07T10:01:00+00:00", "CLOSED": "2026-12-07T10:01:30+00:00"}, 90, 90),
    ({"FAILED": "2026-12-07T10:00:40+00:00"}, 40, 40),
], ids=["backup", "restore", "failed"])
def test_a_shard_is_billed_from_launch_to_stop(entered: dict[str, str], stopped_s: float,
                                               closed_s: float) -> None:
    [run] = billed_shards(window(shard(entered)))
    assert (run.stopped_s, run.closed_s, run.instance_type) == (stopped_s, closed_s, "t4g.small")


def test_a_shard_never_launched_or_still_running_costs_nothing() -> None:
    assert billed_shards(window(shard({}, instance_id=None))) == []
    assert billed_shards(window(shard({"OPEN": "2026-12-07T10:01:00+00:00"}))) == []
    assert window_cost(window(), load_prices(), 1) == []


def test_the_instance_is_billed_at_least_a_minute() -> None:
    prices = load_prices()
    lines = window_cost(window(shard({"FAILED": "2026-12-07T10:00:10+00:00"})), prices, 1)
    instance = next(line for line in lines if line.item == "EC2 t4g.small")
    assert instance.quantity == pytest.approx(60 / 3600)
    assert instance.usd == pytest.approx(prices.instance_hourly("t4g.small") / 60)


def test_a_failed_step_says_where_to_look_and_a_passed_one_does_not() -> None:
    failed = step_line(StepResult("backup run", False, 3.0, "offsite-host run exited 5"))
    assert failed.startswith("  FAIL backup run") and LOOK_AT["backup run"] in failed
    passed = step_line(StepResult("backup run", True, 3.0, "report: succeeded"))
    assert passed.startswith("  ok   backup run") and "look at" not in passed


def test_something_left_behind_fails_the_smoke() -> None:
    steps = [StepResult("compare", True, 0.1, "identical")]
    left = Leftovers(removed=["host smoke-1"], kept=["snapshot snap-1 of smoke-1 (InUse)"])
    assert summary_data(steps, left)["ok"] is False
    text = render(steps, left, load_prices())
    assert "COULD NOT REMOVE snapshot snap-1" in text and "1 thing(s) left behind" in text
    assert summary_data(steps, Leftovers(removed=["host smoke-1"]))["ok"] is True
