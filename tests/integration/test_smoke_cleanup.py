"""The smoke's cleanup on moto, with a stand-in for the admin API: it removes what the run made
(its host's record, the snapshots and volumes of that host in the run's windows, its work
directory) and nothing else, and says what it could not remove."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.adapters.dynamo_store import create_table
from chalicelib.admin.api import ApiError
from chalicelib.admin.smoke_cleanup import Cleanup, Made

TABLE = "offsite-dev"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7smokesmokesmokesmokesmokesmokesmokesmoke"


class Api:
    """The admin API's answers the cleanup reads: the window history, closes, revokes."""

    def __init__(self, windows: list[dict[str, Any]]) -> None:
        self.windows = {w["window_id"]: w for w in windows}
        self.calls: list[tuple[str, str]] = []

    def call(self, method: str, path: str, body: Any = None, query: Any = None) -> Any:
        self.calls.append((method, path))
        if path == "/v1/windows":
            return {"windows": list(self.windows.values())}
        if method == "POST" and path.endswith("/close"):
            window = self.windows[path.split("/")[3]]
            if window["state"] == "CLOSED":
                raise ApiError(409, "not_closable", "closed already")
            window["state"] = "CLOSED"  # ends at once, as if its archive stopped quickly
            return window
        if method == "GET":
            return self.windows[path.rsplit("/", 1)[1]]
        if method == "DELETE":
            name = path.rsplit("/", 1)[1]
            if not host_exists(name):
                raise ApiError(404, "unknown_host", f"no host {name}")
            return {"name": name, "enabled": False}
        raise AssertionError(path)


def put_host(name: str, key: str) -> None:
    boto3.client("dynamodb").put_item(TableName=TABLE, Item={
        "pk": {"S": "HOST"}, "sk": {"S": name}, "public_key": {"S": key}})


def host_exists(name: str) -> bool:
    got = boto3.client("dynamodb").get_item(TableName=TABLE,
                                            Key={"pk": {"S": "HOST"}, "sk": {"S": name}})
    return "Item" in got


def tagged_volume(host: str, window: str) -> str:
    return str(boto3.client("ec2").create_volume(
        AvailabilityZone="us-east-1a", Size=1, TagSpecifications=[{
            "ResourceType": "volume", "Tags": [{"Key": "offsite:host", "Value": host},
                                               {"Key": "offsite:window", "Value": window}]}],
    )["VolumeId"])


def tagged_snapshot(host: str, window: str) -> str:
    ec2 = boto3.client("ec2")
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    return str(ec2.create_snapshot(VolumeId=volume, TagSpecifications=[{
        "ResourceType": "snapshot", "Tags": [{"Key": "offsite:host", "Value": host},
                                             {"Key": "offsite:window", "Value": window}]}],
    )["SnapshotId"])


def snapshot_ids() -> set[str]:
    found = boto3.client("ec2").describe_snapshots(OwnerIds=["self"])["Snapshots"]
    return {s["SnapshotId"] for s in found}


def volume_ids() -> set[str]:
    return {v["VolumeId"] for v in boto3.client("ec2").describe_volumes()["Volumes"]}


@pytest.fixture
def world(aws: None, tmp_path: Path) -> dict[str, Any]:
    """The smoke host smoke-1 with its two windows; host c with its own window and snapshot."""
    create_table(boto3.client("dynamodb"), TABLE)
    put_host("smoke-1", KEY)
    put_host("c", KEY.replace("smoke", "other"))
    windows = [{"window_id": "w-1", "state": "OPEN", "expected": ["smoke-1"]},
               {"window_id": "w-2", "state": "CLOSED", "expected": ["smoke-1"],
                "purpose": "restore"},
               {"window_id": "w-c", "state": "CLOSED", "expected": ["c"]}]
    work = tmp_path / "offsite-smoke-x"
    (work / "data").mkdir(parents=True)
    (work / "host.key").write_text("private\n")
    return {"api": Api(windows), "work": work,
            "ours": {tagged_snapshot("smoke-1", "w-1"), tagged_volume("smoke-1", "w-2")},
            "theirs": {tagged_snapshot("c", "w-c"), tagged_volume("c", "w-c"),
                       # the same name, in a window this run did not open (an earlier smoke
                       # that left it): not this run's to delete
                       tagged_snapshot("smoke-1", "w-earlier")}}


def cleanup(world: dict[str, Any]) -> Cleanup:
    return Cleanup(world["api"], boto3.client("ec2"), boto3.client("dynamodb"), TABLE,
                   wait_s=5, poll_s=0, sleep=lambda _: None)


def test_removes_what_the_run_made_and_nothing_else(world: dict[str, Any]) -> None:
    left = cleanup(world)(Made("smoke-1", KEY, world["work"]))
    assert left.kept == []
    assert ("POST", "/v1/windows/w-1/close") in world["api"].calls  # the open one, ended
    assert ("POST", "/v1/windows/w-c/close") not in world["api"].calls
    assert ("DELETE", "/v1/hosts/smoke-1") in world["api"].calls
    assert not host_exists("smoke-1") and host_exists("c")
    remaining = snapshot_ids() | volume_ids()
    assert not world["ours"] & remaining
    assert world["theirs"] <= remaining
    assert not world["work"].exists()
    assert any(line.startswith("host smoke-1") for line in left.removed)


def test_a_host_enrolled_again_with_another_key_keeps_its_record_and_snapshots(
        world: dict[str, Any]) -> None:
    put_host("smoke-1", KEY.replace("smoke", "again"))  # someone else's now
    left = cleanup(world)(Made("smoke-1", KEY, world["work"]))
    assert host_exists("smoke-1")
    assert world["ours"] & snapshot_ids()  # its newest recovery point stays
    assert any("ConditionalCheckFailed" in line for line in left.kept)
    assert any("newest recovery point stays" in line for line in left.kept)


def test_nothing_in_aws_is_touched_before_the_host_was_enrolled(world: dict[str, Any]) -> None:
    left = cleanup(world)(Made("smoke-1", None, world["work"]))
    assert world["api"].calls == [] and host_exists("smoke-1")
    assert world["ours"] | world["theirs"] <= snapshot_ids() | volume_ids()
    assert not world["work"].exists() and left.kept == []


def test_an_enrolment_that_never_happened_leaves_nothing_to_report(
        world: dict[str, Any]) -> None:
    left = cleanup(world)(Made("smoke-2", KEY, world["work"]))  # refused, or its answer lost
    assert ("DELETE", "/v1/hosts/smoke-2") in world["api"].calls
    assert left.kept == [] and host_exists("smoke-1")
    assert world["ours"] | world["theirs"] <= snapshot_ids() | volume_ids()
