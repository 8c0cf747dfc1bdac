"""The window service over several shards, on in-memory fakes, with a clock the test moves."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib.adapters.compute import TAG_HOST, TAG_WINDOW, FakeCompute
from chalicelib.adapters.store import InMemoryStore, WindowActiveError
from chalicelib.payloads import OpenRequest, ReportRequest
from chalicelib.records import Host
from chalicelib.recovery import RestoreRequest
from chalicelib.restores import RestoreService
from chalicelib.window import State, Window
from chalicelib.windows import (
    ArchiveNotRunningError,
    HostNotExpectedError,
    NotClosableError,
    UnknownArchiveError,
    WindowNotOpenError,
    WindowService,
)

from .conftest import HOSTS, T0, Clock, Rig, enrol_all, make_service


def running(rig: Rig, window: Window) -> Window:
    """Every archive runs, EC2 says so, then each instance says it is ready."""
    rig.compute.boot()
    window = rig.service.get_window(window.window_id)
    for shard in window.shards.values():
        if shard.instance_id:
            rig.service.on_instance_state(shard.instance_id, "running")
            rig.service.on_boot_signal(shard.instance_id, True, "volumes mounted")
    return rig.service.get_window(window.window_id)


def report(rig: Rig, window: Window, host: str, status: str = "succeeded") -> bool:
    return rig.service.record_report(ReportRequest(host, window.window_id, status, 10, 1, 1.0, ""))


def stopped(rig: Rig, window: Window) -> Window:
    for shard in rig.service.get_window(window.window_id).shards.values():
        if shard.instance_id and rig.compute.instances[shard.instance_id]["state"] == "stopped":
            rig.service.on_instance_state(shard.instance_id, "stopped")
    return rig.service.get_window(window.window_id)


def settle_all(rig: Rig, window_id: str, state: str = "completed") -> Window:
    for snapshot_id, snap in rig.compute.snapshots.items():
        if snap["tags"].get(TAG_WINDOW) == window_id and snap["state"] == "pending":
            rig.compute.complete_snapshot(snapshot_id, state)
            rig.service.on_snapshots_settled([(snapshot_id, state == "completed")])
    return rig.service.get_window(window_id)


def whole_window(rig: Rig) -> Window:
    window = running(rig, rig.service.open_window("test"))
    for host in HOSTS:
        report(rig, window, host)
    stopped(rig, window)
    return settle_all(rig, window.window_id)


def test_a_whole_window_in_two_archives(two_shards: Rig) -> None:
    rig = two_shards
    window = rig.service.open_window("schedule")
    assert window.state is State.OPENING
    assert {s: set(x.hosts) for s, x in window.shards.items()} == {
        "s01": {"c", "h"}, "s02": {"l", "o"}}
    assert all(s.instance_id for s in window.shards.values())  # launched, one each
    assert rig.scheduler.deadlines == {window.window_id: window.deadline}
    window = running(rig, window)
    assert window.state is State.OPEN
    assert all(set(s.volumes) == set(s.hosts) for s in window.shards.values())
    for shard in window.shards.values():  # each volume names its host
        assert {rig.compute.volumes[v]["host"] for v in shard.volumes.values()} == set(shard.hosts)
    for host in HOSTS:
        report(rig, window, host)
    window = stopped(rig, window)
    assert {s.state for s in window.shards.values()} == {State.SNAPSHOTTING}
    assert rig.compute.running() == []  # terminated as soon as the snapshots were taken
    assert len(rig.compute.volumes) == 4  # the volumes outlive the instances
    window = settle_all(rig, window.window_id)
    assert window.state is State.CLOSED
    assert rig.compute.volumes == {}  # deleted once their snapshots completed
    assert rig.scheduler.deadlines == {}
    assert rig.compute.calls["stop"] == 2
    assert len(rig.notifier.sent) == 1 and "4 of 4 hosts complete in 2 archives" in \
        rig.notifier.sent[0][1]
    assert ("Archives", "Count", 2) in rig.metrics.values


def test_each_shard_closes_on_its_own(two_shards: Rig) -> None:
    rig = two_shards
    window = running(rig, rig.service.open_window("test"))
    report(rig, window, "c")
    report(rig, window, "h")
    window = rig.service.get_window(window.window_id)
    assert window.shards["s01"].state is State.CLOSING
    assert window.shards["s02"].state is State.OPEN  # only that shard waits for its hosts
    assert rig.compute.calls["stop"] == 1


def test_the_next_window_makes_each_volume_from_its_hosts_newest_snapshot(rig: Rig) -> None:
    first = whole_window(rig)
    made = {snap["tags"][TAG_HOST]: i for i, snap in rig.compute.snapshots.items()
            if snap["tags"][TAG_WINDOW] == first.window_id}
    rig.clock.advance(days=1)
    rig.compute.now = rig.clock.now
    second = rig.service.open_window("schedule")
    shard = next(iter(second.shards.values()))
    spec = rig.compute.instances[str(shard.instance_id)]["spec"]
    assert {v.host: v.snapshot_id for v in spec.volumes} == made
    first_spec = next(x["spec"] for x in rig.compute.instances.values()
                      if x["spec"].window_id == first.window_id)
    assert {v.snapshot_id for v in first_spec.volumes} == {None}  # blank for a first backup


def test_a_cut_off_nights_volume_resumes_from_its_own_snapshot(rig: Rig) -> None:
    window = running(rig, rig.service.open_window("test"))
    rig.clock.now = window.deadline
    rig.service.on_deadline(window.window_id)
    stopped(rig, window)
    settle_all(rig, window.window_id)
    cut = rig.compute.find_snapshot(window.window_id, "c")
    rig.clock.advance(hours=1)
    second = rig.service.open_window("test")
    spec = rig.compute.instances[str(second.shards["s01"].instance_id)]["spec"]
    assert {v.host: v.snapshot_id for v in spec.volumes}["c"] == cut


def test_no_capacity_in_one_zone_moves_to_the_next(rig: Rig) -> None:
    rig.compute.unavailable = {"t3.small@subnet-a"}
    window = rig.service.open_window("test")
    instance = rig.compute.instances[str(window.shards["s01"].instance_id)]
    assert (instance["type"], instance["subnet"]) == ("t3.small", "subnet-b")


def test_no_capacity_anywhere_fails_that_shard_only(two_shards: Rig) -> None:
    rig = two_shards
    calls = iter([set(), {"t3.small", "t3a.small"}])
    original = rig.compute.launch

    def launch(spec):  # type: ignore[no-untyped-def]
        rig.compute.unavailable = next(calls)
        return original(spec)

    rig.compute.launch = launch  # type: ignore[method-assign]
    window = rig.service.open_window("test")
    assert window.shards["s01"].state is State.OPENING
    assert window.shards["s02"].state is State.FAILED
    assert "subnet-b: InsufficientInstanceCapacity" in window.shards["s02"].reason
    assert any("s02" in subject for subject, _ in rig.notifier.sent)
    window = running(rig, window)
    report(rig, window, "c")
    report(rig, window, "h")
    stopped(rig, window)
    window = settle_all(rig, window.window_id)
    assert window.state is State.CLOSED and "archives failed: s02" in window.reason


def test_every_shard_without_capacity_fails_the_window(rig: Rig) -> None:
    rig.compute.unavailable = {"t3.small", "t3a.small"}
    window = rig.service.open_window("test")
    assert window.state is State.FAILED
    assert rig.scheduler.deadlines == {}
    assert rig.service.ports.store.active_window_id() is None  # the next one may open


def test_a_ready_signal_before_running_is_refused_until_running_was_recorded(rig: Rig) -> None:
    """The signal may overtake EC2's event: 503, boot.sh posts again; a failure needs no
    address and fails the shard at once."""
    window = rig.service.open_window("test")
    instance = str(window.shards["s01"].instance_id)
    with pytest.raises(ArchiveNotRunningError):
        rig.service.on_boot_signal(instance, True, "ready")
    rig.compute.boot()
    rig.service.on_instance_state(instance, "running")
    rig.service.on_boot_signal(instance, True, "ready")
    assert rig.service.get_window(window.window_id).state is State.OPEN
    with pytest.raises(UnknownArchiveError):
        rig.service.on_boot_signal("i-0someoneelses", True, "ready")


def test_a_failed_boot_before_running_fails_the_shard(rig: Rig) -> None:
    window = rig.service.open_window("test")
    decision = rig.service.on_boot_signal(str(window.shards["s01"].instance_id), False,
                                          "no host key")
    assert decision.target is State.FAILED and "no host key" in decision.reason
    assert rig.service.get_window(window.window_id).state is State.FAILED
    assert rig.compute.running() == []


def test_a_duplicated_launch_makes_no_second_instance(rig: Rig) -> None:
    window = rig.service.open_window("test")
    rig.service.launch_shard(window.window_id, "s01")
    assert len(rig.compute.instances) == 1


def test_a_lost_launch_is_launched_again_by_the_reconciler(rig: Rig) -> None:
    rig.service.ports.launcher.launch = lambda w, s: None  # type: ignore[method-assign]
    window = rig.service.open_window("test")
    assert window.shards["s01"].instance_id is None
    rig.service.ports.launcher.launch = lambda w, s: [  # type: ignore[method-assign]
        rig.service.launch_shard(w, x) for x in s]
    rig.clock.advance(minutes=4)
    rig.service.reconcile()
    assert rig.compute.boot()  # launched now
    rig.service.reconcile()
    assert rig.service.get_window(window.window_id).shards["s01"].state is State.BOOTING


def test_events_of_other_instances_are_ignored_cheaply(rig: Rig) -> None:
    rig.service.open_window("test")
    before = rig.compute.calls["describe"]
    assert rig.service.on_instance_state("i-0someoneelses", "running") is None
    assert rig.compute.calls["describe"] == before  # one table read, no EC2 call


def test_a_stale_stopped_event_does_not_close_an_open_shard(rig: Rig) -> None:
    window = running(rig, rig.service.open_window("test"))
    rig.service.on_instance_state(str(window.shards["s01"].instance_id), "stopped")
    assert rig.service.get_window(window.window_id).shards["s01"].state is State.OPEN


def test_deadline_closes_every_shard_in_one_stop_call(two_shards: Rig) -> None:
    rig = two_shards
    window = running(rig, rig.service.open_window("test"))
    report(rig, window, "c")
    rig.clock.now = window.deadline
    rig.service.on_deadline(window.window_id)
    assert rig.compute.calls["stop"] == 1
    window = stopped(rig, window)
    assert {s.state for s in window.shards.values()} == {State.SNAPSHOTTING}
    assert any("missing" in body for _, body in rig.notifier.sent)


def test_reports_that_cannot_count_are_refused(two_shards: Rig) -> None:
    rig = two_shards
    window = rig.service.open_window("test")
    with pytest.raises(WindowNotOpenError):  # its archive is still opening
        report(rig, window, "c")
    window = running(rig, window)
    with pytest.raises(HostNotExpectedError):
        rig.service.record_report(ReportRequest("x", window.window_id, "succeeded", 0, 0, 0, ""))
    assert report(rig, window, "c") and not report(rig, window, "c")  # accepted once


def test_admin_close_twice(rig: Rig) -> None:
    window = running(rig, rig.service.open_window("test"))
    rig.service.close_window(window.window_id, "alice")
    with pytest.raises(NotClosableError):
        rig.service.close_window(window.window_id, "alice")


def test_a_failed_snapshot_keeps_its_volume_and_skips_retention(rig: Rig) -> None:
    window = running(rig, rig.service.open_window("test"))
    for host in HOSTS:
        report(rig, window, host)
    stopped(rig, window)
    failing = rig.compute.find_snapshot(window.window_id, "h")
    rig.compute.complete_snapshot(str(failing), "error")
    rig.service.on_snapshots_settled([(str(failing), False)])
    window = settle_all(rig, window.window_id)
    assert window.state is State.CLOSED and "retention skipped" in window.reason
    kept = [v for v, x in rig.compute.volumes.items()]
    assert kept == [window.shards["s01"].volumes["h"]]
    rig.service.sweep()
    assert list(rig.compute.volumes) == kept  # the sweep keeps it too


def test_the_reconciler_finishes_lost_events(two_shards: Rig) -> None:
    rig = two_shards
    window = rig.service.open_window("test")
    rig.compute.boot()
    rig.clock.advance(minutes=1)
    rig.service.reconcile()  # both "running" events lost
    window = rig.service.get_window(window.window_id)
    assert window.state is State.BOOTING  # running is not ready
    for shard in window.shards.values():
        rig.service.on_boot_signal(str(shard.instance_id), True, "ready")
    window = rig.service.get_window(window.window_id)
    assert window.state is State.OPEN
    for host in HOSTS:
        report(rig, window, host)
    rig.clock.advance(minutes=1)
    rig.service.reconcile()  # both "stopped" events lost
    window = rig.service.get_window(window.window_id)
    assert {s.state for s in window.shards.values()} == {State.SNAPSHOTTING}
    for snapshot_id in list(rig.compute.snapshots):
        rig.compute.complete_snapshot(snapshot_id)
    rig.service.reconcile()  # the snapshot events lost
    assert rig.service.get_window(window.window_id).state is State.CLOSED
    rig.service.sweep()
    assert rig.compute.volumes == {} and rig.compute.running() == []


def test_the_sweep_terminates_an_instance_its_shard_no_longer_wants(rig: Rig) -> None:
    window = running(rig, rig.service.open_window("test"))
    for host in HOSTS:
        report(rig, window, host)
    stopped(rig, window)
    instance = str(window.shards["s01"].instance_id)
    rig.compute.instances[instance]["state"] = "stopped"  # the termination was lost
    settle_all(rig, window.window_id)
    assert instance in rig.compute.running()
    rig.service.sweep()
    assert rig.compute.running() == [] and rig.compute.volumes == {}


def test_a_scheduled_open_during_an_active_window_tells_the_admins(rig: Rig) -> None:
    rig.service.open_window("test")
    assert rig.service.open_scheduled() is None
    assert "not opened" in rig.notifier.sent[-1][0]


def test_a_scheduled_open_with_no_host_does_nothing() -> None:
    rig_store, compute, clock = InMemoryStore(), FakeCompute(), Clock()
    service = make_service(rig_store, compute, clock)
    assert service.open_scheduled() is None
    assert compute.instances == {}


def test_named_and_revoked_hosts(rig: Rig) -> None:
    host = rig.store.get_host("l")
    assert host is not None
    rig.store.put_host(Host("l", host.public_key, False, T0))
    window = rig.service.open_window("api", OpenRequest(duration_hours=1.0, hosts=None))
    assert window.expected == {"c", "h", "o"}
    assert window.deadline == T0 + timedelta(hours=1)


def test_forty_five_hosts_are_three_archives_of_fifteen() -> None:
    store, compute, clock = InMemoryStore(), FakeCompute(), Clock()
    enrol_all(store, [f"h{i:02d}" for i in range(45)])
    service = make_service(store, compute, clock)
    window = service.open_window("test")
    assert sorted(len(s.hosts) for s in window.shards.values()) == [15, 15, 15]
    assert len(compute.instances) == 3
    assert {len(x["spec"].volumes) for x in compute.instances.values()} == {15}


# restores run beside backups ---------------------------------------------------------------
def test_a_restore_runs_beside_the_backup_window_on_its_own_archive(rig: Rig) -> None:
    first = whole_window(rig)
    rig.clock.advance(days=1)
    backup = running(rig, rig.service.open_window("schedule"))
    restores = RestoreService(rig.service, rig.clock, lambda now: "w-restore-1")
    point = rig.compute.find_snapshot(first.window_id, "c")
    answer = restores.open(RestoreRequest("c", None, point, False), trigger="api")
    restore = rig.service.get_window(answer["window_id"])
    assert restore.is_restore and restore.state is State.OPENING
    spec = rig.compute.instances[str(restore.shards["s01"].instance_id)]["spec"]
    assert [(v.host, v.snapshot_id) for v in spec.volumes] == [("c", point)]
    assert rig.service.ports.boot.rendered[-1] == ((), (("c", "/dev/sdf"),))  # type: ignore[attr-defined]
    assert sorted(rig.store.active_window_ids()) == sorted([backup.window_id, "w-restore-1"])
    with pytest.raises(WindowActiveError):  # one restore per host at a time
        restores._open("api", "c", "snap-other")
    # the backup window closes as usual meanwhile
    for host in HOSTS:
        report(rig, backup, host)
    stopped(rig, backup)
    assert settle_all(rig, backup.window_id).state is State.CLOSED
    # and the restore ends on its own
    restore = running(rig, restore)
    report(rig, restore, "c")
    restore = stopped(rig, restore)
    assert restore.state is State.CLOSED
    assert rig.compute.volumes == {} and rig.compute.running() == []
    assert not [s for s in rig.compute.snapshots.values()
                if s["tags"][TAG_WINDOW] == "w-restore-1"]  # a restore is never snapshotted


def test_a_second_service_instance_sees_the_same_state(rig: Rig) -> None:
    """Two Lambda containers: the second one's service reads what the first one wrote."""
    window = rig.service.open_window("test")
    rig.compute.boot()
    other = WindowService(rig.service.settings, rig.service.ports, clock=rig.clock)
    other.on_instance_state(str(window.shards["s01"].instance_id), "running")
    assert rig.service.get_window(window.window_id).state is State.BOOTING
    other.on_boot_signal(str(window.shards["s01"].instance_id), True, "ready")
    assert rig.service.get_window(window.window_id).state is State.OPEN
