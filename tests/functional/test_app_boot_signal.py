"""The instance's own word on its boot, through app.py on moto: EC2's "running" is BOOTING,
the signed ready signal opens the shard, a failed one fails it at once with the instance's
reason in SNS; forged, replayed, early, late and duplicated signals change nothing."""

from __future__ import annotations

import time
from typing import Any

import boto3
from nacl.signing import SigningKey

from .app_rig import HOSTS, AppRig, app_rig, boot_signal_body

__all__ = ["app_rig"]


def opened(rig: AppRig) -> tuple[str, str]:
    """A window whose one archive EC2 says is running: (window id, instance id)."""
    answer = rig.post("/v1/windows", {})
    assert answer.status_code == 202, answer.json_body
    window_id = str(answer.json_body["window_id"])
    [instance_id] = rig.instances(window_id).values()
    rig.instance_event(instance_id, "running")
    return window_id, instance_id


def admins_queue() -> tuple[Any, str]:
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    queue = sqs.create_queue(QueueName="admins")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=sns.list_topics()["Topics"][0]["TopicArn"], Protocol="sqs",
                  Endpoint=arn)
    return sqs, queue


def test_running_is_not_ready_and_the_ready_signal_opens_the_window(app_rig: AppRig) -> None:
    window_id, instance_id = opened(app_rig)
    view = app_rig.window(window_id)
    assert view["state"] == "BOOTING" and view["shards"][0]["address"]
    waiting = app_rig.session("c")
    assert waiting.status_code == 503 and "Retry-After" in waiting.headers
    answer = app_rig.boot_signal(instance_id, "ready", "4 volume(s) mounted")
    assert answer.status_code == 200, answer.json_body
    view = app_rig.window(window_id)
    assert view["state"] == "OPEN" and "BOOTING" in view["shards"][0]["entered"]
    assert app_rig.session("c").status_code == 201
    again = app_rig.boot_signal(instance_id, "ready", "4 volume(s) mounted")  # a retry
    assert again.status_code == 200 and app_rig.window(window_id)["state"] == "OPEN"


def test_a_failed_boot_fails_the_window_at_once_with_the_instances_reason(
        app_rig: AppRig) -> None:
    sqs, queue = admins_queue()
    window_id, instance_id = opened(app_rig)
    reason = "1 step(s) failed: [setup_host o]; o: /dev/sdh is not attached"
    answer = app_rig.boot_signal(instance_id, "failed", reason)
    assert answer.status_code == 200, answer.json_body
    view = app_rig.window(window_id)
    assert view["state"] == "FAILED" and reason in view["shards"][0]["reason"]
    state = app_rig.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
        "Instances"][0]["State"]["Name"]
    assert state in ("shutting-down", "terminated")
    bodies = [m["Body"] for m in sqs.receive_message(QueueUrl=queue,
                                                     MaxNumberOfMessages=10)["Messages"]]
    assert any(reason in body for body in bodies), bodies
    late = app_rig.boot_signal(instance_id, "ready", "too late")
    assert late.status_code == 200 and app_rig.window(window_id)["state"] == "FAILED"
    assert app_rig.session("c").status_code == 409  # no window open: hosts wait for tomorrow


def test_forged_replayed_and_unknown_signals_are_refused(app_rig: AppRig) -> None:
    window_id, instance_id = opened(app_rig)
    forged = boot_signal_body(SigningKey.generate(), instance_id, "ready")
    assert app_rig.boot_signal(instance_id, "ready", body=forged).status_code == 401
    stale = boot_signal_body(app_rig.host_key, instance_id, "ready", at=int(time.time()) - 3600)
    assert app_rig.boot_signal(instance_id, "ready", body=stale).status_code == 401
    other = boot_signal_body(app_rig.host_key, "i-0fedcba9876543210", "ready")
    assert app_rig.boot_signal(instance_id, "ready", body=other).status_code == 401
    unknown = app_rig.boot_signal("i-0fedcba9876543210", "ready", body=other)
    assert unknown.status_code == 404
    malformed = app_rig.post(f"/v1/archives/{instance_id}/ready", {"message": 1})
    assert malformed.status_code == 400
    assert app_rig.window(window_id)["state"] == "BOOTING"
    good = boot_signal_body(app_rig.host_key, instance_id, "failed", "disk")
    assert app_rig.boot_signal(instance_id, "failed", body=good).status_code == 200
    replayed = app_rig.boot_signal(instance_id, "failed", body=good)
    assert replayed.status_code == 401
    assert sorted(app_rig.window(window_id)["expected"]) == sorted(HOSTS)
