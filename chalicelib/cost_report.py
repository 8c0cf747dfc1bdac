"""A month's cost for a scenario or for observed usage, three designs side by side (pure).

`compare(seed_scenario().usage(), load_prices())` is the table that `make demo`,
`python -m bench.cost` and the README show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chalicelib.cost import (
    DASHBOARDS,
    SNAPSHOT_BYTES_PER_SENT_BYTE,
    SNAPSHOT_SETTLE_S,
    MonthlyCost,
    Prices,
    ShardRun,
    Usage,
    cloudwatch_free_usd,
    fleet,
    kept_up,
    persistent,
)

MIB_PER_GIB = 1024
COUNTED = ("requests", "invocations", "events")  # priced per million


@dataclass(frozen=True)
class Scenario:
    """Hosts and their habits; `usage()` is one window of them, split into shards."""

    name: str
    hosts: int
    host_gib: float  # what each host's archive holds
    changed_gib: float  # what all the hosts send in a night, together
    retention_days: int
    instance_type: str
    window_hours: float = 3.6
    hosts_per_archive: int = 20
    volume_gib: float = 20.0  # each host's data volume
    boot_s: float = 90.0  # RunInstances -> sshd answers (bench/window_overhead: ~1 min real)
    uplink_mib_s: float = 5.0  # each host's upload
    rsync_overhead_s: float = 120.0  # file list, checksum verification, report
    stop_s: float = 45.0  # StopInstances -> stopped, still billed
    snapshot_settle_s: float = SNAPSHOT_SETTLE_S  # stopped -> snapshots complete
    snapshot_bytes_per_sent_byte: float = SNAPSHOT_BYTES_PER_SENT_BYTE  # bench/wire
    dashboards: int = DASHBOARDS  # 0: deployed with `offsite-admin init --no-dashboard`

    def shard_sizes(self) -> list[int]:
        count = -(-self.hosts // self.hosts_per_archive)
        base, extra = divmod(self.hosts, count)
        return [base + (1 if i < extra else 0) for i in range(count)]

    def stopped_s(self) -> float:
        """A shard runs until its hosts have sent their share of the night's changes."""
        send_s = self.changed_gib / self.hosts * MIB_PER_GIB / self.uplink_mib_s
        return self.boot_s + self.rsync_overhead_s + send_s + self.stop_s

    def usage(self) -> Usage:
        stopped = self.stopped_s()
        shards = tuple(ShardRun(self.name, self.instance_type, n, stopped,
                                stopped + self.snapshot_settle_s) for n in self.shard_sizes())
        return Usage(shards, self.window_hours * 3600, self.hosts * self.host_gib,
                     self.changed_gib, self.volume_gib, self.retention_days,
                     self.snapshot_bytes_per_sent_byte, self.dashboards)


def seed_scenario() -> Scenario:
    """The hand-run setup Offsite replaces (shared/seed): hosts C, H, O and L, 5 GiB each,
    0.5 GiB sent a night between them ("our typical change set is less than 1GiB"), 20 days
    kept, one window a night; on Graviton, Offsite's default type."""
    return Scenario("seed", hosts=4, host_gib=5.0, changed_gib=0.5, retention_days=20,
                    instance_type="t4g.small")


def designs(usage: Usage, prices: Prices, windows: int = 30) -> tuple[MonthlyCost, ...]:
    return (fleet(usage, prices, windows), persistent(usage, prices, windows),
            kept_up(usage, prices, windows))


def compare(usage: Usage, prices: Prices, windows: int = 30) -> str:
    """The three designs side by side, then the fleet's lines with quantity and unit price."""
    costs = designs(usage, prices, windows)
    free = cloudwatch_free_usd(costs[0], usage.hosts)
    note = (f"CloudWatch's lines are at list price: in an account that uses CloudWatch's "
            f"always-free tier for nothing else, it takes ${free:.2f} off each design (the "
            f"fleet: ${costs[0].total - free:.2f})")
    return f"{table(costs, prices)}\n{note}\n\n{breakdown(costs[0])}"


def table(costs: Sequence[MonthlyCost], prices: Prices) -> str:
    items = list(dict.fromkeys(line.item for cost in costs for line in cost.lines))
    rows = [f"{'USD a month':30}" + "".join(f" {c.design:>11}" for c in costs)]
    for item in items:
        rows.append(f"{item:30}" + "".join(f" {_usd_of(c, item):11.2f}" for c in costs))
    rows.append(f"{'total per month (USD)':30}" + "".join(f" {c.total:11.2f}" for c in costs))
    rows.append(f"prices: {prices.region}, read {prices.read_on} ({prices.source})")
    return "\n".join(rows)


def breakdown(cost: MonthlyCost) -> str:
    rows = [f"{cost.design}, line by line (quantity x unit price = USD a month):"]
    for line in cost.lines:
        rows.append(f"  {line.item:30} {_quantity(line.quantity):>10} {line.unit:11} x "
                    f"{_unit_price(line.unit_usd, line.unit):>30} = {line.usd:7.4f}")
    rows.append(f"  {'total':30} {'':>10} {'':11}   {'':>30} = {cost.total:7.4f}")
    return "\n".join(rows)


def _usd_of(cost: MonthlyCost, item: str) -> float:
    return sum(line.usd for line in cost.lines if line.item == item)


def _quantity(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.4g}"


def _unit_price(usd: float, unit: str) -> str:
    if unit in COUNTED:
        return f"${usd * 1e6:.4g} per million {unit}"
    return f"${usd:.4g}/{unit}"
