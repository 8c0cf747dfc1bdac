"""The window state machine, one transition at a time."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from chalicelib.window import (
    Action,
    AdminClose,
    DeadlineReached,
    HostReported,
    InstanceRunning,
    InstanceStopped,
    SnapshotSettled,
    SnapshotStatus,
    StartFailed,
    State,
    Tick,
    Timing,
    Window,
    decide,
)

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)
DEADLINE = T0 + timedelta(hours=3.6)


def window(state: State = State.OPEN, **changes: object) -> Window:
    base = Window(window_id="w-1", state=state, opened_at=T0, deadline=DEADLINE,
                  expected=frozenset({"c", "h", "o", "l"}), instance_id="i-1",
                  trigger="schedule", updated_at=T0)
    return replace(base, **changes)  # type: ignore[arg-type]


ALL_OK = {"c": "succeeded", "h": "succeeded", "o": "succeeded", "l": "succeeded"}


def test_running_opens_an_opening_window() -> None:
    decision = decide(window(State.OPENING), InstanceRunning("198.51.100.7"), T0)
    assert decision.target is State.OPEN
    assert "198.51.100.7" in decision.reason
    assert decision.actions == ()


def test_running_again_while_open_does_nothing() -> None:
    assert decide(window(State.OPEN), InstanceRunning("x"), T0).target is None


def test_start_failure_fails_the_window_and_tells_the_admin() -> None:
    decision = decide(window(State.OPENING), StartFailed("t3.small: InsufficientInstanceCapacity"),
                      T0)
    assert decision.target is State.FAILED
    assert Action.NOTIFY in decision.actions
    assert "InsufficientInstanceCapacity" in decision.reason


def test_partial_reports_keep_the_window_open() -> None:
    w = window(reports={"c": "succeeded", "h": "failed"})
    decision = decide(w, HostReported("h"), T0)
    assert decision.target is None
    assert "2 of 4" in decision.reason


def test_last_report_closes_and_stops_once() -> None:
    decision = decide(window(reports=ALL_OK), HostReported("l"), T0)
    assert decision.target is State.CLOSING
    assert decision.actions.count(Action.STOP_INSTANCE) == 1
    assert Action.DELETE_DEADLINE in decision.actions


def test_a_failed_report_still_counts_as_reported() -> None:
    decision = decide(window(reports={**ALL_OK, "o": "failed"}), HostReported("o"), T0)
    assert decision.target is State.CLOSING
    assert "1 failed: o" in decision.reason


def test_deadline_with_hosts_missing_closes_and_notifies() -> None:
    w = window(reports={"c": "succeeded", "h": "succeeded", "o": "succeeded"})
    decision = decide(w, DeadlineReached(), DEADLINE)
    assert decision.target is State.CLOSING
    assert Action.NOTIFY in decision.actions
    assert "missing: l" in decision.reason


def test_early_deadline_delivery_is_ignored() -> None:
    assert decide(window(), DeadlineReached(), DEADLINE - timedelta(seconds=1)).target is None


def test_admin_close() -> None:
    decision = decide(window(), AdminClose("arn:aws:iam::1:user/ann"), T0)
    assert decision.target is State.CLOSING
    assert "ann" in decision.reason


def test_stopped_after_closing_takes_the_snapshots() -> None:
    decision = decide(window(State.CLOSING), InstanceStopped(), T0)
    assert decision.target is State.SNAPSHOTTING
    assert decision.actions == (Action.SNAPSHOT_VOLUMES,)


def test_stopped_while_open_snapshots_and_notifies() -> None:
    decision = decide(window(State.OPEN), InstanceStopped(), T0)
    assert decision.target is State.SNAPSHOTTING
    assert Action.NOTIFY in decision.actions


@pytest.mark.parametrize("state", [State.CLOSED, State.FAILED])
def test_finished_windows_ignore_everything(state: State) -> None:
    for event in (InstanceRunning("x"), InstanceStopped(), DeadlineReached(), AdminClose("a"),
                  HostReported("c"), SnapshotSettled("c"), Tick("running")):
        assert decide(window(state), event, DEADLINE).target is None


def settled(status: SnapshotStatus = SnapshotStatus.COMPLETED) -> dict[str, SnapshotStatus]:
    return {h: status for h in "chol"}


def test_window_closes_when_every_snapshot_settled_and_applies_retention() -> None:
    decision = decide(window(State.SNAPSHOTTING, snapshots=settled(), reports=ALL_OK),
                      SnapshotSettled("c"), T0)
    assert decision.target is State.CLOSED
    assert Action.APPLY_RETENTION in decision.actions


def test_window_waits_for_the_last_snapshot() -> None:
    snaps = {**settled(), "o": SnapshotStatus.PENDING}
    assert decide(window(State.SNAPSHOTTING, snapshots=snaps), SnapshotSettled("c"),
                  T0).target is None


def test_a_failed_snapshot_skips_retention_and_notifies() -> None:
    snaps = {**settled(), "h": SnapshotStatus.FAILED}
    decision = decide(window(State.SNAPSHOTTING, snapshots=snaps), SnapshotSettled("h"), T0)
    assert decision.target is State.CLOSED
    assert Action.APPLY_RETENTION not in decision.actions
    assert Action.NOTIFY in decision.actions


def test_tick_closes_an_open_window_past_its_deadline() -> None:
    decision = decide(window(), Tick("running"), DEADLINE + timedelta(minutes=1))
    assert decision.target is State.CLOSING
    assert Action.STOP_INSTANCE in decision.actions


def test_tick_finishes_a_lost_running_event() -> None:
    assert decide(window(State.OPENING), Tick("running"), T0).target is State.OPEN


def test_tick_fails_an_instance_that_never_came_up() -> None:
    timing = Timing(boot_timeout=timedelta(minutes=15))
    decision = decide(window(State.OPENING), Tick("stopped"), T0 + timedelta(minutes=16), timing)
    assert decision.target is State.FAILED


def test_tick_finishes_a_lost_stopped_event() -> None:
    assert decide(window(State.CLOSING), Tick("stopped"), T0).target is State.SNAPSHOTTING


def test_tick_stops_again_only_after_the_grace() -> None:
    timing = Timing(stop_grace=timedelta(minutes=10))
    w = window(State.CLOSING, updated_at=T0)
    assert decide(w, Tick("running"), T0 + timedelta(minutes=5), timing).actions == ()
    late = decide(w, Tick("running"), T0 + timedelta(minutes=11), timing)
    # The retry also deletes the deadline schedule: the first stop may have failed before it.
    assert late.target is None and late.actions == (Action.STOP_INSTANCE,
                                                    Action.DELETE_DEADLINE)
    assert decide(w, Tick("stopping"), T0 + timedelta(minutes=11), timing).actions == ()


def test_tick_takes_snapshots_nobody_took() -> None:
    snaps = {"c": SnapshotStatus.COMPLETED}
    decision = decide(window(State.SNAPSHOTTING, snapshots=snaps), Tick("stopped"), T0)
    assert decision.actions == (Action.SNAPSHOT_VOLUMES,)
    assert "h, l, o" in decision.reason


def test_missing_counts_failed_reports() -> None:
    assert window(reports={**ALL_OK, "c": "failed"}).missing == {"c"}
