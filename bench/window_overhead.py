"""What a backup window costs beyond the transfers themselves: `python -m bench.window_overhead`.

1. Instance time: one window simulated with a fake clock (bench/simulated_window.py); billed
   instance seconds over the longest host transfer, beside the same for an instance kept up for
   the whole window as the seed setup did, and a window whose deadline closes it.
2. Handler time: whole windows of events through app.py's handlers on a moto server
   (bench/moto_app.py), beside the same events through the service on in-memory fakes
   (bench/handler_throughput.py).

See bench/README.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone

from bench.handler_throughput import (
    HANDLERS,
    BenchError,
    Timings,
    deadline_plan,
    measure_on_fakes,
)
from bench.moto_app import measure_on_moto, quiet_output
from bench.simulated_window import (
    Scenario,
    SimulationError,
    WindowRun,
    kept_up_billed_s,
    random_transfers,
    simulate,
)
from chalicelib.names import InvalidHostNameError, check_host_name

DEFAULT_HOSTS = "c=420,h=900,o=60,l=1800"


def parse_hosts(spec: str) -> dict[str, float]:
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


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: want 0 or more")
    return value


def _some(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: want 1 or more")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.window_overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=parse_hosts, default=parse_hosts(DEFAULT_HOSTS),
                   help=f"host=transfer seconds, ... (default {DEFAULT_HOSTS})")
    p.add_argument("--random", type=_count, metavar="N", default=0,
                   help="N hosts with log-normal transfer times (median 600 s) instead")
    p.add_argument("--seed", type=int, default=2026, help="seed of --random (default 2026)")
    p.add_argument("--boot", type=_positive, default=30.0, metavar="S",
                   help="StartInstances to the 'running' event (default 30 s)")
    p.add_argument("--stop", type=_positive, default=45.0, metavar="S",
                   help="StopInstances to the 'stopped' event (default 45 s)")
    p.add_argument("--snapshot", type=_positive, default=300.0, metavar="S",
                   help="CreateSnapshot to its completion event (default 300 s)")
    p.add_argument("--window-hours", type=_positive, default=3.6, metavar="H",
                   help="the window's length (default 3.6)")
    p.add_argument("--never-finishes", metavar="HOST",
                   help="the host of the deadline case (default: the longest transfer)")
    p.add_argument("--windows", type=_some, default=20, metavar="N",
                   help="windows through the handlers (default 20)")
    p.add_argument("--deadline-windows", type=_count, default=4, metavar="N",
                   help="how many of those the deadline closes (default 4)")
    p.add_argument("--handler-hosts", type=_some, default=4, metavar="N",
                   help="hosts per window through the handlers, at most the simulated ones "
                        "(default 4)")
    p.add_argument("--no-moto", action="store_true",
                   help="time the handlers on the in-memory fakes only")
    p.add_argument("--quick", action="store_true",
                   help="3 windows through the handlers, 1 closed by the deadline")
    p.add_argument("--trace", action="store_true", help="print the simulated windows' events")
    args = p.parse_args(argv)
    if args.quick:
        args.windows, args.deadline_windows = 3, 1
    return args


def scenario_from(args: argparse.Namespace) -> Scenario:
    transfers = random_transfers(args.random, args.seed) if args.random else args.hosts
    return Scenario(transfers=transfers, boot_s=args.boot, stop_s=args.stop,
                    snapshot_s=args.snapshot, window_hours=args.window_hours)


def deadline_scenario(scenario: Scenario, host: str | None = None) -> Scenario:
    """The same window, but `host` (by default the longest transfer) never reports."""
    if host is None:
        host = max(sorted(scenario.transfers), key=lambda h: scenario.transfers[h])
    if host not in scenario.transfers:
        raise BenchError(f"--never-finishes {host}: not one of the simulated hosts")
    return replace(scenario, never_finish=frozenset({host}))


def table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """Columns padded to their widest cell: the first `text_columns` left-aligned, the numbers
    after them right-aligned."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = [[c.ljust(w) if i < text_columns else c.rjust(w) for i, (c, w) in
              enumerate(zip(row, widths, strict=True))] for row in (header, *rows)]
    return "\n".join("  ".join(line).rstrip() for line in lines)


def _hosts(count: int) -> str:
    return f"{count} host" if count == 1 else f"{count} hosts"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def instance_time_report(scenario: Scenario, runs: Sequence[WindowRun]) -> str:
    kept, longest = kept_up_billed_s(scenario), scenario.longest_transfer_s
    rows = [["kept up for the whole window (seed)", "a timer", f"{kept:,}", "-",
             _seconds(longest), f"{kept / longest:.2f}", "1.000"]]
    rows.extend(_run_row(run, kept) for run in runs)
    header = ["case", "closed by", "billed s", "metric s", "longest transfer s",
              "billed/longest", "vs kept-up"]
    return "\n".join([
        f"1. Instance time per window (simulated, fake clock): {_hosts(len(scenario.transfers))}, "
        f"boot {scenario.boot_s:g} s, stop {scenario.stop_s:g} s, snapshots "
        f"{scenario.snapshot_s:g} s, window {scenario.window_hours:g} h",
        "   billed = StartInstances to the 'stopped' event, per second, 60 s minimum per start;",
        "   metric = the InstanceSecondsBilled the service records",
        "", table(header, rows, text_columns=2)])


def _run_row(run: WindowRun, kept_up_s: int) -> list[str]:
    hosts, missed, longest = len(run.scenario.transfers), sorted(run.missed), \
        run.scenario.longest_transfer_s
    if missed:  # its longest transfer never ended: no ratio to it
        names = ", ".join(missed[:3]) + (" ..." if len(missed) > 3 else "")
        case, ratio = f"on demand, {names} never reported", "-"
    else:
        case, ratio = "on demand, every host reports", f"{run.billed_s / longest:.2f}"
    closed_by = "the deadline" if run.closing_event == "deadline" else "the last report"
    return [case, f"{closed_by} ({hosts - len(missed)}/{hosts} in)", f"{run.billed_s:,}",
            _seconds(run.metric_billed_s), _seconds(longest), ratio,
            f"{run.billed_s / kept_up_s:.3f}"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def handler_report(fakes: Timings, moto: Timings | None, hosts: int, plan: Sequence[bool]) -> str:
    header = ["handler", "events", "AWS calls/event", "moto p50 ms", "moto p99 ms",
              "fakes p50 ms", "fakes p99 ms", "moto/fakes p50"]
    rows = []
    for h in HANDLERS:
        m50, f50 = (moto.percentile_ms(h, 50) if moto else None), fakes.percentile_ms(h, 50)
        ratio = f"{m50 / f50:.0f}x" if m50 is not None and f50 else "-"
        calls = moto.aws_calls_per_event(h) if moto else None
        rows.append([h, str(len(fakes.samples[h])), "-" if calls is None else f"{calls:.1f}",
                     _ms(m50), _ms(moto.percentile_ms(h, 99) if moto else None), _ms(f50),
                     _ms(fakes.percentile_ms(h, 99)), ratio])
    lines = [f"2. Window events through the handlers: {len(plan)} windows of {_hosts(hosts)}, "
             f"{sum(plan)} closed by the deadline", "", table(header, rows), ""]
    for t in (moto, fakes):
        if t is not None:
            counted = f", {sum(t.aws_calls.values())} AWS calls" if t.aws_calls else ""
            lines.append(f"{t.label}: {t.events} events{counted} in {t.busy_s:.2f} s "
                         f"(wall {t.wall_s:.1f} s with the harness)\n"
                         f"    {t.events_per_s:,.1f} events/s, {t.ms_per_event:.2f} ms/event, "
                         f"CPU {t.cpu_ms_per_event:.2f} ms/event")
    if moto is not None:
        lines.append(f"moto server / in-memory fakes, per event: "
                     f"{moto.ms_per_event / fakes.ms_per_event:.0f}x")
    return "\n".join(lines)


def trace(runs: Sequence[WindowRun]) -> str:
    lines = []
    for run in runs:
        lines.append(f"-- {run.closed_by}")
        lines.extend(f"{s.at_s:9.0f} s  {s.event:<48} -> {s.state:<12} {s.reason}"
                     for s in run.steps)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"Offsite window overhead, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs\n")
    try:
        scenario = scenario_from(args)
        with quiet_output():
            runs = [simulate(scenario),
                    simulate(deadline_scenario(scenario, args.never_finishes))]
        print(instance_time_report(scenario, runs) + "\n")
        if args.trace:
            print(trace(runs) + "\n")
        hosts = sorted(scenario.transfers)[:args.handler_hosts]
        plan = deadline_plan(args.windows, args.deadline_windows)
        with quiet_output():
            moto = None if args.no_moto else measure_on_moto(hosts, plan)
            fakes = measure_on_fakes(hosts, plan)
        print(handler_report(fakes, moto, len(hosts), plan))
    except (BenchError, SimulationError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
