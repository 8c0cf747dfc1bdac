"""The last good copy through app.py on moto: a snapshot EBS failed after its host succeeded
never stands for the host's last complete point, and a window that could not open is not
answered as opened (issue 10, points 1 and 5)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

import app as app_module
from chalicelib.windows import new_window_id

from .app_rig import HOSTS, AppRig, app_rig, clear_caches, offsite_snapshots
from .test_app_restores import backup_window

__all__ = ["app_rig"]


def window_on(rig: AppRig, days_ago: int, succeeded: tuple[str, ...],
              ebs_fails: tuple[str, ...] = ()) -> str:
    """A whole backup window whose id (and so its day) is `days_ago` days back."""
    service = app_module.window_service()
    service._new_id = (  # type: ignore[method-assign]
        lambda now: new_window_id(now - timedelta(days=days_ago)))
    return backup_window(rig, succeeded, ebs_fails)


def points(rig: AppRig, host: str) -> list[dict[str, Any]]:
    answer = rig.client.http.get(f"/v1/snapshots?host={host}")
    assert answer.status_code == 200, answer.json_body
    return list(answer.json_body["snapshots"])


def test_a_snapshot_ebs_failed_never_replaces_the_last_good_one(
        app_rig: AppRig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_DAYS", "1")
    clear_caches()
    day1 = window_on(app_rig, 2, HOSTS)
    day2 = window_on(app_rig, 1, HOSTS, ebs_fails=("o",))  # o succeeded, its snapshot did not
    day3 = window_on(app_rig, 0, ("c", "h", "l"))  # o missed today
    listed = [(p["window_id"], p["complete"]) for p in points(app_rig, "o")]
    assert listed == [(day3, False), (day1, True)]  # day 2 cannot become a volume
    tags = {(t["offsite:host"], t["offsite:window"]): t["offsite:complete"]
            for s in offsite_snapshots()
            for t in [{x["Key"]: x["Value"] for x in s["Tags"]}]}
    assert tags[("o", day1)] == "true" and tags[("c", day3)] == "true"
    assert ("o", day2) not in tags  # not restorable: retention removed it on a good day
    restore = app_rig.post("/v1/restores", {"host": "o", "day": day1[2:6] + "-" + day1[6:8]
                                            + "-" + day1[8:10]})
    assert restore.status_code == 202 and restore.json_body["complete"] is True


def test_a_window_without_capacity_anywhere_fails_with_the_reason(app_rig: AppRig) -> None:
    """Accepted (202: the launches run in invocations of their own); every (type, subnet)
    pair is tried, then the window is FAILED with each pair's cause, and the next may open."""
    tried: list[tuple[str, str]] = []

    def no_capacity(params: dict[str, Any], **_: Any) -> None:
        tried.append((params["InstanceType"], params["SubnetId"]))
        raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity",
                                     "Message": "none left"}}, "RunInstances")

    compute = app_module.window_service().ports.compute
    compute._ec2.meta.events.register(  # type: ignore[attr-defined]
        "before-parameter-build.ec2.RunInstances", no_capacity, unique_id="no-capacity")
    answer = app_rig.post("/v1/windows", {})
    assert answer.status_code == 202, answer.json_body
    wid = answer.json_body["window_id"]
    assert tried == [(t, s) for t in ("t3.small", "t3a.small") for s in app_rig.subnets]
    view = app_rig.window(wid)
    assert view["state"] == "FAILED"
    [shard] = view["shards"]
    assert shard["state"] == "FAILED" and shard["instance_id"] is None
    assert shard["reason"].count("InsufficientInstanceCapacity") == 4
    assert "every archive failed" in view["reason"]
    assert boto3.client("scheduler").list_schedules(GroupName="offsite-dev")["Schedules"] == []
    compute._ec2.meta.events.unregister(  # type: ignore[attr-defined]
        "before-parameter-build.ec2.RunInstances", unique_id="no-capacity")
    assert app_rig.post("/v1/windows", {}).status_code == 202


def test_the_deadline_schedule_never_fires_before_the_deadline(app_rig: AppRig) -> None:
    answer = app_rig.post("/v1/windows", {"duration_hours": 0.5})
    assert answer.status_code == 202
    deadline = datetime.fromisoformat(answer.json_body["deadline"])
    [schedule] = boto3.client("scheduler").list_schedules(GroupName="offsite-dev")["Schedules"]
    expression = boto3.client("scheduler").get_schedule(
        Name=schedule["Name"], GroupName="offsite-dev")["ScheduleExpression"]
    fires = datetime.strptime(expression, "at(%Y-%m-%dT%H:%M:%S)").replace(tzinfo=timezone.utc)
    assert deadline <= fires < deadline + timedelta(seconds=1)


@pytest.mark.parametrize("name", ["../x", "C", "x" * 40, "adm"])
def test_listing_refuses_what_is_not_a_host_name(app_rig: AppRig, name: str) -> None:
    answer = app_rig.client.http.get(f"/v1/snapshots?host={name}")
    assert answer.status_code == 400 and answer.json_body["error"] == "bad_request", name


def test_a_window_id_too_long_for_the_table_is_unknown_at_the_edge(app_rig: AppRig) -> None:
    long_id = "w-" + "a" * 3000  # DynamoDB refuses a partition key over 2048 bytes
    for answer in (app_rig.client.http.get(f"/v1/windows/{long_id}"),
                   app_rig.post(f"/v1/windows/{long_id}/close", {})):
        assert answer.status_code == 404 and answer.json_body["error"] == "unknown_window"
        assert len(answer.json_body["message"]) < 100
