"""Smoke test of bench/window_overhead: it runs, and its figures hang together. Nothing here
depends on how fast the machine is: only the fake clock and the counts of events are asserted."""

from __future__ import annotations

import argparse
import os

import pytest

from bench.simulated_window import (
    MIN_BILLED_S,
    Scenario,
    kept_up_billed_s,
    random_transfers,
    simulate,
)
from bench.window_overhead import DEFAULT_HOSTS, deadline_scenario, main, parse_hosts
from chalicelib.window import State


def default_scenario() -> Scenario:
    return Scenario(parse_hosts(DEFAULT_HOSTS))


def test_on_demand_instance_costs_less_than_keeping_it_up() -> None:
    scenario = default_scenario()
    run = simulate(scenario)
    longest = scenario.longest_transfer_s
    assert run.state is State.CLOSED and run.reported == set(scenario.transfers)
    assert (run.closing_event, run.closed_by) == ("report", "all 4 expected hosts reported")
    assert run.billed_s / longest <= kept_up_billed_s(scenario) / longest
    assert run.billed_s >= longest + scenario.boot_s
    assert run.instance_up_s == scenario.boot_s + longest + scenario.stop_s
    assert run.window_s == run.instance_up_s + scenario.snapshot_s
    assert run.metric_billed_s == run.instance_up_s


def test_a_host_that_never_finishes_keeps_the_instance_up_until_the_deadline() -> None:
    scenario = deadline_scenario(default_scenario())
    run = simulate(scenario)
    assert run.missed == {"l"}
    assert run.closing_event == "deadline"
    assert run.closed_by == "deadline reached with 1 of 4 hosts missing: l"
    assert run.billed_s == kept_up_billed_s(scenario)


def test_a_start_is_billed_at_least_a_minute() -> None:
    run = simulate(Scenario({"o": 5.0}, boot_s=10.0, stop_s=10.0, snapshot_s=1.0))
    assert run.instance_up_s == 25.0
    assert run.billed_s == MIN_BILLED_S


def test_random_hosts_are_seeded_and_late_ones_miss_the_window() -> None:
    transfers = random_transfers(40, seed=7)
    assert transfers == random_transfers(40, seed=7) != random_transfers(40, seed=8)
    late = {h for h, t in transfers.items() if 30.0 + t >= 0.5 * 3600}
    assert late
    run = simulate(Scenario(transfers, window_hours=0.5))
    assert run.state is State.CLOSED
    assert run.missed == late


@pytest.mark.parametrize("spec", ["c=soon", "c", "C=10", "c=-1", "c=1,c=2", "root=5"])
def test_bad_host_specs_are_refused(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_hosts(spec)


def test_quick_run_on_moto_leaves_the_environment_as_it_was(
        capsys: pytest.CaptureFixture[str]) -> None:
    before = dict(os.environ)
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    # 3 windows of 4 hosts: two closed by reports (11 events each), one by the deadline (11).
    assert "app.py handlers on moto server: 33 events" in out
    assert "WindowService on in-memory fakes: 33 events" in out
    assert "on demand, l never reported" in out
    assert dict(os.environ) == before
