"""The cost model: each line's arithmetic on a hand-checkable window, the seed scenario's goal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cost as bench_cost
from chalicelib.cost import (
    ALARMS,
    GIB,
    LOG_BYTES_PER_INVOCATION,
    RECONCILES_PER_MONTH,
    SNAPSHOT_BYTES_PER_SENT_BYTE,
    Prices,
    ShardRun,
    UnknownPriceError,
    Usage,
    WindowUsage,
    cloudwatch_free_usd,
    fleet,
    kept_up,
    load_prices,
    month_at,
    month_kept_up,
    persistent,
    render,
)
from chalicelib.cost_report import Scenario, compare, seed_scenario

# Round prices, so every expected figure below is arithmetic on the page.
PRICES = Prices("test-region", "2026-12-07", "round numbers", {
    "instance_hourly": {"t.x": 1.0, "t.y": 2.0}, "public_ipv4_hourly": 0.5,
    "ebs_gp3_gib_month": 0.73, "snapshot_gib_month": 0.1, "lambda_per_million_requests": 1.0,
    "lambda_gb_second": 1e-5, "dynamodb_per_million_writes": 2.0,
    "dynamodb_per_million_reads": 1.0, "scheduler_per_million": 1.0,
    "api_gateway_per_million": 1.0, "eventbridge_aws_events_per_million": 0.0,
    "cloudwatch_metric_month": 0.73, "cloudwatch_alarm_month": 1.0,
    "cloudwatch_dashboard_month": 10.0, "cloudwatch_per_million_requests": 1e6,
    "cloudwatch_logs_ingested_gib": 1.0})
# One window: one shard of 2 hosts, stopped after 30 min, snapshots complete 10 min later;
# each byte sent changes 4 bytes of snapshot blocks.
SHARD = ShardRun("w-1", "t.x", hosts=2, stopped_s=1800, closed_s=2400)
USAGE = Usage((SHARD,), window_s=3600, stored_gib=10, changed_gib=1, volume_gib=5,
              retention_days=3, snapshot_bytes_per_sent_byte=4)
WINDOWS = 10
EXISTS_H = WINDOWS * 2400 / 3600  # each instance and its volumes, launch to deletion


def test_fleet_lines_by_hand() -> None:
    cost = fleet(USAGE, PRICES, WINDOWS)
    ec2 = cost.line("EC2 t.x")
    assert (ec2.quantity, ec2.unit, ec2.usd) == (pytest.approx(5.0), "h", pytest.approx(5.0))
    assert cost.line("EBS root volumes (8 GiB gp3)").quantity == pytest.approx(8 * EXISTS_H / 730)
    assert cost.line("EBS root volumes (8 GiB gp3)").usd == pytest.approx(8 * EXISTS_H / 1000)
    assert cost.line("public IPv4 addresses").usd == pytest.approx(5 * 0.5)  # while running
    assert cost.line("EBS data volumes (gp3)").quantity == pytest.approx(2 * 5 * EXISTS_H / 730)
    snapshots = cost.line("EBS snapshots")  # stored + 3 days of 1 GiB sent x 4
    assert (snapshots.quantity, snapshots.usd) == (pytest.approx(10 + 3 * 4), pytest.approx(2.2))


def test_snapshots_grow_by_the_changed_blocks_the_bench_measured_per_byte_sent() -> None:
    assert USAGE.snapshot_growth_gib == 4
    shipped = Usage((SHARD,), 3600, stored_gib=10, changed_gib=1, retention_days=3)
    assert shipped.snapshot_bytes_per_sent_byte == SNAPSHOT_BYTES_PER_SENT_BYTE > 1
    assert fleet(shipped, PRICES, WINDOWS).line("EBS snapshots").quantity == pytest.approx(
        10 + 3 * SNAPSHOT_BYTES_PER_SENT_BYTE)
    assert seed_scenario().usage().snapshot_growth_gib == pytest.approx(
        0.5 * SNAPSHOT_BYTES_PER_SENT_BYTE)


def test_requests_by_hand() -> None:
    cost = fleet(USAGE, PRICES, WINDOWS)
    api = WINDOWS * 2 * 3  # 2 hosts: session, report, one more
    events = WINDOWS * (6 + 2)  # 6 state changes of the instance, 1 snapshot event per volume
    handled = WINDOWS * (2 + 1) + events + api  # + the open, the deadline, the launch
    assert cost.line("API Gateway").quantity == api == 60
    assert cost.line("EventBridge AWS events").quantity == events == 80
    assert cost.line("EventBridge AWS events").usd == 0
    assert cost.line("Lambda requests").quantity == handled + RECONCILES_PER_MONTH == 8810
    assert cost.line("Lambda requests").usd == pytest.approx(8810e-6)
    assert cost.line("Lambda compute").quantity == pytest.approx(8810 * 0.5 * 0.3)
    assert cost.line("DynamoDB writes").usd == pytest.approx(170 * 2 * 2e-6)
    assert cost.line("DynamoDB reads").quantity == 170 * 3 + RECONCILES_PER_MONTH
    assert cost.line("EventBridge Scheduler").quantity == WINDOWS * 2 + RECONCILES_PER_MONTH
    assert cost.total == pytest.approx(sum(line.usd for line in cost.lines))


def test_a_launch_bills_at_least_a_minute_and_types_are_priced_apart() -> None:
    usage = Usage((ShardRun("w", "t.x", 1, 5, 65), ShardRun("w", "t.y", 1, 120, 200)),
                  3600, 0, 0)
    cost = fleet(usage, PRICES, WINDOWS)
    assert cost.line("EC2 t.x").quantity == pytest.approx(WINDOWS * 60 / 3600)
    assert cost.line("EC2 t.y").usd == pytest.approx(WINDOWS * 120 / 3600 * 2.0)
    assert cost.line("public IPv4 addresses").quantity == pytest.approx(WINDOWS * 125 / 3600)


def test_kept_up_runs_every_instance_until_the_deadline() -> None:
    cost = kept_up(USAGE, PRICES, WINDOWS)
    assert cost.design == "kept up"
    assert cost.line("EC2 t.x").quantity == pytest.approx(WINDOWS)  # 10 windows of 1 h
    exists_h = WINDOWS * (3600 + 600) / 3600  # its snapshots take as long as they did
    assert cost.line("EBS data volumes (gp3)").quantity == pytest.approx(2 * 5 * exists_h / 730)
    assert cost.line("EBS snapshots") == fleet(USAGE, PRICES, WINDOWS).line("EBS snapshots")


def test_persistent_keeps_volumes_all_month_and_one_instance_per_window() -> None:
    two_shards = Usage((SHARD, ShardRun("w-1", "t.x", 1, 900, 1500),
                        ShardRun("w-2", "t.x", 3, 600, 1200)), 3600, 10, 1, 5, 3)
    cost = persistent(two_shards, PRICES, WINDOWS)
    # a month is 10 windows like the mean of the two seen: each priced at its longest shard
    assert cost.line("EC2 t.x").quantity == pytest.approx(WINDOWS / 2 * (1800 + 600) / 3600)
    assert cost.line("EBS root volumes (8 GiB gp3)").quantity == 8
    assert cost.line("EBS data volumes (gp3)").quantity == pytest.approx(3 * 5)  # 3 hosts
    assert cost.line("EventBridge AWS events").quantity == WINDOWS * (4 + 3)
    by_fleet = fleet(two_shards, PRICES, WINDOWS)
    assert by_fleet.line("EventBridge AWS events").quantity == WINDOWS * (1.5 * 6 + 3)


SEED_LINES = {"EC2 t4g.small", "EBS root volumes (8 GiB gp3)", "public IPv4 addresses",
              "EBS data volumes (gp3)", "EBS snapshots", "Lambda requests", "Lambda compute",
              "API Gateway", "DynamoDB writes", "DynamoDB reads", "EventBridge Scheduler",
              "EventBridge AWS events", "CloudWatch custom metrics", "CloudWatch alarms",
              "CloudWatch dashboard", "CloudWatch PutMetricData", "CloudWatch Logs ingested"}


def test_the_seed_scenario_is_its_snapshots_plus_cents_as_a_fleet() -> None:
    prices, usage = load_prices(), seed_scenario().usage()
    cost = fleet(usage, prices)
    assert {line.item for line in cost.lines} == SEED_LINES
    assert all(line.usd > 0 for line in cost.lines if line.item != "EventBridge AWS events")
    snapshots = cost.line("EBS snapshots")  # 20 GiB stored + 20 nights of changed blocks
    assert snapshots.usd == pytest.approx((20 + 20 * 0.5 * SNAPSHOT_BYTES_PER_SENT_BYTE) * 0.05)
    free = cloudwatch_free_usd(cost, usage.hosts)  # 4 hosts: all of CloudWatch is in it
    assert free == pytest.approx(sum(line.usd for line in cost.lines
                                     if line.item.startswith("CloudWatch")))
    assert 0 < cost.total - free - snapshots.usd < 0.20
    assert cost.total < kept_up(usage, prices).total < persistent(usage, prices).total


def test_cloudwatch_lines_by_hand() -> None:
    cost = fleet(USAGE, PRICES, WINDOWS)
    # 11 window metrics, 2 hours a window; 2 hosts' ages and StaleHosts 4 hours a day
    metric_hours = 11 * 2 * WINDOWS + 3 * 4 * 30
    assert cost.line("CloudWatch custom metrics").quantity == pytest.approx(metric_hours / 730)
    assert cost.line("CloudWatch custom metrics").usd == pytest.approx(metric_hours / 1000)
    assert cost.line("CloudWatch alarms").usd == ALARMS == 9
    assert cost.line("CloudWatch dashboard").usd == 10.0
    assert cost.line("CloudWatch PutMetricData").quantity == 4 * 30  # one call a evaluation
    logs = cost.line("CloudWatch Logs ingested")
    assert logs.quantity == pytest.approx(8810 * LOG_BYTES_PER_INVOCATION / GIB)
    # the same in every design: monitoring does not depend on how the archives run
    for other in (kept_up(USAGE, PRICES, WINDOWS), persistent(USAGE, PRICES, WINDOWS)):
        assert other.line("CloudWatch custom metrics") == cost.line("CloudWatch custom metrics")
        assert other.line("CloudWatch dashboard") == cost.line("CloudWatch dashboard")


def test_cloudwatchs_free_tier_and_a_stack_without_its_dashboard() -> None:
    cost = fleet(USAGE, PRICES, WINDOWS)  # 1.07 metric-months, 9 alarms, 1 dashboard
    metric_usd = cost.line("CloudWatch custom metrics").usd
    logs_usd = cost.line("CloudWatch Logs ingested").usd
    assert cloudwatch_free_usd(cost, hosts=2) == pytest.approx(
        metric_usd + 9 + 10 + 120 + logs_usd)
    # a dashboard of more than 50 metrics is not one of the free ones
    assert cloudwatch_free_usd(cost, hosts=41) == pytest.approx(metric_usd + 9 + 120 + logs_usd)
    many = Usage((ShardRun("w", "t.x", 2000, 600, 900),), 3600, 0, 0)  # 2,001 metrics
    big = fleet(many, PRICES, WINDOWS)
    assert big.line("CloudWatch PutMetricData").quantity == 4 * 30 * 3  # 1,000 a call
    assert cloudwatch_free_usd(big, 2000) == pytest.approx(  # 10 of its 329 metric-months
        10 * 0.73 + 9 + 360 + big.line("CloudWatch Logs ingested").usd)
    without = fleet(Usage((SHARD,), 3600, 10, 1, 5, 3, 4, dashboards=0), PRICES, WINDOWS)
    assert without.line("CloudWatch dashboard").usd == 0
    assert cost.total - without.total == pytest.approx(10.0)


def test_a_scenario_is_split_into_shards_and_timed_from_its_changes() -> None:
    scenario = Scenario("big", hosts=45, host_gib=1, changed_gib=45 * 0.5, retention_days=20,
                        instance_type="t4g.small", boot_s=60, uplink_mib_s=8,
                        rsync_overhead_s=100, stop_s=40, snapshot_settle_s=300)
    usage = scenario.usage()
    assert [s.hosts for s in usage.shards] == [15, 15, 15]
    assert usage.shards[0].stopped_s == 60 + 100 + 512 / 8 + 40
    assert usage.shards[0].closed_s == usage.shards[0].stopped_s + 300
    assert (usage.stored_gib, usage.window_s, usage.windows_seen) == (45, 3.6 * 3600, 1)
    assert Scenario("odd", 41, 1, 1, 20, "t4g.small").shard_sizes() == [14, 14, 13]


def test_compare_prints_three_designs_and_the_fleet_line_by_line() -> None:
    text = compare(seed_scenario().usage(), load_prices())
    head = text.splitlines()[0].split()
    assert head[-4:] == ["fleet", "persistent", "kept", "up"]
    starts = [line.strip() for line in text.splitlines()]
    for item in SEED_LINES:  # in the table and in the breakdown
        assert sum(line.startswith(item) for line in starts) == 2, item
    assert "total per month (USD)" in text and "read 2026-11-29" in text
    snapshots = (20 + 20 * 0.5 * SNAPSHOT_BYTES_PER_SENT_BYTE) * 0.05
    assert f"$0.05/GiB-month = {snapshots:7.4f}" in text


def test_the_shipped_price_file_names_its_region_date_source_and_graviton() -> None:
    prices = load_prices()
    assert prices.region == "us-east-1" and prices.read_on and prices.source
    assert prices.instance_hourly("t4g.small") == 0.0168
    assert prices.instance_hourly("t4g.micro") == 0.0084


def test_prices_can_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = dict(load_prices().table)
    table["region"] = "eu-west-1"
    table["instance_hourly"] = {"t4g.small": 1.0}
    del table["eventbridge_aws_events_per_million"]  # an older file still prices
    override = tmp_path / "prices.json"
    override.write_text(json.dumps(table))
    monkeypatch.setenv("OFFSITE_PRICES", str(override))
    prices = load_prices()
    assert prices.region == "eu-west-1"
    usage = seed_scenario().usage()
    assert fleet(usage, prices).line("EC2 t4g.small").unit_usd == 1.0
    with pytest.raises(UnknownPriceError):
        fleet(Usage((ShardRun("w", "x1.huge", 1, 1, 1),), 1, 0, 0), prices)
    assert "eu-west-1" in compare(usage, prices)


def test_the_earlier_one_window_api_prices_as_the_fleet() -> None:
    old = WindowUsage("t4g.small", hosts=2, billed_seconds=300, window_seconds=3600,
                      volume_gib=40, stored_bytes=10 * GIB, sent_bytes=GIB)
    new = Usage((ShardRun("observed", "t4g.small", 2, 300, 900),), 3600, 10, 1, 20)
    prices = load_prices()
    assert month_at(old, prices) == fleet(new, prices)
    assert month_kept_up(old, prices) == kept_up(new, prices)
    assert "kept up" in render(month_at(old, prices), month_kept_up(old, prices), prices)


def test_the_bench_prints_the_seed_and_refuses_an_unpriced_type(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_cost.main([]) == 0
    out = capsys.readouterr().out
    assert "4 hosts of 5 GiB" in out and "1 shard(s) of t4g.small" in out
    assert f"snapshots grow {SNAPSHOT_BYTES_PER_SENT_BYTE:g} x that" in out
    total = next(line for line in out.splitlines() if line.startswith("total per month"))
    assert total.split()[4:] == ["10.24", "17.21", "13.56"]  # fleet, persistent, kept up
    assert "takes $4.43 off each design (the fleet: $5.81)" in out  # CloudWatch's free tier
    assert bench_cost.main(["--snapshot-bytes-per-sent-byte", "1"]) == 0  # bytes sent, stored
    total = next(line for line in capsys.readouterr().out.splitlines()
                 if line.startswith("total per month"))
    assert total.split()[4:] == ["6.09", "13.06", "9.41"]  # 1.66, 8.63, 4.98 without CloudWatch
    assert bench_cost.main(["--dashboards", "0"]) == 0  # init --no-dashboard
    total = next(line for line in capsys.readouterr().out.splitlines()
                 if line.startswith("total per month"))
    assert total.split()[4:] == ["7.24", "14.21", "10.56"]
    assert bench_cost.main(["--hosts", "45", "--instance-type", "x9.huge"]) == 1
    assert "no price for x9.huge" in capsys.readouterr().err
