"""The window's state machine (backup and restore windows), as pure code.

A window has shards: each one archive instance serving at most HOSTS_PER_ARCHIVE hosts, each
with a state of its own. `decide(window, shard_id, event, now)` answers what an event means for
one shard, as a `Decision` carrying the state to move that shard to (or none), the actions to
take and a human-readable `reason`. The service applies it with a conditional write on the
shard's state, so that a duplicated or late event, or a second Lambda racing the first, loses
the write and takes no action: the actions belong to whoever wins the transition. Time comes in
as `now`; nothing here reads a clock or touches AWS.

Per shard:

    (none) -planned-> OPENING -running-> BOOTING -ready-> OPEN
    OPEN -its hosts reported (or idle: never asked within the start grace) | deadline
         | admin-> CLOSING
    CLOSING -stopped-> SNAPSHOTTING (one snapshot per volume; the instance is terminated, the
                                     volumes outlive it: DeleteOnTermination is false)
    SNAPSHOTTING -all its snapshots settled-> CLOSED (volumes whose snapshot completed deleted)
    OPENING -no capacity in any (type, subnet) | never came up | deadline-> FAILED
    BOOTING -the instance says its boot failed | never says ready | deadline-> FAILED

EC2's "running" only says the machine started; BOOTING lasts until the instance itself says
it is ready (every volume mounted, sshd answering with the provisioned host key: boot.sh's
signal step, checked by chalicelib/boot_signal.py), so OPEN means hosts can connect. A boot
that fails says why, and that reason fails the shard at once. An instance that never says
anything is failed by the reconciler `boot_timeout` after it entered BOOTING, or by the
deadline, whichever comes first; a ready or failed signal that comes late (the shard moved
on) or twice is a no-op, like any other duplicated event.

A restore shard (the one shard of a restore window) serves one host a read-only volume made from
one of its snapshots; it is never snapshotted:

    CLOSING -stopped-> CLOSED (instance terminated, the restore volume deleted)

The window follows its shards (`conclude`): it is CLOSED when every shard is CLOSED or FAILED
(FAILED when all FAILED), and only the Lambda that wins that window-level write applies
retention, sends the summary and records the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum


class State(str, Enum):
    OPENING = "OPENING"
    BOOTING = "BOOTING"
    OPEN = "OPEN"
    CLOSING = "CLOSING"
    SNAPSHOTTING = "SNAPSHOTTING"
    CLOSED = "CLOSED"
    FAILED = "FAILED"

    @property
    def active(self) -> bool:
        return self not in (State.CLOSED, State.FAILED)


_PROGRESS = (State.OPENING, State.BOOTING, State.OPEN, State.CLOSING, State.SNAPSHOTTING)


class Action(str, Enum):
    STOP_INSTANCE = "stop_instance"
    TERMINATE_INSTANCE = "terminate_instance"
    TAG_VOLUMES = "tag_volumes"
    SNAPSHOT_VOLUMES = "snapshot_volumes"
    DELETE_VOLUMES = "delete_volumes"
    DELETE_DEADLINE = "delete_deadline"
    APPLY_RETENTION = "apply_retention"
    NOTIFY = "notify"
    RECORD_METRICS = "record_metrics"


BACKUP = "backup"
RESTORE = "restore"


class SnapshotStatus(str, Enum):
    CLAIMED = "claimed"  # a Lambda took the host's snapshot in hand; no snapshot id yet
    PENDING = "pending"  # CreateSnapshot answered; EBS still copying
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def settled(self) -> bool:
        return self in (SnapshotStatus.COMPLETED, SnapshotStatus.FAILED)


@dataclass(frozen=True)
class Shard:
    """One archive instance of a window and the hosts it serves."""

    shard_id: str
    hosts: frozenset[str]
    state: State
    updated_at: datetime
    instance_id: str | None = None  # known once RunInstances answered
    instance_type: str | None = None
    address: str | None = None
    volumes: Mapping[str, str] = field(default_factory=dict)  # host -> volume id, once running
    reason: str = ""
    entered: Mapping[str, datetime] = field(default_factory=dict)  # state -> when


@dataclass(frozen=True)
class Window:
    window_id: str
    state: State
    opened_at: datetime
    deadline: datetime
    expected: frozenset[str]
    trigger: str
    updated_at: datetime
    reason: str = ""
    shards: Mapping[str, Shard] = field(default_factory=dict)  # shard id -> shard
    reports: Mapping[str, str] = field(default_factory=dict)  # host -> succeeded | failed
    snapshots: Mapping[str, SnapshotStatus] = field(default_factory=dict)  # host -> status
    entered: Mapping[str, datetime] = field(default_factory=dict)  # state -> when
    purpose: str = BACKUP  # backup | restore
    snapshot_id: str | None = None  # restore: the recovery point served
    started: frozenset[str] = frozenset()  # hosts that have asked for a session
    start_grace: Mapping[str, int] = field(default_factory=dict)  # host -> minutes, overrides

    @property
    def is_restore(self) -> bool:
        return self.purpose == RESTORE

    @property
    def missing(self) -> frozenset[str]:
        """Expected hosts that have not reported success."""
        return frozenset(h for h in self.expected if self.reports.get(h) != "succeeded")

    def shard_of(self, host: str) -> Shard | None:
        return next((s for s in self.shards.values() if host in s.hosts), None)

    def unsnapshotted(self, shard: Shard) -> frozenset[str]:
        """The shard's hosts whose snapshot nobody has taken in hand yet."""
        return shard.hosts - frozenset(self.snapshots)


# Events: what happened to one shard, as the handlers and the reconciler observed it.
@dataclass(frozen=True)
class InstanceRunning:
    address: str | None


@dataclass(frozen=True)
class InstanceStopped:
    pass


@dataclass(frozen=True)
class StartFailed:
    cause: str


@dataclass(frozen=True)
class BootReady:
    """The instance says it is ready (a verified signal: chalicelib/boot_signal.py)."""


@dataclass(frozen=True)
class BootFailed:
    """The instance says its boot failed, and why (a verified signal)."""

    cause: str


@dataclass(frozen=True)
class HostReported:
    host: str


@dataclass(frozen=True)
class DeadlineReached:
    pass


@dataclass(frozen=True)
class AdminClose:
    by: str


@dataclass(frozen=True)
class SnapshotSettled:
    host: str


@dataclass(frozen=True)
class Tick:
    """The reconciler's look at the world: the shard's instance as EC2 reports it now
    ("none" when no instance was launched yet, "terminated" when EC2 no longer lists it)."""

    instance_state: str


Event = (
    InstanceRunning
    | InstanceStopped
    | StartFailed
    | BootReady
    | BootFailed
    | HostReported
    | DeadlineReached
    | AdminClose
    | SnapshotSettled
    | Tick
)


@dataclass(frozen=True)
class Timing:
    """How long the reconciler lets a step take before it steps in."""

    boot_timeout: timedelta = timedelta(minutes=15)
    stop_grace: timedelta = timedelta(minutes=10)
    # A host that has not asked for a session this long after its archive became ready no
    # longer holds it open (START_GRACE_MINUTES; a host's own setting overrides it).
    start_grace: timedelta = timedelta(minutes=30)


@dataclass(frozen=True)
class Decision:
    target: State | None
    reason: str
    actions: tuple[Action, ...] = ()
    # An idle close holds only while these hosts still have not asked for a session.
    unless_started: frozenset[str] = frozenset()

    @property
    def changes_state(self) -> bool:
        return self.target is not None


def nothing(reason: str) -> Decision:
    return Decision(None, reason)


_GIVE_UP = (Action.TERMINATE_INSTANCE, Action.DELETE_VOLUMES, Action.NOTIFY)


def decide(window: Window, shard_id: str, event: Event, now: datetime,
           timing: Timing | None = None) -> Decision:
    """What `event` means for shard `shard_id` of `window` at `now`."""
    shard = window.shards[shard_id]
    if not shard.state.active:
        return nothing(f"shard {shard_id} is {shard.state.value}; {type(event).__name__} ignored")
    timing = timing or Timing()
    if isinstance(event, InstanceRunning):
        return _on_running(shard, event)
    if isinstance(event, InstanceStopped):
        return _on_stopped(window, shard)
    if isinstance(event, StartFailed):
        return _on_start_failed(shard, event.cause)
    if isinstance(event, BootReady):
        return _on_ready(shard)
    if isinstance(event, BootFailed):
        return _on_boot_failed(shard, event.cause)
    if isinstance(event, HostReported):
        return _on_report(window, shard, now, timing)
    if isinstance(event, DeadlineReached):
        return _close_at_deadline(window, shard, now)
    if isinstance(event, AdminClose):
        return _close_by_admin(window, shard, event.by)
    if isinstance(event, SnapshotSettled):
        return _on_snapshot_settled(window, shard)
    return _on_tick(window, shard, event, now, timing)


def _on_running(shard: Shard, event: InstanceRunning) -> Decision:
    if shard.state is not State.OPENING:
        return nothing(f"instance running while {shard.state.value}; nothing to do")
    return Decision(State.BOOTING, f"instance {shard.instance_id} of {shard.shard_id} running at "
                                   f"{event.address}; waiting for it to say it is ready",
                    (Action.TAG_VOLUMES,))


def _on_ready(shard: Shard) -> Decision:
    if shard.state is not State.BOOTING:
        return nothing(f"ready signal while {shard.state.value}; nothing to do")
    return Decision(State.OPEN, f"instance {shard.instance_id} of {shard.shard_id} is ready: "
                                "volumes mounted, sshd answering with the host key")


def _on_boot_failed(shard: Shard, cause: str) -> Decision:
    if shard.state not in (State.OPENING, State.BOOTING):
        return nothing(f"boot failure signalled while {shard.state.value}; ignored")
    return Decision(State.FAILED, f"archive {shard.shard_id} (instance {shard.instance_id}) "
                                  f"failed to boot: {cause}", _GIVE_UP)


def _on_stopped(window: Window, shard: Shard) -> Decision:
    if shard.state is State.BOOTING:
        return Decision(State.FAILED, f"instance {shard.instance_id} of {shard.shard_id} "
                                      "stopped before it said it was ready", _GIVE_UP)
    if shard.state not in (State.OPEN, State.CLOSING):
        return nothing(f"instance stopped while {shard.state.value}; nothing to do")
    early = shard.state is State.OPEN
    cause = (f" while {shard.shard_id} was open (hosts missing: "
             f"{_names(shard.hosts & window.missing)})" if early else "")
    if window.is_restore:
        return Decision(State.CLOSED, f"instance {shard.instance_id} stopped{cause}; restore of "
                                      f"{window.snapshot_id} ended",
                        (Action.TERMINATE_INSTANCE, Action.DELETE_VOLUMES)
                        + ((Action.NOTIFY,) if early else ()))
    return Decision(
        State.SNAPSHOTTING,
        f"instance {shard.instance_id} stopped{cause}; snapshotting {len(shard.hosts)} volumes",
        (Action.SNAPSHOT_VOLUMES, Action.TERMINATE_INSTANCE) + ((Action.NOTIFY,) if early else ()))


def _on_start_failed(shard: Shard, cause: str) -> Decision:
    if shard.state not in (State.OPENING, State.BOOTING):
        return nothing(f"start failure reported while {shard.state.value}; ignored")
    return Decision(State.FAILED, f"archive {shard.shard_id} could not start: {cause}", _GIVE_UP)


def _on_report(window: Window, shard: Shard, now: datetime, timing: Timing) -> Decision:
    if shard.state is not State.OPEN:
        return nothing(f"report while {shard.shard_id} is {shard.state.value}; recorded")
    reported = shard.hosts & frozenset(window.reports)
    if reported != shard.hosts:
        return _close_if_idle(window, shard, now, timing) or nothing(
            f"{len(reported)} of {len(shard.hosts)} hosts of {shard.shard_id} reported")
    failed = sorted(h for h in reported if window.reports[h] != "succeeded")
    detail = f" ({len(failed)} failed: {_names(failed)})" if failed else ""
    return Decision(State.CLOSING,
                    f"all {len(shard.hosts)} hosts of {shard.shard_id} reported{detail}",
                    (Action.STOP_INSTANCE,))


def idle_hosts(window: Window, shard: Shard, now: datetime, timing: Timing) -> frozenset[str]:
    """The shard's hosts that have neither reported nor asked for a session, and whose grace
    since the archive became ready (its OPEN) has passed. Backup windows only: a restore's one
    host may be a person reading the admin's message."""
    ready_at = shard.entered.get(State.OPEN.value)
    if window.is_restore or shard.state is not State.OPEN or ready_at is None:
        return frozenset()
    waiting = shard.hosts - frozenset(window.reports) - window.started
    return frozenset(h for h in waiting if now >= ready_at + grace_of(window, h, timing))


def grace_of(window: Window, host: str, timing: Timing) -> timedelta:
    minutes = window.start_grace.get(host)
    return timing.start_grace if minutes is None else timedelta(minutes=minutes)


def _close_if_idle(window: Window, shard: Shard, now: datetime,
                   timing: Timing) -> Decision | None:
    """CLOSING when every host of the shard that has not reported is idle (never asked for a
    session within its grace): a missing host costs its grace, not the window. A host that
    asked and is still sending keeps the archive up, to the deadline if need be."""
    unreported = shard.hosts - frozenset(window.reports)
    idle = idle_hosts(window, shard, now, timing)
    if not idle or unreported - idle:
        return None
    done = len(shard.hosts) - len(unreported)
    return Decision(
        State.CLOSING,
        f"{len(idle)} of {len(shard.hosts)} hosts of {shard.shard_id} never asked for a "
        f"session within their grace after the archive was ready ({_names(idle)}: missing); "
        + (f"the other {done} reported" if done else "no host of it reported"),
        (Action.STOP_INSTANCE, Action.NOTIFY), unless_started=idle)


def _close_at_deadline(window: Window, shard: Shard, now: datetime) -> Decision:
    if shard.state not in (State.OPENING, State.BOOTING, State.OPEN):
        return nothing(f"deadline while {shard.state.value}; already closing")
    if now < window.deadline:
        return nothing(f"deadline {window.deadline.isoformat()} not reached yet")
    if shard.state is not State.OPEN:
        return Decision(State.FAILED, f"deadline reached before {shard.shard_id} was ready "
                                      f"({shard.state.value})", _GIVE_UP)
    missing = shard.hosts & window.missing
    if not missing:
        return Decision(State.CLOSING, f"deadline reached; every host of {shard.shard_id} "
                                       "succeeded", (Action.STOP_INSTANCE,))
    return Decision(
        State.CLOSING,
        f"deadline reached with {len(missing)} of {len(shard.hosts)} hosts of {shard.shard_id} "
        f"missing: {_names(missing)}",
        (Action.STOP_INSTANCE, Action.NOTIFY))


def _close_by_admin(window: Window, shard: Shard, by: str) -> Decision:
    if shard.state in (State.OPENING, State.BOOTING):
        return Decision(State.FAILED, f"closed by {by} before {shard.shard_id} was ready",
                        (Action.TERMINATE_INSTANCE, Action.DELETE_VOLUMES))
    if shard.state is not State.OPEN:
        return nothing(f"close asked while {shard.state.value}; already closing")
    return Decision(State.CLOSING, f"closed by {by} (hosts missing: "
                                   f"{_names(shard.hosts & window.missing)})",
                    (Action.STOP_INSTANCE,))


def _on_snapshot_settled(window: Window, shard: Shard) -> Decision:
    if shard.state is not State.SNAPSHOTTING:
        return nothing(f"snapshot settled while {shard.state.value}; nothing to do")
    statuses = [window.snapshots[h] for h in shard.hosts if h in window.snapshots]
    if window.unsnapshotted(shard) or not all(s.settled for s in statuses):
        done = sum(1 for s in statuses if s.settled)
        return nothing(f"{done} of {len(shard.hosts)} snapshots of {shard.shard_id} settled")
    failed = sorted(h for h in shard.hosts if window.snapshots[h] is SnapshotStatus.FAILED)
    if failed:
        return Decision(State.CLOSED, f"snapshots of {shard.shard_id} failed for "
                                      f"{_names(failed)}; their volumes are kept",
                        (Action.DELETE_VOLUMES, Action.NOTIFY))
    return Decision(State.CLOSED, f"{len(shard.hosts)} snapshots of {shard.shard_id} completed",
                    (Action.DELETE_VOLUMES,))


def _on_tick(window: Window, shard: Shard, tick: Tick, now: datetime,
             timing: Timing) -> Decision:
    """Finish a transition whose event was lost, from what EC2 says now."""
    instance, waited = tick.instance_state, now - shard.updated_at
    if shard.state is State.OPENING:
        if now >= window.deadline:
            return _close_at_deadline(window, shard, now)
        if instance == "running":
            return _on_running(shard, InstanceRunning(None))
        if instance in ("stopped", "stopping", "shutting-down", "terminated"):
            return _on_start_failed(shard, f"the instance is {instance} (reconciler)")
        if waited >= timing.boot_timeout:
            what = "no instance launched" if instance == "none" else f"still {instance}"
            return _on_start_failed(shard, f"{what} after {timing.boot_timeout} (reconciler)")
        return nothing(f"instance {instance}; {shard.shard_id} still opening")
    if shard.state is State.BOOTING:
        if now >= window.deadline:
            return _close_at_deadline(window, shard, now)
        if instance != "running":
            return _on_start_failed(shard, f"the instance is {instance} (reconciler)")
        if waited >= timing.boot_timeout:
            return _on_start_failed(shard, f"running for {timing.boot_timeout} without saying "
                                           "it is ready (reconciler)")
        return nothing(f"{shard.shard_id} running, waiting for its ready signal")
    if shard.state is State.OPEN:
        if now >= window.deadline:
            return _close_at_deadline(window, shard, now)
        if instance in ("stopped", "terminated"):
            return _on_stopped(window, shard)
        return _close_if_idle(window, shard, now, timing) or nothing(
            f"{shard.shard_id} open, deadline ahead")
    if shard.state is State.CLOSING:
        if instance in ("stopped", "terminated"):
            return _on_stopped(window, shard)
        if instance == "running" and waited >= timing.stop_grace:
            return Decision(None, f"instance of {shard.shard_id} still running {timing.stop_grace}"
                                  " after the stop; stopping again (reconciler)",
                            (Action.STOP_INSTANCE,))
        return nothing(f"instance {instance}; waiting for it to stop")
    # SNAPSHOTTING
    if window.unsnapshotted(shard):
        return Decision(None, f"snapshots never taken for {_names(window.unsnapshotted(shard))} "
                              "(reconciler)", (Action.SNAPSHOT_VOLUMES, Action.TERMINATE_INSTANCE))
    decision = _on_snapshot_settled(window, shard)
    if not decision.changes_state and instance not in ("terminated", "none"):
        return Decision(None, f"{decision.reason}; instance still {instance}, terminating "
                              "(reconciler)", (Action.TERMINATE_INSTANCE,))
    return decision


def conclude(window: Window) -> Decision:
    """The window's own state, from its shards': CLOSED once every shard is CLOSED or FAILED
    (FAILED if every shard failed), else the least advanced state of a shard still going."""
    if not window.state.active:
        return nothing(f"window is {window.state.value}")
    shards = list(window.shards.values())
    going = [s.state for s in shards if s.state.active]
    if going:
        target = min(going, key=_PROGRESS.index)
        if target is window.state:
            return nothing(f"{len(going)} of {len(shards)} shards still going")
        return Decision(target, f"{len(going)} of {len(shards)} shards still going; the first "
                                f"is {target.value}")
    failed = sorted(s.shard_id for s in shards if s.state is State.FAILED)
    if shards and len(failed) == len(shards):
        reasons = "; ".join(s.reason for s in shards)
        return Decision(State.FAILED, f"every archive failed: {reasons}",
                        (Action.DELETE_DEADLINE, Action.NOTIFY, Action.RECORD_METRICS))
    if window.is_restore:
        return Decision(State.CLOSED, f"restore of {window.snapshot_id} ended",
                        (Action.DELETE_DEADLINE, Action.NOTIFY))
    snapshot_failed = sorted(h for h, s in window.snapshots.items()
                             if s is SnapshotStatus.FAILED)
    succeeded = len(window.expected) - len(window.missing)
    tail = f"; {len(failed)} archives failed: {', '.join(failed)}" if failed else ""
    if snapshot_failed:
        return Decision(State.CLOSED, f"snapshots failed for {_names(snapshot_failed)}; "
                                      f"retention skipped, nothing deleted{tail}",
                        (Action.DELETE_DEADLINE, Action.NOTIFY, Action.RECORD_METRICS))
    return Decision(State.CLOSED, f"{succeeded} of {len(window.expected)} hosts complete in "
                                  f"{len(shards)} archives{tail}",
                    (Action.DELETE_DEADLINE, Action.APPLY_RETENTION, Action.NOTIFY,
                     Action.RECORD_METRICS))


def _names(hosts: frozenset[str] | list[str]) -> str:
    return ", ".join(sorted(hosts)) or "none"
