"""Property: 90 nights through the window service on fakes, with hosts that miss or fail
their backup and snapshots that EBS fails, never lose a host's last good copy.

Each simulated day opens a window, lets a random set of hosts report success (the others fail
or never report), closes it at the deadline, stops the instance and settles every snapshot,
some of them in EBS `error`. The truth is kept beside the fakes: which snapshot of which host
really is complete (reported success and EBS completed it). After every day:
- each host's newest really-complete snapshot still exists, and the listing a restore uses
  (`RestoreService.recovery_points`) offers it as complete;
- besides it, at most `keep_days` restorable points per host are kept, once retention ran;
- on a day whose own snapshots failed, nothing at all was deleted (retention waits for a day
  that went well, so points pile up meanwhile).
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.adapters.compute import FakeCompute
from chalicelib.adapters.metrics import FakeMetrics
from chalicelib.adapters.notifier import FakeNotifier
from chalicelib.adapters.scheduler import FakeScheduler
from chalicelib.adapters.store import InMemoryStore
from chalicelib.payloads import ReportRequest
from chalicelib.records import Host
from chalicelib.restores import RestoreService
from chalicelib.windows import Ports, WindowService

from .conftest import HOSTS, T0, Clock, make_settings, throwaway_boot

DAYS = 90

# Per day and host: what the host does (succeeds, fails, never reports) and how EBS ends.
host_night = st.tuples(st.sampled_from(["succeeded", "failed", "missing"]),
                       st.sampled_from(["completed"] * 5 + ["error"]))


def make_service(keep_days: int) -> tuple[WindowService, FakeCompute, Clock]:
    store, compute, clock = InMemoryStore(), FakeCompute(), Clock()
    for i, name in enumerate(HOSTS):
        store.put_host(Host(name, f"ssh-ed25519 KEY{i}", True, f"vol-{i:017x}", T0))
    ports = Ports(store, compute, FakeScheduler(), FakeNotifier(), FakeMetrics(),
                  throwaway_boot())
    service = WindowService(make_settings(retention_days=keep_days), ports, clock=clock,
                            new_id=lambda now: f"w-{now:%Y%m%dT%H%M%SZ}-000000")
    return service, compute, clock


def run_night(service: WindowService, compute: FakeCompute, clock: Clock,
              night: dict[str, tuple[str, str]]) -> dict[str, bool]:
    """One window; answers, per host, whether its new snapshot really is complete."""
    compute.now = clock.now
    window = service.open_window("schedule")
    service.on_instance_state("i-1", "running")
    for host, (outcome, _) in sorted(night.items()):
        if outcome != "missing":
            service.record_report(ReportRequest(host, window.window_id, outcome, 10, 1, 1.0, ""))
    clock.advance(hours=4)
    service.on_deadline(window.window_id)
    service.on_instance_state("i-1", "stopped")
    made = {str(s["tags"]["offsite:host"]): snapshot_id  # type: ignore[index]
            for snapshot_id, s in compute.snapshots.items()
            if s["tags"]["offsite:window"] == window.window_id}  # type: ignore[index]
    results = []
    for host, snapshot_id in made.items():
        ebs = night[host][1]
        compute.complete_snapshot(snapshot_id, ebs)
        results.append((snapshot_id, ebs == "completed"))
    service.on_snapshots_settled(results)
    clock.advance(hours=20)
    return {made[h]: night[h] == ("succeeded", "completed") for h in made}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keep_days=st.sampled_from([1, 3, 20]),
       nights=st.lists(st.fixed_dictionaries({h: host_night for h in HOSTS}),
                       min_size=DAYS, max_size=DAYS))
def test_ninety_days_never_lose_the_last_good_copy(
        keep_days: int, nights: list[dict[str, tuple[str, str]]]) -> None:
    service, compute, clock = make_service(keep_days)
    restores = RestoreService(service)
    truly_complete: dict[str, bool] = {}
    owner: dict[str, str] = {}
    newest_good: dict[str, str] = {}
    for night in nights:
        before = set(compute.snapshots)
        made = run_night(service, compute, clock, night)
        truly_complete.update(made)
        for snapshot_id in made:
            host = str(compute.snapshots[snapshot_id]["tags"]["offsite:host"])  # type: ignore[index]
            owner[snapshot_id] = host
            if made[snapshot_id]:
                newest_good[host] = snapshot_id
        failed_day = any(ebs == "error" for _, ebs in night.values())
        if failed_day:
            assert before <= set(compute.snapshots), "deleted on a day whose snapshots failed"
        for host in HOSTS:
            kept = [s for s in compute.snapshots if owner.get(s) == host]
            good = newest_good.get(host)
            if good is not None:
                assert good in compute.snapshots, f"{host} lost its newest complete point"
                listed = {p.snapshot_id: p.complete for p in restores.recovery_points(host)}
                assert listed.get(good) is True
            restorable = [s for s in kept if compute.snapshots[s]["state"] == "completed"
                          and s != good]
            assert failed_day or len(restorable) <= keep_days
    assert clock.now >= T0 + timedelta(days=DAYS)
