"""The store's interface, its errors, and the in-memory implementation used by tests.

`DynamoStore` (dynamo_store.py) is the real one; one shared test suite runs against both.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime
from typing import Protocol

from chalicelib.records import Host, Report, SnapshotRecord
from chalicelib.window import SnapshotStatus, State, Window


class WindowActiveError(Exception):
    def __init__(self, window_id: str) -> None:
        super().__init__(f"window {window_id} is still active")
        self.window_id = window_id


class WindowStore(Protocol):
    def create_window(self, window: Window) -> None:
        """Record a new OPENING window; raises WindowActiveError if one is active."""

    def get_window(self, window_id: str) -> Window | None:
        """The window with its reports and snapshot states, read consistently."""

    def active_window_id(self) -> str | None: ...

    def list_windows(self, limit: int) -> list[Window]:
        """Newest first."""

    def transition(self, window_id: str, source: State, target: State, reason: str,
                   now: datetime, address: str | None = None) -> bool:
        """Move from `source` to `target`; False if the window was no longer in `source`.
        A terminal `target` also releases the active-window guard."""

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

    def put_host(self, host: Host) -> None: ...

    def get_host(self, name: str) -> Host | None: ...

    def list_hosts(self) -> list[Host]: ...

    def remember_nonce(self, keyid: str, nonce: str, now: int, expires_at: int) -> bool:
        """False if this key used this nonce before and it has not expired (a replay)."""


class InMemoryStore:
    """The same contract as DynamoStore, in process, for tests and the bench."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, Window] = {}
        self._active: str | None = None
        self._reports: dict[tuple[str, str], Report] = {}
        self._snapshots: dict[tuple[str, str], SnapshotRecord] = {}
        self._hosts: dict[str, Host] = {}
        self._nonces: dict[tuple[str, str], int] = {}

    def create_window(self, window: Window) -> None:
        with self._lock:
            if self._active is not None:
                raise WindowActiveError(self._active)
            self._active = window.window_id
            self._windows[window.window_id] = replace(window, reports={}, snapshots={})

    def get_window(self, window_id: str) -> Window | None:
        with self._lock:
            window = self._windows.get(window_id)
            if window is None:
                return None
            reports = {h: r.status for (w, h), r in self._reports.items() if w == window_id}
            snaps = {h: s.status for (w, h), s in self._snapshots.items() if w == window_id}
            return replace(window, reports=reports, snapshots=snaps)

    def active_window_id(self) -> str | None:
        return self._active

    def list_windows(self, limit: int) -> list[Window]:
        ids = sorted(self._windows, reverse=True)[:limit]
        return [w for w in (self.get_window(i) for i in ids) if w is not None]

    def transition(self, window_id: str, source: State, target: State, reason: str,
                   now: datetime, address: str | None = None) -> bool:
        with self._lock:
            window = self._windows.get(window_id)
            if window is None or window.state is not source:
                return False
            changed = replace(window, state=target, reason=reason, updated_at=now,
                              address=address or window.address,
                              entered={**window.entered, target.value: now})
            self._windows[window_id] = changed
            if not target.active and self._active == window_id:
                self._active = None
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

    def put_host(self, host: Host) -> None:
        with self._lock:
            self._hosts[host.name] = host

    def get_host(self, name: str) -> Host | None:
        return self._hosts.get(name)

    def list_hosts(self) -> list[Host]:
        return sorted(self._hosts.values(), key=lambda h: h.name)

    def remember_nonce(self, keyid: str, nonce: str, now: int, expires_at: int) -> bool:
        with self._lock:
            if self._nonces.get((keyid, nonce), 0) > now:
                return False
            self._nonces[(keyid, nonce)] = expires_at
            return True
