"""The stores' interfaces, one per aggregate (windows with their shards, reports and snapshot
records; hosts; nonces), their errors, and the in-memory implementations used by tests.

`dynamo_store.py` holds the real ones, on one DynamoDB table; one shared test suite
(tests/integration/test_store_contract.py) runs against both.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Protocol

from chalicelib.records import Host, Report, SnapshotRecord
from chalicelib.window import SnapshotStatus, State, Window


class WindowActiveError(Exception):
    def __init__(self, window_id: str) -> None:
        super().__init__(f"window {window_id} is still active")
        self.window_id = window_id


def guard_of(window: Window) -> str:
    """The active-window guard a window holds: one backup window at a time, and one restore
    per host beside it."""
    return f"RESTORE#{min(window.expected)}" if window.is_restore else "BACKUP"


class WindowStore(Protocol):
    def create_window(self, window: Window) -> None:
        """Record a new OPENING window and its shards; raises WindowActiveError if its guard
        (guard_of) is held by another active window."""

    def get_window(self, window_id: str) -> Window | None:
        """The window with its shards, reports and snapshot states, read consistently."""

    def active_window_id(self, guard: str = "BACKUP") -> str | None: ...

    def active_window_ids(self) -> list[str]:
        """Every active window: the backup window and the restores."""

    def list_windows(self, limit: int) -> list[Window]:
        """Newest first."""

    def transition(self, window_id: str, source: State, target: State, reason: str,
                   now: datetime) -> bool:
        """Move the window from `source` to `target`; False if it was no longer in `source`.
        A terminal `target` also releases the window's guard."""

    def transition_shard(self, window_id: str, shard_id: str, source: State, target: State,
                         reason: str, now: datetime, address: str | None = None,
                         volumes: Mapping[str, str] | None = None,
                         unless_started: Collection[str] = ()) -> bool:
        """Move one shard from `source` to `target`; False if it was no longer in `source`, or
        if any host of `unless_started` has recorded a start (an idle close that a session
        overtook: the host is no longer idle)."""

    def record_launch(self, window_id: str, shard_id: str, instance_id: str,
                      instance_type: str) -> bool:
        """The shard's instance, once RunInstances answered; False when the shard is no longer
        OPENING or names another instance. Indexes the instance for find_instance."""

    def find_instance(self, instance_id: str) -> tuple[str, str] | None:
        """(window id, shard id) of one of our archive instances; None for any other."""

    def record_start(self, window_id: str, shard_id: str, host: str, at: datetime) -> bool:
        """The host asked for a session in this window (recorded once); False, and nothing
        recorded, when its shard is no longer OPEN (an idle close or the deadline won)."""
        ...

    def put_report(self, report: Report) -> bool:
        """False when the host already reported success in that window."""

    def reports(self, window_id: str) -> list[Report]: ...

    def claim_snapshot(self, record: SnapshotRecord) -> bool:
        """Take the host's snapshot of this window in hand; False if taken already."""

    def release_claim(self, window_id: str, host: str) -> None: ...

    def record_snapshot_id(self, window_id: str, host: str, snapshot_id: str) -> None: ...

    def settle_snapshot(self, snapshot_id: str,
                        status: SnapshotStatus) -> SnapshotRecord | None:
        """Mark a pending snapshot completed or failed; None if unknown or settled already."""

    def snapshot_records(self, window_id: str) -> list[SnapshotRecord]: ...


class HostStore(Protocol):
    def put_host(self, host: Host) -> None: ...

    def get_host(self, name: str) -> Host | None: ...

    def list_hosts(self) -> list[Host]: ...


class StaleMarkStore(Protocol):
    """Which hosts the admins were told are stale (chalicelib/staleness.py), and when the
    fleet's staleness was last evaluated."""

    def stale_marks(self) -> dict[str, datetime]:
        """host -> when it was marked stale."""

    def mark_stale(self, host: str, at: datetime) -> bool:
        """False when it is marked already (another evaluation told the admins)."""

    def clear_stale(self, host: str) -> bool:
        """False when it was not marked (another evaluation cleared it)."""

    def claim_evaluation(self, now: datetime, due: datetime) -> bool:
        """Record an evaluation at `now` if the last one was at or before `due` (or none):
        False when a more recent one was recorded."""


class NonceStore(Protocol):
    def remember_nonce(self, keyid: str, nonce: str, now: int, expires_at: int) -> bool:
        """False if this key used this nonce before and it has not expired (a replay)."""


class InMemoryWindowStore:
    """WindowStore's contract, in process, for tests and the bench."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, Window] = {}
        self._guards: dict[str, str] = {}  # guard -> window id
        self._instances: dict[str, tuple[str, str]] = {}
        self._reports: dict[tuple[str, str], Report] = {}
        self._snapshots: dict[tuple[str, str], SnapshotRecord] = {}
        self._starts: set[tuple[str, str]] = set()

    def create_window(self, window: Window) -> None:
        with self._lock:
            guard = guard_of(window)
            if guard in self._guards:
                raise WindowActiveError(self._guards[guard])
            self._guards[guard] = window.window_id
            self._windows[window.window_id] = replace(window, reports={}, snapshots={})

    def get_window(self, window_id: str) -> Window | None:
        with self._lock:
            window = self._windows.get(window_id)
            if window is None:
                return None
            reports = {h: r.status for (w, h), r in self._reports.items() if w == window_id}
            snaps = {h: s.status for (w, h), s in self._snapshots.items() if w == window_id}
            started = frozenset(h for w, h in self._starts if w == window_id)
            return replace(window, reports=reports, snapshots=snaps, started=started)

    def active_window_id(self, guard: str = "BACKUP") -> str | None:
        return self._guards.get(guard)

    def active_window_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._guards.values())

    def list_windows(self, limit: int) -> list[Window]:
        ids = sorted(self._windows, reverse=True)[:limit]
        return [w for w in (self.get_window(i) for i in ids) if w is not None]

    def transition(self, window_id: str, source: State, target: State, reason: str,
                   now: datetime) -> bool:
        with self._lock:
            window = self._windows.get(window_id)
            if window is None or window.state is not source:
                return False
            self._windows[window_id] = replace(window, state=target, reason=reason,
                                               updated_at=now,
                                               entered={**window.entered, target.value: now})
            guard = guard_of(window)
            if not target.active and self._guards.get(guard) == window_id:
                del self._guards[guard]
            return True

    def transition_shard(self, window_id: str, shard_id: str, source: State, target: State,
                         reason: str, now: datetime, address: str | None = None,
                         volumes: Mapping[str, str] | None = None,
                         unless_started: Collection[str] = ()) -> bool:
        with self._lock:
            window = self._windows.get(window_id)
            shard = window.shards.get(shard_id) if window else None
            if window is None or shard is None or shard.state is not source or any(
                    (window_id, host) in self._starts for host in unless_started):
                return False
            changed = replace(shard, state=target, reason=reason, updated_at=now,
                              address=address or shard.address,
                              volumes=dict(volumes) if volumes else shard.volumes,
                              entered={**shard.entered, target.value: now})
            self._windows[window_id] = replace(window, shards={**window.shards,
                                                                 shard_id: changed})
            return True

    def record_launch(self, window_id: str, shard_id: str, instance_id: str,
                      instance_type: str) -> bool:
        with self._lock:
            window = self._windows.get(window_id)
            shard = window.shards.get(shard_id) if window else None
            if window is None or shard is None or shard.state is not State.OPENING \
                    or shard.instance_id not in (None, instance_id):
                return False
            self._windows[window_id] = replace(window, shards={
                **window.shards, shard_id: replace(shard, instance_id=instance_id,
                                                   instance_type=instance_type)})
            self._instances[instance_id] = (window_id, shard_id)
            return True

    def find_instance(self, instance_id: str) -> tuple[str, str] | None:
        return self._instances.get(instance_id)

    def record_start(self, window_id: str, shard_id: str, host: str, at: datetime) -> bool:
        with self._lock:
            window = self._windows.get(window_id)
            shard = window.shards.get(shard_id) if window else None
            if shard is None or shard.state is not State.OPEN:
                return False
            self._starts.add((window_id, host))
            return True

    def put_report(self, report: Report) -> bool:
        with self._lock:
            key = (report.window_id, report.host)
            previous = self._reports.get(key)
            if previous is not None and previous.status == "succeeded":
                return False
            self._reports[key] = report
            return True

    def reports(self, window_id: str) -> list[Report]:
        with self._lock:
            return sorted((r for (w, _), r in self._reports.items() if w == window_id),
                          key=lambda r: r.host)

    def claim_snapshot(self, record: SnapshotRecord) -> bool:
        with self._lock:
            key = (record.window_id, record.host)
            if key in self._snapshots:
                return False
            self._snapshots[key] = record
            return True

    def release_claim(self, window_id: str, host: str) -> None:
        with self._lock:
            record = self._snapshots.get((window_id, host))
            if record is not None and record.status is SnapshotStatus.CLAIMED:
                del self._snapshots[(window_id, host)]

    def record_snapshot_id(self, window_id: str, host: str, snapshot_id: str) -> None:
        with self._lock:
            record = self._snapshots[(window_id, host)]
            if record.status is SnapshotStatus.CLAIMED:
                self._snapshots[(window_id, host)] = replace(
                    record, snapshot_id=snapshot_id, status=SnapshotStatus.PENDING)

    def settle_snapshot(self, snapshot_id: str,
                        status: SnapshotStatus) -> SnapshotRecord | None:
        with self._lock:
            for key, record in self._snapshots.items():
                if record.snapshot_id == snapshot_id:
                    if record.status is not SnapshotStatus.PENDING:
                        return None
                    settled = replace(record, status=status)
                    self._snapshots[key] = settled
                    return settled
            return None

    def snapshot_records(self, window_id: str) -> list[SnapshotRecord]:
        with self._lock:
            return sorted((r for (w, _), r in self._snapshots.items() if w == window_id),
                          key=lambda r: r.host)


class InMemoryHostStore:
    def __init__(self) -> None:
        self._hosts: dict[str, Host] = {}

    def put_host(self, host: Host) -> None:
        self._hosts[host.name] = host

    def get_host(self, name: str) -> Host | None:
        return self._hosts.get(name)

    def list_hosts(self) -> list[Host]:
        return sorted(self._hosts.values(), key=lambda h: h.name)


class InMemoryStaleMarkStore:
    def __init__(self) -> None:
        self._mark_lock = threading.Lock()
        self._marks: dict[str, datetime] = {}
        self._evaluated: datetime | None = None

    def stale_marks(self) -> dict[str, datetime]:
        with self._mark_lock:
            return dict(self._marks)

    def mark_stale(self, host: str, at: datetime) -> bool:
        with self._mark_lock:
            if host in self._marks:
                return False
            self._marks[host] = at
            return True

    def clear_stale(self, host: str) -> bool:
        with self._mark_lock:
            return self._marks.pop(host, None) is not None

    def claim_evaluation(self, now: datetime, due: datetime) -> bool:
        with self._mark_lock:
            if self._evaluated is not None and self._evaluated > due:
                return False
            self._evaluated = now
            return True


class InMemoryNonceStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nonces: dict[tuple[str, str], int] = {}

    def remember_nonce(self, keyid: str, nonce: str, now: int, expires_at: int) -> bool:
        with self._lock:
            if self._nonces.get((keyid, nonce), 0) > now:
                return False
            self._nonces[(keyid, nonce)] = expires_at
            return True


class InMemoryStore(InMemoryWindowStore, InMemoryHostStore, InMemoryNonceStore,
                    InMemoryStaleMarkStore):
    """All of them in one object, as tests and benches that need them together use it."""

    def __init__(self) -> None:
        InMemoryWindowStore.__init__(self)
        InMemoryHostStore.__init__(self)
        InMemoryStaleMarkStore.__init__(self)
        self._nonces = {}
