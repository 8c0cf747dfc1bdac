"""Use cases of the backup window and the engine every window runs on: gather state, ask
`window.decide` (per shard) and `window.conclude` (the window), apply what they answer.

Only the Lambda that wins a transition's conditional write carries out its actions, so a
duplicated event, an event racing the reconciler, or twenty hosts reporting at once lead to one
stop and one round of snapshots per shard. A window with many shards never makes many AWS
calls in one request or one Lambda: opening fans the launches out (one invocation per shard);
each instance's events arrive in their own invocations; a deadline stops every shard's instance
in one StopInstances call.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from chalicelib.accounts import AccountNameError, account_name
from chalicelib.adapters.compute import (
    TAG_COMPLETE,
    TAG_HOST,
    TAG_REPORTED,
    TAG_WINDOW,
    Compute,
    InstanceView,
    LaunchSpec,
    StartFailedError,
    VolumeSpec,
)
from chalicelib.adapters.metrics import Metrics
from chalicelib.adapters.notifier import Notifier
from chalicelib.adapters.scheduler import DeadlineScheduler
from chalicelib.adapters.store import HostStore, WindowActiveError, WindowStore
from chalicelib.fleet import devices, placements, plan_shards
from chalicelib.instance.userdata import BootConfigError
from chalicelib.names import InvalidHostNameError, check_host_name
from chalicelib.payloads import OpenRequest, ReportRequest
from chalicelib.records import Host, Report, SnapshotRecord
from chalicelib.retention import choose_deletions, newest_first
from chalicelib.settings import Settings
from chalicelib.window import (
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
    Window,
    conclude,
    decide,
)
from chalicelib.window_cost import month_at_window

logger = Logger(service="offsite", child=True)

# A Lambda that claimed a snapshot and has not recorded its id after this long is gone
# (Lambda's own limit is 15 minutes), so the reconciler may look for it or take it again.
CLAIM_TIMEOUT = timedelta(minutes=16)
# A shard still without an instance this long after it was planned lost its launch invocation
# (asynchronous invocations are retried twice, then dropped): the reconciler launches again.
RELAUNCH_AFTER = timedelta(minutes=3)
EVERY_HOST = OpenRequest(duration_hours=None, hosts=None)


class UnknownWindowError(LookupError):
    pass


class UnknownHostError(LookupError):
    pass


class UnknownArchiveError(LookupError):
    """No window's shard has this instance."""


class ArchiveNotRunningError(Exception):
    """A ready signal came before the shard recorded its instance running: try again."""


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


class Boot(Protocol):
    """What an archive instance runs at boot (chalicelib/instance/userdata.BootRenderer):
    (host, device) pairs of backup volumes and of read-only restore volumes."""

    def user_data(self, hosts: Sequence[tuple[str, str]],
                  restores: Sequence[tuple[str, str]] = ()) -> str: ...


class Launcher(Protocol):
    """Starts one launch per shard, each in an invocation of its own (chalicelib/launcher.py)."""

    def launch(self, window_id: str, shard_ids: Sequence[str]) -> None: ...


@dataclass(frozen=True)
class Ports:
    store: WindowStore
    hosts: HostStore
    compute: Compute
    scheduler: DeadlineScheduler
    notifier: Notifier
    metrics: Metrics
    boot: Boot
    launcher: Launcher


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_window_id(now: datetime, token: str | None = None) -> str:
    return f"w-{now:%Y%m%dT%H%M%SZ}-{token or secrets.token_hex(3)}"


class WindowService:
    def __init__(self, settings: Settings, ports: Ports,
                 clock: Callable[[], datetime] = utc_now,
                 new_id: Callable[[datetime], str] = new_window_id,
                 after_window: Callable[[], object] | None = None) -> None:
        self.settings = settings
        self.ports = ports
        self._clock = clock
        self._new_id = new_id
        self._after_window = after_window  # the dead man's switch (chalicelib/watch.py)

    # opening ---------------------------------------------------------------------------
    def open_window(self, trigger: str, request: OpenRequest = EVERY_HOST) -> Window:
        """Plans the shards, records the window, and fans their launches out: the window
        answered is OPENING; each shard opens when its instance runs."""
        now = self._clock()
        hosts = self.ports.hosts.list_hosts()
        enabled = {h.name for h in hosts if h.enabled}
        expected = enabled if request.hosts is None else request.hosts
        unknown = sorted(expected - enabled)
        if unknown:
            raise UnknownHostError(f"not enrolled or revoked: {', '.join(unknown)}")
        expected = expected - self._tell_left_out(h for h in hosts if h.name in expected)
        if not expected:
            raise NoHostsError("no enabled host to back up")
        hours = request.duration_hours or self.settings.window_hours
        shards = {shard_id: Shard(shard_id, members, State.OPENING, now,
                                  entered={"OPENING": now})
                  for shard_id, members in plan_shards(expected,
                                                       self.settings.hosts_per_archive).items()}
        window = Window(
            window_id=self._new_id(now), state=State.OPENING, opened_at=now,
            deadline=now + timedelta(hours=hours), expected=frozenset(expected),
            trigger=trigger, updated_at=now, shards=shards, entered={"OPENING": now},
            reason=f"opened by {trigger} for {len(expected)} hosts in {len(shards)} archives",
            start_grace={h.name: h.start_grace_minutes for h in hosts
                         if h.name in expected and h.start_grace_minutes is not None})
        started = self.start(window)
        self.ports.metrics.record("WindowsOpened", "Count", 1)  # its absence is alarmed (deploy/)
        return started

    def start(self, window: Window) -> Window:
        """Records a planned window (raises WindowActiveError when its guard is held), makes
        its deadline schedule and fans out its shards' launches."""
        self.ports.store.create_window(window)
        logger.info("window transition", extra=_log(window, None, State.OPENING, window.reason))
        try:
            self.ports.scheduler.create_deadline(window.window_id, window.deadline)
        except Exception:  # the reconciler closes it at the deadline all the same
            logger.exception("deadline schedule not made", extra={"window_id": window.window_id})
        self.ports.launcher.launch(window.window_id, sorted(window.shards))
        return self._window(window.window_id)

    def open_scheduled(self) -> Window | None:
        """The nightly open. A night it cannot open is told to the admins, not retried: the
        schedule fires again tomorrow."""
        try:
            return self.open_window("schedule")
        except WindowActiveError as exc:
            logger.warning("scheduled window not opened", extra={"reason": str(exc)})
            self.ports.notifier.notify(
                "Offsite: tonight's backup window was not opened",
                f"The schedule fired but {exc} (last night's has not finished closing), so no "
                "backup window opened tonight.")
        except NoHostsError as exc:
            logger.info("scheduled window not opened", extra={"reason": str(exc)})
        return None

    def _tell_left_out(self, hosts: Iterable[Host]) -> set[str]:
        """Enabled hosts an archive cannot serve (enrolled before the API refused their name,
        or whose account would be too long with the stage's prefix): told to the admins and not
        expected, so they neither fail the other hosts' boot nor keep the window open."""
        reasons = {}
        for host in hosts:
            try:
                account_name(self.settings.account_prefix, check_host_name(host.name))
            except (InvalidHostNameError, AccountNameError) as exc:
                reasons[host.name] = str(exc)
        if reasons:
            listed = "; ".join(f"{name}: {why}" for name, why in sorted(reasons.items()))
            logger.warning("hosts left out of the window", extra={"reason": listed})
            self.ports.notifier.notify(
                "Offsite: hosts left out of the backup window",
                "These hosts cannot be backed up: revoke each and enrol it again under a name "
                f"the archive instance accepts. {listed}. The other hosts are backed up as usual.")
        return set(reasons)

    # launching (one invocation per shard) ------------------------------------------------
    def launch_shard(self, window_id: str, shard_id: str) -> str:
        """The launch of one shard's archive: RunInstances with each host's volume made from
        its newest snapshot. Safe to run twice: the shard records one instance, and RunInstances'
        client token gives a repeated call the same one."""
        window = self._window(window_id)
        shard = window.shards.get(shard_id)
        if shard is None or shard.state is not State.OPENING:
            return f"shard {shard_id} is {shard.state.value if shard else 'unknown'}; no launch"
        try:
            launched = self.ports.compute.launch(self._launch_spec(window, shard))
        except (StartFailedError, BootConfigError) as exc:
            return self._apply(window, shard_id, StartFailed(str(exc))).reason
        if not self.ports.store.record_launch(window_id, shard_id, launched.instance_id,
                                              launched.instance_type):
            # Closed meanwhile (deadline, admin), or another invocation launched elsewhere.
            current = self._window(window_id).shards[shard_id]
            if current.instance_id != launched.instance_id:
                self.ports.compute.terminate([launched.instance_id])
                return f"shard {shard_id} no longer wants {launched.instance_id}; terminated"
        logger.info("archive launched", extra={
            "window_id": window_id, "shard_id": shard_id, "instance_id": launched.instance_id,
            "instance_type": launched.instance_type, "subnet_id": launched.subnet_id})
        # Its "running" event may have come before the record above and been ignored.
        view = self.ports.compute.describe([launched.instance_id]).get(launched.instance_id)
        if view is not None and view.state == "running":
            self._on_view(self._window(window_id), shard_id, view)
        return f"launched {launched.instance_id} ({launched.instance_type})"

    def _launch_spec(self, window: Window, shard: Shard) -> LaunchSpec:
        if window.is_restore:
            host = min(shard.hosts)
            point = next(p for p in self.ports.compute.recovery_points([host])
                         if p.snapshot_id == window.snapshot_id) if window.snapshot_id else None
            volumes = [VolumeSpec(host, "/dev/sdf", point.size_gib if point else 1,
                                  window.snapshot_id)]
            user_data = self.ports.boot.user_data([], [(host, "/dev/sdf")])
        else:
            newest = self._newest_snapshots(shard.hosts)
            sizes = {h: known.size_gib for h in shard.hosts  # one read a host, not a scan
                     if (known := self.ports.hosts.get_host(h)) is not None}
            volumes = [VolumeSpec(host, device, max(sizes.get(host, 1), newest[host][1])
                                  if host in newest else sizes.get(host, 1),
                                  newest[host][0] if host in newest else None)
                       for host, device in devices(shard.hosts).items()]
            user_data = self.ports.boot.user_data([(v.host, v.device) for v in volumes])
        return LaunchSpec(
            window.window_id, shard.shard_id, window.purpose, user_data, tuple(volumes),
            tuple(placements(self.settings.instance_types, self.settings.subnet_ids,
                             self.settings.images)),
            self.settings.launch_template, self.settings.kms_key_id)

    def _newest_snapshots(self, hosts: Iterable[str]) -> dict[str, tuple[str, int]]:
        """Each host's newest snapshot EBS completed (complete or not: a cut-off night's
        volume resumes where it stopped): host -> (snapshot id, size GiB)."""
        newest: dict[str, tuple[str, int]] = {}
        for point in newest_first(self.ports.compute.recovery_points(hosts)):
            if point.restorable and point.host not in newest:
                newest[point.host] = (point.snapshot_id, point.size_gib)
        return newest

    # events ----------------------------------------------------------------------------
    def on_instance_state(self, instance_id: str, state: str) -> Decision | None:
        """An EC2 state-change notification, for any instance of the account: one not ours is
        ignored after one table read. Acts on what EC2 says now, not on the event alone, so a
        late 'stopped' cannot move a shard that has moved on."""
        found = self.ports.store.find_instance(instance_id)
        if found is None:
            logger.debug("not an archive instance", extra={"instance_id": instance_id})
            return None
        window = self._window(found[0])
        shard = window.shards[found[1]]
        if not shard.state.active:
            return None
        view = self.ports.compute.describe([instance_id]).get(instance_id)
        if view is None or view.state != state:
            logger.info("stale instance event ignored", extra={
                "window_id": window.window_id, "shard_id": shard.shard_id,
                "event_state": state, "instance_state": view.state if view else "unknown"})
            return None
        return self._on_view(window, shard.shard_id, view)

    def on_boot_signal(self, instance_id: str, ready: bool, cause: str) -> Decision:
        """The instance's own (verified) word: ready, or its boot failed because of `cause`.
        A ready signal that overtook EC2's "running" (the shard still OPENING) is refused
        with ArchiveNotRunningError (503): the instance tries again, and by then the event,
        or the reconciler, has recorded its address and volumes. A failure needs neither."""
        found = self.ports.store.find_instance(instance_id)
        if found is None:
            raise UnknownArchiveError(f"no archive {instance_id}")
        window = self._window(found[0])
        if ready and window.shards[found[1]].state is State.OPENING:
            raise ArchiveNotRunningError(f"{instance_id} is not recorded as running yet")
        event = BootReady() if ready else BootFailed(cause or "no reason given")
        return self._apply(window, found[1], event)

    def _on_view(self, window: Window, shard_id: str, view: InstanceView) -> Decision | None:
        if view.state == "running":
            return self._apply(window, shard_id, InstanceRunning(view.address),
                               address=view.address, volumes=self._host_volumes(
                                   window.shards[shard_id], view))
        if view.state in ("stopped", "terminated"):
            return self._apply(window, shard_id, InstanceStopped())
        return None

    @staticmethod
    def _host_volumes(shard: Shard, view: InstanceView) -> dict[str, str]:
        """host -> volume id, from the instance's block device mapping."""
        if shard.volumes:
            return dict(shard.volumes)
        if len(shard.hosts) == 1 and "/dev/sdf" in view.devices:
            return {min(shard.hosts): view.devices["/dev/sdf"]}
        return {host: view.devices[device] for host, device in devices(shard.hosts).items()
                if device in view.devices}

    def on_deadline(self, window_id: str) -> list[Decision]:
        return self._apply_to_all(self._window(window_id), DeadlineReached())

    def close_window(self, window_id: str, by: str) -> list[Decision]:
        decisions = self._apply_to_all(self._window(window_id), AdminClose(by))
        if not any(d.changes_state for d in decisions):
            raise NotClosableError("; ".join(d.reason for d in decisions) or "nothing to close")
        return decisions

    def record_report(self, report: ReportRequest) -> bool:
        window = self._window(report.window_id)
        shard = window.shard_of(report.host)
        if shard is None:
            raise HostNotExpectedError(f"{report.host} is not expected in {window.window_id}")
        if shard.state is not State.OPEN:
            raise WindowNotOpenError(f"window {window.window_id} is {shard.state.value} for "
                                     f"{report.host}")
        accepted = self.ports.store.put_report(Report(
            host=report.host, window_id=report.window_id, status=report.status,
            bytes_sent=report.bytes_sent, files=report.files, duration_s=report.duration_s,
            detail=report.detail, received_at=self._clock()))
        logger.info("host report", extra={"window_id": window.window_id, "host": report.host,
                                          "status": report.status, "accepted": accepted})
        # Read again after our own write: the last of several concurrent reporters sees all.
        # The report is recorded and the shard moved on; what fails after it (a stop, say)
        # is logged as an error and the reconciler retries it. The host did its part.
        with contextlib.suppress(ActionsFailedError):
            self._apply(self._window(report.window_id), shard.shard_id,
                        HostReported(report.host))
        return accepted

    def on_snapshots_settled(self, results: Iterable[tuple[str, bool]]) -> None:
        """EBS snapshot notifications: (snapshot id, succeeded) pairs. A snapshot that is not
        one of a window's is ignored."""
        touched: dict[str, set[str]] = {}
        for snapshot_id, succeeded in results:
            record = self._settle(snapshot_id, succeeded)
            if record is not None:
                touched.setdefault(record.window_id, set()).add(record.host)
        for window_id, hosts in touched.items():
            window = self._window(window_id)
            for host in sorted(hosts):
                shard = window.shard_of(host)
                if shard is not None:
                    self._apply(self._window(window_id), shard.shard_id, SnapshotSettled(host))

    def _settle(self, snapshot_id: str, succeeded: bool) -> SnapshotRecord | None:
        """Records EBS's verdict once, then writes the point's settled truth into its
        `offsite:complete` tag. Decisions never read that tag (RecoveryPoint.complete is
        computed from the report and EBS's state), so a tag write lost here misleads nobody
        but a person reading the console, and is logged."""
        status = SnapshotStatus.COMPLETED if succeeded else SnapshotStatus.FAILED
        record = self.ports.store.settle_snapshot(snapshot_id, status)
        if record is None:
            logger.debug("snapshot not awaited", extra={"snapshot_id": snapshot_id})
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

    # the reconciler ----------------------------------------------------------------------
    def reconcile(self) -> list[Decision]:
        """Finish whatever transition lost its event, from what EC2 says now: one
        DescribeInstances per window, whatever its number of shards."""
        decisions = []
        for window_id in self.ports.store.active_window_ids():
            window = self._window(window_id)
            if any(s.state is State.SNAPSHOTTING for s in window.shards.values()):
                self._refresh_snapshots(window)
                window = self._window(window_id)
            active = [s for s in window.shards.values() if s.state.active]
            views = self.ports.compute.describe([s.instance_id for s in active if s.instance_id])
            for shard in active:
                decisions.append(self._tick(window_id, shard.shard_id, views))
            self._conclude(window_id, retention=True)
        return decisions

    def _tick(self, window_id: str, shard_id: str, views: dict[str, InstanceView]) -> Decision:
        # The shard as it is now, not as the reconciler read it before asking EC2: a launch may
        # have recorded its instance (and "running" made it BOOTING) in between; that instance
        # is then asked about on its own, never taken for one that is gone.
        window = self._window(window_id)
        shard = window.shards[shard_id]
        if shard.instance_id is not None and shard.instance_id not in views:
            views = {**views, **self.ports.compute.describe([shard.instance_id])}
        if shard.instance_id is None:
            waited = self._clock() - shard.updated_at
            if shard.state is State.OPENING and self._clock() < window.deadline \
                    and RELAUNCH_AFTER <= waited < self.settings.timing.boot_timeout:
                logger.info("launch again (reconciler)", extra={
                    "window_id": window_id, "shard_id": shard.shard_id})
                self.ports.launcher.launch(window_id, [shard.shard_id])
                return Decision(None, f"{shard.shard_id} launched again (reconciler)")
            return self._apply(window, shard.shard_id, Tick("none"))
        view = views.get(shard.instance_id)
        state = view.state if view else "terminated"
        volumes = self._host_volumes(shard, view) if view and state == "running" else None
        return self._apply(window, shard.shard_id, Tick(state),
                           address=view.address if view else None, volumes=volumes)

    def sweep(self) -> list[str]:
        """Terminates our instances and deletes our volumes that their window no longer
        needs (a termination or deletion that failed, a launch that lost its record). A volume
        is deleted only when its snapshot completed, or it never held a window's data (a
        restore's copy, a shard that never opened); one whose snapshot failed stays."""
        now, done, windows = self._clock(), [], {}

        def window_of(window_id: str) -> Window | None:
            if window_id not in windows:
                windows[window_id] = self.ports.store.get_window(window_id)
            return windows[window_id]

        for instance in self.ports.compute.leftover_instances():
            window = window_of(instance.window_id)
            found = self.ports.store.find_instance(instance.resource_id)
            shard = window.shards.get(found[1]) if window and found else None
            unclaimed = shard is None and now - instance.created > CLAIM_TIMEOUT
            if unclaimed or (shard is not None and not shard.state.active):
                self.ports.compute.terminate([instance.resource_id])
                done.append(instance.resource_id)
        for volume in self.ports.compute.leftover_volumes():
            window = window_of(volume.window_id)
            if window is not None and self._may_delete(window, volume.shard_id,
                                                       volume.resource_id) \
                    and self.ports.compute.delete_volume(volume.resource_id):
                done.append(volume.resource_id)
        if done:
            logger.info("leftovers removed", extra={"resources": done})
        return done

    @staticmethod
    def _may_delete(window: Window, shard_id: str, volume_id: str) -> bool:
        shard = window.shards.get(shard_id)
        if shard is None or shard.state.active:
            return False
        if shard.state is State.FAILED or window.is_restore:
            return True  # it never served a backup session: it holds nothing new
        host = next((h for h, v in shard.volumes.items() if v == volume_id), None)
        return host is not None and window.snapshots.get(host) is SnapshotStatus.COMPLETED

    def _refresh_snapshots(self, window: Window) -> None:
        now, store, compute = self._clock(), self.ports.store, self.ports.compute
        for record in store.snapshot_records(window.window_id):
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

    # queries ---------------------------------------------------------------------------
    def get_window(self, window_id: str) -> Window:
        return self._window(window_id)

    def list_windows(self, limit: int = 20) -> list[Window]:
        return self.ports.store.list_windows(limit)

    def reports(self, window_id: str) -> list[Report]:
        return self.ports.store.reports(window_id)

    # applying decisions ----------------------------------------------------------------
    def _apply(self, window: Window, shard_id: str, event: Event, address: str | None = None,
               volumes: dict[str, str] | None = None) -> Decision:
        decision = self._transition(window, shard_id, event, address, volumes)
        if decision.actions:
            fresh = self._window(window.window_id)
            self._carry_out(fresh, fresh.shards[shard_id], decision.actions)
        if decision.changes_state:
            self._conclude(window.window_id,
                           retention=isinstance(event, SnapshotSettled | Tick))
        return decision

    def _apply_to_all(self, window: Window, event: Event) -> list[Decision]:
        """One event for every shard (the deadline, an admin's close): each shard's transition
        is its own conditional write, and all the stops go in one StopInstances call."""
        decisions = {s: self._transition(window, s, event) for s in sorted(window.shards)}
        fresh = self._window(window.window_id)
        stops = [fresh.shards[s].instance_id for s, d in decisions.items()
                 if Action.STOP_INSTANCE in d.actions and fresh.shards[s].instance_id]
        failures = []
        try:
            self.ports.compute.stop([i for i in stops if i])
        except Exception as exc:  # the reconciler stops them again after stop_grace
            logger.exception("stop failed", extra={"window_id": window.window_id})
            failures.append(f"stop_instance: {exc}")
        for shard_id, decision in decisions.items():
            rest = tuple(a for a in decision.actions if a is not Action.STOP_INSTANCE)
            try:
                self._carry_out(fresh, fresh.shards[shard_id], rest)
            except ActionsFailedError as exc:
                failures.append(str(exc))
        self._conclude(window.window_id)
        if failures:
            raise ActionsFailedError("; ".join(failures))
        return list(decisions.values())

    def _transition(self, window: Window, shard_id: str, event: Event,
                    address: str | None = None,
                    volumes: dict[str, str] | None = None) -> Decision:
        now, shard = self._clock(), window.shards[shard_id]
        decision = decide(window, shard_id, event, now, self.settings.timing)
        log = _log(window, shard.state, decision.target, decision.reason, shard_id)
        if decision.target is not None:
            won = self.ports.store.transition_shard(window.window_id, shard_id, shard.state,
                                                    decision.target, decision.reason, now,
                                                    address, volumes, decision.unless_started)
            if not won:
                logger.info("transition lost to a concurrent writer", extra=log)
                return Decision(None, "another invocation made this transition")
            logger.info("shard transition", extra=log)
        elif decision.actions:
            logger.info("shard action", extra=log)
        else:
            logger.debug("no transition", extra=log)
        return decision

    def _conclude(self, window_id: str, retention: bool = False) -> Decision:
        """The window follows its shards; whoever wins its last transition applies retention,
        notifies and records the metrics, once. Retention runs only where the window closes
        on its snapshots (the snapshot events, the reconciler): the functions that may close
        it otherwise (an admin's close, a launch that failed, the deadline of a shard that never
        came up) hold no right to delete snapshots, and the next window's retention does it."""
        window = self._window(window_id)
        decision = conclude(window)
        target = decision.target
        if target is None:
            return decision
        if not retention and Action.APPLY_RETENTION in decision.actions:
            decision = Decision(target, f"{decision.reason}; retention left to the next window",
                                tuple(a for a in decision.actions
                                      if a is not Action.APPLY_RETENTION))
        if not self.ports.store.transition(window_id, window.state, target,
                                           decision.reason, self._clock()):
            return Decision(None, "another invocation concluded the window")
        logger.info("window transition",
                    extra=_log(window, window.state, decision.target, decision.reason))
        try:
            if decision.actions:
                self._carry_out(self._window(window_id), None, decision.actions, decision)
        finally:
            if retention and not target.active:
                self._watch()
        return decision

    def _watch(self) -> None:
        """Staleness, evaluated where a window concludes on its snapshots (the functions allowed
        to publish the hosts' ages); the reconciler evaluates too, so a failure here is only
        logged."""
        if self._after_window is None:
            return
        try:
            self._after_window()
        except Exception:
            logger.exception("staleness not evaluated; the reconciler evaluates it later")

    def _carry_out(self, window: Window, shard: Shard | None, actions: Sequence[Action],
                   decision: Decision | None = None) -> None:
        """Every action is tried even when an earlier one failed (a stop that fails must not
        leave the snapshots untaken); the failures are raised together afterwards, so the
        Lambda reports them and the reconciler retries what it can see unfinished."""
        failed: list[str] = []
        for action in actions:
            try:
                self._do(action, window, shard, decision)
            except Exception as exc:
                logger.exception("window action failed", extra={
                    "window_id": window.window_id, "action": action.value,
                    "shard_id": shard.shard_id if shard else None})
                failed.append(f"{action.value}: {exc}")
        if failed:
            raise ActionsFailedError(f"window {window.window_id}: " + "; ".join(failed))

    def _do(self, action: Action, window: Window, shard: Shard | None,
            decision: Decision | None) -> None:
        compute = self.ports.compute
        instance = [shard.instance_id] if shard and shard.instance_id else []
        if action is Action.STOP_INSTANCE:
            compute.stop(instance)
        elif action is Action.TERMINATE_INSTANCE:
            compute.terminate(instance)
        elif action is Action.TAG_VOLUMES and shard:
            compute.tag_volumes({v: h for h, v in shard.volumes.items()})
        elif action is Action.SNAPSHOT_VOLUMES and shard:
            self._snapshot_volumes(window, shard)
        elif action is Action.DELETE_VOLUMES and shard:
            self._delete_volumes(window, shard)
        elif action is Action.DELETE_DEADLINE:
            self.ports.scheduler.delete_deadline(window.window_id)
        elif action is Action.APPLY_RETENTION:
            self._apply_retention()
        elif action is Action.NOTIFY:
            self._notify(window, shard, decision)
        elif action is Action.RECORD_METRICS:
            self._record_metrics(window)

    def _snapshot_volumes(self, window: Window, shard: Shard) -> None:
        volumes = dict(shard.volumes)
        if len(volumes) < len(shard.hosts) and shard.instance_id:
            view = self.ports.compute.describe([shard.instance_id]).get(shard.instance_id)
            volumes = self._host_volumes(shard, view) if view else volumes
        errors: list[str] = []
        for name in sorted(window.unsnapshotted(shard)):
            if name not in volumes:
                errors.append(f"{name}: its volume is unknown")
                continue
            reported = window.reports.get(name, "none")
            record = SnapshotRecord(window.window_id, name, volumes[name],
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

    def _delete_volumes(self, window: Window, shard: Shard) -> None:
        """A volume goes once its snapshot has completed: CreateSnapshot makes a point-in-time
        copy that no longer needs the volume once its state is `completed` ("Snapshots occur
        asynchronously; the point-in-time snapshot is created immediately, but the status of
        the snapshot is pending until the snapshot is complete", CreateSnapshot, EC2 API
        Reference). One still attached (the termination is under way) is left to the sweep."""
        for host, volume_id in sorted(shard.volumes.items()):
            if self._may_delete(window, shard.shard_id, volume_id) \
                    and not self.ports.compute.delete_volume(volume_id):
                logger.info("volume still attached; the sweep deletes it", extra={
                    "window_id": window.window_id, "host": host, "volume_id": volume_id})

    def _apply_retention(self) -> None:
        # Snapshots a volume is being made from are spared: any volume of ours that names one
        # (read after the points, so a volume made meanwhile is seen), and the active
        # restores'. A restore that picks a point after this read and loses it to the
        # deletion below fails to launch (its volume cannot be made), never a volume made
        # from half of it.
        compute = self.ports.compute
        points = compute.recovery_points()
        in_use = set(compute.snapshots_in_use())
        for window_id in self.ports.store.active_window_ids():
            active = self.ports.store.get_window(window_id)
            if active is not None and active.is_restore and active.snapshot_id:
                in_use.add(active.snapshot_id)
        for deletion in choose_deletions(points, self.settings.retention_days,
                                         frozenset(in_use)):
            compute.delete_snapshot(deletion.snapshot_id)
            logger.info("snapshot deleted by retention", extra={
                "snapshot_id": deletion.snapshot_id, "host": deletion.host,
                "reason": deletion.reason})

    def _notify(self, window: Window, shard: Shard | None, decision: Decision | None) -> None:
        if shard is not None:
            subject = f"Offsite window {window.window_id}: archive {shard.shard_id} " \
                      f"{shard.state.value}"
            reason = shard.reason
        else:
            state = decision.target.value if decision and decision.target else window.state.value
            subject, reason = f"Offsite window {window.window_id}: {state}", window.reason
        self.ports.notifier.notify(subject, f"{reason}\n\n{summary(window)}")

    def _record_metrics(self, window: Window) -> None:
        now = self._clock()
        succeeded = sum(1 for h in window.expected if window.reports.get(h) == "succeeded")
        metrics = self.ports.metrics
        metrics.record("WindowSeconds", "Seconds", (now - window.opened_at).total_seconds())
        metrics.record("InstanceSecondsBilled", "Seconds", billed_seconds(window, now))
        metrics.record("Archives", "Count", len(window.shards))
        metrics.record("HostsSucceeded", "Count", succeeded)
        failed = sum(1 for h in window.expected if window.reports.get(h) == "failed")
        metrics.record("HostsFailed", "Count", failed)
        metrics.record("HostsMissing", "Count", len(window.expected) - succeeded - failed)
        reports = self.ports.store.reports(window.window_id)
        metrics.record("BytesSent", "Bytes", sum(r.bytes_sent for r in reports))
        metrics.record("WindowsFailed", "Count", int(window.state is State.FAILED))
        month = month_at_window(window_view(window), reports, self.settings.retention_days)
        if month is not None:
            metrics.record("MonthAtWindowUSD", "None", round(month, 4))

    def _window(self, window_id: str) -> Window:
        window = self.ports.store.get_window(window_id)
        if window is None:
            raise UnknownWindowError(f"no window {window_id}")
        return window


def billed_seconds(window: Window, now: datetime) -> float:
    """Instance seconds over the window's shards: each from its launch (planned) to its stop."""
    total = 0.0
    for shard in window.shards.values():
        if shard.instance_id is None:
            continue
        start = shard.entered.get(State.OPENING.value, window.opened_at)
        stop = shard.entered.get(State.SNAPSHOTTING.value) or shard.entered.get(
            State.CLOSED.value) or shard.entered.get(State.FAILED.value) or now
        total += max(0.0, (stop - start).total_seconds())
    return total


def summary(window: Window) -> str:
    lines = [f"window {window.window_id} ({window.trigger}), opened "
             f"{window.opened_at.isoformat()}, deadline {window.deadline.isoformat()}"]
    if window.is_restore:
        host = ", ".join(sorted(window.expected))
        lines.append(f"  restore of {window.snapshot_id} for {host}: report "
                     f"{window.reports.get(host, 'none')}")
        return "\n".join(lines)
    for shard in sorted(window.shards.values(), key=lambda s: s.shard_id):
        lines.append(f"  archive {shard.shard_id} ({shard.instance_id or 'no instance'}): "
                     f"{shard.state.value}")
        for host in sorted(shard.hosts):
            lines.append(f"    {host}: report {window.reports.get(host, 'none')}, "
                         f"snapshot {_status(window, host)}")
    return "\n".join(lines)


def _status(window: Window, host: str) -> str:
    status = window.snapshots.get(host)
    return status.value if status else "none"


def shard_view(shard: Shard) -> dict[str, Any]:
    return {"shard_id": shard.shard_id, "state": shard.state.value, "hosts": sorted(shard.hosts),
            "instance_id": shard.instance_id, "instance_type": shard.instance_type,
            "address": shard.address, "volumes": dict(sorted(shard.volumes.items())),
            "reason": shard.reason,
            "entered": {state: at.isoformat() for state, at in shard.entered.items()}}


def window_view(window: Window) -> dict[str, Any]:
    """The window as the admin API shows it."""
    return {
        "window_id": window.window_id, "state": window.state.value, "trigger": window.trigger,
        "opened_at": window.opened_at.isoformat(), "deadline": window.deadline.isoformat(),
        "expected": sorted(window.expected), "reports": dict(sorted(window.reports.items())),
        "missing": sorted(window.missing), "reason": window.reason,
        "snapshots": {h: s.value for h, s in sorted(window.snapshots.items())},
        "entered": {state: at.isoformat() for state, at in window.entered.items()},
        "purpose": window.purpose, "snapshot_id": window.snapshot_id,
        "shards": [shard_view(s) for _, s in sorted(window.shards.items())],
    }


def _log(window: Window, source: State | None, target: State | None, reason: str,
         shard_id: str | None = None) -> dict[str, Any]:
    return {"window_id": window.window_id, "shard_id": shard_id,
            "from": source.value if source else None, "to": target.value if target else None,
            "reason": reason}
