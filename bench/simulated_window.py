"""One backup window of an archive fleet simulated in process: the real WindowService on the
in-memory fakes, with a fake clock, fed the events AWS would send at the times AWS would send
them.

The simulated Lambda, EC2 and Scheduler below post those events on a small time-ordered bus:
each shard's launch (its own invocation, as `launch_shard` is invoked asynchronously once per
shard), each instance's "running" notification `boot_s` after its RunInstances, its "stopped"
one `stop_s` after StopInstances, each snapshot's completion `snapshot_s` after CreateSnapshot,
the deadline at the deadline unless its schedule was deleted first. A shard's hosts start their
transfers when its instance is running and report when they end. The driver pops one event at a
time, moves the clock to it and hands it to the service method that app.py's handler for it
calls.

Billed instance time follows EC2's rule for an on-demand Linux instance, per second with a
60 s minimum, counted per instance from its RunInstances to its "stopped" notification (after
which it is terminated, not restarted). EC2 bills instance usage only while `running`: the
table of instance states in "Amazon EC2 instance state changes" (EC2 User Guide) marks
`pending`, `stopping` and `stopped` "Not billed", so this is an upper bound of the bill.

Every call the service makes through its ports is counted (`CallLog`), with the AWS API calls
the real adapter makes for it (Ec2Compute, DynamoWindowStore, ...), per kind of event.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from nacl.signing import SigningKey

from chalicelib.adapters.compute import FakeCompute, Launched, LaunchSpec
from chalicelib.adapters.metrics import FakeMetrics
from chalicelib.adapters.notifier import FakeNotifier
from chalicelib.adapters.scheduler import FakeScheduler
from chalicelib.adapters.store import InMemoryStore
from chalicelib.instance.userdata import BootRenderer
from chalicelib.payloads import ReportRequest
from chalicelib.records import Host
from chalicelib.settings import Settings
from chalicelib.sshcert import ca_public_key_line
from chalicelib.window import State, Timing, Window
from chalicelib.windows import Ports, WindowNotOpenError, WindowService

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)
MIN_BILLED_S = 60
# DynamoDB's TransactWriteItems takes at most 100 items (DynamoWindowStore._TRANSACTION_LIMIT);
# a window with more shards writes them 25 at a time first.
TRANSACTION_LIMIT = 100
EVENT_KINDS = ("open", "launch", "running", "report", "deadline", "stopped", "snapshot",
               "reconcile")
RECONCILE_S = 300.0  # the reconciler's schedule: every 5 minutes (app.py)


class SimulationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Scenario:
    transfers: Mapping[str, float]  # host -> seconds from its archive running to its report
    boot_s: float = 30.0
    stop_s: float = 45.0
    snapshot_s: float = 300.0
    window_hours: float = 3.6
    hosts_per_archive: int = 20
    never_finish: frozenset[str] = frozenset()  # ask for a session, never report
    never_ask: frozenset[str] = frozenset()  # never ask for a session at all (idle close)
    start_grace_s: float = 1800.0  # START_GRACE_MINUTES

    @property
    def window_s(self) -> float:
        return self.window_hours * 3600

    @property
    def longest_transfer_s(self) -> float:
        return max(self.transfers.values())


@dataclass(frozen=True)
class Step:
    at_s: float  # seconds since the window opened
    kind: str  # one of EVENT_KINDS
    event: str
    state: str  # the window's, after the event
    reason: str  # of the window's latest transition


@dataclass(frozen=True)
class ShardRun:
    """One archive of the window, from the times the simulation recorded (seconds since the
    window opened)."""

    shard_id: str
    hosts: frozenset[str]
    state: State
    launched_s: float  # RunInstances
    stopped_s: float  # the "stopped" notification
    closing_event: str  # the kind of event that moved the shard to CLOSING
    reason: str  # the shard's latest transition's
    longest_transfer_s: float  # the longest transfer of its hosts, as the scenario has them
    reported: frozenset[str]

    @property
    def up_s(self) -> float:
        return self.stopped_s - self.launched_s

    @property
    def billed_s(self) -> int:
        return billed_seconds(self.up_s)

    @property
    def missed(self) -> frozenset[str]:
        return self.hosts - self.reported


@dataclass
class CallLog:
    """AWS API calls made through the ports: per event kind, per port and operation."""

    kind: str = "open"
    events: Counter[str] = field(default_factory=Counter)
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, port.op) -> n

    def add(self, operation: str, count: int) -> None:
        if count:
            self.calls[(self.kind, operation)] += count

    def per_kind(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for (kind, _), n in self.calls.items():
            totals[kind] += n
        return dict(totals)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@dataclass(frozen=True)
class WindowRun:
    scenario: Scenario
    shards: tuple[ShardRun, ...]
    window_s: float  # open -> CLOSED
    state: State
    reason: str  # the window's own, when it closed
    reported: frozenset[str]
    metric_billed_s: float | None  # what the service recorded as InstanceSecondsBilled
    steps: tuple[Step, ...]
    log: CallLog

    @property
    def billed_s(self) -> int:
        return sum(s.billed_s for s in self.shards)

    @property
    def by_reports(self) -> tuple[ShardRun, ...]:
        """The archives their last report closed (the others waited for the deadline)."""
        return tuple(s for s in self.shards if s.closing_event == "report")

    @property
    def sum_longest_s(self) -> float:
        """Over the archives their last report closed, each one's longest transfer: the
        instance time no schedule of those hosts on those archives can go below."""
        return sum(s.longest_transfer_s for s in self.by_reports)

    @property
    def billed_by_reports_s(self) -> int:
        return sum(s.billed_s for s in self.by_reports)

    @property
    def missed(self) -> frozenset[str]:
        return frozenset(self.scenario.transfers) - self.reported

    @property
    def hosts(self) -> int:
        return len(self.scenario.transfers)

    @property
    def events(self) -> int:
        return sum(self.log.events.values())


def billed_seconds(up_s: float) -> int:
    return max(MIN_BILLED_S, math.ceil(up_s))


def kept_up_billed_s(scenario: Scenario, archives: int) -> int:
    """Each archive started at open and stopped when the window's time is up, as the seed's
    one instance was."""
    return archives * billed_seconds(scenario.window_s + scenario.stop_s)


def single_instance_billed_s(scenario: Scenario) -> int:
    """Before issue 11: one instance for every host (at most 21), on demand, stopped after the
    last report: boot + the longest transfer + stop, computed, not simulated."""
    up = scenario.boot_s + min(scenario.longest_transfer_s, scenario.window_s) + scenario.stop_s
    return billed_seconds(up)


def random_transfers(count: int, seed: int, median_s: float = 600.0,
                     sigma: float = 1.0) -> dict[str, float]:
    """Log-normal transfer times (most hosts send a little, a few send a lot), seeded."""
    rng = random.Random(seed)
    width = max(3, len(str(count - 1)))
    return {f"host-{i:0{width}d}":
            float(max(1, round(rng.lognormvariate(math.log(median_s), sigma))))
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
    """The real user-data renderer (its cost is part of every launch), with a throwaway CA."""
    ca_line = ca_public_key_line(SigningKey.generate())
    return BootRenderer(lambda: ca_line, "/offsite/bench/host-key", "us-east-1",
                        api_url="https://api.offsite.bench")


class SimulatedEc2(FakeCompute):
    """FakeCompute whose launches, stops and snapshots take time and end in an event."""

    def __init__(self, bus: EventBus, clock: SimClock, scenario: Scenario) -> None:
        super().__init__()
        self._bus, self._clock, self._scenario = bus, clock, scenario
        self.launched_at: dict[str, datetime] = {}
        self.stopped_at: dict[str, datetime] = {}

    def launch(self, spec: LaunchSpec) -> Launched:
        self.now = self._clock()
        launched = super().launch(spec)
        if launched.instance_id not in self.launched_at:  # not a retry's same instance
            self.launched_at[launched.instance_id] = self._clock()
            self._bus.post(self._scenario.boot_s, "running", launched.instance_id)
        return launched

    def stop(self, instance_ids: Sequence[str]) -> None:
        was = {i: self.instances[i]["state"] for i in instance_ids}
        super().stop(instance_ids)
        for instance_id, state in was.items():
            if state in ("pending", "running"):
                self.instances[instance_id]["state"] = "stopping"
                self._bus.post(self._scenario.stop_s, "stopped", instance_id)
            else:
                self.instances[instance_id]["state"] = state

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


class BusLauncher:
    """launch_shard invoked asynchronously, once per shard: each launch is an event of its
    own, due at once (LambdaLauncher's Invoke with InvocationType Event)."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    def launch(self, window_id: str, shard_ids: Sequence[str]) -> None:
        for shard_id in shard_ids:
            self._bus.post(0.0, "launch", f"{window_id} {shard_id}")


# The AWS API calls the real adapter makes for one call of a port's method; 1 when not listed.
def _ec2_requests(method: str, args: tuple[Any, ...]) -> int:
    if method in ("terminate", "tag_volumes", "snapshot_states"):  # one request per item
        return len(args[0])
    if method in ("stop", "describe"):  # none for no instance
        return 1 if args[0] else 0
    if method in ("complete_snapshot", "boot", "running"):  # the fake's test hooks, not AWS
        return 0
    return 1


def _store_requests(method: str, args: tuple[Any, ...]) -> int:
    if method == "create_window":
        shards = len(args[0].shards)
        return 1 if shards + 3 <= TRANSACTION_LIMIT else math.ceil(shards / 25) + 1
    return 1


def _launcher_requests(method: str, args: tuple[Any, ...]) -> int:
    return len(args[1])  # one Lambda Invoke per shard


def _one(method: str, args: tuple[Any, ...]) -> int:
    return 1


def _none(method: str, args: tuple[Any, ...]) -> int:
    return 0  # EMF metrics are log lines, not API calls


class Counted:
    """A port whose every public method call is logged, with the AWS calls it stands for."""

    def __init__(self, port: object, name: str, log: CallLog,
                 requests: Callable[[str, tuple[Any, ...]], int]) -> None:
        self._port, self._name, self._log, self._requests = port, name, log, requests

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._port, attr)
        if attr.startswith("_") or not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            if self._name == "ec2" and attr == "launch":  # one RunInstances per placement tried
                before = cast(FakeCompute, self._port).calls["launch"]
                try:
                    return value(*args, **kwargs)
                finally:
                    self._log.add("ec2.launch", cast(FakeCompute, self._port).calls["launch"]
                                  - before)
            self._log.add(f"{self._name}.{attr}", self._requests(attr, args))
            return value(*args, **kwargs)

        return counted


@dataclass
class _World:
    scenario: Scenario
    clock: SimClock
    bus: EventBus
    ec2: SimulatedEc2
    scheduler: SimulatedScheduler
    metrics: FakeMetrics
    service: WindowService
    store: InMemoryStore  # the bench's own reads go here, uncounted
    log: CallLog
    window_id: str = ""
    closing: dict[str, str] = field(default_factory=dict)  # shard id -> event kind

    def window(self) -> Window:
        window = self.store.get_window(self.window_id)
        if window is None:
            raise SimulationError(f"no window {self.window_id}")
        return window


def _build(scenario: Scenario) -> _World:
    clock, log = SimClock(), CallLog()
    bus = EventBus(clock)
    ec2, scheduler, metrics = SimulatedEc2(bus, clock, scenario), SimulatedScheduler(bus), \
        FakeMetrics()
    store = InMemoryStore()
    for name in sorted(scenario.transfers):
        store.put_host(Host(name, "ssh-ed25519 BENCH", True, T0))
    settings = Settings(table_name="bench", topic_arn="arn:bench",
                        deadline_target_arn="arn:bench", scheduler_role_arn="arn:bench",
                        instance_types=("t4g.small", "t3a.small"),
                        subnet_ids=("subnet-a", "subnet-b"),
                        hosts_per_archive=scenario.hosts_per_archive,
                        window_hours=scenario.window_hours,
                        timing=Timing(start_grace=timedelta(seconds=scenario.start_grace_s)))
    ports = Ports(cast(Any, Counted(store, "dynamodb", log, _store_requests)),
                  cast(Any, Counted(store, "dynamodb", log, _store_requests)),
                  cast(Any, Counted(ec2, "ec2", log, _ec2_requests)),
                  cast(Any, Counted(scheduler, "scheduler", log, _one)),
                  cast(Any, Counted(FakeNotifier(), "sns", log, _one)),
                  cast(Any, Counted(metrics, "metrics", log, _none)),
                  bench_boot(),
                  cast(Any, Counted(BusLauncher(bus), "lambda", log, _launcher_requests)))
    service = WindowService(settings, ports, clock=clock,
                            new_id=lambda now: f"w-{now:%Y%m%dT%H%M%SZ}-bench0")
    return _World(scenario, clock, bus, ec2, scheduler, metrics, service, store, log)


def _on_launch(world: _World, subject: str) -> str:
    window_id, shard_id = subject.split()
    return f"{shard_id}: {world.service.launch_shard(window_id, shard_id)}"


def _on_running(world: _World, instance_id: str) -> str:
    world.ec2.instances[instance_id]["state"] = "running"
    world.service.on_instance_state(instance_id, "running")
    world.service.on_boot_signal(instance_id, True, "simulated: ready as it runs")
    window = world.window()
    shard = next(s for s in window.shards.values() if s.instance_id == instance_id)
    if shard.state is State.OPEN:
        for host in sorted(shard.hosts - world.scenario.never_ask):
            world.store.record_start(world.window_id, shard.shard_id, host,
                                     world.clock())  # its session
            if host not in world.scenario.never_finish:
                world.bus.post(world.scenario.transfers[host], "report", host)
    return f"EC2: {shard.shard_id}'s instance running"


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


def _on_stopped(world: _World, instance_id: str) -> str:
    world.ec2.instances[instance_id]["state"] = "stopped"
    world.ec2.stopped_at[instance_id] = world.clock()
    world.service.on_instance_state(instance_id, "stopped")
    return f"EC2: instance {instance_id} stopped"


def _on_reconcile(world: _World, _: str) -> str | None:
    """The reconciler's schedule, posted only for scenarios with hosts that never ask (their
    idle close needs its look at the clock); it stops once the window has ended."""
    if not world.window().state.active:
        return None
    world.service.reconcile()
    world.bus.post(RECONCILE_S, "reconcile")
    return "reconciler"


def _on_snapshot(world: _World, snapshot_id: str) -> str:
    world.ec2.complete_snapshot(snapshot_id)
    world.service.on_snapshots_settled([(snapshot_id, True)])
    return f"EBS: snapshot {snapshot_id} completed"


_DELIVER: dict[str, Callable[[_World, str], str | None]] = {
    "launch": _on_launch, "running": _on_running, "report": _on_report,
    "deadline": _on_deadline, "stopped": _on_stopped, "snapshot": _on_snapshot,
    "reconcile": _on_reconcile,
}


def simulate(scenario: Scenario) -> WindowRun:
    """Open one window and deliver every event until none is left (a bounded number)."""
    world = _build(scenario)
    world.log.events["open"] += 1
    opened = world.service.open_window("bench")
    world.window_id = opened.window_id
    if scenario.never_ask:
        world.bus.post(RECONCILE_S, "reconcile")
    reconciles = int(scenario.window_s // RECONCILE_S) + 2 if scenario.never_ask else 0
    steps = [Step(0.0, "open", "open", opened.state.value, opened.reason)]
    states = {s: State.OPENING for s in opened.shards}
    for _ in range(4 * len(scenario.transfers) + 8 * len(opened.shards) + 16 + reconciles):
        due = world.bus.pop()
        if due is None:
            return _result(world, steps)
        world.log.kind = due.kind
        event = _DELIVER[due.kind](world, due.subject)
        if event is None:
            continue
        world.log.events[due.kind] += 1
        window = world.window()
        for shard_id, shard in window.shards.items():
            if shard.state is State.CLOSING and states[shard_id] is not State.CLOSING:
                world.closing[shard_id] = due.kind
            states[shard_id] = shard.state
        steps.append(Step((world.clock() - T0).total_seconds(), due.kind, event,
                          window.state.value, window.reason))
    raise SimulationError("events kept coming; the window never settled")


def _seconds(at: datetime) -> float:
    return (at - T0).total_seconds()


def _result(world: _World, steps: list[Step]) -> WindowRun:
    window = world.window()
    if window.state is not State.CLOSED:
        raise SimulationError(f"window ended {window.state.value}: {window.reason}")
    reported = frozenset(h for h, r in window.reports.items() if r == "succeeded")
    shards = []
    for shard in sorted(window.shards.values(), key=lambda s: s.shard_id):
        instance = shard.instance_id
        if instance is None or instance not in world.ec2.stopped_at:
            raise SimulationError(f"{shard.shard_id} ended {shard.state.value} without a stop: "
                                  f"{shard.reason}")
        shards.append(ShardRun(
            shard.shard_id, shard.hosts, shard.state,
            _seconds(world.ec2.launched_at[instance]), _seconds(world.ec2.stopped_at[instance]),
            world.closing.get(shard.shard_id, ""), shard.reason,
            max((world.scenario.transfers[h] for h in shard.hosts
                 if h not in world.scenario.never_ask), default=0.0),  # a transfer it never made
            shard.hosts & reported))
    metric = [v for name, _, v in world.metrics.values if name == "InstanceSecondsBilled"]
    return WindowRun(
        scenario=world.scenario, shards=tuple(shards),
        window_s=(window.entered[State.CLOSED.value] - window.opened_at).total_seconds(),
        state=window.state, reason=window.reason, reported=reported,
        metric_billed_s=metric[-1] if metric else None, steps=tuple(steps), log=world.log)
