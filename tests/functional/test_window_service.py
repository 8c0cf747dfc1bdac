"""The window's use cases on fakes: opening, reports, deadline, snapshots, reconciler."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chalicelib.adapters.compute import TAG_COMPLETE, TAG_HOST, TAG_REPORTED
from chalicelib.adapters.store import WindowActiveError
from chalicelib.instance.userdata import CONFIG_PATH
from chalicelib.payloads import OpenRequest, ReportRequest
from chalicelib.records import Host
from chalicelib.window import SnapshotStatus, State
from chalicelib.windows import (
    HostNotExpectedError,
    NotClosableError,
    UnknownHostError,
    UnknownWindowError,
    WindowNotOpenError,
)
from tests.unit.test_instance_userdata import embedded

from .conftest import HOSTS, T0, Rig


def report(wid: str, host: str, status: str = "succeeded") -> ReportRequest:
    return ReportRequest(host, wid, status, 1000, 10, 3.0, "")


def open_and_run(rig: Rig, **request: object) -> str:
    window = rig.service.open_window("schedule", OpenRequest(
        request.get("duration_hours"), request.get("hosts")))  # type: ignore[arg-type]
    rig.service.on_instance_state("i-1", "running")
    return window.window_id


def settle_all(rig: Rig) -> None:
    for snapshot_id in list(rig.compute.snapshots):
        rig.compute.complete_snapshot(snapshot_id)
    rig.service.on_snapshots_settled((s, True) for s in rig.compute.snapshots)


def test_a_whole_window(rig: Rig) -> None:
    wid = open_and_run(rig)
    window = rig.service.get_window(wid)
    assert window.state is State.OPEN and window.address == "203.0.113.10"
    assert rig.scheduler.deadlines[wid] == window.deadline
    for host in HOSTS:
        rig.service.record_report(report(wid, host))
    assert rig.service.get_window(wid).state is State.CLOSING
    assert rig.compute.stops == 1 and wid in rig.scheduler.deleted
    rig.clock.advance(minutes=2)
    rig.service.on_instance_state("i-1", "stopped")
    assert len(rig.compute.snapshots) == 4
    # Not complete until EBS says so: the tag says what the host reported, and "pending".
    assert all(s["tags"][TAG_COMPLETE] == "pending"  # type: ignore[index]
               and s["tags"][TAG_REPORTED] == "succeeded"  # type: ignore[index]
               for s in rig.compute.snapshots.values())
    settle_all(rig)
    assert all(s["tags"][TAG_COMPLETE] == "true"  # type: ignore[index]
               for s in rig.compute.snapshots.values())
    window = rig.service.get_window(wid)
    assert window.state is State.CLOSED
    assert rig.store.active_window_id() is None
    assert ("HostsSucceeded", "Count", 4) in rig.metrics.values
    assert any("CLOSED" in subject for subject, _ in rig.notifier.sent)


def test_fallback_instance_type(rig: Rig) -> None:
    rig.compute.unavailable_types = {"t3.small"}
    open_and_run(rig)
    assert rig.compute.started_as == ["t3a.small"]


def test_start_failure_fails_and_notifies(rig: Rig) -> None:
    rig.compute.unavailable_types = {"t3.small", "t3a.small"}
    window = rig.service.open_window("schedule")
    assert window.state is State.FAILED
    assert "t3a.small: InsufficientInstanceCapacity" in window.reason
    [(subject, message)] = rig.notifier.sent
    assert "FAILED" in subject and "InsufficientInstanceCapacity" in message
    assert rig.store.active_window_id() is None


def test_one_window_at_a_time(rig: Rig) -> None:
    open_and_run(rig)
    with pytest.raises(WindowActiveError):
        rig.service.open_window("api")


def test_named_hosts_only(rig: Rig) -> None:
    wid = open_and_run(rig, hosts=frozenset({"c"}))
    rig.service.record_report(report(wid, "c"))
    assert rig.service.get_window(wid).state is State.CLOSING
    with pytest.raises(UnknownHostError):
        rig.service.open_window("api", OpenRequest(None, frozenset({"zz"})))


def test_revoked_hosts_are_not_expected(rig: Rig) -> None:
    from dataclasses import replace

    host = rig.store.get_host("l")
    assert host is not None
    rig.store.put_host(replace(host, enabled=False))
    wid = open_and_run(rig)
    assert rig.service.get_window(wid).expected == {"c", "h", "o"}


def test_deadline_with_a_host_missing(rig: Rig) -> None:
    wid = open_and_run(rig)
    for host in ("c", "h", "o"):
        rig.service.record_report(report(wid, host))
    rig.clock.advance(hours=3.6)
    rig.service.on_deadline(wid)
    rig.service.on_deadline(wid)  # Scheduler may deliver twice
    assert rig.compute.stops == 1
    assert any("missing: l" in message for _, message in rig.notifier.sent)
    rig.service.on_instance_state("i-1", "stopped")
    tags = {s["tags"]["offsite:host"]: (s["tags"][TAG_REPORTED],  # type: ignore[index]
                                        s["tags"][TAG_COMPLETE])  # type: ignore[index]
            for s in rig.compute.snapshots.values()}
    assert tags == {"c": ("succeeded", "pending"), "h": ("succeeded", "pending"),
                    "o": ("succeeded", "pending"), "l": ("none", "false")}


def test_reports_are_refused_when_they_cannot_count(rig: Rig) -> None:
    wid = open_and_run(rig, hosts=frozenset({"c", "h"}))
    with pytest.raises(HostNotExpectedError):
        rig.service.record_report(report(wid, "o"))
    with pytest.raises(UnknownWindowError):
        rig.service.record_report(report("w-nope", "c"))
    rig.service.close_window(wid, "admin")
    with pytest.raises(WindowNotOpenError):
        rig.service.record_report(report(wid, "c"))


def test_the_same_report_twice_is_accepted_once(rig: Rig) -> None:
    wid = open_and_run(rig)
    assert rig.service.record_report(report(wid, "c"))
    assert not rig.service.record_report(report(wid, "c"))


def test_admin_close_twice(rig: Rig) -> None:
    wid = open_and_run(rig)
    rig.service.close_window(wid, "admin")
    with pytest.raises(NotClosableError):
        rig.service.close_window(wid, "admin")
    assert rig.compute.stops == 1


def test_stale_stopped_event_does_not_close_an_open_window(rig: Rig) -> None:
    wid = open_and_run(rig)
    rig.service.on_instance_state("i-1", "stopped")  # instance is running: a stale event
    assert rig.service.get_window(wid).state is State.OPEN


def test_events_of_other_instances_are_ignored(rig: Rig) -> None:
    rig.service.open_window("schedule")
    assert rig.service.on_instance_state("i-other", "running") is None


def test_snapshot_failure_deletes_nothing_and_tells(rig: Rig) -> None:
    rig.compute.snapshots["snap-old"] = {"volume_id": "vol-0", "started": rig.compute.now.replace(
        year=2025), "state": "completed", "tags": {
        "offsite:host": "c", "offsite:window": "w-old", TAG_REPORTED: "succeeded",
        TAG_COMPLETE: "true"}}
    wid = open_and_run(rig)
    for host in HOSTS:
        rig.service.record_report(report(wid, host))
    rig.service.on_instance_state("i-1", "stopped")
    ids = [i for i in rig.compute.snapshots if i != "snap-old"]
    rig.service.on_snapshots_settled([(ids[0], False)] + [(i, True) for i in ids[1:]])
    assert rig.service.get_window(wid).state is State.CLOSED
    assert "snap-old" in rig.compute.snapshots
    assert any("retention skipped" in message for _, message in rig.notifier.sent)


def test_retention_keeps_the_previous_complete_snapshot(rig: Rig) -> None:
    rig.service.settings = rig.service.settings.__class__(
        **{**vars(rig.service.settings), "retention_days": 1})
    first = open_and_run(rig)
    for host in HOSTS:
        rig.service.record_report(report(first, host))
    rig.service.on_instance_state("i-1", "stopped")
    settle_all(rig)
    rig.clock.advance(days=1)
    rig.compute.now = rig.clock.now.replace(tzinfo=None)
    second = open_and_run(rig)
    for host in ("c", "h", "o"):
        rig.service.record_report(report(second, host))
    rig.clock.advance(hours=4)
    rig.service.on_deadline(second)
    rig.service.on_instance_state("i-1", "stopped")
    settle_all(rig)
    kept = {(s["tags"]["offsite:host"], s["tags"]["offsite:window"])  # type: ignore[index]
            for s in rig.compute.snapshots.values()}
    assert ("l", first) in kept and ("l", second) in kept  # l's newest complete is day one
    assert ("c", first) not in kept and ("c", second) in kept


def test_reconciler_finishes_lost_events(rig: Rig) -> None:
    window = rig.service.open_window("schedule")
    rig.service.reconcile()  # the running event was lost
    assert rig.service.get_window(window.window_id).state is State.OPEN
    rig.clock.advance(hours=3.6, minutes=1)
    rig.service.reconcile()  # the deadline schedule was lost
    assert rig.service.get_window(window.window_id).state is State.CLOSING
    rig.service.reconcile()  # the stopped event was lost
    assert rig.service.get_window(window.window_id).state is State.SNAPSHOTTING
    for snapshot_id in rig.compute.snapshots:
        rig.compute.complete_snapshot(snapshot_id)
    rig.service.reconcile()  # the snapshot events were lost
    assert rig.service.get_window(window.window_id).state is State.CLOSED
    assert rig.compute.stops == 1 and len(rig.compute.snapshots) == 4


def test_reconciler_takes_over_a_dead_snapshotter(rig: Rig) -> None:
    wid = open_and_run(rig, hosts=frozenset({"c", "h"}))
    rig.service.close_window(wid, "admin")
    original = rig.compute.snapshot_volume
    calls = []

    def dies_on_h(volume_id: str, tags: dict[str, str]) -> str:
        calls.append(tags["offsite:host"])
        if tags["offsite:host"] == "h" and len(calls) == 2:
            raise RuntimeError("Lambda timed out")
        return original(volume_id, tags)

    rig.compute.snapshot_volume = dies_on_h  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        rig.service.on_instance_state("i-1", "stopped")
    assert rig.service.get_window(wid).snapshots == {"c": SnapshotStatus.PENDING}
    rig.service.reconcile()
    assert set(rig.service.get_window(wid).snapshots) == {"c", "h"}
    assert calls.count("c") == 1


def boot_hosts(rig: Rig) -> list[str]:
    """The `host` and `restore` lines of the boot config the instance was last given."""
    assert rig.compute.user_data is not None
    config = embedded(rig.compute.user_data)[CONFIG_PATH].decode()
    return [line for line in config.splitlines() if line.startswith(("host ", "restore "))]


def test_each_open_gives_the_instance_the_enabled_hosts(rig: Rig) -> None:
    wid = open_and_run(rig)
    assert boot_hosts(rig) == sorted(f"host {h} vol-{i:017x}" for i, h in enumerate(HOSTS))
    rig.service.close_window(wid, "admin")
    rig.service.on_instance_state("i-1", "stopped")
    settle_all(rig)
    # Enrolled and revoked while the instance was stopped: the next boot knows.
    rig.store.put_host(Host("new-1", "ssh-ed25519 KEYN", True, "vol-00000000000000abc", T0))
    old = rig.store.get_host("h")
    assert old is not None
    rig.store.put_host(replace(old, enabled=False))
    open_and_run(rig)
    lines = boot_hosts(rig)
    assert "host new-1 vol-00000000000000abc" in lines
    assert not any(line.startswith("host h ") for line in lines)


def test_an_instance_that_is_not_stopped_fails_the_window_with_its_reason(rig: Rig) -> None:
    rig.compute.state = "stopping"  # the last window's stop has not finished
    window = rig.service.open_window("schedule", OpenRequest(None, None))
    assert window.state is State.FAILED
    assert "boot config cannot be set: stopping" in (window.reason or "")
    assert rig.compute.started_as == [] and len(rig.notifier.sent) == 1


def test_a_restore_window_boots_with_its_restore_volume(rig: Rig) -> None:
    wid = open_and_run(rig)
    for host in HOSTS:
        rig.service.record_report(report(wid, host))
    rig.service.on_instance_state("i-1", "stopped")
    settle_all(rig)
    snapshot_id = next(s for s, snap in rig.compute.snapshots.items()
                       if snap["tags"][TAG_HOST] == "o")  # type: ignore[index]
    window = rig.service.open_restore("api", "o", snapshot_id)
    assert f"restore o {window.restore_volume_id}" in boot_hosts(rig)
    assert sum(line.startswith("restore ") for line in boot_hosts(rig)) == 1


def test_a_scheduled_open_during_an_active_window_tells_the_admins(rig: Rig) -> None:
    wid = open_and_run(rig)
    assert rig.service.open_scheduled() is None
    (subject, message), = rig.notifier.sent
    assert "not opened" in subject and wid in message
    assert rig.compute.started_as == ["t3.small"]  # the first window's start only


def test_a_scheduled_open_with_no_host_enrolled_does_nothing(rig: Rig) -> None:
    for host in HOSTS:
        rig.store.put_host(replace(rig.store.get_host(host), enabled=False))  # type: ignore[arg-type]
    assert rig.service.open_scheduled() is None
    assert rig.notifier.sent == [] and rig.compute.started_as == []


def enrolled_before_the_api_refused_them(rig: Rig) -> None:
    """Hosts already in the table from before the edge refused them: a reserved name, a
    volume id boot.sh refuses, and a volume another host has."""
    rig.store.put_host(Host("adm", "ssh-ed25519 KEYA", True, "vol-000000000000000aa", T0))
    rig.store.put_host(Host("zz-bad-volume", "ssh-ed25519 KEYB", True, "vol-zz", T0))
    rig.store.put_host(Host("zz-same-volume", "ssh-ed25519 KEYC", True, f"vol-{0:017x}", T0))


def test_hosts_the_instance_would_refuse_never_stop_the_others(rig: Rig) -> None:
    enrolled_before_the_api_refused_them(rig)
    for _night in range(2):  # and the next night opens too: nothing is left hanging
        rig.notifier.sent.clear()
        wid = open_and_run(rig)
        window = rig.service.get_window(wid)
        assert window.state is State.OPEN, window.reason
        assert window.expected == frozenset(HOSTS)
        assert boot_hosts(rig) == sorted(f"host {h} vol-{i:017x}" for i, h in enumerate(HOSTS))
        (_subject, message), = (m for m in rig.notifier.sent if "left out" in m[0])
        for host, why in [("adm", "reserved"), ("zz-bad-volume", "vol-zz"),
                          ("zz-same-volume", "listed twice")]:
            assert f"{host}: " in message and why in message
        for host in HOSTS:
            rig.service.record_report(report(wid, host))
        rig.service.on_instance_state("i-1", "stopped")
        settle_all(rig)
        assert rig.service.get_window(wid).state is State.CLOSED
        rig.clock.advance(days=1)
