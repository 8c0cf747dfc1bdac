"""Property: whatever order AWS delivers its events in, and however often, a window is stopped
once, snapshotted once per host, and never left open past its deadline plus one reconciler
period.

A small simulated world (the instance, the snapshots, the clock) plays what AWS would; the
harness applies `decide` the way the service does: the transition is a conditional write on the
state it leaves, actions are carried out by the winner only, and instance events are acted on
only when EC2 agrees (the service describes the instance first).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.window import (
    Action,
    AdminClose,
    DeadlineReached,
    Event,
    HostReported,
    InstanceRunning,
    InstanceStopped,
    SnapshotSettled,
    SnapshotStatus,
    State,
    Tick,
    Timing,
    Window,
    decide,
)

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)
HOSTS = ("c", "h", "o", "l")
PERIOD = timedelta(minutes=5)
TIMING = Timing(boot_timeout=timedelta(minutes=15), stop_grace=timedelta(minutes=10))


@dataclass
class World:
    window: Window
    now: datetime = T0
    instance: str = "pending"
    last_tick: datetime = T0
    stops: int = 0
    snapshots_created: dict[str, int] = field(default_factory=dict)
    ebs: dict[str, str] = field(default_factory=dict)  # host -> pending | completed
    restore_volume_deletions: int = 0

    def apply(self, event: Event) -> None:
        decision = decide(self.window, event, self.now, TIMING)
        if decision.target is not None:
            self.window = replace(self.window, state=decision.target, updated_at=self.now)
        for action in decision.actions:
            if action is Action.STOP_INSTANCE:
                self.stops += 1
                if self.instance in ("pending", "running"):
                    self.instance = "stopping"
            elif action is Action.SNAPSHOT_VOLUMES:
                self._snapshot()
            elif action is Action.DELETE_RESTORE_VOLUME:
                self.restore_volume_deletions += 1

    def _snapshot(self) -> None:
        snaps = dict(self.window.snapshots)
        for host in sorted(self.window.unsnapshotted):  # the per-host claim
            snaps[host] = SnapshotStatus.PENDING
            self.snapshots_created[host] = self.snapshots_created.get(host, 0) + 1
            self.ebs[host] = "pending"
        self.window = replace(self.window, snapshots=snaps)

    def step(self, kind: str, host: str, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        if self.now - self.last_tick >= PERIOD:  # the reconciler's rate
            self.last_tick = self.now
            self.apply(Tick(self.instance))
        getattr(self, f"on_{kind}")(host)

    def on_boot(self, host: str) -> None:
        if self.instance == "pending":
            self.instance = "running"

    def on_halt(self, host: str) -> None:
        if self.instance == "stopping":
            self.instance = "stopped"

    def on_running_event(self, host: str) -> None:
        if self.instance == "running":
            self.apply(InstanceRunning("203.0.113.10"))

    def on_stopped_event(self, host: str) -> None:
        if self.instance == "stopped":
            self.apply(InstanceStopped())

    def on_report(self, host: str) -> None:
        if self.window.state is State.OPEN:
            self.window = replace(self.window, reports={**self.window.reports, host: "succeeded"})
            self.apply(HostReported(host))

    def on_deadline(self, host: str) -> None:
        self.apply(DeadlineReached())

    def on_admin_close(self, host: str) -> None:
        self.apply(AdminClose("admin"))

    def on_ebs_done(self, host: str) -> None:
        if self.ebs.get(host) == "pending":
            self.ebs[host] = "completed"

    def on_snapshot_event(self, host: str) -> None:
        if self.ebs.get(host) == "completed" and \
                self.window.snapshots.get(host) is SnapshotStatus.PENDING:
            self.window = replace(self.window, snapshots={
                **self.window.snapshots, host: SnapshotStatus.COMPLETED})
            self.apply(SnapshotSettled(host))


KINDS = ["boot", "halt", "running_event", "stopped_event", "report", "report", "deadline",
         "admin_close", "ebs_done", "snapshot_event", "snapshot_event"]
steps = st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(HOSTS),
                           st.integers(min_value=0, max_value=20)), max_size=120)


def new_world(hours: float = 1.0) -> World:
    window = Window(window_id="w-1", state=State.OPENING, opened_at=T0,
                    deadline=T0 + timedelta(hours=hours), expected=frozenset(HOSTS),
                    instance_id="i-1", trigger="schedule", updated_at=T0)
    return World(window)


def new_restore_world(hours: float = 2.0) -> World:
    window = Window(window_id="w-r", state=State.OPENING, opened_at=T0,
                    deadline=T0 + timedelta(hours=hours), expected=frozenset({"c"}),
                    instance_id="i-1", trigger="restore:api", updated_at=T0,
                    purpose="restore", snapshot_id="snap-1", restore_volume_id="vol-r")
    return World(window)


@settings(max_examples=400, deadline=None)
@given(steps)
def test_never_two_stops_nor_two_rounds_of_snapshots(script: list[tuple[str, str, int]]) -> None:
    world = new_world()
    for kind, host, minutes in script:
        world.step(kind, host, minutes)
        assert world.stops <= 1
        assert all(n == 1 for n in world.snapshots_created.values())
        if world.window.state is State.CLOSED:
            assert set(world.snapshots_created) == set(HOSTS)


@settings(max_examples=400, deadline=None)
@given(steps)
def test_never_open_past_the_deadline_plus_one_period(script: list[tuple[str, str, int]]) -> None:
    world = new_world()
    for kind, host, minutes in script:
        world.step(kind, host, minutes)
        if world.now >= world.window.deadline + PERIOD:
            assert world.window.state not in (State.OPENING, State.OPEN), world.window


@settings(max_examples=200, deadline=None)
@given(steps, st.permutations(HOSTS))
def test_a_window_whose_events_all_arrive_ends_closed(script: list[tuple[str, str, int]],
                                                      order: tuple[str, ...]) -> None:
    """After any prefix of chaos, delivering what is still due closes the window."""
    world = new_world()
    for kind, host, minutes in script:
        world.step(kind, host, minutes)
    if world.window.state is State.FAILED:
        return
    for kind in ("boot", "running_event"):
        world.step(kind, "c", 0)
    for host in order:
        world.step("report", host, 0)
    world.step("halt", "c", 1)
    world.step("stopped_event", "c", 0)
    for host in order:
        world.step("ebs_done", host, 0)
        world.step("snapshot_event", host, 0)
    world.step("halt", "c", 5)  # a tick picks up anything still pending
    world.step("stopped_event", "c", 5)
    for host in order:
        world.step("ebs_done", host, 0)
        world.step("snapshot_event", host, 0)
    assert world.window.state is State.CLOSED, world.window
    assert world.stops == 1


@settings(max_examples=400, deadline=None)
@given(steps)
def test_a_restore_window_is_never_snapshotted_and_drops_its_volume_once(
        script: list[tuple[str, str, int]]) -> None:
    world = new_restore_world()
    for kind, host, minutes in script:
        world.step(kind, host, minutes)
        assert world.snapshots_created == {}
        assert world.stops <= 1
        assert world.restore_volume_deletions <= 1
        assert world.window.state is not State.SNAPSHOTTING
        if not world.window.state.active:
            assert world.restore_volume_deletions == 1, world.window
        else:
            assert world.restore_volume_deletions == 0, world.window


@settings(max_examples=300, deadline=None)
@given(steps)
def test_a_restore_window_is_never_open_past_its_deadline_plus_one_period(
        script: list[tuple[str, str, int]]) -> None:
    world = new_restore_world(hours=0.5)
    for kind, host, minutes in script:
        world.step(kind, host, minutes)
        if world.now >= world.window.deadline + PERIOD:
            assert world.window.state not in (State.OPENING, State.OPEN), world.window


@settings(max_examples=200, deadline=None)
@given(steps)
def test_a_restore_whose_events_all_arrive_ends_closed(script: list[tuple[str, str, int]]) -> None:
    world = new_restore_world()
    for kind, host, minutes in script:
        world.step(kind, host, minutes)
    if world.window.state is State.FAILED:
        assert world.restore_volume_deletions == 1
        return
    for kind in ("boot", "running_event", "report"):
        world.step(kind, "c", 0)
    world.step("halt", "c", 1)
    world.step("stopped_event", "c", 0)
    world.step("halt", "c", 5)
    world.step("stopped_event", "c", 5)
    assert world.window.state is State.CLOSED, world.window
    assert world.stops == 1 and world.restore_volume_deletions == 1
    assert world.snapshots_created == {}
