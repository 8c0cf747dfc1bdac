"""bench/window_overhead at a small scale: it runs, and its structural claims hold. Nothing here
depends on how fast the machine is: only the fake clock and counts of events and calls are
asserted."""

from __future__ import annotations

import argparse
import os

import pytest

from bench.simulated_window import (
    MIN_BILLED_S,
    Scenario,
    WindowRun,
    billed_seconds,
    random_transfers,
    simulate,
)
from bench.window_overhead import (
    deadline_scenario,
    excess_ratio,
    idle_scenario,
    main,
    parse_transfers,
    ratio,
)
from chalicelib.window import State

KINDS_PER_SHARD = ("launch", "running", "report", "stopped", "snapshot")


def fleet(hosts: int = 60, **changes: float) -> Scenario:
    return Scenario(random_transfers(hosts, seed=2026), hosts_per_archive=20,
                    **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def every() -> WindowRun:
    return simulate(fleet())


def test_each_archive_is_billed_from_its_launch_to_its_slowest_host_plus_the_stop(
        every: WindowRun) -> None:
    scenario = every.scenario
    assert every.state is State.CLOSED and every.reported == set(scenario.transfers)
    assert [s.shard_id for s in every.shards] == ["s01", "s02", "s03"]
    assert all(len(s.hosts) == 20 for s in every.shards)
    for shard in every.shards:
        assert shard.closing_event == "report"
        assert shard.launched_s == 0.0  # launched in its own invocation, right after the open
        assert shard.up_s == scenario.boot_s + shard.longest_transfer_s + scenario.stop_s
        assert shard.billed_s == billed_seconds(shard.up_s)
    # The ratio is computed from the recorded times, and the service's own metric agrees.
    assert every.billed_s == sum(s.billed_s for s in every.shards)
    assert every.metric_billed_s == sum(s.up_s for s in every.shards)
    assert every.sum_longest_s == sum(max(scenario.transfers[h] for h in s.hosts)
                                      for s in every.shards)
    fixed = 3 * (scenario.boot_s + scenario.stop_s)
    excess = excess_ratio(every)
    assert excess == (every.billed_s - fixed) / every.sum_longest_s
    assert excess is not None and 1.0 <= excess <= 1.15
    assert ratio(every) == every.billed_s / every.sum_longest_s
    # Closed once its snapshots completed, after the last archive stopped.
    assert every.window_s == max(s.stopped_s for s in every.shards) + scenario.snapshot_s


def test_a_host_that_never_reports_keeps_only_its_own_archive_up(every: WindowRun) -> None:
    scenario = deadline_scenario(every.scenario)
    (host,) = scenario.never_finish
    missing = simulate(scenario)
    assert missing.missed == {host}
    waited = [s for s in missing.shards if s.closing_event == "deadline"]
    assert [s.hosts for s in waited] == [next(s.hosts for s in every.shards if host in s.hosts)]
    assert waited[0].stopped_s == scenario.window_s + scenario.stop_s
    others = [s for s in missing.shards if s not in waited]
    assert len(others) == 2 and all(s.closing_event == "report" for s in others)
    same = {s.shard_id: (s.launched_s, s.stopped_s) for s in every.shards}
    assert all(same[s.shard_id] == (s.launched_s, s.stopped_s) for s in others)
    assert missing.billed_s > every.billed_s


def test_a_host_that_never_asks_costs_its_grace_not_the_window() -> None:
    """Four hosts on one archive, the others done in 15 minutes: the one that never asks for
    a session holds the archive until the grace after it was ready (and the reconciler's next
    look), not until the deadline; within issue 14's bound (1.15 x the others' longest +
    boot + grace)."""
    scenario = Scenario({"c": 300.0, "h": 600.0, "o": 900.0, "l": 1200.0})
    idle = simulate(idle_scenario(scenario, "l"))
    held = simulate(deadline_scenario(scenario, "l"))
    (shard,) = idle.shards
    assert shard.closing_event == "reconcile" and idle.missed == {"l"}
    assert scenario.boot_s + scenario.start_grace_s <= shard.up_s - scenario.stop_s \
        <= scenario.boot_s + scenario.start_grace_s + 300.0  # the reconciler's period
    assert shard.billed_s <= 1.15 * 900.0 + scenario.boot_s + scenario.start_grace_s
    assert held.billed_s == billed_seconds(scenario.window_s + scenario.stop_s) > shard.billed_s
    # When the others send longer than the grace, the last report closes it at once.
    longer = simulate(idle_scenario(Scenario({"c": 2400.0, "l": 600.0}), "l"))
    assert longer.shards[0].closing_event == "report"
    assert longer.shards[0].up_s == scenario.boot_s + 2400.0 + scenario.stop_s


def test_a_launch_is_billed_at_least_a_minute() -> None:
    run = simulate(Scenario({"o": 5.0}, boot_s=10.0, stop_s=10.0, snapshot_s=1.0))
    (shard,) = run.shards
    assert shard.up_s == 25.0
    assert run.billed_s == MIN_BILLED_S


def test_late_hosts_miss_the_window_and_their_archives_close_at_the_deadline() -> None:
    transfers = random_transfers(40, seed=7)
    assert transfers == random_transfers(40, seed=7) != random_transfers(40, seed=8)
    scenario = Scenario(transfers, window_hours=0.5, hosts_per_archive=10)
    late = {h for h, t in transfers.items() if scenario.boot_s + t >= scenario.window_s}
    assert late
    run = simulate(scenario)
    assert run.state is State.CLOSED and run.missed == late
    assert {s.shard_id for s in run.shards if s.closing_event == "deadline"} == \
        {s.shard_id for s in run.shards if s.hosts & late}


def per_event(run: WindowRun, kind: str) -> float:
    return run.log.per_kind()[kind] / run.log.events[kind]


def test_aws_calls_per_host_and_per_event_do_not_grow_with_the_hosts() -> None:
    small, large = simulate(fleet(100)), simulate(fleet(1000))
    assert (len(small.shards), len(large.shards)) == (5, 50)
    assert large.log.total / large.hosts <= small.log.total / small.hosts * 1.1
    for kind in KINDS_PER_SHARD:
        assert per_event(large, kind) == pytest.approx(per_event(small, kind), rel=0.1), kind
    assert large.log.total / large.events <= small.log.total / small.events * 1.1
    # Each archive is launched once, with one RunInstances (capacity everywhere); the last
    # report of each stops it, and the deadline stops all the others in one call.
    assert large.log.events["launch"] == large.log.calls[("launch", "ec2.launch")] == 50
    assert large.log.calls[("report", "ec2.stop")] == len(large.by_reports)
    assert large.log.calls[("deadline", "ec2.stop")] == (len(large.by_reports) < 50)


@pytest.mark.parametrize("spec", ["c=soon", "c", "C=10", "c=-1", "c=1,c=2", "root=5"])
def test_bad_transfer_specs_are_refused(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_transfers(spec)


def test_quick_run_prints_both_tables(capsys: pytest.CaptureFixture[str]) -> None:
    before = dict(os.environ)
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "60 hosts (log-normal transfers, median 600 s) in 3 archives of at most 20" in out
    assert "on demand, each archive stopped by its last report" in out
    assert "host-014 never reporting kept archive s01 up until the deadline (13,005 s billed" \
        in out
    assert "the 2 archives closed by their reports were billed" in out
    assert "the same as without it" in out
    assert "AWS calls per host" in out and "20 hosts" in out
    assert dict(os.environ) == before
