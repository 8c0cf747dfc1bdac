"""The window + shard state machine, one transition at a time."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

from chalicelib.window import (
    RESTORE,
    Action,
    AdminClose,
    BootFailed,
    BootReady,
    DeadlineReached,
    HostReported,
    InstanceRunning,
    InstanceStopped,
    Shard,
    SnapshotSettled,
    SnapshotStatus,
    StartFailed,
    State,
    Tick,
    Timing,
    Window,
    conclude,
    decide,
)

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)
DEADLINE = T0 + timedelta(hours=3.6)
S1, S2 = frozenset({"c", "h"}), frozenset({"o", "l"})


def window(s1: State = State.OPEN, s2: State = State.OPEN, **changes: object) -> Window:
    shards = {"s01": Shard("s01", S1, s1, T0, instance_id="i-1"),
              "s02": Shard("s02", S2, s2, T0, instance_id="i-2")}
    base = Window(window_id="w-1", state=State.OPEN, opened_at=T0, deadline=DEADLINE,
                  expected=S1 | S2, trigger="schedule", updated_at=T0, shards=shards)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_running_is_booting_and_tags_the_volumes() -> None:
    decision = decide(window(State.OPENING), "s01", InstanceRunning("198.51.100.7"), T0)
    assert decision.target is State.BOOTING
    assert "198.51.100.7" in decision.reason
    assert decision.actions == (Action.TAG_VOLUMES,)


def test_only_the_instances_ready_signal_opens_its_shard() -> None:
    decision = decide(window(State.BOOTING), "s01", BootReady(), T0)
    assert decision.target is State.OPEN and decision.actions == ()
    assert "ready" in decision.reason


def test_a_failed_boot_fails_its_shard_at_once_with_the_instances_reason() -> None:
    for state in (State.OPENING, State.BOOTING):  # the signal may overtake "running"
        decision = decide(window(state), "s01", BootFailed("c: /dev/sdf is not attached"), T0)
        assert decision.target is State.FAILED
        assert "c: /dev/sdf is not attached" in decision.reason
        assert set(decision.actions) == {Action.TERMINATE_INSTANCE, Action.DELETE_VOLUMES,
                                         Action.NOTIFY}


def test_late_or_duplicated_boot_signals_change_nothing() -> None:
    for state in (State.OPEN, State.CLOSING, State.SNAPSHOTTING, State.CLOSED, State.FAILED):
        for event in (BootReady(), BootFailed("late")):
            decision = decide(window(state), "s01", event, T0)
            assert decision.target is None and decision.actions == (), (state, event)
    assert decide(window(State.OPENING), "s01", BootReady(), T0).target is None


def test_a_booting_shard_ends_at_the_deadline_or_by_an_admin_with_its_instance() -> None:
    at_deadline = decide(window(State.BOOTING), "s01", DeadlineReached(), DEADLINE)
    assert at_deadline.target is State.FAILED and "BOOTING" in at_deadline.reason
    assert Action.TERMINATE_INSTANCE in at_deadline.actions
    closed = decide(window(State.BOOTING), "s01", AdminClose("admin"), T0)
    assert closed.target is State.FAILED and Action.TERMINATE_INSTANCE in closed.actions
    stopped = decide(window(State.BOOTING), "s01", InstanceStopped(), T0)
    assert stopped.target is State.FAILED and Action.TERMINATE_INSTANCE in stopped.actions


def test_reconciler_fails_a_shard_running_without_a_ready_signal_after_the_boot_timeout() -> None:
    timing = Timing(boot_timeout=timedelta(minutes=15))
    later = T0 + timedelta(minutes=15)
    booting = window(State.BOOTING)
    assert decide(booting, "s01", Tick("running"), later - timedelta(seconds=1),
                  timing).target is None
    failed = decide(booting, "s01", Tick("running"), later, timing)
    assert failed.target is State.FAILED and "without saying it is ready" in failed.reason
    assert Action.TERMINATE_INSTANCE in failed.actions
    gone = decide(booting, "s01", Tick("terminated"), T0, timing)
    assert gone.target is State.FAILED


def test_running_again_while_open_does_nothing() -> None:
    assert decide(window(), "s01", InstanceRunning("x"), T0).target is None


def test_no_capacity_fails_the_shard_and_gives_back_what_it_made() -> None:
    decision = decide(window(State.OPENING), "s01",
                      StartFailed("t4g.small in subnet-a: InsufficientInstanceCapacity"), T0)
    assert decision.target is State.FAILED
    assert set(decision.actions) == {Action.TERMINATE_INSTANCE, Action.DELETE_VOLUMES,
                                     Action.NOTIFY}
    assert "InsufficientInstanceCapacity" in decision.reason


def test_a_shard_closes_when_its_own_hosts_reported_whatever_the_others_do() -> None:
    w = window(reports={"c": "succeeded", "h": "failed"})
    decision = decide(w, "s01", HostReported("h"), T0)
    assert decision.target is State.CLOSING
    assert decision.actions == (Action.STOP_INSTANCE,)
    assert "1 failed: h" in decision.reason
    assert decide(w, "s02", HostReported("o"), T0).target is None


def test_partial_reports_keep_the_shard_open() -> None:
    decision = decide(window(reports={"c": "succeeded"}), "s01", HostReported("c"), T0)
    assert decision.target is None
    assert "1 of 2" in decision.reason


def test_deadline_closes_an_open_shard_and_says_who_is_missing() -> None:
    decision = decide(window(reports={"c": "succeeded"}), "s01", DeadlineReached(), DEADLINE)
    assert decision.target is State.CLOSING
    assert Action.NOTIFY in decision.actions and "missing: h" in decision.reason


def test_deadline_before_its_time_does_nothing() -> None:
    assert decide(window(), "s01", DeadlineReached(), DEADLINE - timedelta(seconds=1)).target \
        is None


def test_deadline_fails_a_shard_that_never_came_up() -> None:
    decision = decide(window(State.OPENING), "s01", DeadlineReached(), DEADLINE)
    assert decision.target is State.FAILED
    assert Action.TERMINATE_INSTANCE in decision.actions


def test_stopped_snapshots_and_terminates_the_volumes_outlive_the_instance() -> None:
    decision = decide(window(State.CLOSING), "s01", InstanceStopped(), T0)
    assert decision.target is State.SNAPSHOTTING
    assert decision.actions == (Action.SNAPSHOT_VOLUMES, Action.TERMINATE_INSTANCE)


def test_a_stop_nobody_asked_for_still_snapshots_and_tells() -> None:
    decision = decide(window(State.OPEN), "s01", InstanceStopped(), T0)
    assert decision.target is State.SNAPSHOTTING
    assert Action.SNAPSHOT_VOLUMES in decision.actions and Action.NOTIFY in decision.actions


def test_admin_close_stops_open_shards_and_gives_up_opening_ones() -> None:
    assert decide(window(), "s01", AdminClose("alice"), T0).actions == (Action.STOP_INSTANCE,)
    assert decide(window(State.OPENING), "s01", AdminClose("alice"), T0).target is State.FAILED


def test_the_shard_closes_when_its_snapshots_settled_and_deletes_its_volumes() -> None:
    snaps = {"c": SnapshotStatus.COMPLETED, "h": SnapshotStatus.PENDING}
    w = window(State.SNAPSHOTTING, snapshots=snaps)
    assert decide(w, "s01", SnapshotSettled("c"), T0).target is None
    done = replace(w, snapshots={"c": SnapshotStatus.COMPLETED, "h": SnapshotStatus.COMPLETED})
    decision = decide(done, "s01", SnapshotSettled("h"), T0)
    assert decision.target is State.CLOSED
    assert decision.actions == (Action.DELETE_VOLUMES,)


def test_a_failed_snapshot_is_told_and_its_volume_kept_by_the_deletion_rule() -> None:
    w = window(State.SNAPSHOTTING, snapshots={"c": SnapshotStatus.COMPLETED,
                                              "h": SnapshotStatus.FAILED})
    decision = decide(w, "s01", SnapshotSettled("h"), T0)
    assert decision.target is State.CLOSED
    assert Action.NOTIFY in decision.actions and "kept" in decision.reason


def test_a_closed_shard_ignores_everything() -> None:
    w = window(State.CLOSED)
    for event in (InstanceRunning("x"), InstanceStopped(), DeadlineReached(), Tick("running")):
        assert decide(w, "s01", event, DEADLINE).target is None


def test_reconciler_moves_on_a_shard_whose_running_event_was_lost() -> None:
    assert decide(window(State.OPENING), "s01", Tick("running"), T0).target is State.BOOTING


def test_reconciler_fails_a_shard_that_never_booted() -> None:
    timing = Timing(boot_timeout=timedelta(minutes=15))
    later = T0 + timedelta(minutes=15)
    assert decide(window(State.OPENING), "s01", Tick("pending"), later - timedelta(seconds=1),
                  timing).target is None
    failed = decide(window(State.OPENING), "s01", Tick("none"), later, timing)
    assert failed.target is State.FAILED and "no instance launched" in failed.reason


def test_reconciler_stops_again_after_the_grace() -> None:
    w = window(State.CLOSING)
    assert decide(w, "s01", Tick("running"), T0 + timedelta(minutes=9)).actions == ()
    again = decide(w, "s01", Tick("running"), T0 + timedelta(minutes=10))
    assert again.target is None and again.actions == (Action.STOP_INSTANCE,)


def test_reconciler_takes_snapshots_never_taken_and_terminates() -> None:
    w = window(State.SNAPSHOTTING, snapshots={"c": SnapshotStatus.PENDING})
    decision = decide(w, "s01", Tick("stopped"), T0)
    assert decision.actions == (Action.SNAPSHOT_VOLUMES, Action.TERMINATE_INSTANCE)
    assert "h" in decision.reason


def test_an_instance_terminated_under_an_open_shard_still_has_its_volumes_snapshotted() -> None:
    decision = decide(window(State.OPEN), "s01", Tick("terminated"), T0)
    assert decision.target is State.SNAPSHOTTING
    assert Action.SNAPSHOT_VOLUMES in decision.actions


def test_a_restore_shard_is_never_snapshotted() -> None:
    shard = Shard("s01", frozenset({"c"}), State.CLOSING, T0, instance_id="i-9")
    w = Window("w-r", State.CLOSING, T0, DEADLINE, frozenset({"c"}), "host", T0,
               shards={"s01": shard}, purpose=RESTORE, snapshot_id="snap-1")
    decision = decide(w, "s01", InstanceStopped(), T0)
    assert decision.target is State.CLOSED
    assert Action.SNAPSHOT_VOLUMES not in decision.actions
    assert Action.DELETE_VOLUMES in decision.actions


# the window follows its shards -------------------------------------------------------------
def test_the_window_stays_while_a_shard_is_going() -> None:
    w = window(State.CLOSED, State.OPEN)
    assert conclude(w).target is None


def test_the_window_moves_to_its_least_advanced_shard_state() -> None:
    w = window(State.SNAPSHOTTING, State.CLOSING, state=State.OPEN)
    assert conclude(w).target is State.CLOSING


def test_the_window_closes_once_every_shard_did_and_applies_retention() -> None:
    w = window(State.CLOSED, State.CLOSED, reports={h: "succeeded" for h in S1 | S2},
               snapshots={h: SnapshotStatus.COMPLETED for h in S1 | S2})
    decision = conclude(w)
    assert decision.target is State.CLOSED
    assert decision.actions == (Action.DELETE_DEADLINE, Action.APPLY_RETENTION, Action.NOTIFY,
                                Action.RECORD_METRICS)
    assert "4 of 4 hosts complete in 2 archives" in decision.reason


def test_a_failed_shard_among_closed_ones_closes_the_window_and_names_it() -> None:
    w = window(State.CLOSED, State.FAILED,
               snapshots={h: SnapshotStatus.COMPLETED for h in S1})
    decision = conclude(w)
    assert decision.target is State.CLOSED and "archives failed: s02" in decision.reason


def test_retention_is_skipped_when_a_snapshot_of_the_window_failed() -> None:
    w = window(State.CLOSED, State.CLOSED, snapshots={"c": SnapshotStatus.FAILED})
    decision = conclude(w)
    assert Action.APPLY_RETENTION not in decision.actions


def test_every_shard_failed_fails_the_window() -> None:
    decision = conclude(window(State.FAILED, State.FAILED))
    assert decision.target is State.FAILED
    assert Action.NOTIFY in decision.actions and Action.APPLY_RETENTION not in decision.actions


def test_a_concluded_window_stays_concluded() -> None:
    assert conclude(window(State.CLOSED, State.CLOSED, state=State.CLOSED)).target is None
