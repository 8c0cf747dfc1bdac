"""Usage from the window history, and `offsite-admin cost` on a canned history."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chalicelib.admin import cli, commands
from chalicelib.admin.usage import NoUsageError, observe, shard_runs
from chalicelib.cost import GIB, ShardRun

MIB = 1024**2
T0 = "2026-12-01T02:00:00+00:00"


def at(seconds: int) -> str:
    return f"2026-12-01T{2 + seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}+00:00"


def shard(shard_id: str, hosts: list[str], stopped: int | None, closed: int | None,
          instance_type: str = "t4g.small") -> dict[str, Any]:
    entered = {"OPENING": at(0), "OPEN": at(60)}
    if stopped is not None:
        entered |= {"CLOSING": at(stopped - 30), "SNAPSHOTTING": at(stopped)}
    if closed is not None:
        entered["CLOSED"] = at(closed)
    return {"shard_id": shard_id, "state": "CLOSED" if closed else "SNAPSHOTTING",
            "hosts": hosts, "instance_id": f"i-{shard_id}", "instance_type": instance_type,
            "entered": entered}


def window(window_id: str, sent: dict[str, int], shards: list[dict[str, Any]] | None,
           state: str = "CLOSED", **extra: Any) -> dict[str, Any]:
    made: dict[str, Any] = {
        "window_id": window_id, "state": state, "opened_at": T0, "deadline": at(3600),
        "expected": sorted(sent), "purpose": "backup",
        "entered": {"OPENING": T0, "CLOSED": at(900)},
        "host_reports": [{"host": h, "bytes_sent": b} for h, b in sent.items()], **extra}
    if shards is not None:
        made["shards"] = shards
    return made


TWO_SHARDS = window("w-2", {"c": 40 * MIB, "h": 20 * MIB, "o": 4 * MIB},
                    [shard("s01", ["c", "h"], 330, 930), shard("s02", ["o"], 200, 500)])


def test_each_shard_is_billed_launch_to_stop_and_exists_until_closed() -> None:
    assert shard_runs(TWO_SHARDS) == (ShardRun("w-2", "t4g.small", 2, 330, 930),
                                      ShardRun("w-2", "t4g.small", 1, 200, 500))
    assert shard_runs(TWO_SHARDS, instance_type="t3.small")[1].instance_type == "t3.small"


def test_a_shard_without_a_closed_time_settles_and_one_never_launched_is_free() -> None:
    late = window("w", {}, [shard("s01", [], 300, None),
                            {"shard_id": "s02", "state": "FAILED", "hosts": ["x"],
                             "instance_id": None, "instance_type": None, "entered": {}}])
    assert shard_runs(late, snapshot_settle_s=120) == (ShardRun("w", "t4g.small", 0, 300, 420),)


def test_a_window_from_before_shards_uses_its_own_times() -> None:
    old = window("w-0", {"c": 1, "o": 2}, None, entered={"OPENING": T0,
                                                           "SNAPSHOTTING": at(240)})
    assert shard_runs(old, snapshot_settle_s=600) == (ShardRun("w-0", "t4g.small", 2, 240, 840),)
    no_open_time = {**old, "entered": {"SNAPSHOTTING": at(240), "CLOSED": at(500)}}
    assert shard_runs(no_open_time) == (ShardRun("w-0", "t4g.small", 2, 240, 500),)


def test_observed_usage_of_the_closed_backup_windows() -> None:
    history = [window("w-4", {"c": 1}, [shard("s01", ["c"], None, None)], state="OPEN"),
               window("r-1", {"c": 1}, [shard("s01", ["c"], 100, 200)], purpose="restore"),
               TWO_SHARDS,
               window("w-1", {"c": 100 * MIB, "h": 50 * MIB, "o": 10 * MIB},
                      [shard("s01", ["c", "h", "o"], 600, 1200)])]
    observed = observe(history, volume_gib=20, retention_days=20)
    usage = observed.usage
    assert observed.window_ids == ("w-2", "w-1") and observed.stored_estimated
    assert len(usage.shards) == 3 and usage.windows_seen == 2 and usage.hosts == 3
    assert usage.window_s == 3600 and usage.volume_gib == 20
    assert usage.changed_gib == pytest.approx((64 + 160) / 2 * MIB / GIB)
    assert usage.stored_gib == pytest.approx(160 * MIB / GIB)
    given = observe(history, volume_gib=20, retention_days=20, stored_bytes=7 * GIB)
    assert given.usage.stored_gib == 7 and not given.stored_estimated


def test_no_closed_window_is_a_clear_refusal() -> None:
    with pytest.raises(NoUsageError, match="no closed backup window"):
        observe([window("w", {}, [shard("s01", [], None, None)], state="OPENING")],
                volume_gib=20, retention_days=20)


class CannedApi:
    def __init__(self, windows: list[dict[str, Any]]) -> None:
        self.windows = {w["window_id"]: w for w in windows}

    def call(self, method: str, path: str, body: Any = None,
             query: dict[str, str] | None = None) -> Any:
        assert method == "GET"
        if path == "/v1/windows":
            return {"windows": [{k: w[k] for k in ("window_id", "state", "purpose")}
                                for w in self.windows.values()]}
        return self.windows[path.removeprefix("/v1/windows/")]


@pytest.fixture
def canned(monkeypatch: pytest.MonkeyPatch) -> None:
    api = CannedApi([TWO_SHARDS, window("w-1", {"c": 3 * MIB}, [shard("s01", ["c"], 90, 400)])])
    monkeypatch.setattr(commands.Context, "api", lambda self: api)


ARGS = ["cost", "--api-url", "http://127.0.0.1:9"]


@pytest.mark.usefixtures("canned")
def test_the_cost_command_prints_the_three_designs(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*ARGS, "--retention-days", "10"]) == 0
    out = capsys.readouterr().out
    words = " ".join(out.split())
    assert "from windows: 2 closed: w-2, w-1" in words
    assert "hosts: 2 in 1.5 shard(s) a window" in words and "retention: 10 days" in words
    head = next(line for line in out.splitlines() if line.startswith("USD a month")).split()
    assert head[-4:] == ["fleet", "persistent", "kept", "up"]
    assert "EC2 t4g.small" in out and "EBS root volumes (8 GiB gp3)" in out
    assert "fleet, line by line" in out and "total per month (USD)" in out


@pytest.mark.usefixtures("canned")
def test_the_cost_command_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*ARGS, "--json", "--instance-type", "t3.small"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["windows"] == ["w-2", "w-1"]
    assert data["usage"]["hosts"] == 2 and data["usage"]["volume_gib"] == 40
    assert set(data["designs"]) == {"fleet", "persistent", "kept up"}
    fleet = data["designs"]["fleet"]
    assert data["total_usd"] == fleet["total_usd"] < data["kept_up_total_usd"]
    assert data["kept_up_total_usd"] < data["persistent_total_usd"]
    ec2 = next(line for line in fleet["lines"] if line["item"].startswith("EC2"))
    assert ec2["item"] == "EC2 t3.small"
    # 3 shards seen over 2 windows: a month is 30 / 2 times their running seconds
    assert ec2["quantity"] == pytest.approx(30 / 2 * (330 + 200 + 90) / 3600, abs=1e-6)


@pytest.mark.usefixtures("canned")
def test_an_unpriced_instance_type_is_a_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*ARGS, "--instance-type", "x9.huge"]) == 1
    assert "no price for x9.huge" in capsys.readouterr().err
