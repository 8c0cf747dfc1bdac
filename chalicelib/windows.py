"""Use cases of the backup window: gather state, ask `window.decide`, apply what it answers.

Only the Lambda that wins a transition's conditional write carries out its actions, so a
duplicated event, an event racing the reconciler, or four hosts reporting at once lead to one
stop and one round of snapshots.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from chalicelib.adapters.compute import (
    TAG_COMPLETE,
    TAG_HOST,
    TAG_REPORTED,
    TAG_WINDOW,
    Compute,
    StartFailedError,
)
from chalicelib.adapters.metrics import Metrics
from chalicelib.adapters.notifier import Notifier
from chalicelib.adapters.scheduler import DeadlineScheduler
from chalicelib.adapters.store import WindowActiveError, WindowStore
from chalicelib.instance.userdata import BootConfigError, LeftOut, bootable_hosts
from chalicelib.payloads import OpenRequest, ReportRequest
from chalicelib.records import Host, Report, SnapshotRecord
from chalicelib.retention import choose_deletions
from chalicelib.settings import Settings
from chalicelib.window import (
    RESTORE,
    Action,
    AdminClose,
    DeadlineReached,
    Decision,
    Event,
    HostReported,
    InstanceRunning,
    InstanceStopped,
    SnapshotSettled,
    SnapshotStatus,
    StartFailed,
    State,
    Tick,
    Window,
    decide,
)

logger = Logger(service="offsite", child=True)

# A Lambda that claimed a snapshot and has not recorded its id after this long is gone
# (Lambda's own limit is 15 minutes), so the reconciler may look for it or take it again.
CLAIM_TIMEOUT = timedelta(minutes=16)
EVERY_HOST = OpenRequest(duration_hours=None, hosts=None)


class UnknownWindowError(LookupError):
    pass


class UnknownHostError(LookupError):
    pass


class NoHostsError(Exception):
    pass


class WindowNotOpenError(Exception):
    pass


class HostNotExpectedError(Exception):
    pass


class NotClosableError(Exception):
    pass


class ActionsFailedError(RuntimeError):
    """Some of a decision's actions failed; the others were carried out."""


class WindowFailedError(Exception):
    """A window the caller asked for ended FAILED before it opened (no capacity, ...)."""

    def __init__(self, window: Window) -> None:
        super().__init__(f"window {window.window_id} failed: {window.reason}")
        self.window_id = window.window_id


class Boot(Protocol):
    """What the archive instance runs at boot (chalicelib/instance/userdata.BootRenderer)."""

    def user_data(self, hosts: Sequence[tuple[str, str]],
                  restores: Sequence[tuple[str, str]] = ()) -> str: ...


@dataclass(frozen=True)
class Ports:
    store: WindowStore
    compute: Compute
    scheduler: DeadlineScheduler
    notifier: Notifier
    metrics: Metrics
    boot: Boot


def _bootable(hosts: Iterable[Host], expected: frozenset[str], account_prefix: str) -> tuple[
        list[tuple[str, str]], list[LeftOut]]:
    """An account and volume for every enabled host (a host enrolled since the last boot gets
    its account now) and every expected one, less those the instance would refuse."""
    volumes = {h.name: h.volume_id for h in hosts
               if h.volume_id and (h.enabled or h.name in expected)}
    return bootable_hosts(sorted(volumes.items()), account_prefix)


def _reasons(left_out: Iterable[LeftOut]) -> str:
    return "; ".join(f"{host.name}: {host.reason}" for host in left_out)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_window_id(now: datetime, token: str | None = None) -> str:
    return f"w-{now:%Y%m%dT%H%M%SZ}-{token or secrets.token_hex(3)}"


class WindowService:
    def __init__(self, settings: Settings, ports: Ports,
                 clock: Callable[[], datetime] = utc_now,
                 new_id: Callable[[datetime], str] = new_window_id) -> None:
        self.settings = settings
        self.ports = ports
        self._clock = clock
        self._new_id = new_id

    # opening ---------------------------------------------------------------------------
    def open_window(self, trigger: str, request: OpenRequest = EVERY_HOST) -> Window:
        store, now = self.ports.store, self._clock()
        hosts = store.list_hosts()
        enabled = {h.name for h in hosts if h.enabled}
        expected = enabled if request.hosts is None else request.hosts
        unknown = sorted(expected - enabled)
        if unknown:
            raise UnknownHostError(f"not enrolled or revoked: {', '.join(unknown)}")
        expected = expected - self._tell_left_out(hosts)
        if not expected:
            raise NoHostsError("no enabled host to back up")
        hours = request.duration_hours or self.settings.window_hours
        window = Window(
            window_id=self._new_id(now), state=State.OPENING, opened_at=now,
            deadline=now + timedelta(hours=hours), expected=frozenset(expected),
            instance_id=self.settings.instance_id, trigger=trigger, updated_at=now,
            reason=f"opened by {trigger} for {len(expected)} hosts", entered={"OPENING": now})
        store.create_window(window)
        return self._start(window)

    def open_scheduled(self) -> Window | None:
        """The nightly open. A night it cannot open is told to the admins, not retried: the
        schedule fires again tomorrow."""
        try:
            return self.open_window("schedule")
        except WindowActiveError as exc:
            logger.warning("scheduled window not opened", extra={"reason": str(exc)})
            self.ports.notifier.notify(
                "Offsite: tonight's backup window was not opened",
                f"The schedule fired but {exc} (a restore, or a window that has not finished "
                "closing), so no backup window opened tonight.")
        except NoHostsError as exc:
            logger.info("scheduled window not opened", extra={"reason": str(exc)})
        return None

    def open_restore(self, trigger: str, host: str, snapshot_id: str) -> Window:
        """A restore window: `host` reads a volume made from `snapshot_id` until it reports or
        the restore's own deadline passes. The volume is made before the window is recorded
        (a window never names a volume it does not have); losing the race for the active-window
        guard deletes it again."""
        store, compute = self.ports.store, self.ports.compute
        active = store.active_window_id()
        if active is not None:
            current = self._window(active)
            if (current.purpose == RESTORE and current.snapshot_id == snapshot_id
                    and current.expected == frozenset({host})
                    and current.state in (State.OPENING, State.OPEN)):
                return current  # asked again (the host after its admin, a retry): the same one
            raise WindowActiveError(active)
        window_id = self._new_id(self._clock())
        volume_id = compute.create_restore_volume(snapshot_id, host, window_id,
                                                  self.settings.instance_id)
        now = self._clock()
        window = Window(
            window_id=window_id, state=State.OPENING, opened_at=now,
            deadline=now + timedelta(hours=self.settings.restore_hours),
            expected=frozenset({host}), instance_id=self.settings.instance_id, trigger=trigger,
            updated_at=now, reason=f"restore of {snapshot_id} for {host}, opened by {trigger}",
            entered={"OPENING": now}, purpose=RESTORE, snapshot_id=snapshot_id,
            restore_volume_id=volume_id)
        try:
            store.create_window(window)
        except WindowActiveError:
            compute.delete_restore_volume(volume_id, window.instance_id)
            raise
        return self._start(window)

    def _start(self, window: Window) -> Window:
        logger.info("window transition", extra=_log(window, None, State.OPENING, window.reason))
        try:
            self.ports.compute.configure_boot(window.instance_id, self._user_data(window))
            started_as = self.ports.compute.start(window.instance_id,
                                                  self.settings.instance_types)
        except (StartFailedError, BootConfigError) as exc:
            self._apply(window, StartFailed(str(exc)))
        else:
            logger.info("instance starting", extra={"window_id": window.window_id,
                                                    "instance_type": started_as})
            self.ports.scheduler.create_deadline(window.window_id, window.deadline)
        return self._window(window.window_id)

    def _user_data(self, window: Window) -> str:
        """The boot config of this window: an account and volume for every enabled host (a
        host enrolled since the last boot gets its account now), and the restore volume."""
        listed, left_out = _bootable(self.ports.store.list_hosts(), window.expected,
                                    self.settings.account_prefix)
        if left_out:
            logger.warning("hosts left out of the boot config", extra={
                "window_id": window.window_id, "reason": _reasons(left_out)})
        restores = ([(next(iter(window.expected)), window.restore_volume_id)]
                    if window.purpose == RESTORE and window.restore_volume_id else [])
        return self.ports.boot.user_data(listed, restores)

    def _tell_left_out(self, hosts: Iterable[Host]) -> set[str]:
        """Enabled hosts the boot config cannot list (enrolled before the API refused their name
        or volume id): told to the admins and not expected, so they neither fail the other
        hosts' boot nor keep the window from closing."""
        left_out = _bootable(hosts, frozenset(), self.settings.account_prefix)[1]
        if left_out:
            logger.warning("hosts left out of the window", extra={"reason": _reasons(left_out)})
            self.ports.notifier.notify(
                "Offsite: hosts left out of the backup window",
                "These hosts cannot be backed up: revoke each and enrol it again under a name "
                f"and volume the archive instance accepts. {_reasons(left_out)}. The other "
                "hosts are backed up as usual.")
        return {host.name for host in left_out}

    # events ----------------------------------------------------------------------------
    def on_instance_state(self, instance_id: str, state: str) -> Decision | None:
        """An EC2 state-change notification. Acts on what EC2 says now, not on the event
        alone, so a stale 'stopped' from an earlier window cannot close this one."""
        window = self._active()
        if instance_id != self.settings.instance_id or window is None:
            return None
        view = self.ports.compute.describe(instance_id)
        if view.state != state:
            logger.info("stale instance event ignored",
                        extra={"window_id": window.window_id, "event_state": state,
                               "instance_state": view.state})
            return None
        if state == "running":
            return self._apply(window, InstanceRunning(view.address), address=view.address)
        if state == "stopped":
            return self._apply(window, InstanceStopped())
        return None

    def on_deadline(self, window_id: str) -> Decision:
        return self._apply(self._window(window_id), DeadlineReached())

    def close_window(self, window_id: str, by: str) -> Decision:
        decision = self._apply(self._window(window_id), AdminClose(by))
        if not decision.changes_state:
            raise NotClosableError(decision.reason)
        return decision

    def record_report(self, report: ReportRequest) -> bool:
        window = self._window(report.window_id)
        if report.host not in window.expected:
            raise HostNotExpectedError(f"{report.host} is not expected in {window.window_id}")
        if window.state is not State.OPEN:
            raise WindowNotOpenError(f"window {window.window_id} is {window.state.value}")
        accepted = self.ports.store.put_report(Report(
            host=report.host, window_id=report.window_id, status=report.status,
            bytes_sent=report.bytes_sent, files=report.files, duration_s=report.duration_s,
            detail=report.detail, received_at=self._clock()))
        logger.info("host report", extra={"window_id": window.window_id, "host": report.host,
                                          "status": report.status, "accepted": accepted})
        # Read again after our own write: the last of several concurrent reporters sees all.
        # The report is recorded and the window moved on; what fails after it (a stop, say)
        # is logged as an error and the reconciler retries it. The host did its part.
        with contextlib.suppress(ActionsFailedError):
            self._apply(self._window(report.window_id), HostReported(report.host))
        return accepted

    def on_snapshots_settled(self, results: Iterable[tuple[str, bool]]) -> None:
        """EBS snapshot notifications: (snapshot id, succeeded) pairs."""
        touched: dict[str, str] = {}
        for snapshot_id, succeeded in results:
            record = self._settle(snapshot_id, succeeded)
            if record is not None:
                touched[record.window_id] = record.host
        for window_id, host in touched.items():
            self._apply(self._window(window_id), SnapshotSettled(host))

    def _settle(self, snapshot_id: str, succeeded: bool) -> SnapshotRecord | None:
        """Records EBS's verdict once, then writes the point's settled truth into its
        `offsite:complete` tag. Decisions never read that tag (RecoveryPoint.complete is
        computed from the report and EBS's state), so a tag write lost here misleads nobody
        but a person reading the console, and is logged."""
        status = SnapshotStatus.COMPLETED if succeeded else SnapshotStatus.FAILED
        record = self.ports.store.settle_snapshot(snapshot_id, status)
        if record is None:
            return None
        complete = record.complete and succeeded
        logger.info("snapshot settled", extra={
            "window_id": record.window_id, "host": record.host, "snapshot_id": snapshot_id,
            "status": status.value, "complete": complete})
        try:
            self.ports.compute.mark_complete(snapshot_id, complete)
        except Exception:
            logger.exception("snapshot settled but its offsite:complete tag was not written",
                             extra={"snapshot_id": snapshot_id, "complete": complete})
        return record

    def reconcile(self) -> Decision | None:
        """Finish whatever transition lost its event, from what EC2 says now."""
        window = self._active()
        if window is None:
            return None
        if window.state is State.SNAPSHOTTING:
            self._refresh_snapshots(window)
            window = self._window(window.window_id)
        view = self.ports.compute.describe(window.instance_id)
        return self._apply(window, Tick(view.state), address=view.address)

    def sweep_restore_volumes(self) -> list[str]:
        """Delete restore volumes left behind (their window ended but the deletion failed, or
        a Lambda died between making the volume and recording its window)."""
        store, deleted = self.ports.store, []
        active = store.active_window_id()
        for volume_id, (window_id, created) in self.ports.compute.restore_volumes().items():
            window = store.get_window(window_id)
            if window_id == active or (window is None
                                       and self._clock() - created < CLAIM_TIMEOUT):
                continue
            self.ports.compute.delete_restore_volume(volume_id, self.settings.instance_id)
            logger.info("leftover restore volume deleted", extra={
                "volume_id": volume_id, "window_id": window_id})
            deleted.append(volume_id)
        return deleted

    # queries ---------------------------------------------------------------------------
    def get_window(self, window_id: str) -> Window:
        return self._window(window_id)

    def list_windows(self, limit: int = 20) -> list[Window]:
        return self.ports.store.list_windows(limit)

    def reports(self, window_id: str) -> list[Report]:
        return self.ports.store.reports(window_id)

    # applying decisions ----------------------------------------------------------------
    def _apply(self, window: Window, event: Event, address: str | None = None) -> Decision:
        now = self._clock()
        decision = decide(window, event, now, self.settings.timing)
        if decision.target is not None:
            won = self.ports.store.transition(window.window_id, window.state, decision.target,
                                              decision.reason, now, address)
            if not won:
                logger.info("transition lost to a concurrent writer", extra=_log(
                    window, window.state, decision.target, decision.reason))
                return Decision(None, "another invocation made this transition")
            logger.info("window transition",
                        extra=_log(window, window.state, decision.target, decision.reason))
        elif decision.actions:
            logger.info("window action", extra=_log(window, window.state, None, decision.reason))
        else:
            logger.debug("no transition", extra=_log(window, window.state, None, decision.reason))
        if decision.actions:
            self._carry_out(self._window(window.window_id), decision)
        return decision

    def _carry_out(self, window: Window, decision: Decision) -> None:
        """Every action is tried even when an earlier one failed (a stop that fails must not
        leave the deadline schedule behind); the failures are raised together afterwards, so
        the Lambda reports them and the reconciler retries what it can see unfinished."""
        handlers: dict[Action, Callable[[Window, Decision], None]] = {
            Action.STOP_INSTANCE: lambda w, _: self.ports.compute.stop(w.instance_id),
            Action.DELETE_DEADLINE: lambda w, _: self.ports.scheduler.delete_deadline(
                w.window_id),
            Action.SNAPSHOT_VOLUMES: lambda w, _: self._snapshot_volumes(w),
            Action.APPLY_RETENTION: lambda w, _: self._apply_retention(),
            Action.NOTIFY: self._notify,
            Action.RECORD_METRICS: lambda w, _: self._record_metrics(w),
            Action.DELETE_RESTORE_VOLUME: lambda w, _: self._delete_restore_volume(w),
        }
        failed: list[str] = []
        for action in decision.actions:
            try:
                handlers[action](window, decision)
            except Exception as exc:
                logger.exception("window action failed", extra={
                    "window_id": window.window_id, "action": action.value})
                failed.append(f"{action.value}: {exc}")
        if failed:
            raise ActionsFailedError(f"window {window.window_id}: " + "; ".join(failed))

    def _snapshot_volumes(self, window: Window) -> None:
        hosts = {h.name: h for h in self.ports.store.list_hosts()}
        errors: list[str] = []
        for name in sorted(window.unsnapshotted):
            reported = window.reports.get(name, "none")
            record = SnapshotRecord(window.window_id, name, hosts[name].volume_id,
                                    SnapshotStatus.CLAIMED, reported == "succeeded",
                                    self._clock())
            if not self.ports.store.claim_snapshot(record):
                continue
            try:
                snapshot_id = self._snapshot_once(record, reported)
            except Exception as exc:
                self.ports.store.release_claim(window.window_id, name)
                logger.exception("snapshot failed to start", extra={
                    "window_id": window.window_id, "host": name})
                errors.append(f"{name}: {exc}")
                continue
            self.ports.store.record_snapshot_id(window.window_id, name, snapshot_id)
            logger.info("snapshot started", extra={"window_id": window.window_id, "host": name,
                                                   "snapshot_id": snapshot_id,
                                                   "reported": reported})
        if errors:
            raise RuntimeError("snapshots not started (the reconciler retries): "
                               + "; ".join(errors))

    def _snapshot_once(self, record: SnapshotRecord, reported: str) -> str:
        """One snapshot of the host's volume for this window, even when an earlier
        CreateSnapshot made one and its answer was lost (CreateSnapshot takes no ClientToken):
        the window's snapshot of that host is looked for, by its tags, before and after."""
        compute = self.ports.compute
        found = compute.find_snapshot(record.window_id, record.host)
        if found:
            logger.info("snapshot found, made by an earlier try", extra={
                "window_id": record.window_id, "host": record.host, "snapshot_id": found})
            return found
        tags = {TAG_WINDOW: record.window_id, TAG_HOST: record.host, TAG_REPORTED: reported,
                TAG_COMPLETE: "pending" if record.complete else "false"}
        try:
            return compute.snapshot_volume(record.volume_id, tags)
        except Exception:
            # Tags are applied atomically with the snapshot (TagSpecifications), so if EC2
            # made it, it is findable by them; a lookup that misses it now (DescribeSnapshots
            # is eventually consistent) is repeated before the reconciler's next try.
            found = compute.find_snapshot(record.window_id, record.host)
            if found:
                return found
            raise

    def _refresh_snapshots(self, window: Window) -> None:
        now, store, compute = self._clock(), self.ports.store, self.ports.compute
        records = store.snapshot_records(window.window_id)
        for record in records:
            if record.status is SnapshotStatus.CLAIMED and now - record.claimed_at > CLAIM_TIMEOUT:
                found = compute.find_snapshot(window.window_id, record.host)
                if found:
                    store.record_snapshot_id(window.window_id, record.host, found)
                else:
                    store.release_claim(window.window_id, record.host)
        pending = {r.snapshot_id: r for r in store.snapshot_records(window.window_id)
                   if r.status is SnapshotStatus.PENDING and r.snapshot_id}
        states = compute.snapshot_states(list(pending))
        for snapshot_id, record in pending.items():
            # DescribeSnapshots is eventually consistent: a snapshot made a moment ago may not
            # be found yet. Only one still unknown long after its claim is gone (deleted).
            gone = now - record.claimed_at > CLAIM_TIMEOUT
            state = states.get(snapshot_id, "error" if gone else "pending")
            if state in ("completed", "error"):
                self._settle(snapshot_id, state == "completed")

    def _delete_restore_volume(self, window: Window) -> None:
        if window.restore_volume_id:
            self.ports.compute.delete_restore_volume(window.restore_volume_id,
                                                     window.instance_id)
            logger.info("restore volume deleted", extra={
                "window_id": window.window_id, "volume_id": window.restore_volume_id})

    def _apply_retention(self) -> None:
        # Snapshots a volume is being made from are spared: any volume of ours that names one
        # (read after the points, so a volume made meanwhile is seen), and the active
        # restore's. A restore that picks a point after this read and loses it to the
        # deletion below is answered 404 (CreateVolume refuses a snapshot that is gone with
        # InvalidSnapshot.NotFound: SnapshotGoneError), never a volume made from half of it.
        points = self.ports.compute.recovery_points()
        in_use = self.ports.compute.snapshots_in_use()
        active = self._active()
        if active is not None and active.is_restore and active.snapshot_id:
            in_use |= {active.snapshot_id}
        for deletion in choose_deletions(points, self.settings.retention_days, in_use):
            self.ports.compute.delete_snapshot(deletion.snapshot_id)
            logger.info("snapshot deleted by retention", extra={
                "snapshot_id": deletion.snapshot_id, "host": deletion.host,
                "reason": deletion.reason})

    def _notify(self, window: Window, decision: Decision) -> None:
        state = decision.target.value if decision.target else window.state.value
        self.ports.notifier.notify(
            f"Offsite window {window.window_id}: {state}",
            f"{decision.reason}\n\n{summary(window)}")

    def _record_metrics(self, window: Window) -> None:
        now = self._clock()
        stopped = window.entered.get(State.SNAPSHOTTING.value, now)
        succeeded = sum(1 for h in window.expected if window.reports.get(h) == "succeeded")
        metrics = self.ports.metrics
        metrics.record("WindowSeconds", "Seconds", (now - window.opened_at).total_seconds())
        metrics.record("InstanceSecondsBilled", "Seconds",
                       max(0.0, (stopped - window.opened_at).total_seconds()))
        metrics.record("HostsSucceeded", "Count", succeeded)
        metrics.record("HostsFailed", "Count", len(window.expected) - succeeded)

    def _active(self) -> Window | None:
        window_id = self.ports.store.active_window_id()
        return self.ports.store.get_window(window_id) if window_id else None

    def _window(self, window_id: str) -> Window:
        window = self.ports.store.get_window(window_id)
        if window is None:
            raise UnknownWindowError(f"no window {window_id}")
        return window


def summary(window: Window) -> str:
    lines = [f"window {window.window_id} ({window.trigger}), opened "
             f"{window.opened_at.isoformat()}, deadline {window.deadline.isoformat()}"]
    if window.is_restore:
        host = ", ".join(sorted(window.expected))
        lines.append(f"  restore of {window.snapshot_id} for {host} on volume "
                     f"{window.restore_volume_id}: report {window.reports.get(host, 'none')}")
        return "\n".join(lines)
    for host in sorted(window.expected):
        lines.append(f"  {host}: report {window.reports.get(host, 'none')}, "
                     f"snapshot {_status(window, host)}")
    return "\n".join(lines)


def _status(window: Window, host: str) -> str:
    status = window.snapshots.get(host)
    return status.value if status else "none"


def window_view(window: Window) -> dict[str, Any]:
    """The window as the admin API shows it."""
    return {
        "window_id": window.window_id, "state": window.state.value, "trigger": window.trigger,
        "opened_at": window.opened_at.isoformat(), "deadline": window.deadline.isoformat(),
        "expected": sorted(window.expected), "reports": dict(sorted(window.reports.items())),
        "missing": sorted(window.missing), "address": window.address, "reason": window.reason,
        "snapshots": {h: s.value for h, s in sorted(window.snapshots.items())},
        "entered": {state: at.isoformat() for state, at in window.entered.items()},
        "purpose": window.purpose, "snapshot_id": window.snapshot_id,
        "restore_volume_id": window.restore_volume_id,
    }


def _log(window: Window, source: State | None, target: State | None,
         reason: str) -> dict[str, Any]:
    return {"window_id": window.window_id, "from": source.value if source else None,
            "to": target.value if target else None, "reason": reason}
