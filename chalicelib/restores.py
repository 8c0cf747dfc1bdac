"""Restores: listing a host's recovery points and opening a restore window on one of them
(`GET /v1/snapshots`, `POST /v1/restores`, and the host-signed `/v1/hosts/{name}/...`)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.adapters.compute import SnapshotGoneError
from chalicelib.hosts import UnknownHostNameError
from chalicelib.recovery import (
    NoRecoveryPointError,
    RestoreRequest,
    choose_point,
    host_points,
)
from chalicelib.retention import RecoveryPoint
from chalicelib.windows import WindowService

logger = Logger(service="offsite", child=True)


class RestoreService:
    def __init__(self, windows: WindowService) -> None:
        self._windows = windows

    def recovery_points(self, host: str) -> list[RecoveryPoint]:
        """The host's completed snapshots, newest first."""
        self._known(host)
        return host_points(self._windows.ports.compute.recovery_points(), host)

    def open(self, request: RestoreRequest, trigger: str) -> dict[str, Any]:
        points = self.recovery_points(request.host)
        point = choose_point(points, request)
        try:
            window = self._windows.open_restore(trigger, request.host, point.snapshot_id)
        except SnapshotGoneError as exc:  # deleted by retention since we listed it
            raise NoRecoveryPointError(str(exc), sorted(
                {p.day for p in points if p != point}, reverse=True)) from exc
        logger.info("restore opened", extra={
            "window_id": window.window_id, "host": request.host, "trigger": trigger,
            "snapshot_id": point.snapshot_id, "complete": point.complete,
            "restore_volume_id": window.restore_volume_id})
        return {"window_id": window.window_id, "snapshot_id": point.snapshot_id,
                "day": point.day, "complete": point.complete,
                "deadline": window.deadline.isoformat()}

    def _known(self, host: str) -> None:
        if self._windows.ports.store.get_host(host) is None:
            raise UnknownHostNameError(f"no host {host}")
