"""What a backup window of an archive fleet costs beyond the transfers themselves:
`python -m bench.window_overhead`.

1. Instance time: one window of log-normal transfers on its archives (one per shard of at most
   HOSTS_PER_ARCHIVE hosts), simulated with a fake clock (bench/simulated_window.py): billed
   instance seconds over the sum of each archive's longest transfer, beside the same archives
   kept up for the whole window, one host that never reports, and the single instance that
   served every host before issue 11.
2. AWS calls: the same simulation at several sizes, the API calls the service makes through its
   ports per host and per event: they must not grow with the number of hosts.

bench/moto_app.py drives a whole window through app.py on a moto server. See bench/README.md
for how to read the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone

from bench.quiet import quiet_output
from bench.simulated_window import (
    EVENT_KINDS,
    RECONCILE_S,
    Scenario,
    SimulationError,
    WindowRun,
    kept_up_billed_s,
    random_transfers,
    simulate,
    single_instance_billed_s,
)
from chalicelib.fleet import FleetConfigError, check_hosts_per_archive
from chalicelib.names import InvalidHostNameError, check_host_name

DEFAULT_SCALES = "100,500,1000"


class BenchError(RuntimeError):
    pass


def parse_transfers(spec: str) -> dict[str, float]:
    """`c=420,h=900` -> {"c": 420.0, "h": 900.0}: host name = transfer seconds."""
    hosts: dict[str, float] = {}
    for item in spec.split(","):
        name, sep, seconds = item.strip().partition("=")
        try:
            value = float(seconds)
            check_host_name(name)
        except (ValueError, InvalidHostNameError) as exc:
            raise argparse.ArgumentTypeError(f"{item!r}: want host=seconds ({exc})") from exc
        if not sep or not 0 < value < float("inf") or name in hosts:
            raise argparse.ArgumentTypeError(f"{item!r}: want host=seconds, seconds > 0, "
                                             "each host once")
        hosts[name] = value
    return hosts


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: want a number above 0")
    return value


def _some(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: want 1 or more")
    return value


def _per_archive(text: str) -> int:
    try:
        return check_hosts_per_archive(int(text))
    except (ValueError, FleetConfigError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _scales(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({_some(v) for v in text.split(",")}))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text}: want host counts, 100,500,1000") from exc


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.window_overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=_some, default=1000, metavar="N",
                   help="hosts with log-normal transfer times, median 600 s (default 1000)")
    p.add_argument("--transfers", type=parse_transfers, metavar="HOST=S,...",
                   help="these hosts' transfer seconds instead (c=420,h=900,o=60,l=1800)")
    p.add_argument("--seed", type=int, default=2026, help="seed of the transfers (default 2026)")
    p.add_argument("--hosts-per-archive", type=_per_archive, default=20, metavar="N",
                   help="HOSTS_PER_ARCHIVE (default 20)")
    p.add_argument("--boot", type=_positive, default=30.0, metavar="S",
                   help="RunInstances to the 'running' event (default 30 s)")
    p.add_argument("--stop", type=_positive, default=45.0, metavar="S",
                   help="StopInstances to the 'stopped' event (default 45 s)")
    p.add_argument("--snapshot", type=_positive, default=300.0, metavar="S",
                   help="CreateSnapshot to its completion event (default 300 s)")
    p.add_argument("--window-hours", type=_positive, default=3.6, metavar="H",
                   help="the window's length (default 3.6)")
    p.add_argument("--never-finishes", metavar="HOST",
                   help="the host that never reports (default: the longest transfer)")
    p.add_argument("--scales", type=_scales, default=_scales(DEFAULT_SCALES), metavar="N,N,...",
                   help=f"host counts of the AWS-call table (default {DEFAULT_SCALES})")
    p.add_argument("--quick", action="store_true", help="60 hosts; AWS calls at 20 and 60")
    p.add_argument("--trace", action="store_true", help="print the windows' events")
    args = p.parse_args(argv)
    if args.quick:
        args.hosts, args.scales = 60, (20, 60)
    return args


def scenario_from(args: argparse.Namespace, hosts: int | None = None) -> Scenario:
    transfers = args.transfers if args.transfers and hosts is None else \
        random_transfers(hosts or args.hosts, args.seed)
    return Scenario(transfers=transfers, boot_s=args.boot, stop_s=args.stop,
                    snapshot_s=args.snapshot, window_hours=args.window_hours,
                    hosts_per_archive=args.hosts_per_archive)


def deadline_scenario(scenario: Scenario, host: str | None = None) -> Scenario:
    """The same window, but `host` (by default the longest transfer) never reports."""
    if host is None:
        host = max(sorted(scenario.transfers), key=lambda h: scenario.transfers[h])
    if host not in scenario.transfers:
        raise BenchError(f"--never-finishes {host}: not one of the simulated hosts")
    return replace(scenario, never_finish=frozenset({host}))


def idle_scenario(scenario: Scenario, host: str) -> Scenario:
    """The same window, but `host` never asks for a session (idle close after the grace)."""
    return replace(scenario, never_ask=frozenset({host}))


def idle_lines(every: WindowRun, idle: WindowRun) -> list[str]:
    """What the host that never asked cost: its archive against the goal (billed <= 1.15 x
    its other hosts' longest transfer + boot + the grace) and against staying to the
    deadline."""
    scenario = idle.scenario
    (host,) = scenario.never_ask
    shard = next(s for s in idle.shards if host in s.hosts)
    before = next(s for s in every.shards if s.shard_id == shard.shard_id)
    others = [scenario.transfers[h] for h in shard.hosts if h != host]
    longest = max(others, default=0.0)
    bound = 1.15 * longest + scenario.boot_s + scenario.start_grace_s
    return [f"   {host} never asking for a session: its archive {shard.shard_id} closed by "
            f"{shard.closing_event or '?'} (idle close, grace {scenario.start_grace_s:g} s after "
            f"it was ready, the reconciler looking every {RECONCILE_S:g} s); billed "
            f"{shard.billed_s:,} s against {before.billed_s:,} s when {host} sends; the goal "
            f"1.15 x its other hosts' longest ({longest:,.0f} s) + boot + grace = {bound:,.0f} s: "
            f"{'met' if shard.billed_s <= bound else 'NOT met'} "
            f"(billed / that bound {shard.billed_s / bound:.3f}); had it held the archive to "
            f"the deadline: {kept_up_billed_s(scenario, 1):,} s"]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """Columns padded to their widest cell: the first `text_columns` left-aligned, the numbers
    after them right-aligned."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = [[c.ljust(w) if i < text_columns else c.rjust(w) for i, (c, w) in
              enumerate(zip(row, widths, strict=True))] for row in (header, *rows)]
    return "\n".join("  ".join(line).rstrip() for line in lines)


def _hosts(count: int) -> str:
    return f"{count:,} host" if count == 1 else f"{count:,} hosts"


def ratio(run: WindowRun) -> float | None:
    """Over the archives their last report closed: billed seconds over the sum of their
    longest transfers (None when the deadline closed every archive)."""
    return run.billed_by_reports_s / run.sum_longest_s if run.by_reports else None


def excess_ratio(run: WindowRun) -> float | None:
    """The same, less each archive's boot and stop: 1.00 is an archive up exactly while its
    slowest host sends."""
    if not run.by_reports:
        return None
    fixed = len(run.by_reports) * (run.scenario.boot_s + run.scenario.stop_s)
    return (run.billed_by_reports_s - fixed) / run.sum_longest_s


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def instance_time_report(scenario: Scenario, every: WindowRun, missing: WindowRun,
                         idle: WindowRun | None = None) -> str:
    archives = len(every.shards)
    kept = kept_up_billed_s(scenario, archives)
    kept_ratio = kept_up_billed_s(scenario, len(every.by_reports)) / every.sum_longest_s \
        if every.by_reports else None
    longest = max(scenario.transfers[h] for h in every.reported)
    single = single_instance_billed_s(replace(scenario, transfers={"all": longest}))
    rows = [
        ["kept up for the whole window (the seed's way)", "a timer", f"{archives}",
         f"{kept:,}", "-", f"{every.sum_longest_s:,.0f}", _ratio(kept_ratio), "-", "1.000"],
        _run_row("on demand, each archive stopped by its last report", every, kept),
        _run_row(f"the same, but {_names(missing.scenario.never_finish)} never reports", missing,
                 kept),
        *([_run_row(f"the same, but {_names(idle.scenario.never_ask)} never asks (idle close)",
                    idle, kept)] if idle else []),
        ["one instance for every host (before issue 11)", "the last report", "1",
         f"{single:,}", "-", f"{longest:,.0f}", f"{single / longest:.3f}",
         f"{(single - scenario.boot_s - scenario.stop_s) / longest:.3f}", "-"],
    ]
    header = ["case", "closed by", "archives", "billed s", "metric s", "sum longest s",
              "billed/longest", "less boot+stop", "vs kept-up"]
    source = "given transfers" if len(scenario.transfers) < 10 and all(
        not h.startswith("host-") for h in scenario.transfers) else \
        "log-normal transfers, median 600 s"
    lines = [
        f"1. Instance time per window (simulated, fake clock): {_hosts(len(scenario.transfers))}"
        f" ({source}) in {archives} archive{'' if archives == 1 else 's'} of at most "
        f"{scenario.hosts_per_archive}, boot "
        f"{scenario.boot_s:g} s, stop {scenario.stop_s:g} s, snapshots {scenario.snapshot_s:g} s,"
        f" window {scenario.window_hours:g} h",
        "   billed = each archive's RunInstances to its 'stopped' event, per second, 60 s "
        "minimum, summed; metric = the InstanceSecondsBilled the service records;",
        "   sum longest = over the archives their last report closed, each one's longest "
        "transfer (last row: the longest that ends in the window);",
        "   billed/longest = those archives' billed s over it; less boot+stop = the same less "
        "each one's boot and stop",
        "", table(header, rows, text_columns=2), ""]
    lines.extend(_missing_lines(every, missing))
    if idle:
        lines.extend(idle_lines(every, idle))
    if every.missed:
        lines.append(f"   transfers longer than the window: {_names(every.missed)} "
                     f"({_hosts(len(every.missed))}); their archives close at the deadline and "
                     "are left out of the ratios")
    return "\n".join(lines)


def _names(hosts: frozenset[str]) -> str:
    names = sorted(hosts)
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


def _closed_by(run: WindowRun) -> str:
    by_deadline = sum(1 for s in run.shards if s.closing_event == "deadline")
    idle = sum(1 for s in run.shards if s.closing_event == "reconcile")  # idle close
    reported = f"{len(run.reported)}/{run.hosts} in"
    if not by_deadline and not idle:
        return f"each its last report ({reported})"
    parts = [f"{len(run.shards) - by_deadline - idle} reports",
             *([f"{idle} idle close"] if idle else []),
             *([f"{by_deadline} deadline"] if by_deadline else [])]
    return f"{', '.join(parts)} ({reported})"


def _run_row(case: str, run: WindowRun, kept_up_s: int) -> list[str]:
    return [case, _closed_by(run), f"{len(run.shards)}", f"{run.billed_s:,}",
            "-" if run.metric_billed_s is None else f"{run.metric_billed_s:,.0f}",
            f"{run.sum_longest_s:,.0f}", _ratio(ratio(run)), _ratio(excess_ratio(run)),
            f"{run.billed_s / kept_up_s:.3f}"]


def _missing_lines(every: WindowRun, missing: WindowRun) -> list[str]:
    """Which archives the host that never reported kept up, and what the others cost."""
    before = {s.shard_id: s for s in every.shards}
    kept_up = [s for s in missing.shards if s.closing_event == "deadline"
               and before[s.shard_id].closing_event != "deadline"]
    others = [s for s in missing.shards if s.closing_event == "report"]
    same = all(before[s.shard_id].billed_s == s.billed_s for s in others)
    was = sum(before[s.shard_id].billed_s for s in kept_up)
    return [f"   {_names(missing.scenario.never_finish)} never reporting kept archive "
            f"{', '.join(s.shard_id for s in kept_up) or 'none'} up until the deadline "
            f"({sum(s.billed_s for s in kept_up):,} s billed instead of {was:,}); the "
            f"{len(others)} archives closed by their reports were billed "
            f"{sum(s.billed_s for s in others):,} s, "
            f"{'the same as' if same else 'NOT the same as'} without it"]


def calls_report(runs: Sequence[WindowRun]) -> str:
    header = ["AWS calls per event", *(_hosts(r.hosts) for r in runs)]
    rows = []
    for kind in EVENT_KINDS:
        cells = []
        for run in runs:
            events, calls = run.log.events.get(kind, 0), run.log.per_kind().get(kind, 0)
            cells.append(f"{calls / events:.2f} ({events:,})" if events else "-")
        rows.append([kind, *cells])
    rows.append(["every event", *(f"{r.log.total / r.events:.2f} ({r.events:,})"
                                  for r in runs)])
    rows.append(["AWS calls per host", *(f"{r.log.total / r.hosts:.2f}" for r in runs)])
    rows.append(["AWS calls per window", *(f"{r.log.total:,}" for r in runs)])
    rows.append(["archives", *(f"{len(r.shards)}" for r in runs)])
    return "\n".join([
        "2. AWS calls the service makes through its ports, per event (events in brackets): "
        "the real adapters' API calls for each port call (Ec2Compute, the DynamoDB stores, "
        "the Scheduler, SNS, Lambda's Invoke per launch)", "",
        table(header, rows)])


def operations(run: WindowRun) -> str:
    """The AWS calls of one run by event and operation (--trace)."""
    rows = [[kind, op, f"{n:,}", f"{n / run.log.events[kind]:.2f}"]
            for (kind, op), n in sorted(run.log.calls.items(),
                                        key=lambda kv: (EVENT_KINDS.index(kv[0][0]), kv[0][1]))]
    return f"AWS calls of {_hosts(run.hosts)} by operation:\n" + table(
        ["event", "operation", "calls", "per event"], rows, text_columns=2)


def trace(runs: Sequence[WindowRun]) -> str:
    lines = []
    for run in runs:
        lines.append(f"-- {run.reason}")
        lines.extend(f"{s.at_s:9.0f} s  {s.event:<60} -> {s.state:<12} {s.reason}"
                     for s in run.steps)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"Offsite window overhead, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs\n")
    try:
        scenario = scenario_from(args)
        with quiet_output():
            every = simulate(scenario)
            # By default the slowest host that does finish in time never reports.
            host = args.never_finishes or max(sorted(every.reported),
                                              key=lambda h: scenario.transfers[h])
            missing = simulate(deadline_scenario(scenario, host))
            idle = simulate(idle_scenario(scenario, host))
            scaled = [simulate(scenario_from(args, n)) for n in args.scales]
        print(instance_time_report(scenario, every, missing, idle) + "\n")
        print(calls_report(scaled))
        if args.trace:
            print("\n" + operations(scaled[-1]) + "\n\n" + trace([every, missing]))
    except (BenchError, SimulationError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
