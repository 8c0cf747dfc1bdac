"""app.py end to end on moto: whole windows, driven by AWS-shaped events."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client

import app as app_module
from chalicelib.adapters.compute import Ec2Compute
from chalicelib.instance.userdata import CONFIG_PATH
from tests.unit.test_instance_userdata import embedded

from .app_rig import (
    EVENTS,
    HOSTS,
    AppRig,
    app_rig,
    clear_caches,
    offsite_snapshots,
    served_app_rig,
)

__all__ = ["app_rig", "served_app_rig"]


def open_window(rig: AppRig, **body: Any) -> str:
    answer = rig.post("/v1/windows", body)
    assert answer.status_code == 201, answer.json_body
    rig.state_event("running")
    return str(answer.json_body["window_id"])


def wait_until(iso: str) -> None:
    delay = (datetime.fromisoformat(iso) - datetime.now(timezone.utc)).total_seconds()
    time.sleep(max(0.0, delay) + 0.05)


def window(rig: AppRig, window_id: str) -> dict[str, Any]:
    answer = rig.client.http.get(f"/v1/windows/{window_id}")
    assert answer.status_code == 200
    return dict(answer.json_body)


def snapshot_tags() -> dict[str, dict[str, str]]:
    return {host: t for (host, _), t in tags_by_point().items()}


def tags_by_point() -> dict[tuple[str, str], dict[str, str]]:
    """Every snapshot's tags, by (host, window)."""
    tags = [{t["Key"]: t["Value"] for t in s.get("Tags", [])} for s in offsite_snapshots()]
    return {(t["offsite:host"], t["offsite:window"]): t for t in tags}


def test_whole_window_with_four_hosts(app_rig: AppRig) -> None:
    wid = open_window(app_rig)
    assert window(app_rig, wid)["state"] == "OPEN"
    schedules = boto3.client("scheduler").list_schedules(GroupName="offsite-dev")["Schedules"]
    assert [s["Name"] for s in schedules] == [f"offsite-deadline-{wid}"]
    for host in HOSTS:
        assert app_rig.report(wid, host).status_code == 200
    assert window(app_rig, wid)["state"] == "CLOSING"
    assert boto3.client("scheduler").list_schedules(GroupName="offsite-dev")["Schedules"] == []
    app_rig.state_event("stopped")
    assert window(app_rig, wid)["state"] == "SNAPSHOTTING"
    app_rig.settle_snapshots()
    view = window(app_rig, wid)
    assert view["state"] == "CLOSED", view
    # The instance was started with a boot config naming every host and its volume.
    user_data = base64.b64decode(boto3.client("ec2").describe_instance_attribute(
        InstanceId=app_rig.instance_id, Attribute="userData")["UserData"]["Value"]).decode()
    config = embedded(user_data)[CONFIG_PATH].decode()
    assert sorted(line.split()[1] for line in config.splitlines()
                  if line.startswith("host ")) == sorted(HOSTS)
    assert {h: t["offsite:complete"] for h, t in snapshot_tags().items()} == \
        dict.fromkeys(HOSTS, "true")
    assert all(t["offsite:window"] == wid for t in snapshot_tags().values())
    assert [r["host"] for r in view["host_reports"]] == sorted(HOSTS)
    assert app_rig.stops == ["stop"]


def test_deadline_with_one_host_missing(app_rig: AppRig) -> None:
    first = open_window(app_rig)
    for host in HOSTS:
        app_rig.report(first, host)
    app_rig.state_event("stopped")
    app_rig.settle_snapshots()
    second = open_window(app_rig, duration_hours=0.0002)  # a deadline 0.72 s away
    for host in ("c", "h", "o"):
        app_rig.report(second, host)
    wait_until(window(app_rig, second)["deadline"])
    answer = app_rig.client.lambda_.invoke("window_deadline", {"window_id": second})
    assert "missing: l" in answer.payload["reason"]
    app_rig.state_event("stopped")
    made = tags_by_point()
    assert made["l", second]["offsite:reported"] == "none"
    assert made["l", second]["offsite:complete"] == "false"
    assert made["c", second]["offsite:complete"] == "pending"  # until EBS completes it
    app_rig.settle_snapshots()
    assert window(app_rig, second)["state"] == "CLOSED"
    kept = tags_by_point()
    assert kept["l", first]["offsite:complete"] == "true"  # l's last complete point survives
    assert kept["c", second]["offsite:complete"] == "true"
    # Same day (unless the test crossed midnight): one point a day, the complete one.
    if first[:11] == second[:11]:
        assert ("l", second) not in kept and ("c", first) not in kept


def test_four_hosts_reporting_at_once_stop_once(served_app_rig: AppRig, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Four Lambda containers (forked processes, each with its own app) take the four last
    reports at the same moment, against one shared (moto server) account."""
    rig = served_app_rig
    wid = open_window(rig)
    stop_log = tmp_path / "stops"
    original_stop = Ec2Compute.stop

    def logged_stop(self: Ec2Compute, instance_id: str) -> None:
        with stop_log.open("a") as log:
            log.write(f"{os.getpid()}\n")
        original_stop(self, instance_id)

    monkeypatch.setattr(Ec2Compute, "stop", logged_stop)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(len(HOSTS)), context.Queue()

    def container(host: str) -> None:
        clear_caches()
        with Client(app_module.app, stage_name="dev") as client:
            rig.client = client
            barrier.wait(timeout=30)
            results.put((host, rig.report(wid, host).status_code))

    workers = [context.Process(target=container, args=(h,)) for h in HOSTS]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(results.get(timeout=5) for _ in HOSTS) == sorted((h, 200) for h in HOSTS)
    assert window(rig, wid)["state"] == "CLOSING"
    assert len(stop_log.read_text().splitlines()) == 1


def test_snapshot_failure_deletes_nothing_and_tells_sns(app_rig: AppRig) -> None:
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    queue = sqs.create_queue(QueueName="admins")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    topic = sns.list_topics()["Topics"][0]["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    wid = open_window(app_rig)
    for host in HOSTS:
        app_rig.report(wid, host)
    app_rig.state_event("stopped")
    before = app_rig.settle_snapshots(result="failed")
    assert window(app_rig, wid)["state"] == "CLOSED"
    after = offsite_snapshots()
    assert sorted(s["SnapshotId"] for s in after) == sorted(before)
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert any("retention skipped" in m["Body"] for m in messages)


def test_duplicated_and_reordered_events_change_nothing(app_rig: AppRig) -> None:
    wid = open_window(app_rig)
    app_rig.state_event("running")  # duplicate
    app_rig.state_event("stopped")  # stale: EC2 says running
    assert window(app_rig, wid)["state"] == "OPEN"
    for host in HOSTS:
        app_rig.report(wid, host)
    app_rig.state_event("stopped")
    app_rig.state_event("stopped")
    app_rig.settle_snapshots()
    app_rig.settle_snapshots()
    assert window(app_rig, wid)["state"] == "CLOSED"
    assert len(offsite_snapshots()) == 4
    assert app_rig.stops == ["stop"]


def test_console_open_and_reconciler(app_rig: AppRig) -> None:
    answer = app_rig.client.lambda_.invoke("console_open", {"duration_hours": 0.5,
                                                           "hosts": ["c"]})
    wid = answer.payload["window_id"]
    assert answer.payload["expected"] == ["c"]
    app_rig.client.lambda_.invoke("reconciler", aws_scheduled_event())
    assert window(app_rig, wid)["state"] == "OPEN"
    refused = app_rig.client.lambda_.invoke("console_open", {"duration_hours": "soon"})
    assert refused.payload["error"] == "bad_request"


def aws_scheduled_event() -> dict[str, Any]:
    return dict(json.loads((EVENTS / "scheduled-event.json").read_text()))


def test_admin_close_and_history(app_rig: AppRig) -> None:
    wid = open_window(app_rig)
    closed = app_rig.post(f"/v1/windows/{wid}/close", {})
    assert closed.status_code == 200 and closed.json_body["state"] == "CLOSING"
    again = app_rig.post(f"/v1/windows/{wid}/close", {})
    assert again.status_code == 409 and again.json_body["error"] == "not_closable"
    listed = app_rig.client.http.get("/v1/windows").json_body["windows"]
    assert [w["window_id"] for w in listed] == [wid]
