"""The window's state machine (backup and restore windows), as pure code.

`decide(window, event, now)` answers what should happen, as a `Decision` carrying the state to
move to (or none), the actions to take and a human-readable `reason`. The service applies it
with a conditional write on `window.state`, so that a duplicated or late event, or a second
Lambda racing the first, loses the write and takes no action: the actions belong to whoever wins
the transition. Time comes in as `now`; nothing here reads a clock or touches AWS.

    (none) -open-> OPENING -running-> OPEN -all reported | deadline | admin-> CLOSING
    CLOSING -stopped-> SNAPSHOTTING -all snapshots settled-> CLOSED
    OPENING -start failed | never came up-> FAILED

A restore window (`purpose` "restore") serves one host a read-only volume made from one of its
snapshots. It shares the opening and closing steps, but is never snapshotted: once the instance
has stopped it goes straight to CLOSED and its restore volume is deleted, exactly once, by
whoever wins that transition (or the FAILED one).

    CLOSING -stopped-> CLOSED (delete the restore volume)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum


class State(str, Enum):
    OPENING = "OPENING"
    OPEN = "OPEN"
    CLOSING = "CLOSING"
    SNAPSHOTTING = "SNAPSHOTTING"
    CLOSED = "CLOSED"
    FAILED = "FAILED"

    @property
    def active(self) -> bool:
        return self not in (State.CLOSED, State.FAILED)


class Action(str, Enum):
    STOP_INSTANCE = "stop_instance"
    DELETE_DEADLINE = "delete_deadline"
    SNAPSHOT_VOLUMES = "snapshot_volumes"
    APPLY_RETENTION = "apply_retention"
    NOTIFY = "notify"
    RECORD_METRICS = "record_metrics"
    DELETE_RESTORE_VOLUME = "delete_restore_volume"


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
class Window:
    window_id: str
    state: State
    opened_at: datetime
    deadline: datetime
    expected: frozenset[str]
    instance_id: str
    trigger: str
    updated_at: datetime
    address: str | None = None
    reason: str = ""
    reports: Mapping[str, str] = field(default_factory=dict)  # host -> succeeded | failed
    snapshots: Mapping[str, SnapshotStatus] = field(default_factory=dict)  # host -> status
    entered: Mapping[str, datetime] = field(default_factory=dict)  # state -> when
    purpose: str = BACKUP  # backup | restore
    snapshot_id: str | None = None  # restore: the recovery point served
    restore_volume_id: str | None = None  # restore: the volume made from it

    @property
    def is_restore(self) -> bool:
        return self.purpose == RESTORE

    @property
    def missing(self) -> frozenset[str]:
        """Expected hosts that have not reported success."""
        return frozenset(h for h in self.expected if self.reports.get(h) != "succeeded")

    @property
    def unsnapshotted(self) -> frozenset[str]:
        """Expected hosts whose snapshot nobody has taken in hand yet."""
        return self.expected - frozenset(self.snapshots)


# Events: what happened, as the handlers and the reconciler observed it.
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
    """The reconciler's look at the world: the instance's state as EC2 reports it now."""

    instance_state: str


Event = (
    InstanceRunning
    | InstanceStopped
    | StartFailed
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


@dataclass(frozen=True)
class Decision:
    target: State | None
    reason: str
    actions: tuple[Action, ...] = ()

    @property
    def changes_state(self) -> bool:
        return self.target is not None


def nothing(reason: str) -> Decision:
    return Decision(None, reason)


_CLOSE_ACTIONS = (Action.STOP_INSTANCE, Action.DELETE_DEADLINE)


def decide(window: Window, event: Event, now: datetime, timing: Timing | None = None) -> Decision:
    """What `event` means for `window` at `now`."""
    if not window.state.active:
        return nothing(f"window is {window.state.value}; {type(event).__name__} ignored")
    timing = timing or Timing()
    if isinstance(event, InstanceRunning):
        return _on_running(window, event)
    if isinstance(event, InstanceStopped):
        return _on_stopped(window)
    if isinstance(event, StartFailed):
        return _on_start_failed(window, event.cause)
    if isinstance(event, HostReported):
        return _on_report(window)
    if isinstance(event, DeadlineReached):
        return _close_at_deadline(window, now)
    if isinstance(event, AdminClose):
        return _close_by_admin(window, event.by)
    if isinstance(event, SnapshotSettled):
        return _on_snapshot_settled(window)
    return _on_tick(window, event, now, timing)


def _on_running(window: Window, event: InstanceRunning) -> Decision:
    if window.state is not State.OPENING:
        return nothing(f"instance running while {window.state.value}; nothing to do")
    return Decision(State.OPEN, f"instance {window.instance_id} running at {event.address}")


def _on_stopped(window: Window) -> Decision:
    if window.is_restore:
        return _restore_stopped(window)
    if window.state is State.CLOSING:
        return Decision(
            State.SNAPSHOTTING,
            f"instance {window.instance_id} stopped; snapshotting {len(window.expected)} volumes",
            (Action.SNAPSHOT_VOLUMES,),
        )
    if window.state is State.OPEN:
        return Decision(
            State.SNAPSHOTTING,
            f"instance {window.instance_id} stopped while the window was open "
            f"(hosts missing: {_names(window.missing)})",
            (Action.DELETE_DEADLINE, Action.SNAPSHOT_VOLUMES, Action.NOTIFY),
        )
    return nothing(f"instance stopped while {window.state.value}; nothing to do")


def _restore_stopped(window: Window) -> Decision:
    if window.state is State.CLOSING:
        return Decision(
            State.CLOSED,
            f"instance {window.instance_id} stopped; restore of {window.snapshot_id} ended",
            (Action.DELETE_RESTORE_VOLUME, Action.NOTIFY),
        )
    if window.state is State.OPEN:
        return Decision(
            State.CLOSED,
            f"instance {window.instance_id} stopped while the restore was open",
            (Action.DELETE_DEADLINE, Action.DELETE_RESTORE_VOLUME, Action.NOTIFY),
        )
    return nothing(f"instance stopped while {window.state.value}; nothing to do")


def _on_start_failed(window: Window, cause: str) -> Decision:
    if window.state is not State.OPENING:
        return nothing(f"start failure reported while {window.state.value}; ignored")
    if window.is_restore:
        return Decision(
            State.FAILED,
            f"instance {window.instance_id} could not start for the restore: {cause}",
            (Action.DELETE_DEADLINE, Action.DELETE_RESTORE_VOLUME, Action.NOTIFY),
        )
    return Decision(
        State.FAILED,
        f"instance {window.instance_id} could not start: {cause}",
        (Action.DELETE_DEADLINE, Action.NOTIFY, Action.RECORD_METRICS),
    )


def _on_report(window: Window) -> Decision:
    if window.state is not State.OPEN:
        return nothing(f"report while {window.state.value}; recorded, nothing to do")
    reported = window.expected & frozenset(window.reports)
    if reported != window.expected:
        return nothing(f"{len(reported)} of {len(window.expected)} expected hosts reported")
    failed = sorted(h for h in reported if window.reports[h] != "succeeded")
    detail = f" ({len(failed)} failed: {_names(failed)})" if failed else ""
    return Decision(
        State.CLOSING,
        f"all {len(window.expected)} expected hosts reported{detail}",
        _CLOSE_ACTIONS,
    )


def _close_at_deadline(window: Window, now: datetime) -> Decision:
    if window.state not in (State.OPENING, State.OPEN):
        return nothing(f"deadline while {window.state.value}; already closing")
    if now < window.deadline:
        return nothing(f"deadline {window.deadline.isoformat()} not reached yet")
    missing = window.missing
    if not missing:
        return Decision(State.CLOSING, "deadline reached; every expected host succeeded",
                        _CLOSE_ACTIONS)
    return Decision(
        State.CLOSING,
        f"deadline reached with {len(missing)} of {len(window.expected)} hosts missing: "
        f"{_names(missing)}",
        (*_CLOSE_ACTIONS, Action.NOTIFY),
    )


def _close_by_admin(window: Window, by: str) -> Decision:
    if window.state not in (State.OPENING, State.OPEN):
        return nothing(f"close asked while {window.state.value}; already closing")
    return Decision(
        State.CLOSING,
        f"closed by {by} (hosts missing: {_names(window.missing)})",
        _CLOSE_ACTIONS,
    )


def _on_snapshot_settled(window: Window) -> Decision:
    if window.state is not State.SNAPSHOTTING:
        return nothing(f"snapshot settled while {window.state.value}; nothing to do")
    if window.unsnapshotted or not all(s.settled for s in window.snapshots.values()):
        done = sum(1 for s in window.snapshots.values() if s.settled)
        return nothing(f"{done} of {len(window.expected)} snapshots settled")
    failed = sorted(h for h, s in window.snapshots.items() if s is SnapshotStatus.FAILED)
    if failed:
        return Decision(
            State.CLOSED,
            f"snapshots failed for {_names(failed)}; retention skipped, nothing deleted",
            (Action.NOTIFY, Action.RECORD_METRICS),
        )
    return Decision(
        State.CLOSED,
        f"{len(window.snapshots)} snapshots completed; "
        f"{len(window.expected) - len(window.missing)} of {len(window.expected)} hosts complete",
        (Action.APPLY_RETENTION, Action.NOTIFY, Action.RECORD_METRICS),
    )


def _on_tick(window: Window, tick: Tick, now: datetime, timing: Timing) -> Decision:
    """Finish a transition whose event was lost, from what EC2 says now."""
    instance = tick.instance_state
    if window.state is State.OPENING:
        if now >= window.deadline:
            return _close_at_deadline(window, now)
        if instance == "running":
            return _on_running(window, InstanceRunning(None))
        if now - window.updated_at >= timing.boot_timeout:
            return _on_start_failed(
                window, f"still {instance} after {timing.boot_timeout} (reconciler)")
        return nothing(f"instance {instance}; still opening")
    if window.state is State.OPEN:
        if now >= window.deadline:
            return _close_at_deadline(window, now)
        if instance == "stopped":
            return _on_stopped(window)
        return nothing("window open, deadline ahead")
    if window.state is State.CLOSING:
        if instance == "stopped":
            return _on_stopped(window)
        if instance == "running" and now - window.updated_at >= timing.stop_grace:
            # The first stop may have failed before the deadline schedule was deleted.
            return Decision(None, f"instance still running {timing.stop_grace} after the stop; "
                                  "stopping again (reconciler)", _CLOSE_ACTIONS)
        return nothing(f"instance {instance}; waiting for it to stop")
    # SNAPSHOTTING
    if window.unsnapshotted:
        return Decision(None, f"snapshots never taken for {_names(window.unsnapshotted)} "
                              "(reconciler)", (Action.SNAPSHOT_VOLUMES,))
    return _on_snapshot_settled(window)


def _names(hosts: frozenset[str] | list[str]) -> str:
    return ", ".join(sorted(hosts)) or "none"
