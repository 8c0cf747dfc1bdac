"""One backup window simulated in process: the real WindowService on the in-memory fakes,
with a fake clock, fed the events AWS would send at the times AWS would send them.

The simulated EC2 and Scheduler below post those events on a small time-ordered bus: the
instance's "running" notification `boot_s` after StartInstances, its "stopped" one `stop_s`
after StopInstances, each snapshot's completion `snapshot_s` after CreateSnapshot, the deadline
at the deadline unless it was deleted first. Hosts start their transfer when the instance is
running and report when it ends. The driver pops one event at a time, moves the clock to it and
hands it to the service method that app.py's handler for it calls.

Billed instance time follows EC2's rule for an on-demand Linux instance, per second with a
60 s minimum per start, counted from StartInstances to the "stopped" notification. (EC2 bills
neither `pending` nor a plain stop's `stopping`, so this is an upper bound of the bill.)
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from nacl.signing import SigningKey

from chalicelib.adapters.compute import FakeCompute
from chalicelib.adapters.metrics import FakeMetrics
from chalicelib.adapters.notifier import FakeNotifier
from chalicelib.adapters.scheduler import FakeScheduler
from chalicelib.adapters.store import InMemoryStore
from chalicelib.instance.userdata import BootRenderer
from chalicelib.payloads import ReportRequest
from chalicelib.records import Host
from chalicelib.settings import Settings
from chalicelib.sshcert import ca_public_key_line
from chalicelib.window import State
from chalicelib.windows import Ports, WindowNotOpenError, WindowService

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)
MIN_BILLED_S = 60
INSTANCE_ID = "i-0bench00000000001"


class SimulationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Scenario:
    transfers: Mapping[str, float]  # host -> seconds from "instance running" to its report
    boot_s: float = 30.0
    stop_s: float = 45.0
    snapshot_s: float = 300.0
    window_hours: float = 3.6
    never_finish: frozenset[str] = frozenset()

    @property
    def window_s(self) -> float:
        return self.window_hours * 3600

    @property
    def longest_transfer_s(self) -> float:
        return max(self.transfers.values())


@dataclass(frozen=True)
class Step:
    at_s: float  # seconds since the window opened
    kind: str  # open | running | report | deadline | stopped | snapshot
    event: str
    state: str  # the window's, after the event
    reason: str  # of the window's latest transition


@dataclass(frozen=True)
class WindowRun:
    scenario: Scenario
    instance_up_s: float  # StartInstances -> the "stopped" notification
    window_s: float  # open -> CLOSED
    state: State
    closed_by: str  # the reason of the transition to CLOSING
    closing_event: str  # the kind of event that moved the window to CLOSING
    reported: frozenset[str]
    metric_billed_s: float | None  # what the service recorded as InstanceSecondsBilled
    steps: tuple[Step, ...]

    @property
    def billed_s(self) -> int:
        return billed_seconds(self.instance_up_s)

    @property
    def missed(self) -> frozenset[str]:
        return frozenset(self.scenario.transfers) - self.reported


def billed_seconds(up_s: float) -> int:
    return max(MIN_BILLED_S, math.ceil(up_s))


def kept_up_billed_s(scenario: Scenario) -> int:
    """The seed's instance, started at open and stopped when the window's time is up."""
    return billed_seconds(scenario.window_s + scenario.stop_s)


def random_transfers(count: int, seed: int, median_s: float = 600.0,
                     sigma: float = 1.0) -> dict[str, float]:
    """Log-normal transfer times (most hosts send a little, a few send a lot), seeded."""
    rng = random.Random(seed)
    return {f"host-{i:03d}": float(max(1, round(rng.lognormvariate(math.log(median_s), sigma))))
            for i in range(count)}


class SimClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass(order=True, frozen=True)
class _Due:
    at: datetime
    seq: int
    kind: str = field(compare=False)
    subject: str = field(compare=False, default="")


class EventBus:
    """Events due at a time, handed out in time order (ties in the order they were posted)."""

    def __init__(self, clock: SimClock) -> None:
        self._clock = clock
        self._due: list[_Due] = []
        self._seq = itertools.count()

    def post(self, delay_s: float, kind: str, subject: str = "") -> None:
        self.post_at(self._clock() + timedelta(seconds=delay_s), kind, subject)

    def post_at(self, at: datetime, kind: str, subject: str = "") -> None:
        heapq.heappush(self._due, _Due(at, next(self._seq), kind, subject))

    def pop(self) -> _Due | None:
        if not self._due:
            return None
        due = heapq.heappop(self._due)
        self._clock.now = max(self._clock.now, due.at)
        return due


def bench_boot() -> BootRenderer:
    """The real user-data renderer (its cost is part of every open), with a throwaway CA."""
    ca_line = ca_public_key_line(SigningKey.generate())
    return BootRenderer(lambda: ca_line, "/offsite/bench/host-key", "us-east-1")


class SimulatedEc2(FakeCompute):
    """FakeCompute whose starts, stops and snapshots take time and end in an event."""

    def __init__(self, bus: EventBus, clock: SimClock, scenario: Scenario) -> None:
        super().__init__()
        self._bus, self._clock, self._scenario = bus, clock, scenario
        self.started_at: datetime | None = None
        self.stopped_at: datetime | None = None

    def start(self, instance_id: str, instance_types: Sequence[str]) -> str:
        started_as = super().start(instance_id, instance_types)
        self.state, self.started_at = "pending", self._clock()
        self._bus.post(self._scenario.boot_s, "running")
        return started_as

    def stop(self, instance_id: str) -> None:
        was = self.state
        super().stop(instance_id)
        self.state = "stopped" if was == "stopped" else "stopping"
        if was not in ("stopping", "stopped"):
            self._bus.post(self._scenario.stop_s, "stopped")

    def snapshot_volume(self, volume_id: str, tags: Mapping[str, str]) -> str:
        self.now = self._clock()
        snapshot_id = super().snapshot_volume(volume_id, tags)
        self._bus.post(self._scenario.snapshot_s, "snapshot", snapshot_id)
        return snapshot_id


class SimulatedScheduler(FakeScheduler):
    def __init__(self, bus: EventBus) -> None:
        super().__init__()
        self._bus = bus

    def create_deadline(self, window_id: str, at: datetime) -> None:
        super().create_deadline(window_id, at)
        self._bus.post_at(at, "deadline", window_id)


@dataclass
class _World:
    scenario: Scenario
    clock: SimClock
    bus: EventBus
    ec2: SimulatedEc2
    scheduler: SimulatedScheduler
    metrics: FakeMetrics
    service: WindowService
    window_id: str = ""


def _build(scenario: Scenario) -> _World:
    clock = SimClock()
    bus = EventBus(clock)
    ec2, scheduler, metrics = SimulatedEc2(bus, clock, scenario), SimulatedScheduler(bus), \
        FakeMetrics()
    store = InMemoryStore()
    for i, name in enumerate(sorted(scenario.transfers)):
        store.put_host(Host(name, "ssh-ed25519 BENCH", True, f"vol-{i:017x}", T0))
    settings = Settings(table_name="bench", instance_id=INSTANCE_ID, topic_arn="arn:bench",
                        deadline_target_arn="arn:bench", scheduler_role_arn="arn:bench",
                        window_hours=scenario.window_hours)
    ports = Ports(store, ec2, scheduler, FakeNotifier(), metrics, bench_boot())
    service = WindowService(settings, ports,
                            clock=clock, new_id=lambda now: f"w-{now:%Y%m%dT%H%M%SZ}-bench0")
    return _World(scenario, clock, bus, ec2, scheduler, metrics, service)


def _on_running(world: _World, _: str) -> str:
    world.ec2.state = "running"
    world.service.on_instance_state(INSTANCE_ID, "running")
    if world.service.get_window(world.window_id).state is State.OPEN:
        for host, transfer_s in sorted(world.scenario.transfers.items()):
            if host not in world.scenario.never_finish:
                world.bus.post(transfer_s, "report", host)
    return "EC2: instance running"


def _on_report(world: _World, host: str) -> str:
    report = ReportRequest(host=host, window_id=world.window_id, status="succeeded",
                           bytes_sent=0, files=0, duration_s=world.scenario.transfers[host],
                           detail="")
    try:
        world.service.record_report(report)
    except WindowNotOpenError as exc:
        return f"report from {host} refused: {exc}"
    return f"report from {host}"


def _on_deadline(world: _World, window_id: str) -> str | None:
    if world.scheduler.deadlines.pop(window_id, None) is None:
        return None  # the schedule was deleted when the window closed: it never fires
    world.service.on_deadline(window_id)
    return "Scheduler: deadline"


def _on_stopped(world: _World, _: str) -> str:
    world.ec2.state, world.ec2.stopped_at = "stopped", world.clock()
    world.service.on_instance_state(INSTANCE_ID, "stopped")
    return "EC2: instance stopped"


def _on_snapshot(world: _World, snapshot_id: str) -> str:
    world.ec2.complete_snapshot(snapshot_id)
    world.service.on_snapshots_settled([(snapshot_id, True)])
    return f"EBS: snapshot {snapshot_id} completed"


_DELIVER: dict[str, Callable[[_World, str], str | None]] = {
    "running": _on_running, "report": _on_report, "deadline": _on_deadline,
    "stopped": _on_stopped, "snapshot": _on_snapshot,
}


def simulate(scenario: Scenario) -> WindowRun:
    """Open one window and deliver every event until none is left (a bounded number)."""
    world = _build(scenario)
    opened = world.service.open_window("bench")
    world.window_id = opened.window_id
    steps = [Step(0.0, "open", "open", opened.state.value, opened.reason)]
    for _ in range(4 * len(scenario.transfers) + 16):
        due = world.bus.pop()
        if due is None:
            return _result(world, steps)
        event = _DELIVER[due.kind](world, due.subject)
        if event is None:
            continue
        window = world.service.get_window(world.window_id)
        steps.append(Step((world.clock() - T0).total_seconds(), due.kind, event,
                          window.state.value, window.reason))
    raise SimulationError("events kept coming; the window never settled")


def _result(world: _World, steps: list[Step]) -> WindowRun:
    window = world.service.get_window(world.window_id)
    ec2 = world.ec2
    if window.state is not State.CLOSED or ec2.started_at is None or ec2.stopped_at is None:
        raise SimulationError(f"window ended {window.state.value}: {window.reason}")
    closing = next((s for s in steps if s.state == State.CLOSING.value), steps[-1])
    metric = [v for name, _, v in world.metrics.values if name == "InstanceSecondsBilled"]
    return WindowRun(
        scenario=world.scenario,
        instance_up_s=(ec2.stopped_at - ec2.started_at).total_seconds(),
        window_s=(window.entered[State.CLOSED.value] - window.opened_at).total_seconds(),
        state=window.state, closed_by=closing.reason, closing_event=closing.kind,
        reported=frozenset(h for h, r in window.reports.items() if r == "succeeded"),
        metric_billed_s=metric[-1] if metric else None, steps=tuple(steps))
