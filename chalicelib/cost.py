"""What a month of backups costs, line by line, in three designs (pure).

- "fleet" (Offsite): per window, one archive instance per shard, launched with its hosts'
  volumes, stopped once they have reported, then terminated with its volumes once their
  snapshots are complete;
- "kept up": the same fleet with every instance up for the whole window (the hand-run setup);
- "persistent": the earlier design: one instance started and stopped per window, its root volume
  and one volume per host existing all month.

Every line is a quantity times one unit price from the dated price file, so each can be
checked by hand. A month is `windows` (default 30: one a night) times the mean observed window.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

PRICES_FILE = Path(__file__).with_name("prices.json")
GIB = 1024**3
HOURS_PER_MONTH = 730  # AWS prices a GiB-month as 730 hours
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
MILLION = 1e6
# StopInstances (EC2 API reference): "Every time you start your instance, Amazon EC2 charges a
# one-minute minimum for instance usage, and thereafter charges per second."
EC2_MINIMUM_S = 60.0
ROOT_GIB = 8.0  # the launch template's gp3 root volume, deleted on termination
# Every state change of every instance in the account reaches the instance_state rule: a fleet
# instance goes pending, running, stopping, stopped, shutting-down, terminated; the persistent
# instance only pending, running, stopping, stopped. Each EBS snapshot sends one notification.
EVENTS_PER_FLEET_INSTANCE = 6
EVENTS_PER_PERSISTENT_START = 4
RECONCILES_PER_MONTH = 288 * 30  # every 5 minutes
API_CALLS_PER_HOST = 3  # session, report, and a retry or status call
READS_PER_INVOCATION, WRITES_PER_INVOCATION = 3, 2  # a window handler's items (<= 1 KiB)
LAMBDA_GB = 0.5
LAMBDA_SECONDS = 0.3  # a typical handler's billed duration
SNAPSHOT_SETTLE_S = 600.0  # stopped -> snapshots complete, when a window did not record it
# What a night adds to the snapshots per byte the hosts sent: EBS stores the volume's changed
# 512 KiB blocks, not the bytes rsync sent. bench/wire measured both on its nightly change (a
# 200 MB data set: 8 edits of 4 KiB inside each of 3 large files, logs grown 5 %, 1 % new and
# 1 % deleted small files), with the archive volume an ext4 file system on a loop device, on
# 2026-12-07 (bench/README.md, "wire"): with the in-place writes of issue 12 (rsync `--inplace
# --no-whole-file`) 31,457,280 bytes of changed blocks for 3,368,825 bytes sent, 9.3 a byte;
# with `--delay-updates`, which rewrites every changed file whole, 41.9. It depends on where the
# changes fall: appended or new data costs about 1, a lone 4 KiB edit a whole 512 KiB block.
SNAPSHOT_BYTES_PER_SENT_BYTE = 9.3
# CloudWatch, as the template and the code use it. A custom metric is billed by the hours in
# which it receives data ("prorated by the hour and metered only when you send metrics to
# CloudWatch", CloudWatch pricing), so each is counted in metric-months: hours with data / 730.
# Each window metric (EmfMetrics: WindowsOpened and CertificatesIssued while the window opens,
# the nine of its close) has data in at most 2 hours a window; each host's
# RecoveryPointAgeHours and the fleet's StaleHosts are evaluated after each window and by the
# reconciler once the last evaluation is 6 h old: 4 hours a day.
WINDOW_METRICS = ("WindowsOpened", "CertificatesIssued", "WindowSeconds",
                  "InstanceSecondsBilled", "Archives", "HostsSucceeded", "HostsFailed",
                  "HostsMissing", "BytesSent", "WindowsFailed", "MonthAtWindowUSD")
WINDOW_METRIC_HOURS = 2
AGE_EVALUATIONS_PER_DAY = 4
DAYS_PER_MONTH = 30
# deploy/resources.json: offsite-<stage>-no-window-opened, and an Errors alarm per function;
# one dashboard (`init --no-dashboard` leaves it out), showing 9 window metrics, StaleHosts and
# each host's age.
ALARMS = 9
DASHBOARDS = 1
DASHBOARD_METRICS_BESIDE_HOSTS = 10
# CloudWatch's always-free tier, a month: "10 Custom metrics and 10 Alarms", "1 Million API
# requests", "5GB Data (ingestion, archive storage...)", "3 Dashboards for up to 50 metrics
# each" (CloudWatch pricing, Free tier).
FREE_METRIC_MONTHS, FREE_ALARMS, FREE_DASHBOARDS, FREE_DASHBOARD_METRICS = 10, 10, 3, 50
FREE_REQUESTS, FREE_LOGS_GIB = 1_000_000, 5e9 / GIB
LOG_BYTES_PER_INVOCATION = 2048  # Lambda's START/END/REPORT lines and our own, estimated


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
class ShardRun:
    """One archive instance in one window, timed from its launch."""

    window_id: str
    instance_type: str
    hosts: int
    stopped_s: float  # launch -> stopped: what EC2 bills (before its 60 s minimum)
    closed_s: float  # launch -> snapshots complete: the instance and volumes are then deleted

    @property
    def snapshot_s(self) -> float:
        return max(0.0, self.closed_s - self.stopped_s)


@dataclass(frozen=True)
class Usage:
    """What some windows used. Snapshot storage is a state, not a per-window flow: the oldest
    retained snapshot holds the full data, each later one the blocks changed that night."""

    shards: tuple[ShardRun, ...]
    window_s: float  # open -> deadline
    stored_gib: float  # every host's archive together
    changed_gib: float  # what the hosts sent in one window, together (rsync's bytes sent)
    volume_gib: float = 20.0  # each host's data volume
    retention_days: int = 20
    snapshot_bytes_per_sent_byte: float = SNAPSHOT_BYTES_PER_SENT_BYTE
    dashboards: int = DASHBOARDS

    @property
    def snapshot_growth_gib(self) -> float:
        """What one window adds to the snapshots: the changed blocks of the hosts' volumes."""
        return self.changed_gib * self.snapshot_bytes_per_sent_byte

    @property
    def windows_seen(self) -> int:
        return len({s.window_id for s in self.shards}) or 1

    @property
    def hosts(self) -> float:
        return sum(s.hosts for s in self.shards) / self.windows_seen


@dataclass(frozen=True)
class CostLine:
    item: str
    quantity: float
    unit: str
    unit_usd: float  # the price of one `unit`

    @property
    def usd(self) -> float:
        return self.quantity * self.unit_usd


@dataclass(frozen=True)
class MonthlyCost:
    design: str
    lines: tuple[CostLine, ...]

    @property
    def total(self) -> float:
        return sum(line.usd for line in self.lines)

    def line(self, item: str) -> CostLine:
        return next(line for line in self.lines if line.item == item)


def fleet(usage: Usage, prices: Prices, windows: int = 30, design: str = "fleet") -> MonthlyCost:
    scale = windows / usage.windows_seen  # observed shards -> a month of windows
    shards = usage.shards
    hosts_closed_s = sum(s.hosts * s.closed_s for s in shards)
    lines = (
        *_instances(((s.instance_type, max(EC2_MINIMUM_S, s.stopped_s)) for s in shards),
                    scale, prices),
        _root_volumes(ROOT_GIB * sum(s.closed_s for s in shards) * scale / SECONDS_PER_MONTH,
                      prices),
        _ipv4(sum(s.stopped_s for s in shards) * scale / 3600, prices),
        _data_volumes(usage.volume_gib * hosts_closed_s * scale / SECONDS_PER_MONTH, prices),
        _snapshots(usage, prices),
        *_requests(usage, windows, len(shards) / usage.windows_seen,
                   EVENTS_PER_FLEET_INSTANCE, prices),
        *_monitoring(usage, windows, len(shards) / usage.windows_seen,
                     EVENTS_PER_FLEET_INSTANCE, prices),
    )
    return MonthlyCost(design, lines)


def kept_up(usage: Usage, prices: Prices, windows: int = 30) -> MonthlyCost:
    """The fleet with every instance up until the deadline, its snapshots taking as long."""
    stretched = tuple(replace(s, stopped_s=usage.window_s, closed_s=usage.window_s + s.snapshot_s)
                      for s in usage.shards)
    return fleet(replace(usage, shards=stretched), prices, windows, design="kept up")


def persistent(usage: Usage, prices: Prices, windows: int = 30) -> MonthlyCost:
    """One instance for every host, up while the window's slowest shard was; volumes all month
    (they exist around the clock, even if read only minutes a night)."""
    longest: dict[str, float] = defaultdict(float)
    for shard in usage.shards:
        longest[shard.window_id] = max(longest[shard.window_id], shard.stopped_s)
    instance_type = usage.shards[0].instance_type if usage.shards else "t4g.small"
    scale = windows / usage.windows_seen
    lines = (
        *_instances(((instance_type, max(EC2_MINIMUM_S, s)) for s in longest.values()),
                    scale, prices),
        _root_volumes(ROOT_GIB, prices),
        _ipv4(sum(longest.values()) * scale / 3600, prices),
        _data_volumes(usage.hosts * usage.volume_gib, prices),
        _snapshots(usage, prices),
        *_requests(usage, windows, 1.0, EVENTS_PER_PERSISTENT_START, prices),
        *_monitoring(usage, windows, 1.0, EVENTS_PER_PERSISTENT_START, prices),
    )
    return MonthlyCost("persistent", lines)


def _instances(billed: Iterable[tuple[str, float]], scale: float,
               prices: Prices) -> tuple[CostLine, ...]:
    hours: dict[str, float] = defaultdict(float)
    for instance_type, seconds in billed:
        hours[instance_type] += seconds * scale / 3600
    return tuple(CostLine(f"EC2 {t}", h, "h", prices.instance_hourly(t))
                 for t, h in sorted(hours.items()))


def _root_volumes(gib_months: float, prices: Prices) -> CostLine:
    return CostLine(f"EBS root volumes ({ROOT_GIB:g} GiB gp3)", gib_months, "GiB-month",
                    prices["ebs_gp3_gib_month"])


def _ipv4(hours: float, prices: Prices) -> CostLine:
    # An auto-assigned public IPv4 address is released when the instance stops (EC2 User Guide,
    # "Public IPv4 addresses"), so it is billed while the instance runs, not while it exists.
    return CostLine("public IPv4 addresses", hours, "h", prices["public_ipv4_hourly"])


def _data_volumes(gib_months: float, prices: Prices) -> CostLine:
    return CostLine("EBS data volumes (gp3)", gib_months, "GiB-month",
                    prices["ebs_gp3_gib_month"])


def _snapshots(usage: Usage, prices: Prices) -> CostLine:
    # EBS stores only the blocks changed since the snapshot a volume was made from: "Snapshot A
    # is used to create EBS volume 1. Snapshot D is created from EBS volume 1. Snapshot D is an
    # incremental snapshot of A" (EBS User Guide, "Write Amazon EBS snapshots with EBS direct
    # APIs"), so the fleet's volumes made from last night's snapshots stay incremental; each
    # stores the 512 KiB blocks its window changed (SNAPSHOT_BYTES_PER_SENT_BYTE).
    gib = usage.stored_gib + usage.retention_days * usage.snapshot_growth_gib
    return CostLine("EBS snapshots", gib, "GiB-month", prices["snapshot_gib_month"])


def _requests(usage: Usage, windows: int, instances: float, events_per_instance: int,
              prices: Prices) -> tuple[CostLine, ...]:
    api, events, handled = _handled(usage, windows, instances, events_per_instance)
    invocations = handled + RECONCILES_PER_MONTH
    return (
        CostLine("Lambda requests", invocations, "requests",
                 prices["lambda_per_million_requests"] / MILLION),
        CostLine("Lambda compute", invocations * LAMBDA_GB * LAMBDA_SECONDS, "GB-s",
                 prices["lambda_gb_second"]),
        CostLine("API Gateway", api, "requests", prices["api_gateway_per_million"] / MILLION),
        CostLine("DynamoDB writes", handled * WRITES_PER_INVOCATION, "requests",
                 prices["dynamodb_per_million_writes"] / MILLION),
        CostLine("DynamoDB reads", handled * READS_PER_INVOCATION + RECONCILES_PER_MONTH,
                 "requests", prices["dynamodb_per_million_reads"] / MILLION),
        # The open and reconcile schedules are EventBridge rules, priced here at the
        # Scheduler's rate (an upper bound); the deadline is a one-time Scheduler schedule.
        CostLine("EventBridge Scheduler", windows * 2 + RECONCILES_PER_MONTH, "invocations",
                 prices["scheduler_per_million"] / MILLION),
        CostLine("EventBridge AWS events", events, "events",
                 prices.table.get("eventbridge_aws_events_per_million", 0.0) / MILLION),
    )


def _handled(usage: Usage, windows: int, instances: float,
             events_per_instance: int) -> tuple[float, float, float]:
    """API calls, AWS events and the invocations that handle them, a month. Per window: the
    scheduled open, one launch per instance, the deadline, each instance's EC2 state changes,
    one snapshot notification per host volume, the hosts' API calls (the reconciler, every 5
    minutes all month, comes on top)."""
    api = windows * usage.hosts * API_CALLS_PER_HOST
    events = windows * (instances * events_per_instance + usage.hosts)
    return api, events, windows * (2 + instances) + events + api


def _monitoring(usage: Usage, windows: int, instances: float, events_per_instance: int,
                prices: Prices) -> tuple[CostLine, ...]:
    """CloudWatch at list prices, before its always-free allowance (10 custom metrics, 10
    alarms, 3 dashboards of up to 50 metrics, 5 GB of logs, 1 million API requests a month),
    which an account that uses CloudWatch for nothing else would take off most of these."""
    evaluations = AGE_EVALUATIONS_PER_DAY * DAYS_PER_MONTH
    metric_hours = (len(WINDOW_METRICS) * WINDOW_METRIC_HOURS * windows
                    + (usage.hosts + 1) * evaluations)  # each host's age, and StaleHosts
    puts = evaluations * -(-(usage.hosts + 1) // 1000)  # PutMetricData takes 1,000 values
    invocations = _handled(usage, windows, instances, events_per_instance)[2] \
        + RECONCILES_PER_MONTH
    return (
        CostLine("CloudWatch custom metrics", metric_hours / HOURS_PER_MONTH, "metric-month",
                 prices["cloudwatch_metric_month"]),
        CostLine("CloudWatch alarms", ALARMS, "alarm-month", prices["cloudwatch_alarm_month"]),
        CostLine("CloudWatch dashboard", usage.dashboards, "dashboard-month",
                 prices["cloudwatch_dashboard_month"]),
        CostLine("CloudWatch PutMetricData", puts, "requests",
                 prices["cloudwatch_per_million_requests"] / MILLION),
        CostLine("CloudWatch Logs ingested", invocations * LOG_BYTES_PER_INVOCATION / GIB, "GiB",
                 prices["cloudwatch_logs_ingested_gib"]),
    )


def cloudwatch_free_usd(cost: MonthlyCost, hosts: float) -> float:
    """What CloudWatch's always-free tier takes off `cost`'s CloudWatch lines in an account that
    uses none of it for anything else (the lines are at list price)."""
    free = {"CloudWatch custom metrics": FREE_METRIC_MONTHS, "CloudWatch alarms": FREE_ALARMS,
            "CloudWatch PutMetricData": FREE_REQUESTS, "CloudWatch Logs ingested": FREE_LOGS_GIB,
            "CloudWatch dashboard": FREE_DASHBOARDS
            if hosts + DASHBOARD_METRICS_BESIDE_HOSTS <= FREE_DASHBOARD_METRICS else 0}
    return sum(min(line.quantity, free[line.item]) * line.unit_usd
               for line in cost.lines if line.item in free)


# Until local/demo.py calls chalicelib.cost_report.compare(): the earlier one-window API, now
# priced as the fleet. Delete with the demo's three calls.
@dataclass(frozen=True)
class WindowUsage:
    instance_type: str
    hosts: int
    billed_seconds: float
    window_seconds: float
    volume_gib: float  # all host volumes
    stored_bytes: int
    sent_bytes: int
    retention_days: int = 20

    def usage(self) -> Usage:
        shard = ShardRun("observed", self.instance_type, self.hosts, self.billed_seconds,
                         self.billed_seconds + SNAPSHOT_SETTLE_S)
        return Usage((shard,), self.window_seconds, self.stored_bytes / GIB,
                     self.sent_bytes / GIB, self.volume_gib / max(1, self.hosts),
                     self.retention_days)


def month_at(usage: WindowUsage, prices: Prices, windows: int = 30) -> MonthlyCost:
    return fleet(usage.usage(), prices, windows)


def month_kept_up(usage: WindowUsage, prices: Prices, windows: int = 30) -> MonthlyCost:
    return kept_up(usage.usage(), prices, windows)


def render(observed: MonthlyCost, kept: MonthlyCost, prices: Prices) -> str:
    from chalicelib.cost_report import table  # here: cost_report imports this module

    return table((observed, kept), prices)
