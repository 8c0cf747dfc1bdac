"""The dead man's switch on the window engine (fakes, a clock moved across days): a host that
keeps failing is told once, its recovery once, nothing in between; a revoked host never; two
evaluations racing tell once (issue 14, part 1)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from chalicelib.adapters.compute import FakeCompute
from chalicelib.adapters.metrics import FakeHostMetrics, FakeMetrics
from chalicelib.adapters.notifier import FakeNotifier
from chalicelib.adapters.scheduler import FakeScheduler
from chalicelib.adapters.store import InMemoryStore
from chalicelib.launcher import InlineLauncher
from chalicelib.payloads import ReportRequest
from chalicelib.watch import EVALUATE_EVERY, StalenessWatch
from chalicelib.window import State
from chalicelib.windows import Ports, WindowService

from .conftest import HOSTS, T0, Clock, FakeBoot, Rig, enrol_all, make_settings
from .test_window_service import running, settle_all, stopped

HOST_ALERTS = "Offsite: host "


class Watched(Rig):
    watch: StalenessWatch
    ages: FakeHostMetrics


@pytest.fixture
def watched() -> Watched:
    store, compute, clock = InMemoryStore(), FakeCompute(), Clock()
    enrol_all(store, HOSTS)
    o = store.get_host("o")
    assert o is not None
    store.put_host(replace(o, enabled=False))  # revoked at once, never backed up
    notifier, ages = FakeNotifier(), FakeHostMetrics()
    watch = StalenessWatch(store, compute, store, store, notifier, ages, 36.0, clock)
    holder: list[WindowService] = []
    ports = Ports(store, store, compute, FakeScheduler(), notifier, FakeMetrics(), FakeBoot(),
                  InlineLauncher(lambda w, s: holder[0].launch_shard(w, s)))
    holder.append(WindowService(make_settings(), ports, clock=clock,
                                new_id=lambda now: f"w-{now:%Y%m%dT%H%M%SZ}-000000",
                                after_window=watch.after_window))
    rig = Watched(holder[0], store, compute, ports.scheduler, notifier,  # type: ignore[arg-type]
                  ports.metrics, clock)  # type: ignore[arg-type]
    rig.watch, rig.ages = watch, ages
    return rig


def night(rig: Watched, day: int, h_status: str) -> None:
    """Day `day`'s window at 02:00: c and l succeed, h reports `h_status`."""
    rig.clock.now = rig.compute.now = T0 + timedelta(days=day)
    window = running(rig, rig.service.open_window("schedule"))
    for host, status, detail in (("c", "succeeded", ""), ("l", "succeeded", ""),
                                 ("h", h_status, "rsync: connection reset by peer")):
        rig.service.record_report(ReportRequest(host, window.window_id, status, 10, 1, 1.0,
                                                detail if status == "failed" else ""))
    rig.clock.advance(minutes=30)
    stopped(rig, window)
    assert settle_all(rig, window.window_id).state is State.CLOSED
    for _ in range(3):  # the reconciler through the day: nothing new to tell
        rig.clock.advance(hours=6)
        rig.watch.evaluate_if_due()


def host_alerts(rig: Watched) -> list[tuple[str, str]]:
    return [(s, m) for s, m in rig.notifier.sent if s.startswith(HOST_ALERTS)]


def test_a_failing_host_is_told_once_and_its_recovery_once(watched: Watched) -> None:
    rig = watched
    night(rig, 0, "failed")
    assert host_alerts(rig) == []  # h: 18.5 h since its enrolment, within 36 h
    night(rig, 1, "failed")  # its conclusion: 24.5 h; the reconciler's evaluations: 30.5, 36.5
    ((subject, text),) = host_alerts(rig)
    assert subject == "Offsite: host h is not being backed up"
    assert "no complete recovery point since its enrolment 36.5 h ago" in text
    assert "last good recovery point: none" in text
    assert "failed in window w-20261130T020000Z-000000" in text
    assert "rsync: connection reset by peer" in text
    night(rig, 2, "failed")
    night(rig, 3, "failed")
    night(rig, 4, "failed")
    assert len(host_alerts(rig)) == 1  # no repeat
    night(rig, 5, "succeeded")
    (_, (subject, text)) = host_alerts(rig)
    assert subject == "Offsite: host h is backed up again"
    assert "0.5 h old again" in text and "w-20261204T020000Z-000000" in text
    for day in (6, 7, 8):
        night(rig, day, "succeeded")
    assert len(host_alerts(rig)) == 2
    assert all("host o" not in s for s, _ in rig.notifier.sent)  # revoked: never


def test_each_hosts_age_is_published_and_revoked_hosts_are_not(watched: Watched) -> None:
    rig = watched
    night(rig, 0, "succeeded")
    night(rig, 1, "failed")
    name, ages, at = rig.ages.values[-1]
    assert name == "RecoveryPointAgeHours" and at == T0 + timedelta(days=7 / 4, hours=0.5)
    assert ages == {"c": 18.5, "h": 42.5, "l": 18.5}
    assert rig.ages.totals[-1] == ("StaleHosts", 1)


def test_the_reconciler_notices_hosts_when_windows_stop_concluding(watched: Watched) -> None:
    rig = watched
    night(rig, 0, "succeeded")
    published = len(rig.ages.values)
    rig.clock.advance(hours=1)
    assert rig.watch.evaluate_if_due() == [] and len(rig.ages.values) == published  # not due
    rig.clock.now = T0 + timedelta(days=3)  # no window since: every host is stale
    told = rig.watch.evaluate_if_due()
    assert sorted(v.host for v in told) == ["c", "h", "l"]
    assert rig.watch.evaluate_if_due() == []  # claimed: the next is EVALUATE_EVERY later
    rig.clock.advance(hours=EVALUATE_EVERY / timedelta(hours=1))
    assert rig.watch.evaluate_if_due() == [] and len(host_alerts(rig)) == 3


def test_two_evaluations_racing_tell_once(watched: Watched) -> None:
    """Both read the marks before either wrote one: the conditional write decides."""
    rig = watched
    rig.clock.now = T0 + timedelta(days=2)
    late = StalenessWatch(rig.store, rig.compute, rig.store, BlindMarks(rig.store),
                          rig.notifier, rig.ages, 36.0, rig.clock)
    assert len(late.after_window()) == 3
    assert late.after_window() == [] and rig.watch.after_window() == []
    assert len(host_alerts(rig)) == 3


def test_a_host_revoked_while_stale_is_forgotten_quietly(watched: Watched) -> None:
    rig = watched
    rig.clock.now = T0 + timedelta(days=2)
    rig.watch.after_window()
    told = len(rig.notifier.sent)
    h = rig.store.get_host("h")
    assert h is not None
    rig.store.put_host(replace(h, enabled=False))
    assert [v.change.value for v in rig.watch.after_window() if v.host == "h"] == ["forgotten"]
    assert len(rig.notifier.sent) == told and "h" not in rig.store.stale_marks()


class BlindMarks:
    """The marks as an evaluation that read them before another wrote sees them."""

    def __init__(self, store: InMemoryStore) -> None:
        self._store = store

    def stale_marks(self) -> dict[str, object]:
        return {}

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_a_window_records_what_the_dashboard_shows(watched: Watched) -> None:
    rig = watched
    night(rig, 0, "failed")
    recorded = {name: value for name, _, value in rig.metrics.values}
    assert recorded["WindowsOpened"] == 1 and recorded["WindowsFailed"] == 0
    assert (recorded["HostsSucceeded"], recorded["HostsFailed"], recorded["HostsMissing"]) == (
        2, 1, 0)
    assert recorded["BytesSent"] == 30  # 10 bytes a report
    assert 0 < recorded["MonthAtWindowUSD"] < 10
