"""bench/moto_app on a few hosts: one whole window through app.py on a moto server, and its
counts hang together. Only counts of events and AWS calls are asserted, never times."""

from __future__ import annotations

import os

import pytest

from bench.moto_app import PHASES, Result, main, report, run_window
from chalicelib import composition


@pytest.fixture(scope="module")
def result() -> Result:
    before = dict(os.environ)
    launcher = composition._launcher
    measured = run_window(hosts=6, per_archive=3)
    assert dict(os.environ) == before
    assert composition._launcher is launcher
    return measured


def test_a_whole_window_of_two_archives_closes_and_leaves_nothing(result: Result) -> None:
    assert (result.hosts, result.archives, result.left) == (6, 2, ())
    events = {p.name: p.events for p in result.phases}
    assert events == {"open": 1, "launch": 2, "running": 2, "ready": 2, "sessions": 6,
                      "reports": 6, "stopped": 2, "snapshots": 6}
    assert [p.name for p in result.phases] == list(PHASES)


def test_aws_calls_are_counted_where_the_handlers_make_them(result: Result) -> None:
    calls = {p.name: p.calls for p in result.phases}
    assert calls["open"]["lambda.Invoke"] == 0  # the launches are queued, then invoked apart
    assert calls["launch"]["ec2.RunInstances"] == 2
    assert calls["reports"]["ec2.StopInstances"] == 2  # each archive's last report
    assert calls["stopped"]["ec2.CreateSnapshot"] == 6
    assert calls["stopped"]["ec2.TerminateInstances"] == 2
    assert calls["snapshots"]["ec2.DeleteVolume"] == 6
    assert result.aws_calls == sum(sum(c.values()) for c in calls.values())


def test_report_prints_each_phase_and_the_calls_per_host(result: Result) -> None:
    text = report(result)
    assert "One window of 6 hosts in 2 archives" in text
    assert f"{result.aws_calls / 6:.2f} AWS calls per host" in text
    assert "left behind after CLOSED (instances not terminated, volumes): nothing" in text
    for phase in PHASES:
        assert f"\n{phase} " in text


def test_main_refuses_no_hosts() -> None:
    with pytest.raises(SystemExit):
        main(["--hosts", "0"])
