"""What a month of backups costs, from what a window really used (pure).

`month_at(usage)` prices 30 windows like the observed one; `month_kept_up(usage)` prices the
same hosts with the instance up for the whole window, as the hand-run setup did. EC2 bills
running seconds with a 60 s minimum per start; EBS snapshots bill the blocks they store, which
for incremental backups is estimated from what the hosts stored and sent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRICES_FILE = Path(__file__).with_name("prices.json")
GIB = 1024**3
HOURS_PER_MONTH = 730
RECONCILES_PER_DAY = 288  # every 5 minutes
LAMBDA_GB = 0.5
LAMBDA_SECONDS = 0.3  # a typical handler's billed duration


class UnknownPriceError(KeyError):
    pass


@dataclass(frozen=True)
class Prices:
    region: str
    read_on: str
    source: str
    table: dict[str, Any]

    def instance_hourly(self, instance_type: str) -> float:
        try:
            return float(self.table["instance_hourly"][instance_type])
        except KeyError as exc:
            raise UnknownPriceError(f"no price for {instance_type} in the price file") from exc

    def __getitem__(self, name: str) -> float:
        return float(self.table[name])


def load_prices(path: Path | None = None) -> Prices:
    """The price file: `path`, else $OFFSITE_PRICES, else the one shipped beside this module."""
    chosen = path or Path(os.environ.get("OFFSITE_PRICES") or PRICES_FILE)
    table = json.loads(chosen.read_text())
    return Prices(table["region"], table["read_on"], table["source"], table)


@dataclass(frozen=True)
class WindowUsage:
    instance_type: str
    hosts: int
    billed_seconds: float  # instance start to stop
    window_seconds: float  # the window's full length (open to deadline)
    volume_gib: float  # allocated, all host volumes
    stored_bytes: int  # what the volumes hold
    sent_bytes: int  # what the hosts sent in this window (changed data)
    retention_days: int = 20


@dataclass(frozen=True)
class CostLine:
    item: str
    quantity: float
    unit: str
    usd: float


@dataclass(frozen=True)
class MonthlyCost:
    lines: tuple[CostLine, ...]

    @property
    def total(self) -> float:
        return sum(line.usd for line in self.lines)


def month_at(usage: WindowUsage, prices: Prices, windows: int = 30) -> MonthlyCost:
    return _month(usage, prices, windows, max(60.0, usage.billed_seconds))


def month_kept_up(usage: WindowUsage, prices: Prices, windows: int = 30) -> MonthlyCost:
    return _month(usage, prices, windows, usage.window_seconds)


def _month(usage: WindowUsage, prices: Prices, windows: int, seconds: float) -> MonthlyCost:
    hours = windows * seconds / 3600
    snapshot_gib = (usage.stored_bytes + usage.retention_days * usage.sent_bytes) / GIB
    api = windows * usage.hosts * 3  # session, report, and a retry or status call
    invocations = api + windows * (usage.hosts + 4) + 30 * RECONCILES_PER_DAY
    writes, reads = windows * (usage.hosts * 5 + 8), windows * (usage.hosts * 8 + 20)
    m = 1e6
    lines = (
        CostLine(f"EC2 {usage.instance_type}", hours, "h",
                 hours * prices.instance_hourly(usage.instance_type)),
        CostLine("public IPv4 address", hours, "h", hours * prices["public_ipv4_hourly"]),
        CostLine("EBS gp3 host volumes", usage.volume_gib, "GiB-month",
                 usage.volume_gib * prices["ebs_gp3_gib_month"]),
        CostLine("EBS snapshots (estimated)", snapshot_gib, "GiB-month",
                 snapshot_gib * prices["snapshot_gib_month"]),
        CostLine("Lambda", invocations, "requests",
                 invocations / m * prices["lambda_per_million_requests"]
                 + invocations * LAMBDA_GB * LAMBDA_SECONDS * prices["lambda_gb_second"]),
        CostLine("API Gateway", api, "requests", api / m * prices["api_gateway_per_million"]),
        CostLine("DynamoDB", writes + reads, "requests",
                 writes / m * prices["dynamodb_per_million_writes"]
                 + reads / m * prices["dynamodb_per_million_reads"]),
        CostLine("EventBridge Scheduler", windows * 2, "invocations",
                 windows * 2 / m * prices["scheduler_per_million"]),
    )
    return MonthlyCost(lines)


def render(observed: MonthlyCost, kept_up: MonthlyCost, prices: Prices) -> str:
    rows = [f"{'':32} {'observed':>12} {'kept up':>12}"]
    for mine, theirs in zip(observed.lines, kept_up.lines, strict=True):
        rows.append(f"{mine.item:32} {mine.usd:12.2f} {theirs.usd:12.2f}")
    rows.append(f"{'total per month (USD)':32} {observed.total:12.2f} {kept_up.total:12.2f}")
    rows.append(f"prices: {prices.region}, read {prices.read_on} ({prices.source})")
    return "\n".join(rows)
