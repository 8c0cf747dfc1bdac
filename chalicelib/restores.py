"""Restores: listing a host's recovery points and opening a restore on one of them
(`GET /v1/snapshots`, `POST /v1/restores`, and the host-signed `/v1/hosts/{name}/...`).

A restore is a window of its own with one archive: a single-host instance whose one volume is
made from the chosen snapshot and mounted read-only. It runs beside the backup window (its own
guard, one restore per host), on the same engine (windows.WindowService).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.adapters.store import WindowActiveError, guard_of
from chalicelib.hosts import UnknownHostNameError
from chalicelib.recovery import RestoreRequest, choose_point, host_points
from chalicelib.retention import RecoveryPoint
from chalicelib.window import RESTORE, Shard, State, Window
from chalicelib.windows import WindowService

logger = Logger(service="offsite", child=True)


class RestoreService:
    def __init__(self, windows: WindowService, clock: Callable[[], datetime],
                 new_id: Callable[[datetime], str]) -> None:
        self._windows = windows
        self._clock = clock
        self._new_id = new_id

    def recovery_points(self, host: str) -> list[RecoveryPoint]:
        """The host's completed snapshots, newest first."""
        self._known(host)
        return host_points(self._windows.ports.compute.recovery_points([host]), host)

    def open(self, request: RestoreRequest, trigger: str) -> dict[str, Any]:
        point = choose_point(self.recovery_points(request.host), request)
        window = self._open(trigger, request.host, point.snapshot_id)
        logger.info("restore opened", extra={
            "window_id": window.window_id, "host": request.host, "trigger": trigger,
            "snapshot_id": point.snapshot_id, "complete": point.complete})
        return {"window_id": window.window_id, "snapshot_id": point.snapshot_id,
                "day": point.day, "complete": point.complete,
                "deadline": window.deadline.isoformat()}

    def _open(self, trigger: str, host: str, snapshot_id: str) -> Window:
        """The host's restore of `snapshot_id`: the one already opening or open when asked
        again (the host after its admin, a retry); another of the host's restores still
        active is a WindowActiveError."""
        now = self._clock()
        shard = Shard("s01", frozenset({host}), State.OPENING, now, entered={"OPENING": now})
        window = Window(
            window_id=self._new_id(now), state=State.OPENING, opened_at=now,
            deadline=now + timedelta(hours=self._windows.settings.restore_hours),
            expected=frozenset({host}), trigger=trigger, updated_at=now,
            shards={"s01": shard}, entered={"OPENING": now}, purpose=RESTORE,
            snapshot_id=snapshot_id,
            reason=f"restore of {snapshot_id} for {host}, opened by {trigger}")
        store = self._windows.ports.store
        active_id = store.active_window_id(guard_of(window))
        active = store.get_window(active_id) if active_id else None
        if active is not None:
            if active.snapshot_id == snapshot_id and active.state in (State.OPENING, State.BOOTING,
                                                                      State.OPEN):
                return active
            raise WindowActiveError(active.window_id)
        return self._windows.start(window)

    def _known(self, host: str) -> None:
        if self._windows.ports.hosts.get_host(host) is None:
            raise UnknownHostNameError(f"no host {host}")
