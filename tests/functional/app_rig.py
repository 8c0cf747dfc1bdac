"""The deployed shape in process: app.py through chalice.test.Client, AWS on moto (in
process), events in the exact shapes AWS sends (tests/events/)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client

import app as app_module
from chalicelib.adapters.dynamo_store import create_table

EVENTS = Path(__file__).parents[1] / "events"
HOSTS = ("c", "h", "o", "l")


def aws_event(name: str, **detail: Any) -> dict[str, Any]:
    event = copy.deepcopy(json.loads((EVENTS / name).read_text()))
    event["detail"].update(detail)
    return dict(event)


def snapshot_event(snapshot_id: str, volume_id: str, result: str = "succeeded") -> dict[str, Any]:
    arn = f"arn:aws:ec2::us-east-1:snapshot/{snapshot_id}"
    event = aws_event("ebs-snapshot-notification.json", snapshot_id=arn, result=result,
                      source=f"arn:aws:ec2::us-east-1:volume/{volume_id}")
    event["resources"] = [arn]
    return event


def offsite_snapshots() -> list[dict[str, Any]]:
    """Our snapshots (moto's own images come with snapshots of their own)."""
    return list(boto3.client("ec2").describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": ["offsite:host"]}])[
        "Snapshots"])


@dataclass
class AppRig:
    client: Client
    instance_id: str
    volumes: dict[str, str]
    stops: list[str]

    @property
    def ec2(self) -> Any:
        return boto3.client("ec2")

    def state_event(self, state: str) -> None:
        if state == "running":
            self.ec2.start_instances(InstanceIds=[self.instance_id])
        event = aws_event(f"ec2-state-{state}.json", **{"instance-id": self.instance_id})
        self.client.lambda_.invoke("instance_state", event)

    def post(self, path: str, body: Any, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else json.dumps(body).encode()
        return self.client.http.post(path, body=data,
                                     headers={"Content-Type": "application/json"})

    def report(self, window_id: str, host: str, status: str = "succeeded") -> Any:
        return self.post("/v1/reports", {"host": host, "window_id": window_id,
                                         "status": status, "bytes_sent": 1234, "files": 5,
                                         "duration_s": 2.0, "detail": ""})

    def settle_snapshots(self, result: str = "succeeded") -> list[str]:
        snaps = offsite_snapshots()
        for snap in snaps:
            self.client.lambda_.invoke("snapshot_state",
                                       snapshot_event(snap["SnapshotId"], snap["VolumeId"],
                                                      result))
        return [s["SnapshotId"] for s in snaps]


@pytest.fixture
def app_rig(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppRig]:
    ec2 = boto3.client("ec2")
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                                 InstanceType="t3.small")["Instances"][0]
    instance_id = instance["InstanceId"]
    ec2.stop_instances(InstanceIds=[instance_id])
    zone = instance["Placement"]["AvailabilityZone"]
    volumes = {h: ec2.create_volume(AvailabilityZone=zone, Size=10)["VolumeId"] for h in HOSTS}
    topic = boto3.client("sns").create_topic(Name="offsite")["TopicArn"]
    boto3.client("scheduler").create_schedule_group(Name="offsite-dev")
    create_table(boto3.client("dynamodb"), "offsite-dev")
    monkeypatch.setenv("TABLE_NAME", "offsite-dev")  # as the dev stage's config says
    monkeypatch.setenv("SCHEDULE_GROUP", "offsite-dev")
    monkeypatch.setenv("INSTANCE_ID", instance_id)
    monkeypatch.setenv("INSTANCE_TYPES", "t3.small,t3a.small")
    monkeypatch.setenv("TOPIC_ARN", topic)
    monkeypatch.setenv("DEADLINE_TARGET_ARN",
                       "arn:aws:lambda:us-east-1:123456789012:function:offsite-dev-window_deadline")
    monkeypatch.setenv("SCHEDULER_ROLE_ARN", "arn:aws:iam::123456789012:role/offsite-scheduler")
    app_module.settings.cache_clear()
    app_module.window_service.cache_clear()
    stops: list[str] = []
    with Client(app_module.app, stage_name="dev") as client:
        service = app_module.window_service()
        service.ports.compute._ec2.meta.events.register(  # type: ignore[attr-defined]
            "before-call.ec2.StopInstances", lambda **kw: stops.append("stop"))
        from chalicelib.records import Host
        from chalicelib.windows import utc_now

        for name, volume in volumes.items():
            service.ports.store.put_host(Host(name, "ssh-ed25519 AAAA", True, volume, utc_now()))
        yield AppRig(client, instance_id, volumes, stops)
    app_module.settings.cache_clear()
    app_module.window_service.cache_clear()
