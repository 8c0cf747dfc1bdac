"""The dead man's switch as a service: after a window concludes, and from the reconciler when
the last evaluation is old, gather the hosts and their recovery points, ask
`staleness` who is stale, publish each host's recovery point age, and tell the admins of each
change once. `fleet` answers `GET /v1/status` (offsite-admin status) from the same facts.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.adapters.compute import Compute
from chalicelib.adapters.metrics import HostMetrics
from chalicelib.adapters.notifier import Notifier
from chalicelib.adapters.store import HostStore, StaleMarkStore, WindowStore
from chalicelib.records import Report
from chalicelib.recovery import point_view
from chalicelib.staleness import (
    Change,
    HostAge,
    Verdict,
    changes,
    host_ages,
    recovered_message,
    stale_message,
)
from chalicelib.window import Window

logger = Logger(service="offsite", child=True)

# The reconciler evaluates when the last evaluation is older than this: a fleet whose windows
# stopped concluding (or never open) is still noticed, and each host's age metric is published
# a few times a day, not every 5 minutes (CloudWatch bills a custom metric by the hours in which
# it receives data).
EVALUATE_EVERY = timedelta(hours=6)
# How many recent windows are read for a host's last report.
LOOKBACK_WINDOWS = 14
AGE_METRIC, STALE_METRIC = "RecoveryPointAgeHours", "StaleHosts"


class StalenessWatch:
    def __init__(self, hosts: HostStore, compute: Compute, windows: WindowStore,
                 marks: StaleMarkStore, notifier: Notifier, metrics: HostMetrics,
                 stale_after_hours: float, clock: Callable[[], datetime]) -> None:
        self._hosts = hosts
        self._compute = compute
        self._windows = windows
        self._marks = marks
        self._notifier = notifier
        self._metrics = metrics
        self._stale_after = timedelta(hours=stale_after_hours)
        self._clock = clock

    def after_window(self) -> list[Verdict]:
        """Every window's conclusion: evaluate now."""
        now = self._clock()
        told = self._evaluate(now)
        self._marks.claim_evaluation(now, now)  # the reconciler's next is EVALUATE_EVERY later
        return told

    def evaluate_if_due(self) -> list[Verdict]:
        """The reconciler's: evaluate when nobody did for EVALUATE_EVERY (one of several
        reconcilers racing wins the claim)."""
        now = self._clock()
        if not self._marks.claim_evaluation(now, now - EVALUATE_EVERY):
            return []
        return self._evaluate(now)

    def _evaluate(self, now: datetime) -> list[Verdict]:
        ages = self._ages(now)
        self._metrics.record_hosts(AGE_METRIC, {a.host: round(a.age_hours, 2) for a in ages},
                                   now, total=(STALE_METRIC, sum(a.stale for a in ages)))
        by_host = {a.host: a for a in ages}
        told = [v for v in changes(ages, self._marks.stale_marks(), self._stale_after)
                if self._apply(v, by_host.get(v.host), now)]
        for verdict in told:
            logger.info("staleness", extra={"host": verdict.host,
                                             "change": verdict.change.value,
                                             "reason": verdict.reason})
        return told

    def _apply(self, verdict: Verdict, age: HostAge | None, now: datetime) -> bool:
        """Records the change; only the evaluation whose write wins tells the admins."""
        if verdict.change is Change.STALE and age is not None:
            if not self._marks.mark_stale(verdict.host, now):
                return False
            self._notifier.notify(*stale_message(verdict, age, self._last_report(verdict.host)))
            return True
        if not self._marks.clear_stale(verdict.host):
            return False
        if verdict.change is Change.RECOVERED and age is not None:
            self._notifier.notify(*recovered_message(verdict, age))
        return True

    def _ages(self, now: datetime) -> list[HostAge]:
        # Every host's points in one paginated listing, as retention reads them, rather than a
        # DescribeSnapshots filter naming every host of a large fleet.
        hosts = [h for h in self._hosts.list_hosts() if h.enabled]
        points = self._compute.recovery_points() if hosts else []
        return host_ages(hosts, points, now, self._stale_after)

    def _last_report(self, host: str) -> str:
        found = _last_of(host, self._windows.list_windows(LOOKBACK_WINDOWS), self._reports)
        if found is None:
            return f"nothing in the last {LOOKBACK_WINDOWS} windows"
        window, report = found
        if report is None:
            return f"no report in window {window.window_id} ({window.state.value})"
        detail = f": {report.detail}" if report.detail else ""
        return (f"{report.status} in window {window.window_id} at "
                f"{report.received_at.isoformat()}{detail}")

    def _reports(self, window_id: str) -> list[Report]:
        return self._windows.reports(window_id)

    # the admin's view ------------------------------------------------------------------------
    def fleet(self) -> dict[str, Any]:
        """Each enabled host: its newest complete point and its age, its part in the last
        window that expected it, stale or not."""
        now = self._clock()
        ages = self._ages(now)
        windows = self._windows.list_windows(LOOKBACK_WINDOWS)
        cache: dict[str, list[Report]] = {}

        def reports(window_id: str) -> list[Report]:
            if window_id not in cache:
                cache[window_id] = self._windows.reports(window_id)
            return cache[window_id]

        marks = self._marks.stale_marks()
        rows = [_host_row(age, _last_of(age.host, windows, reports), marks.get(age.host))
                for age in ages]
        revoked = sorted(h.name for h in self._hosts.list_hosts() if not h.enabled)
        return {"now": now.isoformat(), "stale_after_hours": self._stale_after / timedelta(
                    hours=1), "hosts": rows, "stale": [a.host for a in ages if a.stale],
                "revoked": revoked}


def _last_of(host: str, windows: list[Window], reports: Callable[[str], list[Report]]
             ) -> tuple[Window, Report | None] | None:
    """The newest backup window that expected `host`, and the host's report in it."""
    for window in windows:  # newest first
        if window.is_restore or host not in window.expected:
            continue
        if host not in window.reports:
            return window, None
        return window, next((r for r in reports(window.window_id) if r.host == host), None)
    return None


def _host_row(age: HostAge, last: tuple[Window, Report | None] | None,
              alerted_at: datetime | None) -> dict[str, Any]:
    window, report = last if last else (None, None)
    return {
        "host": age.host, "stale": age.stale, "age_hours": round(age.age_hours, 1),
        "newest_point": point_view(age.newest) if age.newest else None,
        "alerted_at": alerted_at.isoformat() if alerted_at else None,
        "last_window": None if window is None else {
            "window_id": window.window_id, "state": window.state.value,
            "report": report.status if report else "none",
            "bytes_sent": report.bytes_sent if report else 0,
            "detail": report.detail if report else ""},
    }
