"""What the store keeps besides windows: hosts, reports and snapshot records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from chalicelib.window import SnapshotStatus

REPORT_STATUSES = ("succeeded", "failed")


@dataclass(frozen=True)
class Host:
    name: str
    public_key: str
    enabled: bool
    enrolled_at: datetime
    size_gib: int = 20  # its volume's size when it has no snapshot yet (a first backup)
    start_grace_minutes: int | None = None  # its own START_GRACE_MINUTES (None: the stage's)


@dataclass(frozen=True)
class Report:
    host: str
    window_id: str
    status: str
    bytes_sent: int
    files: int
    duration_s: float
    detail: str
    received_at: datetime


@dataclass(frozen=True)
class SnapshotRecord:
    window_id: str
    host: str
    volume_id: str
    status: SnapshotStatus
    complete: bool
    claimed_at: datetime
    snapshot_id: str | None = None
