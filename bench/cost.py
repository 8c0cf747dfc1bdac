"""A month of Offsite for a scenario, every line priced: `python -m bench.cost`.

By default the seed scenario (shared/seed: four hosts, 5 GiB each, 0.5 GiB sent a night
between them, 20 days kept, a window a night) on t4g.small, as the per-window fleet beside the
earlier persistent design and the fleet kept up for the whole window. Options change the
scenario; --prices prices it with another file. See bench/README.md for how to read it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

from chalicelib.cost import UnknownPriceError, load_prices
from chalicelib.cost_report import Scenario, compare, seed_scenario

GOAL_USD = 2.00
OPTIONS = {  # Scenario field -> (type, help)
    "hosts": (int, "hosts"), "host_gib": (float, "GiB each host's archive holds"),
    "changed_gib": (float, "GiB all hosts send in a night, together"),
    "retention_days": (int, "days of snapshots kept"),
    "instance_type": (str, "the archive instances' type"),
    "volume_gib": (float, "GiB of each host's data volume"),
    "hosts_per_archive": (int, "hosts per shard"), "boot_s": (float, "launch to sshd, s"),
    "uplink_mib_s": (float, "each host's upload, MiB/s"),
    "snapshot_settle_s": (float, "stop to snapshots complete, s"),
    "window_hours": (float, "the window's length (kept up)"),
    "snapshot_bytes_per_sent_byte": (float, "snapshot bytes (changed 512 KiB blocks) per "
                                            "byte sent, as bench/wire measures it"),
    "dashboards": (int, "CloudWatch dashboards (0: deployed with init --no-dashboard)"),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split(
        "\n\n")[0])
    seed = seed_scenario()
    for field in fields(Scenario):
        if field.name in OPTIONS:
            kind, text = OPTIONS[field.name]
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind,
                                default=getattr(seed, field.name),
                                help=f"{text} (seed: %(default)s)")
    parser.add_argument("--windows", type=int, default=30, help="windows a month")
    parser.add_argument("--prices", type=Path, help="a price file (default: the shipped one)")
    return parser.parse_args(argv)


def scenario_from(args: argparse.Namespace) -> Scenario:
    return replace(seed_scenario(), **{name: getattr(args, name) for name in OPTIONS})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scenario = scenario_from(args)
    try:
        prices = load_prices(args.prices)
        text = compare(scenario.usage(), prices, args.windows)
    except UnknownPriceError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    usage = scenario.usage()
    print(f"A month of {args.windows} windows: {scenario.hosts} hosts of {scenario.host_gib:g}"
          f" GiB, {scenario.changed_gib:g} GiB sent a night between them (snapshots grow "
          f"{scenario.snapshot_bytes_per_sent_byte:g} x that: {usage.snapshot_growth_gib:.3g} "
          f"GiB of changed 512 KiB blocks), {scenario.retention_days} days kept; "
          f"{len(usage.shards)} shard(s) of "
          f"{scenario.instance_type}, each up {usage.shards[0].stopped_s:.0f} s a window and "
          f"deleted {scenario.snapshot_settle_s:.0f} s later (goal: the fleet <= "
          f"${GOAL_USD:.2f})\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
