"""Property: whatever order AWS delivers its events in, however often, and however stale the
window a Lambda read, a window of several shards stops each shard's instance once, snapshots
each host once, ends every shard soon after the deadline, and concludes once.

A small simulated world plays what AWS would: per shard an EC2 instance (launched, booted,
halted, terminated) that says, once it runs, that it is ready or that its boot failed (signals
that may come early, twice, late or never), per host a volume and a snapshot, a clock. The
harness applies `decide`
the way windows.WindowService does: each delivery reads the window (now, or a read taken some
steps ago: a slow Lambda, a duplicated event), the transition is a conditional write on the
shard state it read, actions are carried out by the winner only (on a fresh read), snapshots
are claimed per host, instance events are acted on only when EC2 agrees (the service describes
the instance first), and `conclude` follows every change. Volumes are deleted with the
service's own rule (`WindowService._may_delete`), so that rule is under test too.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.window import (
    RESTORE,
    Action,
    AdminClose,
    BootFailed,
    BootReady,
    DeadlineReached,
    Decision,
    Event,
    HostReported,
    InstanceRunning,
    InstanceStopped,
    Shard,
    SnapshotSettled,
    SnapshotStatus,
    StartFailed,
    State,
    Tick,
    Timing,
    Window,
    conclude,
    decide,
)
from chalicelib.windows import RELAUNCH_AFTER, WindowService

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)
PERIOD = timedelta(minutes=5)  # the reconciler's rate
TIMING = Timing(boot_timeout=timedelta(minutes=15), stop_grace=timedelta(minutes=10),
                start_grace=timedelta(minutes=30))
# After the deadline, with EC2 and EBS doing their part and every event lost, the reconciler
# alone ends every shard within this: a second stop after stop_grace, then one tick each for
# stopped -> snapshotting, the snapshots settling, and the conclusion (plus slack for the tick
# phase).
SETTLE = TIMING.stop_grace + 5 * PERIOD


@dataclass
class World:
    """The store's truth (`window`), EC2's and EBS's, and what was done to them."""

    window: Window
    capacity: dict[str, bool]  # shard -> RunInstances finds capacity in some (type, subnet)
    now: datetime = T0
    last_tick: datetime = T0
    instances: dict[str, str] = field(default_factory=dict)  # shard -> EC2 state
    volumes: dict[str, str] = field(default_factory=dict)  # volume id -> shard
    deleted_volumes: set[str] = field(default_factory=set)
    ebs: dict[str, str] = field(default_factory=dict)  # host -> pending | completed | error
    snapshots_made: Counter[str] = field(default_factory=Counter)
    winner_stops: Counter[str] = field(default_factory=Counter)  # stops by a transition
    retention: int = 0
    reads: list[Window] = field(default_factory=list)  # earlier reads, for stale deliveries
    failing_stops: int = 0  # StopInstances calls still to fail
    said_ready: set[str] = field(default_factory=set)  # shards whose instance said ready

    # the store -------------------------------------------------------------------------
    def read(self, lag: int = 0) -> Window:
        self.reads.append(self.window)
        return self.reads[max(0, len(self.reads) - 1 - lag)]

    def _write_shard(self, shard_id: str, source: State, decision: Decision) -> bool:
        current = self.window.shards[shard_id]
        if current.state is not source or decision.target is None:  # the condition
            return False
        volumes = current.volumes
        if decision.target is State.BOOTING and not volumes:
            volumes = {h: volume_id(shard_id, h) for h in sorted(current.hosts)}
        changed = replace(current, state=decision.target, updated_at=self.now,
                          reason=decision.reason, volumes=volumes,
                          entered={**current.entered, decision.target.value: self.now})
        self.window = replace(self.window, shards={**self.window.shards, shard_id: changed})
        return True

    # delivering an event, as the service does ------------------------------------------
    def deliver(self, shard_id: str, event: Event, lag: int = 0) -> None:
        seen = self.read(lag)
        decision = decide(seen, shard_id, event, self.now, TIMING)
        if decision.target is not None:
            if not self._write_shard(shard_id, seen.shards[shard_id].state, decision):
                return  # lost the conditional write: no action
            if Action.STOP_INSTANCE in decision.actions:
                self.winner_stops[shard_id] += 1
        for action in decision.actions:
            self._do(action, shard_id)
        if decision.target is not None:
            self.conclude()

    def conclude(self) -> None:
        decision = conclude(self.window)
        if decision.target is None:
            return
        self.window = replace(self.window, state=decision.target, reason=decision.reason)
        if Action.APPLY_RETENTION in decision.actions:
            self.retention += 1

    def _do(self, action: Action, shard_id: str) -> None:
        shard = self.window.shards[shard_id]  # a fresh read, as _apply carries out on
        instance = self.instances.get(shard_id)
        if action is Action.STOP_INSTANCE and instance in ("pending", "running"):
            if self.failing_stops:
                self.failing_stops -= 1
            else:
                self.instances[shard_id] = "stopping"
        elif action is Action.TERMINATE_INSTANCE and instance not in (None, "terminated"):
            self.instances[shard_id] = "terminated"
        elif action is Action.SNAPSHOT_VOLUMES:
            self._snapshot(shard)
        elif action is Action.DELETE_VOLUMES:
            for volume in shard.volumes.values():
                self._delete_volume(volume)

    def _snapshot(self, shard: Shard) -> None:
        for host in sorted(self.window.unsnapshotted(shard)):  # the per-host claim
            if volume_id(shard.shard_id, host) not in self.volumes:
                continue  # its volume is unknown: the service raises, the reconciler retries
            self.snapshots_made[host] += 1
            self.ebs[host] = "pending"
            self.window = replace(self.window, snapshots={**self.window.snapshots,
                                                          host: SnapshotStatus.PENDING})

    def _delete_volume(self, volume: str) -> None:
        if volume in self.volumes and volume not in self.deleted_volumes and \
                WindowService._may_delete(self.window, self.volumes[volume], volume):
            self.deleted_volumes.add(volume)

    # the reconciler --------------------------------------------------------------------
    def reconcile(self) -> None:
        self.last_tick = self.now
        for host, ebs in sorted(self.ebs.items()):  # _refresh_snapshots
            if ebs != "pending":
                self._settle(host, lag=0, tell=False)
        for shard_id, shard in sorted(self.window.shards.items()):
            if shard.state.active:
                if shard.instance_id is None and shard.state is State.OPENING \
                        and self.now - shard.updated_at >= RELAUNCH_AFTER \
                        and self.now < self.window.deadline:
                    self.on_launch(shard_id, 0)  # its launch was lost: launched again
                state = self.instances.get(shard_id, "none")
                self.deliver(shard_id, Tick("none" if shard.instance_id is None else state))
        self.conclude()

    def sweep(self) -> None:
        for shard_id, shard in self.window.shards.items():
            if not shard.state.active and self.instances.get(shard_id) not in (None,
                                                                               "terminated"):
                self.instances[shard_id] = "terminated"
        for volume in sorted(self.volumes):
            self._delete_volume(volume)

    def _settle(self, host: str, lag: int, tell: bool = True) -> None:
        if self.window.snapshots.get(host) is not SnapshotStatus.PENDING:
            return  # settle_snapshot is conditional on pending
        status = SnapshotStatus.COMPLETED if self.ebs[host] == "completed" \
            else SnapshotStatus.FAILED
        self.window = replace(self.window, snapshots={**self.window.snapshots, host: status})
        shard = self.window.shard_of(host)
        if tell and shard is not None:
            self.deliver(shard.shard_id, SnapshotSettled(host), lag)

    # what happens, step by step ----------------------------------------------------------
    def step(self, kind: str, pick: int, lag: int) -> None:
        getattr(self, f"on_{kind}")(self._shard(pick), lag, pick)

    def on_wait(self, shard_id: str, lag: int, pick: int) -> None:
        """Time passes; the reconciler runs at its rate."""
        self.now += timedelta(minutes=WAITS[pick % len(WAITS)])
        if self.now - self.last_tick >= PERIOD:
            self.reconcile()

    def _shard(self, pick: int) -> str:
        ids = sorted(self.window.shards)
        return ids[pick % len(ids)]

    def _host(self, pick: int) -> str:
        hosts = sorted(self.window.expected)
        return hosts[pick % len(hosts)]

    def on_launch(self, shard_id: str, lag: int, pick: int = 0) -> None:
        """launch_shard: RunInstances (its client token makes a repeat the same instance),
        then record_launch, conditional on the shard still OPENING."""
        seen = self.read(lag).shards[shard_id]
        if seen.state is not State.OPENING:
            return
        if not self.capacity[shard_id]:
            self.deliver(shard_id, StartFailed("InsufficientInstanceCapacity everywhere"), lag)
            return
        if shard_id not in self.instances:
            self.instances[shard_id] = "pending"
            for host in seen.hosts:
                self.volumes[volume_id(shard_id, host)] = shard_id
        current = self.window.shards[shard_id]
        if current.state is State.OPENING:
            self.window = replace(self.window, shards={
                **self.window.shards, shard_id: replace(current, instance_id=f"i-{shard_id}")})
        elif current.instance_id is None:  # no longer wanted: terminated at once
            self.instances[shard_id] = "terminated"

    def on_boot(self, shard_id: str, lag: int, pick: int) -> None:
        if self.instances.get(shard_id) == "pending":
            self.instances[shard_id] = "running"

    def on_halt(self, shard_id: str, lag: int, pick: int) -> None:
        if self.instances.get(shard_id) == "stopping":
            self.instances[shard_id] = "stopped"

    def on_crash(self, shard_id: str, lag: int, pick: int) -> None:
        """The instance stops on its own (a host reboots it, an impaired instance)."""
        if self.instances.get(shard_id) == "running":
            self.instances[shard_id] = "stopped"

    def _on_instance_event(self, shard_id: str, lag: int, state: str, event: Event) -> None:
        shard = self.window.shards[shard_id]
        if shard.instance_id is None:
            return  # find_instance does not know it yet
        if self.instances.get(shard_id) == state:  # describe agrees with the event
            self.deliver(shard_id, event, lag)

    def on_running_event(self, shard_id: str, lag: int, pick: int) -> None:
        self._on_instance_event(shard_id, lag, "running", InstanceRunning("203.0.113.10"))

    def on_ready_signal(self, shard_id: str, lag: int, pick: int) -> None:
        if self._on_boot_signal(shard_id, lag, BootReady()):
            self.said_ready.add(shard_id)

    def on_failed_signal(self, shard_id: str, lag: int, pick: int) -> None:
        if self._on_boot_signal(shard_id, lag, BootFailed("c: /dev/sdf is not attached")):
            state = self.window.shards[shard_id].state
            assert state not in (State.OPENING, State.BOOTING), "a failed boot fails at once"

    def _on_boot_signal(self, shard_id: str, lag: int, event: Event) -> bool:
        """WindowService.on_boot_signal: only a running instance signs one (early, twice or
        late: whenever the step comes); the service reads the window after the signal came,
        and refuses a ready signal while the shard is still OPENING (503: the instance tries
        again). `lag` is unused: a signal is never decided on a read from before it."""
        shard = self.window.shards[shard_id]
        if shard.instance_id is None or self.instances.get(shard_id) != "running":
            return False
        if isinstance(event, BootReady) and shard.state is State.OPENING:
            return False
        self.deliver(shard_id, event)
        return True

    def on_stopped_event(self, shard_id: str, lag: int, pick: int) -> None:
        self._on_instance_event(shard_id, lag, "stopped", InstanceStopped())

    def on_report(self, shard_id: str, lag: int, pick: int, status: str = "succeeded") -> None:
        """record_report: the shard must be OPEN (on the read it checks, perhaps a stale one),
        the report is stored, and the event is decided on a read taken after that write."""
        host = self._host(pick)
        shard = self.read(lag).shard_of(host)
        assert shard is not None
        if shard.state is not State.OPEN:
            return  # refused: WindowNotOpenError
        if self.window.reports.get(host) != "succeeded":  # a success is final
            self.window = replace(self.window, reports={**self.window.reports, host: status},
                                  started=self.window.started | {host})  # it had a session
        self.deliver(shard.shard_id, HostReported(host))

    def on_session(self, shard_id: str, lag: int, pick: int) -> None:
        """SessionService.issue: a session only from an OPEN shard; the start is recorded
        (an item of its own, not conditional on the shard: a session may race an idle
        close, and then the host's transfer is cut as at a deadline)."""
        host = self._host(pick)
        shard = self.read(lag).shard_of(host)
        if shard is not None and shard.state is State.OPEN:
            self.window = replace(self.window, started=self.window.started | {host})

    def on_failed_report(self, shard_id: str, lag: int, pick: int) -> None:
        self.on_report(shard_id, lag, pick, "failed")

    def on_deadline(self, shard_id: str, lag: int, pick: int) -> None:
        """The deadline schedule fires (at the deadline; a duplicate, later)."""
        if self.now < self.window.deadline:
            self.now = self.window.deadline
            self.reconcile()
        for each in sorted(self.window.shards):
            self.deliver(each, DeadlineReached(), lag)

    def on_admin_close(self, shard_id: str, lag: int, pick: int) -> None:
        for each in sorted(self.window.shards):
            self.deliver(each, AdminClose("admin"), lag)

    def on_ebs_done(self, shard_id: str, lag: int, pick: int) -> None:
        host = self._host(pick)
        if self.ebs.get(host) == "pending":
            self.ebs[host] = "completed"

    def on_ebs_error(self, shard_id: str, lag: int, pick: int) -> None:
        host = self._host(pick)
        if self.ebs.get(host) == "pending":
            self.ebs[host] = "error"

    def on_snapshot_event(self, shard_id: str, lag: int, pick: int) -> None:
        host = self._host(pick)
        if self.ebs.get(host) in ("completed", "error"):
            self._settle(host, lag)

    def on_progress(self, shard_id: str, lag: int, pick: int) -> None:
        """What would come next for this shard if nothing were lost: the launch, the boot,
        its event, a report, the halt, its event, EBS finishing a snapshot, its event."""
        shard, instance = self.window.shards[shard_id], self.instances.get(shard_id)
        unreported = sorted(h for h in shard.hosts if h not in self.window.reports)
        pending = sorted(h for h in shard.hosts if self.ebs.get(h) == "pending")
        settled = sorted(h for h in shard.hosts if self.ebs.get(h) in ("completed", "error")
                         and self.window.snapshots.get(h) is SnapshotStatus.PENDING)
        if shard.state is State.OPENING and instance is None:
            self.on_launch(shard_id, lag)
        elif instance == "pending":
            self.on_boot(shard_id, lag, pick)
        elif shard.state is State.OPENING and instance == "running":
            self.on_running_event(shard_id, lag, pick)
        elif shard.state is State.BOOTING and instance == "running":
            self.on_ready_signal(shard_id, lag, pick)
        elif shard.state is State.OPEN and unreported:
            self.on_report(shard_id, lag, sorted(self.window.expected).index(
                unreported[pick % len(unreported)]))
        elif instance == "stopping":
            self.on_halt(shard_id, lag, pick)
        elif instance == "stopped":
            self.on_stopped_event(shard_id, lag, pick)
        elif settled:
            self._settle(settled[pick % len(settled)], lag)
        elif pending:
            self.ebs[pending[pick % len(pending)]] = "completed"

    def on_stop_fails(self, shard_id: str, lag: int, pick: int) -> None:
        self.failing_stops += 1

    # the end: EC2 and EBS do their part, every event is lost, the reconciler runs ----------
    def drain(self) -> None:
        self.now, self.failing_stops = max(self.now, self.window.deadline), 0
        end = self.now + SETTLE
        while self.now <= end:
            for shard_id, state in self.instances.items():
                if state in ("pending", "stopping"):
                    self.instances[shard_id] = "running" if state == "pending" else "stopped"
            for host, state in self.ebs.items():
                if state == "pending":
                    self.ebs[host] = "completed"
            self.reconcile()
            self.now += PERIOD
        self.sweep()


def volume_id(shard_id: str, host: str) -> str:
    return f"vol-{shard_id}-{host}"


def new_world(sizes: list[int], capacity: list[bool], hours: float = 2.0) -> World:
    shards, hosts = {}, iter(f"h{i:02d}" for i in range(100))
    for index, size in enumerate(sizes):
        shard_id = f"s{index + 1:02d}"
        shards[shard_id] = Shard(shard_id, frozenset(next(hosts) for _ in range(size)),
                                 State.OPENING, T0, entered={"OPENING": T0})
    expected = frozenset(h for s in shards.values() for h in s.hosts)
    window = Window(window_id="w-20261129T020000Z-000000", state=State.OPENING, opened_at=T0,
                    deadline=T0 + timedelta(hours=hours), expected=expected,
                    trigger="schedule", updated_at=T0, shards=shards)
    return World(window, dict(zip(sorted(shards), capacity, strict=True)))


def new_restore_world(hours: float = 2.0) -> World:
    shard = Shard("s01", frozenset({"c"}), State.OPENING, T0, entered={"OPENING": T0})
    window = Window(window_id="w-r", state=State.OPENING, opened_at=T0,
                    deadline=T0 + timedelta(hours=hours), expected=frozenset({"c"}),
                    trigger="restore:api", updated_at=T0, shards={"s01": shard},
                    purpose=RESTORE, snapshot_id="snap-1")
    return World(window, {"s01": True})


WAITS = (1, 1, 2, 3, 5, 5, 10, 20, 60)  # minutes, picked by a step's number
KINDS = ["progress"] * 12 + ["wait"] * 3 + [
    "launch", "boot", "halt", "crash", "running_event", "ready_signal", "failed_signal",
    "stopped_event", "report", "session", "session",
    "failed_report", "deadline", "admin_close", "ebs_done", "ebs_error", "snapshot_event",
    "stop_fails"]
LAGS = st.sampled_from([0, 0, 0, 0, 1, 2, 5])  # mostly fresh reads, some stale ones
steps = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 11), LAGS),
                 min_size=20, max_size=200)


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[int], list[bool]]:
    """2-4 shards of 1-3 hosts; usually every shard finds capacity, sometimes one or more
    finds none in any (type, subnet)."""
    sizes = draw(st.lists(st.integers(1, 3), min_size=2, max_size=4))
    capacity = draw(st.lists(st.sampled_from([True] * 5 + [False]),
                             min_size=len(sizes), max_size=len(sizes)))
    return sizes, capacity


def check_invariants(world: World) -> None:
    window = world.window
    assert all(n <= 1 for n in world.winner_stops.values()), world.winner_stops
    assert all(n == 1 for n in world.snapshots_made.values()), world.snapshots_made
    assert world.retention <= 1
    # the window follows its shards: terminal exactly when every shard is
    shards = list(window.shards.values())
    assert window.state.active == any(s.state.active for s in shards), window
    if window.state is State.FAILED:
        assert all(s.state is State.FAILED for s in shards)
    if window.state is State.CLOSED:
        assert any(s.state is State.CLOSED for s in shards)
    if world.retention:
        assert window.state is State.CLOSED
        assert "error" not in world.ebs.values(), "retention after a failed snapshot"
        assert set(window.snapshots.values()) <= {SnapshotStatus.COMPLETED}
    # a volume goes only once its snapshot completed, or if its shard never served a session
    for volume in world.deleted_volumes:
        shard = window.shards[world.volumes[volume]]
        host = volume.rsplit("-", 1)[1]
        never_open = State.OPEN.value not in shard.entered
        assert never_open or world.ebs.get(host) == "completed", (volume, shard)
    # OPEN means ready: only the instance's own signal opens a shard
    for shard in shards:
        assert State.OPEN.value not in shard.entered or shard.shard_id in world.said_ready, shard
    # a shard's hosts are snapshotted only once it stopped
    for host in world.snapshots_made:
        shard = window.shard_of(host)
        assert shard is not None and State.SNAPSHOTTING.value in shard.entered


def check_the_end(world: World) -> None:
    window = world.window
    assert not window.state.active, window
    assert all(not s.state.active for s in window.shards.values()), window
    assert set(world.instances.values()) <= {"terminated"}, world.instances
    for shard in window.shards.values():
        snapshotted = State.SNAPSHOTTING.value in shard.entered
        for host in shard.hosts:  # one snapshot per host of a shard that stopped, else none
            assert world.snapshots_made[host] == (1 if snapshotted else 0), (host, shard)
        if not world.capacity[shard.shard_id]:
            assert shard.state is State.FAILED and shard.instance_id is None
    for volume in world.volumes:
        host = volume.rsplit("-", 1)[1]
        kept = window.snapshots.get(host) is SnapshotStatus.FAILED
        assert (volume in world.deleted_volumes) != kept, (volume, window.snapshots)
    failed = SnapshotStatus.FAILED in window.snapshots.values()
    if window.state is State.CLOSED:
        assert world.retention == (0 if failed else 1), (world.retention, window.reason)


@settings(max_examples=400, deadline=None)
@given(fleets(), steps)
def test_chaos_never_stops_twice_snapshots_twice_or_deletes_a_volume_unsafely(
        fleet: tuple[list[int], list[bool]], script: list[tuple[str, int, int]]) -> None:
    world = new_world(*fleet)
    for kind, pick, lag in script:
        world.step(kind, pick, lag)
        check_invariants(world)


@settings(max_examples=400, deadline=None)
@given(fleets(), steps)
def test_no_shard_is_opening_or_booting_past_the_boot_timeout_nor_open_past_the_deadline(
        fleet: tuple[list[int], list[bool]], script: list[tuple[str, int, int]]) -> None:
    world = new_world(*fleet)
    for kind, pick, lag in script:
        world.step(kind, pick, lag)
        if world.now >= world.window.deadline + PERIOD:
            assert all(s.state not in (State.OPENING, State.BOOTING, State.OPEN)
                       for s in world.window.shards.values()), world.window
        for shard in world.window.shards.values():  # an archive that never comes up fails
            if shard.state in (State.OPENING, State.BOOTING):
                assert world.now - shard.updated_at < TIMING.boot_timeout + PERIOD, shard


@settings(max_examples=300, deadline=None)
@given(fleets(), steps)
def test_after_any_chaos_the_reconciler_alone_ends_every_shard(
        fleet: tuple[list[int], list[bool]], script: list[tuple[str, int, int]]) -> None:
    """Whatever was delivered, lost or failed, once EC2 and EBS have done their part the
    reconciler (every event lost) ends every shard within SETTLE of the deadline: instances
    terminated, one snapshot per host that was stopped, volumes gone unless their snapshot
    failed, retention once unless one did."""
    world = new_world(*fleet)
    for kind, pick, lag in script:
        world.step(kind, pick, lag)
    world.drain()
    check_invariants(world)
    check_the_end(world)


CALM = ["launch", "boot", "halt", "running_event", "ready_signal", "stopped_event", "report",
        "failed_report", "ebs_done", "snapshot_event"]
calm_steps = st.lists(st.tuples(st.sampled_from(CALM), st.integers(0, 11), LAGS),
                      max_size=60)


@settings(max_examples=200, deadline=None)
@given(fleets().filter(lambda f: all(f[1])), calm_steps, st.randoms(use_true_random=False))
def test_when_every_event_arrives_the_window_closes_with_every_snapshot_complete(
        fleet: tuple[list[int], list[bool]], script: list[tuple[str, int, int]],
        rnd: random.Random) -> None:
    """Some events early, duplicated or stale (no failure, no deadline), then every due event
    in a shuffled order: the window ends CLOSED, one completed snapshot per host, retention
    once, every volume deleted."""
    world = new_world(fleet[0], fleet[1], hours=24)
    for kind, pick, lag in script:
        world.step(kind, pick, lag)
    phases = ["launch", "boot", "running_event", "ready_signal", "report"]
    due = [(kind, pick) for kind in phases for pick in range(12)]
    rnd.shuffle(due)
    for kind, pick in sorted(due, key=lambda d: phases.index(d[0])):  # stable: shuffled within
        world.step(kind, pick, 0)
    for kind in ("halt", "stopped_event"):
        for pick in range(4):
            world.step(kind, pick, 0)
    for pick in range(12):
        world.step("ebs_done", pick, 0)
        world.step("snapshot_event", pick, 0)
    assert world.window.state is State.CLOSED, world.window
    assert set(world.snapshots_made) == set(world.window.expected)
    assert set(world.window.snapshots.values()) == {SnapshotStatus.COMPLETED}
    assert world.retention == 1
    assert world.deleted_volumes == set(world.volumes)
    assert set(world.instances.values()) == {"terminated"}


# restores: one single-host shard, never snapshotted ------------------------------------------
@settings(max_examples=300, deadline=None)
@given(steps)
def test_a_restore_is_never_snapshotted_and_its_volume_goes_once_it_ends(
        script: list[tuple[str, int, int]]) -> None:
    world = new_restore_world()
    for kind, pick, lag in script:
        world.step(kind, pick, lag)
        assert world.snapshots_made == Counter()
        assert world.winner_stops["s01"] <= 1
        assert world.window.shards["s01"].state is not State.SNAPSHOTTING
        if world.window.shards["s01"].state.active:
            assert world.deleted_volumes == set()
        if world.now >= world.window.deadline + PERIOD:
            assert world.window.shards["s01"].state not in (State.OPENING, State.BOOTING,
                                                            State.OPEN)
    world.drain()
    assert world.window.state is State.CLOSED or world.window.state is State.FAILED
    assert world.deleted_volumes == set(world.volumes)
    assert set(world.instances.values()) <= {"terminated"}
    assert world.retention == 0


# idle close: a host that never asks for a session costs its grace, not the window ------------
def idle_overdue(world: World) -> list[str]:
    """OPEN shards whose every unreported host never asked, a reconciler period past the
    grace since the shard became ready: they should have closed."""
    overdue = []
    for shard in world.window.shards.values():
        ready_at = shard.entered.get(State.OPEN.value)
        unreported = shard.hosts - frozenset(world.window.reports)
        if shard.state is State.OPEN and ready_at is not None and unreported and \
                not unreported & world.window.started and \
                world.now >= ready_at + TIMING.start_grace + PERIOD:
            overdue.append(shard.shard_id)
    return overdue


@settings(max_examples=300, deadline=None)
@given(fleets(), steps)
def test_a_shard_whose_missing_hosts_never_asked_closes_after_the_grace(
        fleet: tuple[list[int], list[bool]], script: list[tuple[str, int, int]]) -> None:
    world = new_world(*fleet, hours=6.0)
    for kind, pick, lag in script:
        world.step(kind, pick, lag)
        if world.now - world.last_tick < PERIOD:  # the reconciler has looked since
            assert idle_overdue(world) == [], world.window
        check_invariants(world)


@settings(max_examples=200, deadline=None)
@given(fleets().filter(lambda f: all(f[1])), st.integers(0, 11))
def test_a_host_that_asked_and_is_still_sending_keeps_its_archive_to_the_deadline(
        fleet: tuple[list[int], list[bool]], pick: int) -> None:
    """Every host asks for a session; all report but one, which is still sending: its shard
    stays OPEN well past the grace, and closes at the deadline; the others close on their
    reports. A shard whose hosts never asked closes after the grace."""
    world = new_world(*fleet, hours=3.6)
    for shard_id in sorted(world.window.shards):
        for kind in ("launch", "boot", "running_event", "ready_signal"):
            world.step(kind, sorted(world.window.shards).index(shard_id), 0)
    sending = sorted(world.window.expected)[pick % len(world.window.expected)]
    for index, host in enumerate(sorted(world.window.expected)):
        world.step("session", index, 0)
        if host != sending:
            world.step("report", index, 0)
    held = world.window.shard_of(sending)
    assert held is not None
    while world.now + timedelta(minutes=20) < world.window.deadline:
        world.step("wait", 7, 0)  # 20 minutes at a time; the reconciler looks
        assert world.window.shards[held.shard_id].state is State.OPEN, world.window
    world.step("deadline", 0, 0)
    assert world.window.shards[held.shard_id].state is State.CLOSING


def test_a_host_that_never_asks_closes_its_archive_after_the_grace() -> None:
    world = new_world([2, 1], [True, True], hours=3.6)
    for index in range(2):
        for kind in ("launch", "boot", "running_event", "ready_signal"):
            world.step(kind, index, 0)
    hosts = sorted(world.window.shards["s01"].hosts)  # h00 asks and reports; h01 never asks
    world.step("session", 0, 0)
    world.step("report", 0, 0)
    assert world.window.shards["s01"].state is State.OPEN  # within the grace: it may come
    world.step("wait", 7, 0)  # 20 min
    assert world.window.shards["s01"].state is State.OPEN
    world.step("wait", 7, 0)  # 40 min: past the grace, the reconciler closes it
    shard = world.window.shards["s01"]
    assert shard.state is State.CLOSING, shard
    assert f"{hosts[1]}: missing" in shard.reason and "never asked" in shard.reason
    assert world.window.shards["s02"].state is State.CLOSING  # its host never asked either
