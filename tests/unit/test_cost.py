from __future__ import annotations

import json
from pathlib import Path

import pytest

from chalicelib.cost import (
    UnknownPriceError,
    WindowUsage,
    load_prices,
    month_at,
    month_kept_up,
    render,
)

GIB = 1024**3
USAGE = WindowUsage(instance_type="t3.small", hosts=4, billed_seconds=900,
                    window_seconds=3.6 * 3600, volume_gib=80, stored_bytes=20 * GIB,
                    sent_bytes=GIB // 2)


def test_the_shipped_price_file_names_its_region_date_and_source() -> None:
    prices = load_prices()
    assert prices.region and prices.read_on and prices.source


def test_on_demand_costs_less_than_kept_up() -> None:
    prices = load_prices()
    observed, kept = month_at(USAGE, prices), month_kept_up(USAGE, prices)
    assert observed.total < kept.total
    ec2 = observed.lines[0]
    assert ec2.quantity == pytest.approx(30 * 900 / 3600)
    assert ec2.usd == pytest.approx(7.5 * 0.0208)
    assert kept.lines[0].quantity == pytest.approx(30 * 3.6)


def test_storage_does_not_depend_on_instance_time() -> None:
    prices = load_prices()
    by_item = {line.item: line for line in month_at(USAGE, prices).lines}
    assert by_item["EBS gp3 host volumes"].usd == pytest.approx(80 * 0.08)
    assert by_item["EBS snapshots (estimated)"].quantity == pytest.approx(20 + 20 * 0.5)


def test_a_start_bills_at_least_a_minute() -> None:
    short = WindowUsage("t3.small", 1, 5, 3600, 10, 0, 0)
    assert month_at(short, load_prices()).lines[0].quantity == pytest.approx(30 * 60 / 3600)


def test_prices_can_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = dict(load_prices().table)
    table["region"] = "eu-west-1"
    table["instance_hourly"] = {"t3.small": 1.0}
    override = tmp_path / "prices.json"
    override.write_text(json.dumps(table))
    monkeypatch.setenv("OFFSITE_PRICES", str(override))
    prices = load_prices()
    assert prices.region == "eu-west-1"
    assert month_at(USAGE, prices).lines[0].usd == pytest.approx(7.5)
    with pytest.raises(UnknownPriceError):
        month_at(WindowUsage("x1.huge", 1, 1, 1, 1, 0, 0), prices)
    assert "eu-west-1" in render(month_at(USAGE, prices), month_kept_up(USAGE, prices), prices)
