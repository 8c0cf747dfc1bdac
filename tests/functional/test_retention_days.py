"""Property: 90 nights of the archive fleet through the window service on fakes, with hosts
that miss or fail their backup and snapshots that EBS fails, never lose a host's last good
copy, and each night's volumes come from each host's newest snapshot.

Each simulated day opens a window of two archives (two hosts each), boots them, lets a random
set of hosts report success (the others fail or never report), closes it at the deadline,
stops the archives and settles every snapshot, some of them in EBS `error`. The truth is kept
beside the fakes: which snapshot of which host really is complete (reported success and EBS
completed it), and which is the host's newest one EBS completed at all. Every night:
- each host's volume is made from its newest snapshot EBS completed (a cut-off or failed
  night's too: its volume resumes where it stopped), or blank before its first one;
After every day:
- each host's newest really-complete snapshot still exists, and the listing a restore uses
  (`RestoreService.recovery_points`) offers it as complete;
- besides it and the snapshots a kept volume was made from, at most `keep_days` restorable
  points per host are kept, once retention ran;
- on a day whose own snapshots failed, nothing at all was deleted (retention waits for a day
  that went well, so points pile up meanwhile);
- no archive is left, the only volumes left are those whose snapshot failed, and the
  snapshots they were made from are kept.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.adapters.compute import TAG_HOST, TAG_WINDOW, FakeCompute
from chalicelib.adapters.store import InMemoryStore
from chalicelib.payloads import ReportRequest
from chalicelib.restores import RestoreService
from chalicelib.window import State
from chalicelib.windows import WindowService

from .conftest import HOSTS, T0, Clock, enrol_all, make_service

DAYS = 90

# Per day and host: what the host does (succeeds, fails, never reports) and how EBS ends.
host_night = st.tuples(st.sampled_from(["succeeded", "failed", "missing"]),
                       st.sampled_from(["completed"] * 5 + ["error"]))


def make_fleet(keep_days: int) -> tuple[WindowService, FakeCompute, Clock]:
    store, compute, clock = InMemoryStore(), FakeCompute(), Clock()
    enrol_all(store, HOSTS)
    service = make_service(store, compute, clock, retention_days=keep_days,
                           hosts_per_archive=2)
    return service, compute, clock


def volume_sources(compute: FakeCompute, window_id: str) -> dict[str, str | None]:
    """host -> the snapshot its volume was made from, over the window's archives."""
    return {v.host: v.snapshot_id for x in compute.instances.values()
            if x["spec"].window_id == window_id for v in x["spec"].volumes}


def run_night(service: WindowService, compute: FakeCompute, clock: Clock,
              night: dict[str, tuple[str, str]]) -> tuple[str, dict[str, str]]:
    """One window; answers its id and, per host, its new snapshot."""
    compute.now = clock.now
    window = service.open_window("schedule")
    assert len(window.shards) == 2
    compute.boot()
    for shard in window.shards.values():
        service.on_instance_state(str(shard.instance_id), "running")
        service.on_boot_signal(str(shard.instance_id), True, "ready")
    for host, (outcome, _) in sorted(night.items()):
        if outcome != "missing":
            service.record_report(ReportRequest(host, window.window_id, outcome, 10, 1, 1.0, ""))
    clock.advance(hours=4)
    service.on_deadline(window.window_id)
    for shard in window.shards.values():
        service.on_instance_state(str(shard.instance_id), "stopped")
    made = {str(s["tags"][TAG_HOST]): snapshot_id for snapshot_id, s in compute.snapshots.items()
            if s["tags"][TAG_WINDOW] == window.window_id}
    assert set(made) == set(HOSTS)
    results = []
    for host, snapshot_id in sorted(made.items()):
        ebs = night[host][1]
        compute.complete_snapshot(snapshot_id, ebs)
        results.append((snapshot_id, ebs == "completed"))
    service.on_snapshots_settled(results)
    assert service.get_window(window.window_id).state is State.CLOSED
    clock.advance(hours=20)
    return window.window_id, made


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keep_days=st.sampled_from([1, 3, 20]),
       nights=st.lists(st.fixed_dictionaries({h: host_night for h in HOSTS}),
                       min_size=DAYS, max_size=DAYS))
def test_ninety_days_never_lose_the_last_good_copy(
        keep_days: int, nights: list[dict[str, tuple[str, str]]]) -> None:
    service, compute, clock = make_fleet(keep_days)
    restores = RestoreService(service, clock, lambda now: "w-restore")
    owner: dict[str, str] = {}
    newest_good: dict[str, str] = {}  # host -> its newest really-complete snapshot
    newest_made: dict[str, str] = {}  # host -> its newest snapshot EBS completed
    for night in nights:
        before = set(compute.snapshots)
        window_id, made = run_night(service, compute, clock, night)
        assert volume_sources(compute, window_id) == {h: newest_made.get(h) for h in HOSTS}
        for host, snapshot_id in made.items():
            owner[snapshot_id] = host
            outcome, ebs = night[host]
            if ebs == "completed":
                newest_made[host] = snapshot_id
                if outcome == "succeeded":
                    newest_good[host] = snapshot_id
        failed_day = any(ebs == "error" for _, ebs in night.values())
        if failed_day:
            assert before <= set(compute.snapshots), "deleted on a day whose snapshots failed"
        assert compute.running() == []
        kept_volumes = {v["snapshot_id"] for v in compute.volumes.values()}
        assert kept_volumes - {None} <= set(compute.snapshots), "a kept volume's source deleted"
        assert sorted(str(v["host"]) for v in compute.volumes.values()
                      if v["window_id"] == window_id) == sorted(
            h for h, (_, ebs) in night.items() if ebs == "error")
        for host in HOSTS:
            good = newest_good.get(host)
            if good is not None:
                assert good in compute.snapshots, f"{host} lost its newest complete point"
                listed = {p.snapshot_id: p.complete for p in restores.recovery_points(host)}
                assert listed.get(good) is True
            if host in newest_made:
                assert newest_made[host] in compute.snapshots, f"{host} lost its newest copy"
            restorable = [s for s in compute.snapshots if owner.get(s) == host
                          and compute.snapshots[s]["state"] == "completed"
                          and s != good and s not in kept_volumes]
            assert failed_day or len(restorable) <= keep_days
    assert clock.now >= T0 + timedelta(days=DAYS)
