"""The archive instance and its volumes' snapshots, on EC2, and an in-memory fake."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import ClientError

from chalicelib.retention import RecoveryPoint

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

TAG_WINDOW = "offsite:window"
TAG_HOST = "offsite:host"
TAG_COMPLETE = "offsite:complete"

# Errors after which another instance type may still start (capacity) or a later try may
# (throttling, which boto3's own retries did not get past).
_TRY_NEXT_TYPE = {"InsufficientInstanceCapacity", "InstanceLimitExceeded",
                  "Unsupported", "RequestLimitExceeded", "Throttling"}


# The device names AWS recommends for EBS data volumes on Linux, in the order we attach them.
DEVICE_NAMES = tuple(f"/dev/sd{c}" for c in "fghijklmnopqrstuvwxyz")


class StartFailedError(Exception):
    pass


class NoFreeDeviceError(Exception):
    pass


@dataclass(frozen=True)
class InstanceView:
    state: str  # pending | running | stopping | stopped | ...
    address: str | None


class Compute(Protocol):
    def start(self, instance_id: str, instance_types: Sequence[str]) -> str:
        """Start the instance, trying each type in turn; the type it started as.
        Raises StartFailedError with every type's cause when none started."""

    def stop(self, instance_id: str) -> None: ...

    def describe(self, instance_id: str) -> InstanceView: ...

    def snapshot_volume(self, volume_id: str, tags: Mapping[str, str]) -> str: ...

    def find_snapshot(self, window_id: str, host: str) -> str | None: ...

    def snapshot_states(self, snapshot_ids: Sequence[str]) -> dict[str, str]:
        """pending | completed | error, per id that EC2 still knows."""

    def recovery_points(self) -> list[RecoveryPoint]: ...

    def delete_snapshot(self, snapshot_id: str) -> None: ...

    def create_host_volume(self, host: str, instance_id: str, size_gib: int) -> str:
        """A new encrypted volume for `host`, attached to the instance; its id."""


class Ec2Compute:
    def __init__(self, client: EC2Client) -> None:
        self._ec2 = client

    def start(self, instance_id: str, instance_types: Sequence[str]) -> str:
        causes: list[str] = []
        current = self._instance(instance_id)["InstanceType"]
        for instance_type in instance_types or [current]:
            try:
                if instance_type != current:
                    self._ec2.modify_instance_attribute(
                        InstanceId=instance_id, InstanceType={"Value": instance_type})
                    current = instance_type
                self._ec2.start_instances(InstanceIds=[instance_id])
                return instance_type
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in _TRY_NEXT_TYPE:
                    raise
                causes.append(f"{instance_type}: {code}")
        raise StartFailedError("; ".join(causes))

    def stop(self, instance_id: str) -> None:
        self._ec2.stop_instances(InstanceIds=[instance_id])

    def describe(self, instance_id: str) -> InstanceView:
        instance = self._instance(instance_id)
        return InstanceView(instance["State"]["Name"], instance.get("PublicIpAddress"))

    def snapshot_volume(self, volume_id: str, tags: Mapping[str, str]) -> str:
        answer = self._ec2.create_snapshot(
            VolumeId=volume_id,
            Description=f"offsite {tags.get(TAG_HOST)} {tags.get(TAG_WINDOW)}",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": [
                {"Key": k, "Value": v} for k, v in tags.items()]}])
        return answer["SnapshotId"]

    def find_snapshot(self, window_id: str, host: str) -> str | None:
        found = self._ec2.describe_snapshots(OwnerIds=["self"], Filters=[
            {"Name": f"tag:{TAG_WINDOW}", "Values": [window_id]},
            {"Name": f"tag:{TAG_HOST}", "Values": [host]}])["Snapshots"]
        return found[0]["SnapshotId"] if found else None

    def snapshot_states(self, snapshot_ids: Sequence[str]) -> dict[str, str]:
        states: dict[str, str] = {}
        for snapshot_id in snapshot_ids:
            try:
                found = self._ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidSnapshot.NotFound":
                    raise
                continue
            states.update({s["SnapshotId"]: s["State"] for s in found})
        return states

    def recovery_points(self) -> list[RecoveryPoint]:
        points = []
        pages = self._ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": [TAG_HOST]}])
        for page in pages:
            for snap in page["Snapshots"]:
                tags = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
                points.append(RecoveryPoint(
                    snapshot_id=snap["SnapshotId"], host=tags[TAG_HOST],
                    window_id=tags.get(TAG_WINDOW, ""), started=snap["StartTime"],
                    complete=tags.get(TAG_COMPLETE) == "true"))
        return points

    def delete_snapshot(self, snapshot_id: str) -> None:
        try:
            self._ec2.delete_snapshot(SnapshotId=snapshot_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidSnapshot.NotFound":
                raise

    def create_host_volume(self, host: str, instance_id: str, size_gib: int) -> str:
        instance = self._instance(instance_id)
        used = {m["DeviceName"] for m in instance.get("BlockDeviceMappings", [])}
        used.add(instance.get("RootDeviceName", ""))
        device = next((d for d in DEVICE_NAMES if d not in used), None)
        if device is None:
            raise NoFreeDeviceError(f"instance {instance_id} has no free device for {host}")
        volume_id = self._ec2.create_volume(
            AvailabilityZone=instance["Placement"]["AvailabilityZone"], Size=size_gib,
            VolumeType="gp3", Encrypted=True, TagSpecifications=[{
                "ResourceType": "volume", "Tags": [{"Key": TAG_HOST, "Value": host}]}],
        )["VolumeId"]
        self._ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id])
        self._ec2.attach_volume(Device=device, InstanceId=instance_id, VolumeId=volume_id)
        return volume_id

    def _instance(self, instance_id: str) -> dict:  # type: ignore[type-arg]
        answer = self._ec2.describe_instances(InstanceIds=[instance_id])
        return dict(answer["Reservations"][0]["Instances"][0])


class FakeCompute:
    """EC2 as the services see it: starts and stops take effect at once, snapshots are pending
    until `complete_snapshot`. Counts every call, so tests can say "exactly one stop"."""

    def __init__(self, unavailable_types: Sequence[str] = ()) -> None:
        self.state = "stopped"
        self.address = "203.0.113.10"
        self.unavailable_types = set(unavailable_types)
        self.started_as: list[str] = []
        self.stops = 0
        self.snapshots: dict[str, dict[str, object]] = {}
        self.volumes: dict[str, str] = {}
        self._ids = itertools.count(1)
        self.now = datetime(2026, 11, 29, 2, 0)

    def start(self, instance_id: str, instance_types: Sequence[str]) -> str:
        causes = []
        for instance_type in instance_types or ["t3.small"]:
            if instance_type in self.unavailable_types:
                causes.append(f"{instance_type}: InsufficientInstanceCapacity")
                continue
            self.state = "running"
            self.started_as.append(instance_type)
            return instance_type
        raise StartFailedError("; ".join(causes))

    def stop(self, instance_id: str) -> None:
        self.stops += 1
        self.state = "stopped"

    def describe(self, instance_id: str) -> InstanceView:
        return InstanceView(self.state, self.address if self.state == "running" else None)

    def snapshot_volume(self, volume_id: str, tags: Mapping[str, str]) -> str:
        snapshot_id = f"snap-{next(self._ids):017x}"
        self.snapshots[snapshot_id] = {"volume_id": volume_id, "tags": dict(tags),
                                       "state": "pending", "started": self.now}
        return snapshot_id

    def complete_snapshot(self, snapshot_id: str, state: str = "completed") -> None:
        self.snapshots[snapshot_id]["state"] = state

    def find_snapshot(self, window_id: str, host: str) -> str | None:
        for snapshot_id, snap in self.snapshots.items():
            tags = snap["tags"]
            assert isinstance(tags, dict)
            if tags.get(TAG_WINDOW) == window_id and tags.get(TAG_HOST) == host:
                return snapshot_id
        return None

    def snapshot_states(self, snapshot_ids: Sequence[str]) -> dict[str, str]:
        return {i: str(self.snapshots[i]["state"]) for i in snapshot_ids if i in self.snapshots}

    def recovery_points(self) -> list[RecoveryPoint]:
        points = []
        for snapshot_id, snap in self.snapshots.items():
            tags, started = snap["tags"], snap["started"]
            assert isinstance(tags, dict) and isinstance(started, datetime)
            points.append(RecoveryPoint(snapshot_id, tags[TAG_HOST], tags[TAG_WINDOW],
                                        started, tags[TAG_COMPLETE] == "true"))
        return points

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.snapshots.pop(snapshot_id, None)

    def create_host_volume(self, host: str, instance_id: str, size_gib: int) -> str:
        volume_id = f"vol-{next(self._ids):017x}"
        self.volumes[volume_id] = host
        return volume_id
