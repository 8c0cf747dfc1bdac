"""The month a concluded window's usage would cost, for the dashboard's cost widget: the same
model and price file as `offsite-admin cost` (chalicelib/cost.py, admin/usage.py, both pure),
from this one window. What the volumes hold is estimated from this window's transfers, as
`cost` does without --stored-gib, so a night of small changes understates snapshot storage;
`offsite-admin cost` averages recent windows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chalicelib.admin.usage import NoUsageError, observe
from chalicelib.cost import fleet, load_prices
from chalicelib.records import Report

VOLUME_GIB = 20.0  # a host's volume when no size is known (records.Host.size_gib)


def month_at_window(view: Mapping[str, Any], reports: Sequence[Report],
                    retention_days: int) -> float | None:
    """USD a month (30 windows) at this window's usage; None for a window that billed
    nothing (no shard ran)."""
    window = {**view, "host_reports": [{"host": r.host, "bytes_sent": r.bytes_sent}
                                       for r in reports]}
    try:
        observed = observe([window], volume_gib=VOLUME_GIB, retention_days=retention_days)
    except NoUsageError:
        return None
    return fleet(observed.usage, load_prices()).total
