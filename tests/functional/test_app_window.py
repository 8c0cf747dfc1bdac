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
from nacl.signing import SigningKey

import app as app_module
from chalicelib.adapters.compute import Ec2Compute
from chalicelib.adapters.dynamo_store import DynamoWindowStore
from chalicelib.instance.userdata import CONFIG_PATH
from chalicelib.window import State
from tests.unit.test_instance_userdata import embedded

from .app_rig import (
    EVENTS,
    HOSTS,
    AppRig,
    app_rig,
    clear_caches,
    offsite_snapshots,
    open_window,
    served_app_rig,
)

__all__ = ["app_rig", "served_app_rig"]


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
    schedules = boto3.client("scheduler").list_schedules(GroupName="offsite-dev")["Schedules"]
    assert [s["Name"] for s in schedules] == [f"offsite-deadline-{wid}"]
    for host in HOSTS:
        assert app_rig.report(wid, host).status_code == 200
    assert window(app_rig, wid)["state"] == "CLOSING"
    assert app_rig.stopped(wid)["state"] == "SNAPSHOTTING"
    app_rig.settle_snapshots()
    view = window(app_rig, wid)
    assert view["state"] == "CLOSED", view
    assert boto3.client("scheduler").list_schedules(GroupName="offsite-dev")["Schedules"] == []
    # The archive was launched with a boot config naming every host and its device.
    (instance_id,) = app_rig.instances(wid).values()
    user_data = base64.b64decode(boto3.client("ec2").describe_instance_attribute(
        InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]).decode()
    config = embedded(user_data)[CONFIG_PATH].decode()
    assert sorted(line.split()[1] for line in config.splitlines()
                  if line.startswith("host ")) == sorted(HOSTS)
    assert {h: t["offsite:complete"] for h, t in snapshot_tags().items()} == \
        dict.fromkeys(HOSTS, "true")
    assert all(t["offsite:window"] == wid for t in snapshot_tags().values())
    assert [r["host"] for r in view["host_reports"]] == sorted(HOSTS)
    assert app_rig.stops == ["stop"]
    assert_nothing_left(app_rig)


def assert_nothing_left(rig: AppRig) -> None:
    """Between windows: no instance running or stopped, no volume; only snapshots."""
    ec2 = rig.ec2
    states = [i["State"]["Name"] for r in ec2.describe_instances()["Reservations"]
              for i in r["Instances"]]
    assert set(states) <= {"terminated"}, states
    volumes = ec2.describe_volumes(Filters=[{"Name": "tag-key",
                                             "Values": ["offsite:window"]}])["Volumes"]
    assert volumes == []


def test_deadline_with_one_host_missing(app_rig: AppRig) -> None:
    first = open_window(app_rig)
    for host in HOSTS:
        app_rig.report(first, host)
    app_rig.stopped(first)
    app_rig.settle_snapshots()
    second = open_window(app_rig, duration_hours=0.0002)  # a deadline 0.72 s away
    for host in ("c", "h", "o"):
        app_rig.report(second, host)
    wait_until(window(app_rig, second)["deadline"])
    answer = app_rig.client.lambda_.invoke("window_deadline", {"window_id": second})
    assert "missing: l" in " ".join(answer.payload["reasons"])
    app_rig.stopped(second)
    made = tags_by_point()
    assert made["l", second]["offsite:reported"] == "none"
    assert made["l", second]["offsite:complete"] == "false"
    assert made["c", second]["offsite:complete"] == "pending"  # until EBS completes it
    app_rig.settle_snapshots()
    assert window(app_rig, second)["state"] == "CLOSED"
    kept = tags_by_point()
    assert kept["l", first]["offsite:complete"] == "true"  # l's last complete point survives
    assert kept["c", second]["offsite:complete"] == "true"
    # Same day (unless the test crossed midnight): one point a day, the complete one; l's
    # cut-off point stays too, as the newest one, which l's next volume is made from.
    if first[:11] == second[:11]:
        assert ("c", first) not in kept
        assert kept["l", second]["offsite:complete"] == "false"


def test_four_hosts_reporting_at_once_stop_once(served_app_rig: AppRig, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Four Lambda containers (forked processes, each with its own app) take the four last
    reports at the same moment, against one shared (moto server) account."""
    rig = served_app_rig
    wid = open_window(rig)
    stop_log = tmp_path / "stops"
    original_stop = Ec2Compute.stop

    def logged_stop(self: Ec2Compute, instance_ids: list[str]) -> None:
        with stop_log.open("a") as log:
            log.write(f"{os.getpid()}\n")
        original_stop(self, instance_ids)

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
    app_rig.stopped(wid)
    before = app_rig.settle_snapshots(result="failed")
    assert window(app_rig, wid)["state"] == "CLOSED"
    after = offsite_snapshots()
    assert sorted(s["SnapshotId"] for s in after) == sorted(before)
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert any("retention skipped" in m["Body"] for m in messages)


def test_duplicated_and_reordered_events_change_nothing(app_rig: AppRig) -> None:
    wid = open_window(app_rig)
    (instance_id,) = app_rig.instances(wid).values()
    app_rig.instance_event(instance_id, "running")  # duplicate
    app_rig.instance_event(instance_id, "stopped")  # stale: EC2 says running
    assert window(app_rig, wid)["state"] == "OPEN"
    for host in HOSTS:
        app_rig.report(wid, host)
    app_rig.stopped(wid)
    app_rig.stopped(wid)
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
    assert window(app_rig, wid)["state"] == "BOOTING"  # running, not yet ready
    instance_id = window(app_rig, wid)["shards"][0]["instance_id"]
    assert app_rig.boot_signal(instance_id, "ready").status_code == 200
    assert window(app_rig, wid)["state"] == "OPEN"
    refused = app_rig.client.lambda_.invoke("console_open", {"duration_hours": "soon"})
    assert refused.payload["error"] == "bad_request"


def aws_scheduled_event() -> dict[str, Any]:
    return dict(json.loads((EVENTS / "scheduled-event.json").read_text()))


def test_admin_close_and_history(app_rig: AppRig) -> None:
    wid = open_window(app_rig)
    closed = app_rig.post(f"/v1/windows/{wid}/close", {})
    assert closed.status_code == 200 and closed.json_body["state"] == "CLOSING", closed.json_body
    again = app_rig.post(f"/v1/windows/{wid}/close", {})
    assert again.status_code == 409 and again.json_body["error"] == "not_closable"
    listed = app_rig.client.http.get("/v1/windows").json_body["windows"]
    assert [w["window_id"] for w in listed] == [wid]


def test_forty_five_hosts_in_three_archives_one_host_missing(app_rig: AppRig) -> None:
    """Only the shard with the missing host waits for the deadline; the next window's volumes
    are made from these snapshots; nothing is left between windows."""
    for i in range(41):
        app_rig.keys[f"n{i:02d}"] = SigningKey.generate()
        assert app_rig.enrol(f"n{i:02d}", app_rig.keys[f"n{i:02d}"]).status_code == 201
    hosts = sorted(app_rig.keys)
    first = open_window(app_rig, duration_hours=0.0005)  # a deadline 1.8 s away
    shards = {s["shard_id"]: s["hosts"] for s in window(app_rig, first)["shards"]}
    assert sorted(len(h) for h in shards.values()) == [15, 15, 15]
    missing = shards["s02"][0]
    for host in hosts:
        if host != missing:
            assert app_rig.report(first, host).status_code == 200
    view = app_rig.stopped(first)
    states = {s["shard_id"]: s["state"] for s in view["shards"]}
    assert states == {"s01": "SNAPSHOTTING", "s02": "OPEN", "s03": "SNAPSHOTTING"}
    app_rig.settle_snapshots(window_id=first)
    assert window(app_rig, first)["state"] == "OPEN"  # s02 still waits
    wait_until(window(app_rig, first)["deadline"])
    app_rig.client.lambda_.invoke("window_deadline", {"window_id": first})
    app_rig.stopped(first)
    app_rig.settle_snapshots(window_id=first)
    assert window(app_rig, first)["state"] == "CLOSED"
    app_rig.client.lambda_.invoke("reconciler", aws_scheduled_event())  # the sweep
    assert_nothing_left(app_rig)
    made = {t["offsite:host"]: s["SnapshotId"] for s in offsite_snapshots()
            for t in [{x["Key"]: x["Value"] for x in s["Tags"]}]
            if t["offsite:window"] == first}
    assert len(made) == 45
    second = open_window(app_rig)
    volumes = app_rig.ec2.describe_volumes(Filters=[
        {"Name": "tag:offsite:window", "Values": [second]}])["Volumes"]
    by_host = {t["Value"]: v["SnapshotId"] for v in volumes for t in v["Tags"]
               if t["Key"] == "offsite:host"}
    assert by_host == made  # each from its own host's newest snapshot


def test_no_capacity_in_the_first_zone_moves_to_the_other(app_rig: AppRig) -> None:
    from botocore.exceptions import ClientError

    ec2 = app_rig.ec2
    tried: list[tuple[str, str]] = []
    compute = app_module.window_service().ports.compute

    def refuse_zone_a(params: dict[str, Any], **kwargs: Any) -> None:
        tried.append((params["InstanceType"], params.get("SubnetId", "")))
        if params.get("SubnetId") == app_rig.subnets[0]:
            raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity",
                                         "Message": "no t3.small in us-east-1a"}},
                              "RunInstances")

    compute._ec2.meta.events.register(  # type: ignore[attr-defined]
        "before-parameter-build.ec2.RunInstances", refuse_zone_a)
    wid = open_window(app_rig)
    assert tried == [("t3.small", app_rig.subnets[0]), ("t3.small", app_rig.subnets[1])]
    (instance_id,) = app_rig.instances(wid).values()
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
        "Instances"][0]
    assert instance["SubnetId"] == app_rig.subnets[1]
    assert instance["Placement"]["AvailabilityZone"] == "us-east-1b"


def test_a_host_that_never_asks_closes_its_archive_after_the_grace(
        app_rig: AppRig, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """START_GRACE_MINUTES after the archive was ready, the reconciler closes it when every
    host that has not reported never asked for a session: l costs its grace, not the window
    (3.6 h); SNS names it. A host that asked and is still sending keeps it open."""
    monkeypatch.setenv("START_GRACE_MINUTES", "0.01")  # 0.6 s
    clear_caches()
    first = open_window(app_rig)
    for host in ("c", "h", "o"):  # (all ask first: a host not yet asking would be idle too)
        assert app_rig.session(host).status_code == 201
    for host in ("c", "h", "o"):
        app_rig.report(first, host)
    # (on a loaded machine the grace may pass during the reports: the last one closes it then)
    time.sleep(0.7)
    app_rig.client.lambda_.invoke("reconciler", aws_scheduled_event())
    closing = window(app_rig, first)
    # CLOSING; or, closed by the last report, already SNAPSHOTTING after the reconciler's look
    assert closing["state"] in ("CLOSING", "SNAPSHOTTING"), closing
    (reason,) = [str(vars(r)["reason"]) for r in caplog.records
                 if r.getMessage() == "shard transition" and vars(r).get("to") == "CLOSING"]
    assert "never asked for a session" in reason and "l: missing" in reason, reason
    assert app_rig.session("l").status_code == 409  # too late: a later window serves it
    app_rig.stopped(first)
    app_rig.settle_snapshots()
    assert window(app_rig, first)["state"] == "CLOSED"

    second = open_window(app_rig)
    assert app_rig.session("l").status_code == 201  # asked, still sending
    for host in ("c", "h", "o"):
        app_rig.report(second, host)
    time.sleep(0.7)
    app_rig.client.lambda_.invoke("reconciler", aws_scheduled_event())
    assert window(app_rig, second)["state"] == "OPEN"  # held open, to the deadline if need be


def test_a_session_the_idle_close_overtook_is_refused_and_certifies_nothing(
        app_rig: AppRig, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The reconciler idle-closes l's archive after l's session read it OPEN and before the
    session recorded l's start: the session is refused as after the close (409), no
    certificate is issued for an archive that is being stopped, and the close stands."""
    wid = open_window(app_rig)
    real = DynamoWindowStore.record_start

    def overtaken(self: DynamoWindowStore, window_id: str, shard_id: str, host: str,
                  at: datetime) -> bool:
        assert self.transition_shard(window_id, shard_id, State.OPEN, State.CLOSING,
                                     "idle (the reconciler, meanwhile)", at,
                                     unless_started={host})
        return real(self, window_id, shard_id, host, at)

    monkeypatch.setattr(DynamoWindowStore, "record_start", overtaken)
    answer = app_rig.session("l")
    assert (answer.status_code, answer.json_body["error"]) == (409, "no_open_window")
    assert "certificate issued" not in caplog.text
    (shard,) = window(app_rig, wid)["shards"]
    assert shard["state"] == "CLOSING"


def test_an_idle_close_a_session_overtook_does_not_close(
        app_rig: AppRig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconciler finds l idle past its grace, but l's session records its start before
    the reconciler's close is written: the close fails, and the archive stays up for l."""
    monkeypatch.setenv("START_GRACE_MINUTES", "0.01")  # 0.6 s
    clear_caches()
    real, closes = DynamoWindowStore.transition_shard, []

    def overtaken(self: DynamoWindowStore, *args: Any, **kwargs: Any) -> bool:
        unless = args[8] if len(args) > 8 else kwargs.get("unless_started", ())
        if unless:  # an idle close (the last report's or the reconciler's): l's session first
            closes.append(unless)
            (shard,) = self.get_window(args[0]).shards.values()  # type: ignore[union-attr]
            assert self.record_start(args[0], shard.shard_id, "l", datetime.now(timezone.utc))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DynamoWindowStore, "transition_shard", overtaken)
    wid = open_window(app_rig)
    for host in ("c", "h", "o"):
        app_rig.report(wid, host)
    time.sleep(0.7)
    app_rig.client.lambda_.invoke("reconciler", aws_scheduled_event())
    assert closes == [frozenset({"l"})]  # one close tried, and overtaken
    assert window(app_rig, wid)["state"] == "OPEN"  # l came: it holds the archive
    assert app_rig.session("l").status_code == 201
