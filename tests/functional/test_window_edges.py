"""The window service where AWS answers late, twice or not at all (issue 10, point 5)."""

from __future__ import annotations

import pytest

from chalicelib.adapters.compute import TAG_HOST, TAG_WINDOW
from chalicelib.window import SnapshotStatus, State
from chalicelib.windows import ActionsFailedError

from .conftest import HOSTS, Rig
from .test_window_service import open_and_run, report


def snapshots_of(rig: Rig, window_id: str, host: str) -> list[str]:
    return [i for i, s in rig.compute.snapshots.items()
            if s["tags"][TAG_WINDOW] == window_id  # type: ignore[index]
            and s["tags"][TAG_HOST] == host]  # type: ignore[index]


def close_and_stop(rig: Rig, wid: str) -> None:
    for host in HOSTS:
        rig.service.record_report(report(wid, host))
    rig.clock.advance(minutes=2)


def test_a_lost_create_snapshot_answer_makes_no_second_snapshot(rig: Rig) -> None:
    wid = open_and_run(rig)
    close_and_stop(rig, wid)
    rig.compute.lost_snapshot_answers = 1  # EC2 makes o's snapshot; the answer never comes
    rig.service.on_instance_state("i-1", "stopped")
    assert all(len(snapshots_of(rig, wid, h)) == 1 for h in HOSTS)
    assert all(s is SnapshotStatus.PENDING for s in rig.service.get_window(wid).snapshots.values())


def test_a_lost_answer_not_yet_listed_is_found_by_the_reconciler(rig: Rig) -> None:
    """DescribeSnapshots is eventually consistent: right after the lost answer the snapshot is
    not listed yet, the claim is released, and the reconciler's retry must find it rather than
    make a second one."""
    wid = open_and_run(rig)
    close_and_stop(rig, wid)
    find, misses = rig.compute.find_snapshot, [2]

    def not_listed_yet(window_id: str, host: str) -> str | None:
        if misses[0] and host == "c":
            misses[0] -= 1
            return None
        return find(window_id, host)

    rig.compute.find_snapshot = not_listed_yet  # type: ignore[method-assign]
    rig.compute.lost_snapshot_answers = 1  # the first create, c's
    with pytest.raises(ActionsFailedError, match="c: CreateSnapshot"):
        rig.service.on_instance_state("i-1", "stopped")
    assert "c" not in rig.service.get_window(wid).snapshots
    rig.service.reconcile()
    assert snapshots_of(rig, wid, "c") and len(snapshots_of(rig, wid, "c")) == 1
    assert rig.service.get_window(wid).snapshots["c"] is SnapshotStatus.PENDING


def test_a_stop_that_fails_still_deletes_the_deadline_and_the_retry_does_too(rig: Rig) -> None:
    wid = open_and_run(rig)
    stop, failures = rig.compute.stop, [1]

    def stop_fails_once(instance_id: str) -> None:
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("StopInstances: connection reset")
        stop(instance_id)

    rig.compute.stop = stop_fails_once  # type: ignore[method-assign]
    for host in HOSTS:
        assert rig.service.record_report(report(wid, host))  # the host's report still counts
    assert rig.service.get_window(wid).state is State.CLOSING
    assert rig.compute.state == "running" and wid in rig.scheduler.deleted
    rig.scheduler.deadlines[wid] = rig.service.get_window(wid).deadline  # its delete was lost
    rig.clock.advance(minutes=11)
    rig.service.reconcile()
    assert rig.compute.state == "stopped" and wid not in rig.scheduler.deadlines



def test_a_snapshot_not_yet_described_is_not_settled_as_failed(rig: Rig) -> None:
    """DescribeSnapshots is eventually consistent: a reconciler tick right after
    CreateSnapshot may not find the new snapshot. That is not EBS's `error`: it stays pending
    (EBS's verdict is recorded once, so a wrong one would stand), the window closes with
    retention when it completes; only a snapshot still unknown long after is failed."""
    wid = open_and_run(rig)
    close_and_stop(rig, wid)
    rig.service.on_instance_state("i-1", "stopped")
    c_snapshot = snapshots_of(rig, wid, "c")[0]
    states = rig.compute.snapshot_states
    rig.compute.snapshot_states = lambda ids: {  # type: ignore[method-assign]
        i: s for i, s in states(ids).items() if i != c_snapshot}
    rig.clock.advance(minutes=1)
    rig.service.reconcile()
    assert rig.service.get_window(wid).snapshots["c"] is SnapshotStatus.PENDING

    rig.compute.snapshot_states = states  # type: ignore[method-assign]
    for snapshot_id in list(rig.compute.snapshots):
        rig.compute.complete_snapshot(snapshot_id)
    rig.service.reconcile()
    window = rig.service.get_window(wid)
    assert window.state is State.CLOSED and "retention skipped" not in window.reason
    assert set(window.snapshots.values()) == {SnapshotStatus.COMPLETED}


def test_a_snapshot_unknown_long_after_its_claim_is_failed(rig: Rig) -> None:
    wid = open_and_run(rig)
    close_and_stop(rig, wid)
    rig.service.on_instance_state("i-1", "stopped")
    gone = snapshots_of(rig, wid, "c")[0]
    rig.compute.snapshots.pop(gone)  # deleted behind our back
    rig.clock.advance(minutes=20)
    rig.service.reconcile()
    assert rig.service.get_window(wid).snapshots["c"] is SnapshotStatus.FAILED
