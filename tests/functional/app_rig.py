"""The deployed shape in process: app.py through chalice.test.Client, AWS on moto (in
process), events in the exact shapes AWS sends (tests/events/)."""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client
from nacl.signing import SigningKey
from offsite_host.httpsig import sign_request

import app as app_module
from chalicelib import composition
from chalicelib.adapters.dynamo_store import create_table
from chalicelib.boot_signal import NAMESPACE, BootSignal, signal_body, signal_message
from chalicelib.keys import (
    KeyMaterial,
    KeyParameters,
    generate_key_material,
    read_openssh_private_key,
)
from chalicelib.launcher import InlineLauncher, launch_event
from chalicelib.sshcert import ca_public_key_line
from chalicelib.sshsig import sign

EVENTS = Path(__file__).parents[1] / "events"
HOSTS = ("c", "h", "o", "l")
API = "https://api.offsite.test"
KEY_PREFIX = "/offsite/test"


def boot_signal_body(key: SigningKey, instance_id: str, status: str, reason: str = "",
                     at: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """What boot.sh posts: the message and its SSHSIG by the host key."""
    message = signal_message(BootSignal(instance_id, status, at or int(time.time()),
                                        nonce or secrets.token_hex(16), reason))
    return signal_body(message, sign(key, message, NAMESPACE))


def put_key_material(material: KeyMaterial) -> None:
    ssm, names = boto3.client("ssm"), KeyParameters(KEY_PREFIX)
    for name, value, kind in material.parameters(names):
        ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)


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


def open_window(rig: AppRig, **body: Any) -> str:
    """A backup window opened through the API (202), its archives launched, running and
    ready (OPEN)."""
    answer = rig.post("/v1/windows", body)
    assert answer.status_code == 202, answer.json_body
    window_id = str(answer.json_body["window_id"])
    assert rig.boot(window_id)["state"] == "OPEN"
    return window_id


def offsite_snapshots() -> list[dict[str, Any]]:
    """Our snapshots (moto's own images come with snapshots of their own)."""
    return list(boto3.client("ec2").describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": ["offsite:host"]}])[
        "Snapshots"])


@dataclass
class AppRig:
    client: Client
    stops: list[str]
    keys: dict[str, SigningKey]
    material: KeyMaterial
    subnets: list[str]

    @property
    def ec2(self) -> Any:
        return boto3.client("ec2")

    def window(self, window_id: str) -> dict[str, Any]:
        answer = self.client.http.get(f"/v1/windows/{window_id}")
        assert answer.status_code == 200, answer.json_body
        return dict(answer.json_body)

    def instances(self, window_id: str) -> dict[str, str]:
        """shard id -> instance id, of the window's launched archives."""
        return {s["shard_id"]: s["instance_id"] for s in self.window(window_id)["shards"]
                if s["instance_id"]}

    def instance_event(self, instance_id: str, state: str) -> None:
        """EC2's state-change notification, as EventBridge delivers it."""
        event = aws_event(f"ec2-state-{state}.json", **{"instance-id": instance_id})
        self.client.lambda_.invoke("instance_state", event)

    def boot(self, window_id: str) -> dict[str, Any]:
        """Every archive of the window is running (moto runs them at once), EC2 says so, and
        then each instance says it is ready."""
        for instance_id in self.instances(window_id).values():
            self.instance_event(instance_id, "running")
            answer = self.boot_signal(instance_id, "ready", "volumes mounted")
            assert answer.status_code == 200, answer.json_body
        return self.window(window_id)

    @property
    def host_key(self) -> SigningKey:
        """The stage's SSH host key, which archive instances sign their signals with."""
        return read_openssh_private_key(self.material.host_private_pem)

    def boot_signal(self, instance_id: str, status: str, reason: str = "",
                    body: dict[str, str] | None = None) -> Any:
        """The instance's ready/failed signal, signed with the stage's host key."""
        body = body or boot_signal_body(self.host_key, instance_id, status, reason)
        return self.post(f"/v1/archives/{instance_id}/{status}", body)

    def stopped(self, window_id: str) -> dict[str, Any]:
        """The notifications of every archive EC2 has stopped."""
        for instance_id in self.instances(window_id).values():
            state = self.ec2.describe_instances(InstanceIds=[instance_id])[
                "Reservations"][0]["Instances"][0]["State"]["Name"]
            if state == "stopped":
                self.instance_event(instance_id, "stopped")
        return self.window(window_id)

    def post(self, path: str, body: Any, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else json.dumps(body).encode()
        return self.client.http.post(path, body=data,
                                     headers={"Content-Type": "application/json"})

    def signed(self, method: str, path: str, body: Any, host: str,
               key: SigningKey | None = None, raw: bytes | None = None,
               headers: dict[str, str] | None = None) -> Any:
        """A host's request, signed as offsite-host signs it."""
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        signed = sign_request(method, API + path, data, key or self.keys[host], keyid=host,
                              created=int(time.time()), nonce=secrets.token_urlsafe(16))
        sent = {"Host": "api.offsite.test", **signed, **(headers or {})}
        return self.client.http.request(method, path, body=data, headers=sent)

    def report(self, window_id: str, host: str, status: str = "succeeded") -> Any:
        return self.signed("POST", "/v1/reports", {
            "host": host, "window_id": window_id, "status": status, "bytes_sent": 1234,
            "files": 5, "duration_s": 2.0, "detail": ""}, host)

    def session(self, host: str, purpose: str = "backup", **changes: Any) -> Any:
        ephemeral = ca_public_key_line(SigningKey.generate())
        body = {"host": host, "ssh_public_key": ephemeral, "purpose": purpose, **changes}
        return self.signed("POST", "/v1/sessions", body, host)

    def enrol(self, name: str, key: SigningKey, **extra: Any) -> Any:
        body = {"public_key": ca_public_key_line(key), **extra}
        return self.client.http.put(f"/v1/hosts/{name}", body=json.dumps(body).encode(),
                                    headers={"Content-Type": "application/json"})

    def settle_snapshots(self, result: str = "succeeded", window_id: str | None = None,
                         ebs_fails: tuple[str, ...] = ()) -> list[str]:
        """EBS's notifications for our snapshots (of `window_id` only, if given); those of the
        hosts in `ebs_fails` end in EBS state `error` and are notified as failed."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ec2.models import ec2_backends

        snaps = [s for s in offsite_snapshots() if window_id is None
                 or {"Key": "offsite:window", "Value": window_id} in s["Tags"]]
        for snap in snaps:
            host = next(t["Value"] for t in snap["Tags"] if t["Key"] == "offsite:host")
            outcome = result
            if host in ebs_fails:
                ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].snapshots[
                    snap["SnapshotId"]].status = "error"
                outcome = "failed"
            self.client.lambda_.invoke("snapshot_state",
                                       snapshot_event(snap["SnapshotId"], snap["VolumeId"],
                                                      outcome))
        return [s["SnapshotId"] for s in snaps]


@pytest.fixture
def app_rig(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppRig]:
    """AWS on moto in process: fast, for everything that runs in one Lambda at a time."""
    yield from provision(monkeypatch)


@pytest.fixture
def served_app_rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[AppRig]:
    """AWS on a moto server on loopback, so that separate processes (separate Lambda
    containers) share one account; like DynamoDB, it serves one conditional write at a time
    (local.aws.MotoServer)."""
    from local.aws import MotoServer, free_port

    server = MotoServer(free_port())
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    try:
        yield from provision(monkeypatch)
    finally:
        server.stop()


def provision(monkeypatch: pytest.MonkeyPatch) -> Iterator[AppRig]:
    """What a deploy makes (launch template, subnets in two zones, table, topic, keys), then
    the app with four enrolled hosts. Each shard's launch runs in the request that opened the
    window, through the launch_shard handler, where AWS would invoke it asynchronously."""
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.7.{i}.0/24",
                                 AvailabilityZone=f"us-east-1{zone}")["Subnet"]["SubnetId"]
               for i, zone in enumerate("ab")]
    for subnet in subnets:  # public subnets: "instances launched in this subnet receive a
        # public IPv4 address" (Subnet.MapPublicIpOnLaunch, EC2 API Reference); false by default
        ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
    template = ec2.create_launch_template(
        LaunchTemplateName="offsite-dev-archive",
        LaunchTemplateData={"MetadataOptions": {"HttpTokens": "required"}})[
        "LaunchTemplate"]["LaunchTemplateId"]
    topic = boto3.client("sns").create_topic(Name="offsite")["TopicArn"]
    boto3.client("scheduler").create_schedule_group(Name="offsite-dev")
    create_table(boto3.client("dynamodb"), "offsite-dev")
    material = generate_key_material()
    put_key_material(material)
    monkeypatch.setenv("KEY_PARAMETER_PREFIX", KEY_PREFIX)
    monkeypatch.setenv("TABLE_NAME", "offsite-dev")  # as the dev stage's config says
    monkeypatch.setenv("SCHEDULE_GROUP", "offsite-dev")
    monkeypatch.setenv("INSTANCE_TYPES", "t3.small,t3a.small")
    monkeypatch.setenv("IMAGE_ID_X86_64", "ami-12c6146b")
    monkeypatch.setenv("SUBNET_IDS", ",".join(subnets))
    monkeypatch.setenv("LAUNCH_TEMPLATE", template)
    monkeypatch.setenv("TOPIC_ARN", topic)
    monkeypatch.setenv("DEADLINE_TARGET_ARN",
                       "arn:aws:lambda:us-east-1:123456789012:function:offsite-dev-window_deadline")
    monkeypatch.setenv("SCHEDULER_ROLE_ARN", "arn:aws:iam::123456789012:role/offsite-scheduler")
    monkeypatch.setenv("API_URL", API)
    monkeypatch.setattr(composition, "_launcher", lambda settings: InlineLauncher(
        lambda window_id, shard_id: app_module.launch_shard(
            launch_event(window_id, shard_id), None)))
    clear_caches()
    stops: list[str] = []
    with Client(app_module.app, stage_name="dev") as client:
        service = app_module.window_service()
        service.ports.compute._ec2.meta.events.register(  # type: ignore[attr-defined]
            "before-call.ec2.StopInstances", lambda **kw: stops.append("stop"))
        rig = AppRig(client, stops, {}, material, subnets)
        for name in HOSTS:
            rig.keys[name] = SigningKey.generate()
            answer = rig.enrol(name, rig.keys[name])
            assert answer.status_code == 201, answer.json_body
        yield rig
    clear_caches()


def clear_caches() -> None:
    app_module.reset_caches()
