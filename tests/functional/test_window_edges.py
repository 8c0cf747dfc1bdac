"""The window service where AWS answers late, twice or not at all, over archives of the fleet
(issue 10, point 5; issue 11)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from chalicelib.adapters.compute import TAG_HOST, TAG_WINDOW, InstanceView, Launched, LaunchSpec
from chalicelib.window import SnapshotStatus, State, Window
from chalicelib.windows import ActionsFailedError

from .conftest import HOSTS, Rig
from .test_window_service import report, running, settle_all, stopped


def snapshots_of(rig: Rig, window_id: str, host: str) -> list[str]:
    return [i for i, s in rig.compute.snapshots.items()
            if s["tags"][TAG_WINDOW] == window_id and s["tags"][TAG_HOST] == host]


def open_and_report(rig: Rig) -> Window:
    """A running window whose hosts have all reported: its archives are stopping."""
    window = running(rig, rig.service.open_window("test"))
    for host in HOSTS:
        report(rig, window, host)
    rig.clock.advance(minutes=2)
    return rig.service.get_window(window.window_id)


def instance_of(window: Window, shard_id: str = "s01") -> str:
    return str(window.shards[shard_id].instance_id)


def state_of(rig: Rig, instance_id: str) -> str:
    return str(rig.compute.instances[instance_id]["state"])


def test_a_lost_create_snapshot_answer_makes_no_second_snapshot(rig: Rig) -> None:
    window = open_and_report(rig)
    rig.compute.lost_snapshot_answers = 1  # EC2 makes c's snapshot; the answer never comes
    stopped(rig, window)
    assert all(len(snapshots_of(rig, window.window_id, h)) == 1 for h in HOSTS)
    window = rig.service.get_window(window.window_id)
    assert window.snapshots == {h: SnapshotStatus.PENDING for h in HOSTS}
    assert settle_all(rig, window.window_id).state is State.CLOSED


def test_a_lost_answer_not_yet_listed_is_found_by_the_reconciler(rig: Rig) -> None:
    """DescribeSnapshots is eventually consistent: right after the lost answer the snapshot is
    not listed yet, the claim is released, and the reconciler's retry must find it rather than
    make a second one."""
    window = open_and_report(rig)
    find, misses = rig.compute.find_snapshot, [2]

    def not_listed_yet(window_id: str, host: str) -> str | None:
        if misses[0] and host == "c":
            misses[0] -= 1
            return None
        return find(window_id, host)

    rig.compute.find_snapshot = not_listed_yet  # type: ignore[method-assign]
    rig.compute.lost_snapshot_answers = 1  # the first create, c's
    with pytest.raises(ActionsFailedError, match="c: CreateSnapshot"):
        rig.service.on_instance_state(instance_of(window), "stopped")
    window = rig.service.get_window(window.window_id)
    assert "c" not in window.snapshots and window.shards["s01"].state is State.SNAPSHOTTING
    assert rig.compute.running() == []  # terminated all the same
    rig.service.reconcile()
    assert len(snapshots_of(rig, window.window_id, "c")) == 1
    assert rig.service.get_window(window.window_id).snapshots["c"] is SnapshotStatus.PENDING
    assert rig.compute.calls["snapshot"] == len(HOSTS)
    assert settle_all(rig, window.window_id).state is State.CLOSED


def failing_stop(rig: Rig, times: int) -> list[int]:
    stop, failures = rig.compute.stop, [times]

    def stop_fails(instance_ids: Sequence[str]) -> None:
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("StopInstances: connection reset")
        stop(instance_ids)

    rig.compute.stop = stop_fails  # type: ignore[method-assign]
    return failures


def test_a_stop_that_fails_is_retried_by_the_reconciler_after_the_grace(rig: Rig) -> None:
    window = running(rig, rig.service.open_window("test"))
    failing_stop(rig, 1)
    for host in HOSTS:
        assert report(rig, window, host)  # the host's report still counts
    window = rig.service.get_window(window.window_id)
    instance = instance_of(window)
    assert window.shards["s01"].state is State.CLOSING and state_of(rig, instance) == "running"
    rig.clock.advance(minutes=5)
    rig.service.reconcile()  # within the grace: the stop may still be under way
    assert state_of(rig, instance) == "running"
    rig.clock.advance(minutes=6)
    rig.service.reconcile()
    assert state_of(rig, instance) == "stopped"
    rig.service.reconcile()  # its "stopped" event lost too
    assert rig.service.get_window(window.window_id).shards["s01"].state is State.SNAPSHOTTING
    window = settle_all(rig, window.window_id)
    assert window.state is State.CLOSED and rig.scheduler.deadlines == {}
    assert rig.compute.running() == [] and rig.compute.volumes == {}


def test_a_failed_stop_at_the_deadline_leaves_no_archive_running(two_shards: Rig) -> None:
    rig = two_shards
    window = running(rig, rig.service.open_window("test"))
    report(rig, window, "c")
    failing_stop(rig, 1)  # the deadline's one StopInstances for both archives
    rig.clock.now = window.deadline
    with pytest.raises(ActionsFailedError, match="stop_instance"):
        rig.service.on_deadline(window.window_id)
    window = rig.service.get_window(window.window_id)
    assert {s.state for s in window.shards.values()} == {State.CLOSING}
    assert any("missing" in body for _, body in rig.notifier.sent)  # told all the same
    assert {state_of(rig, instance_of(window, s)) for s in window.shards} == {"running"}
    rig.clock.advance(minutes=11)
    rig.service.reconcile()
    rig.service.reconcile()
    window = rig.service.get_window(window.window_id)
    assert {s.state for s in window.shards.values()} == {State.SNAPSHOTTING}
    assert settle_all(rig, window.window_id).state is State.CLOSED
    assert rig.compute.running() == [] and rig.compute.volumes == {}


def test_duplicated_and_late_instance_events_change_nothing(two_shards: Rig) -> None:
    rig = two_shards
    window = running(rig, rig.service.open_window("test"))
    for host in HOSTS:
        report(rig, window, host)
    stopped(rig, window)
    stopped(rig, window)  # every "stopped" event delivered twice
    for shard_id in window.shards:
        instance = instance_of(window, shard_id)
        assert rig.service.on_instance_state(instance, "stopped") is None
        assert rig.service.on_instance_state(instance, "running") is None  # late, stale
    assert rig.compute.calls["snapshot"] == len(HOSTS)  # one round
    assert rig.compute.calls["stop"] == 2  # one per archive
    window = settle_all(rig, window.window_id)
    for snapshot_id in rig.compute.snapshots:  # and every snapshot event twice
        rig.service.on_snapshots_settled([(snapshot_id, True)])
    assert window.state is State.CLOSED
    # WindowsOpened at the open, the conclusion's 9 once
    assert len(rig.notifier.sent) == 1 and len(rig.metrics.values) == 1 + 9


def test_a_snapshot_not_yet_described_is_not_settled_as_failed(rig: Rig) -> None:
    """DescribeSnapshots is eventually consistent: a reconciler tick right after
    CreateSnapshot may not find the new snapshot. That is not EBS's `error`: it stays pending
    (EBS's verdict is recorded once, so a wrong one would stand), the window closes with
    retention when it completes; only a snapshot still unknown long after is failed."""
    window = open_and_report(rig)
    stopped(rig, window)
    c_snapshot = snapshots_of(rig, window.window_id, "c")[0]
    states = rig.compute.snapshot_states
    rig.compute.snapshot_states = lambda ids: {  # type: ignore[method-assign]
        i: s for i, s in states(ids).items() if i != c_snapshot}
    for snapshot_id in list(rig.compute.snapshots):
        rig.compute.complete_snapshot(snapshot_id)
    rig.clock.advance(minutes=1)
    rig.service.reconcile()
    window = rig.service.get_window(window.window_id)
    assert window.snapshots["c"] is SnapshotStatus.PENDING
    assert window.shards["s01"].state is State.SNAPSHOTTING

    rig.compute.snapshot_states = states  # type: ignore[method-assign]
    rig.service.reconcile()
    window = rig.service.get_window(window.window_id)
    assert window.state is State.CLOSED and "retention skipped" not in window.reason
    assert set(window.snapshots.values()) == {SnapshotStatus.COMPLETED}
    assert rig.compute.volumes == {}


def test_a_snapshot_unknown_long_after_its_claim_is_failed_and_its_volume_kept(
        rig: Rig) -> None:
    window = open_and_report(rig)
    stopped(rig, window)
    gone = snapshots_of(rig, window.window_id, "c")[0]
    rig.compute.snapshots.pop(gone)  # deleted behind our back
    for snapshot_id in list(rig.compute.snapshots):
        rig.compute.complete_snapshot(snapshot_id)
    rig.clock.advance(minutes=20)
    rig.service.reconcile()
    window = rig.service.get_window(window.window_id)
    assert window.snapshots["c"] is SnapshotStatus.FAILED
    assert window.state is State.CLOSED and "retention skipped" in window.reason
    assert list(rig.compute.volumes) == [window.shards["s01"].volumes["c"]]


def test_a_launch_whose_shard_closed_meanwhile_is_terminated(rig: Rig) -> None:
    """RunInstances answered after the admin closed the window: record_launch refuses the
    instance, so the launch terminates it; the sweep deletes its volumes (they never served a
    session)."""
    launch = rig.compute.launch

    def launch_during_a_close(spec: LaunchSpec) -> Launched:
        launched = launch(spec)
        rig.service.close_window(spec.window_id, "alice")
        return launched

    rig.compute.launch = launch_during_a_close  # type: ignore[method-assign]
    window = rig.service.open_window("test")
    assert window.state is State.FAILED and window.shards["s01"].instance_id is None
    assert rig.compute.running() == []
    assert len(rig.compute.volumes) == len(HOSTS)
    rig.service.sweep()
    assert rig.compute.volumes == {}
    assert rig.service.ports.store.active_window_id() is None


def test_a_volume_still_attached_is_deleted_by_the_sweep(rig: Rig) -> None:
    """DeleteVolume refuses a volume still attached (the termination under way): the window
    still closes, and the sweep deletes it later."""
    window = open_and_report(rig)
    window = stopped(rig, window)
    for volume in rig.compute.volumes.values():
        volume["instance"] = instance_of(window)  # still detaching
    window = settle_all(rig, window.window_id)
    assert window.state is State.CLOSED and len(rig.compute.volumes) == len(HOSTS)
    rig.service.sweep()
    assert len(rig.compute.volumes) == len(HOSTS)  # still attached: kept
    for volume in rig.compute.volumes.values():
        volume["instance"] = None
    rig.service.sweep()
    assert rig.compute.volumes == {}


def test_a_snapshot_event_not_ours_is_ignored(rig: Rig) -> None:
    window = open_and_report(rig)
    stopped(rig, window)
    rig.service.on_snapshots_settled([("snap-0someoneelses", True)])
    window = rig.service.get_window(window.window_id)
    assert set(window.snapshots.values()) == {SnapshotStatus.PENDING}
    assert window.shards["s01"].state is State.SNAPSHOTTING


def test_a_launch_recorded_while_the_reconciler_looks_does_not_fail_its_archive(
        rig: Rig) -> None:
    """The reconciler reads the window while s01 is still OPENING with no instance, asks EC2
    about the instances it knows of, and meanwhile launch_shard records s01's instance and its
    "running" event makes it BOOTING: the reconciler must judge s01 as it is now, with its
    instance, not as it read it (it failed the archive: "the instance is none")."""
    rig.service.ports.launcher.launch = lambda w, s: None  # type: ignore[method-assign]
    window = rig.service.open_window("test")
    describe = rig.compute.describe

    def launched_meanwhile(instance_ids: Sequence[str]) -> dict[str, InstanceView]:
        if not rig.compute.instances:
            rig.service.launch_shard(window.window_id, "s01")
            rig.compute.boot()
            rig.service.on_instance_state(instance_of(rig.service.get_window(
                window.window_id)), "running")
        return describe(instance_ids)

    rig.compute.describe = launched_meanwhile  # type: ignore[method-assign]
    rig.service.reconcile()
    shard = rig.service.get_window(window.window_id).shards["s01"]
    assert shard.state is State.BOOTING, shard.reason
    assert state_of(rig, str(shard.instance_id)) == "running"
