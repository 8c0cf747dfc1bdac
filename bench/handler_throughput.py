"""How fast the handlers take a window's events, and the same events through the WindowService
on in-memory fakes (the control plane's own cost, the baseline of bench/moto_app.py).

A window here is the events AWS and the hosts would send, back to back: POST /v1/windows, the
"running" notification, one report per host (or, in a deadline window, all hosts but one and
then the deadline), the "stopped" notification, one EBS completion per volume. Reports go
through `WindowService.record_report`, not the HTTP route, so that the bench does not depend on
how /v1/reports authenticates hosts. Only the handler calls are timed; building events, reading
snapshot ids and waiting for a deadline are not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Protocol, TypeVar

from bench.simulated_window import SimClock, bench_boot
from chalicelib.adapters.compute import FakeCompute
from chalicelib.adapters.metrics import FakeMetrics
from chalicelib.adapters.notifier import FakeNotifier
from chalicelib.adapters.scheduler import FakeScheduler
from chalicelib.adapters.store import InMemoryStore
from chalicelib.payloads import OpenRequest, ReportRequest
from chalicelib.records import Host
from chalicelib.settings import Settings
from chalicelib.windows import Ports, WindowService

T = TypeVar("T")
# Each handler, the instance_state one per kind of event (they do different work).
HANDLERS = ("POST /v1/windows", "instance_state running", "record_report", "window_deadline",
            "instance_state stopped", "snapshot_state")
DEADLINE_HOURS = 0.0001  # a deadline window's deadline, 0.36 s after it opens


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Timings:
    label: str
    windows: int
    samples: Mapping[str, tuple[float, ...]]  # handler -> seconds, one per call
    wall_s: float
    aws_calls: Mapping[str, int] = field(default_factory=dict)  # handler -> AWS API calls
    cpu_s: float = 0.0  # this process's CPU time in the handler calls (moto's thread included)

    @property
    def events(self) -> int:
        return sum(len(s) for s in self.samples.values())

    @property
    def busy_s(self) -> float:
        return sum(sum(s) for s in self.samples.values())

    @property
    def cpu_ms_per_event(self) -> float:
        return 1000 * self.cpu_s / self.events if self.events else math.nan

    @property
    def events_per_s(self) -> float:
        return self.events / self.busy_s if self.busy_s else math.inf

    @property
    def ms_per_event(self) -> float:
        return 1000 * self.busy_s / self.events if self.events else math.nan

    def percentile_ms(self, handler: str, p: float) -> float | None:
        """Nearest-rank percentile (p99 of fewer than 100 calls is their maximum)."""
        ordered = sorted(self.samples.get(handler, ()))
        if not ordered:
            return None
        return 1000 * ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    def aws_calls_per_event(self, handler: str) -> float | None:
        events = len(self.samples.get(handler, ()))
        if handler not in self.aws_calls or not events:
            return None
        return self.aws_calls[handler] / events


class Stopwatch:
    """Times each handler call and, given a counter of AWS calls, counts those it made."""

    def __init__(self, aws_calls: Callable[[], int] | None = None) -> None:
        self.samples: dict[str, list[float]] = {h: [] for h in HANDLERS}
        self.calls: dict[str, int] = dict.fromkeys(HANDLERS, 0)
        self.cpu_s = 0.0
        self._aws_calls = aws_calls or (lambda: 0)
        self.counted = aws_calls is not None

    def time(self, handler: str, call: Callable[[], T]) -> T:
        calls, cpu = self._aws_calls(), time.process_time()
        start = time.perf_counter()
        try:
            return call()
        finally:
            self.samples[handler].append(time.perf_counter() - start)
            self.cpu_s += time.process_time() - cpu
            self.calls[handler] += self._aws_calls() - calls


class Driver(Protocol):
    def open(self, duration_hours: float | None) -> str: ...

    def instance_state(self, state: str) -> None: ...

    def report(self, window_id: str, host: str) -> None: ...

    def wait_for_deadline(self, window_id: str) -> None: ...

    def deadline(self, window_id: str) -> None: ...

    def snapshot_deliveries(self, window_id: str) -> list[Callable[[], None]]: ...

    def expect(self, window_id: str, state: str) -> None: ...


def deadline_plan(windows: int, deadline_windows: int) -> list[bool]:
    """Which of the windows the deadline closes, spread evenly."""
    d = min(deadline_windows, windows)
    return [(i + 1) * d // windows != i * d // windows for i in range(windows)]


def run_windows(driver: Driver, hosts: Sequence[str], plan: Sequence[bool], label: str,
                aws_calls: Callable[[], int] | None = None) -> Timings:
    watch = Stopwatch(aws_calls)
    start = time.perf_counter()
    for by_deadline in plan:
        _one_window(driver, watch, hosts, by_deadline)
    wall = time.perf_counter() - start
    return Timings(label, len(plan), {h: tuple(s) for h, s in watch.samples.items()}, wall,
                   watch.calls if watch.counted else {}, watch.cpu_s)


def _one_window(driver: Driver, watch: Stopwatch, hosts: Sequence[str],
                by_deadline: bool) -> None:
    duration = DEADLINE_HOURS if by_deadline else None
    window_id = watch.time("POST /v1/windows", partial(driver.open, duration))
    watch.time("instance_state running", partial(driver.instance_state, "running"))
    driver.expect(window_id, "OPEN")
    for host in hosts[:-1] if by_deadline else hosts:
        watch.time("record_report", partial(driver.report, window_id, host))
    if by_deadline:
        driver.wait_for_deadline(window_id)
        watch.time("window_deadline", partial(driver.deadline, window_id))
    driver.expect(window_id, "CLOSING")
    watch.time("instance_state stopped", partial(driver.instance_state, "stopped"))
    for deliver in driver.snapshot_deliveries(window_id):
        watch.time("snapshot_state", deliver)
    driver.expect(window_id, "CLOSED")


def succeeded(window_id: str, host: str) -> ReportRequest:
    return ReportRequest(host=host, window_id=window_id, status="succeeded", bytes_sent=1234,
                         files=5, duration_s=2.0, detail="")


def expect_state(service: WindowService, window_id: str, state: str) -> None:
    window = service.get_window(window_id)
    if window.state.value != state:
        raise BenchError(f"window {window_id} is {window.state.value}, not {state}: "
                         f"{window.reason}")


# the service on in-memory fakes --------------------------------------------------------------
class FakesDriver:
    """The same events straight into WindowService on the fakes: the control plane's own cost."""

    def __init__(self, hosts: Sequence[str]) -> None:
        self.clock = SimClock(datetime.now(timezone.utc))
        self.compute = FakeCompute()
        store = InMemoryStore()
        for i, name in enumerate(hosts):
            store.put_host(Host(name, "ssh-ed25519 BENCH", True, f"vol-{i:017x}", self.clock()))
        settings = Settings(table_name="bench", instance_id="i-bench", topic_arn="arn:bench",
                            deadline_target_arn="arn:bench", scheduler_role_arn="arn:bench")
        ports = Ports(store, self.compute, FakeScheduler(), FakeNotifier(), FakeMetrics(),
                      bench_boot())
        self.service = WindowService(settings, ports, clock=self.clock)

    def open(self, duration_hours: float | None) -> str:
        return self.service.open_window("bench", OpenRequest(duration_hours, None)).window_id

    def instance_state(self, state: str) -> None:
        self.service.on_instance_state("i-bench", state)

    def report(self, window_id: str, host: str) -> None:
        self.service.record_report(succeeded(window_id, host))

    def wait_for_deadline(self, window_id: str) -> None:
        self.clock.now = max(self.clock.now, self.service.get_window(window_id).deadline)

    def deadline(self, window_id: str) -> None:
        self.service.on_deadline(window_id)

    def snapshot_deliveries(self, window_id: str) -> list[Callable[[], None]]:
        pending = [i for i, s in self.compute.snapshots.items() if s["state"] == "pending"]
        return [partial(self._settle, i) for i in pending]

    def _settle(self, snapshot_id: str) -> None:
        self.compute.complete_snapshot(snapshot_id)
        self.service.on_snapshots_settled([(snapshot_id, True)])

    def expect(self, window_id: str, state: str) -> None:
        expect_state(self.service, window_id, state)


def measure_on_fakes(hosts: Sequence[str], plan: Sequence[bool]) -> Timings:
    return run_windows(FakesDriver(hosts), hosts, plan, "WindowService on in-memory fakes")
