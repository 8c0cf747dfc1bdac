"""The archive instance and its volumes' snapshots, on EC2, and an in-memory fake."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import ClientError

from chalicelib.retention import RecoveryPoint

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

TAG_WINDOW = "offsite:window"
TAG_HOST = "offsite:host"
# "true" only once EBS completed the snapshot of a host that reported success; "pending" until
# it settles, "false" otherwise (retention.RecoveryPoint.complete is the definition).
TAG_COMPLETE = "offsite:complete"
TAG_REPORTED = "offsite:reported"  # the host's report in that window: succeeded | failed | none
TAG_RESTORE = "offsite:restore-window"  # on a restore volume: the window it serves
# On the instance, while a restore volume is attached: "<host> <volume id>". boot.sh reads it
# from the instance metadata (instance tags in IMDS), so no tag key may hold ':' or '/'.
INSTANCE_TAG_RESTORE = "offsite-restore"

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

    def configure_boot(self, instance_id: str, user_data: str) -> None:
        """Sets what the stopped instance runs at its next boot; raises StartFailedError when
        the instance is not stopped."""

    def describe(self, instance_id: str) -> InstanceView: ...

    def snapshot_volume(self, volume_id: str, tags: Mapping[str, str]) -> str: ...

    def find_snapshot(self, window_id: str, host: str) -> str | None:
        """The snapshot already made of `host`'s volume for `window_id`, if EC2 lists one."""

    def mark_complete(self, snapshot_id: str, complete: bool) -> None:
        """Writes the settled truth into the snapshot's `offsite:complete` tag."""

    def snapshots_in_use(self) -> frozenset[str]:
        """Snapshots that one of our volumes was made from, while that volume exists."""

    def snapshot_states(self, snapshot_ids: Sequence[str]) -> dict[str, str]:
        """pending | completed | error, per id that EC2 still knows."""

    def recovery_points(self) -> list[RecoveryPoint]: ...

    def delete_snapshot(self, snapshot_id: str) -> None: ...

    def create_host_volume(self, host: str, instance_id: str, size_gib: int) -> str:
        """A new encrypted volume for `host`, attached to the instance; its id."""

    def create_restore_volume(self, snapshot_id: str, host: str, window_id: str,
                              instance_id: str) -> str:
        """A volume made from `snapshot_id`, attached to the (stopped) instance and named in
        its `offsite-restore` tag; its id. Raises SnapshotGoneError if EBS no longer has it."""

    def delete_restore_volume(self, volume_id: str, instance_id: str) -> None:
        """Detach and delete it, and clear the instance's tag; a volume already gone is fine."""

    def restore_volumes(self) -> dict[str, tuple[str, datetime]]:
        """Every restore volume that still exists: volume id -> (window id, created)."""


class SnapshotGoneError(LookupError):
    pass


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

    def configure_boot(self, instance_id: str, user_data: str) -> None:
        # Unlike RunInstances, ModifyInstanceAttribute takes the user-data base64-encoded by
        # the caller (botocore then encodes the blob once more for the wire); only while
        # the instance is stopped.
        try:
            self._ec2.modify_instance_attribute(
                InstanceId=instance_id,
                UserData={"Value": base64.b64encode(user_data.encode())})
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code != "IncorrectInstanceState":
                raise
            raise StartFailedError(f"the instance's boot config cannot be set: {code} "
                                   f"({exc.response.get('Error', {}).get('Message', '')})"
                                   ) from exc

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

    def mark_complete(self, snapshot_id: str, complete: bool) -> None:
        # CreateTags overwrites the value of a key the resource already has.
        self._ec2.create_tags(Resources=[snapshot_id], Tags=[
            {"Key": TAG_COMPLETE, "Value": "true" if complete else "false"}])

    def snapshots_in_use(self) -> frozenset[str]:
        # A volume made from a snapshot names it in SnapshotId for as long as the volume lives;
        # it is protected from its `creating` state until it is deleted.
        pages = self._ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": "tag-key", "Values": [TAG_HOST]}])
        return frozenset(volume["SnapshotId"] for page in pages for volume in page["Volumes"]
                         if volume.get("SnapshotId"))

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
                    reported=tags.get(TAG_REPORTED) == "succeeded",
                    size_gib=int(snap.get("VolumeSize", 0)), state=snap["State"]))
        return points

    def delete_snapshot(self, snapshot_id: str) -> None:
        try:
            self._ec2.delete_snapshot(SnapshotId=snapshot_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidSnapshot.NotFound":
                raise

    def create_host_volume(self, host: str, instance_id: str, size_gib: int) -> str:
        instance = self._instance(instance_id)
        device = _free_device(instance, host)
        volume_id = self._ec2.create_volume(
            AvailabilityZone=instance["Placement"]["AvailabilityZone"], Size=size_gib,
            VolumeType="gp3", Encrypted=True, TagSpecifications=[{
                "ResourceType": "volume", "Tags": [{"Key": TAG_HOST, "Value": host}]}],
        )["VolumeId"]
        self._ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id])
        self._ec2.attach_volume(Device=device, InstanceId=instance_id, VolumeId=volume_id)
        return volume_id

    def create_restore_volume(self, snapshot_id: str, host: str, window_id: str,
                              instance_id: str) -> str:
        instance = self._instance(instance_id)
        device = _free_device(instance, host)
        try:
            volume_id = self._ec2.create_volume(
                AvailabilityZone=instance["Placement"]["AvailabilityZone"],
                SnapshotId=snapshot_id, VolumeType="gp3", TagSpecifications=[{
                    "ResourceType": "volume", "Tags": [
                        {"Key": TAG_HOST, "Value": host},
                        {"Key": TAG_RESTORE, "Value": window_id}]}],
            )["VolumeId"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidSnapshot.NotFound":
                raise
            raise SnapshotGoneError(f"snapshot {snapshot_id} no longer exists") from exc
        try:
            self._ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id])
            self._ec2.attach_volume(Device=device, InstanceId=instance_id, VolumeId=volume_id)
            self._ec2.create_tags(Resources=[instance_id], Tags=[
                {"Key": INSTANCE_TAG_RESTORE, "Value": f"{host} {volume_id}"}])
        except Exception:
            self.delete_restore_volume(volume_id, instance_id)
            raise
        return volume_id

    def delete_restore_volume(self, volume_id: str, instance_id: str) -> None:
        self._ec2.delete_tags(Resources=[instance_id], Tags=[{"Key": INSTANCE_TAG_RESTORE}])
        try:
            volume = self._ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
            if volume.get("Attachments"):
                self._ec2.detach_volume(VolumeId=volume_id, InstanceId=instance_id)
                self._ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id])
            self._ec2.delete_volume(VolumeId=volume_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidVolume.NotFound":
                raise

    def restore_volumes(self) -> dict[str, tuple[str, datetime]]:
        pages = self._ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": "tag-key", "Values": [TAG_RESTORE]}])
        found: dict[str, tuple[str, datetime]] = {}
        for page in pages:
            for volume in page["Volumes"]:
                tags = {t["Key"]: t["Value"] for t in volume.get("Tags", [])}
                found[volume["VolumeId"]] = (tags[TAG_RESTORE], volume["CreateTime"])
        return found

    def _instance(self, instance_id: str) -> dict:  # type: ignore[type-arg]
        answer = self._ec2.describe_instances(InstanceIds=[instance_id])
        return dict(answer["Reservations"][0]["Instances"][0])


def _free_device(instance: dict, host: str) -> str:  # type: ignore[type-arg]
    used = {m["DeviceName"] for m in instance.get("BlockDeviceMappings", [])}
    used.add(instance.get("RootDeviceName", ""))
    device = next((d for d in DEVICE_NAMES if d not in used), None)
    if device is None:
        raise NoFreeDeviceError(
            f"instance {instance['InstanceId']} has no free device for {host}")
    return device


class FakeCompute:
    """EC2 as the services see it: starts and stops take effect at once, snapshots are pending
    until `complete_snapshot`. Counts every call, so tests can say "exactly one stop"."""

    def __init__(self, unavailable_types: Sequence[str] = ()) -> None:
        self.state = "stopped"
        self.address = "203.0.113.10"
        self.unavailable_types = set(unavailable_types)
        self.started_as: list[str] = []
        self.user_data: str | None = None
        self.stops = 0
        self.snapshots: dict[str, dict[str, object]] = {}
        self.volumes: dict[str, str] = {}
        self.restores: dict[str, dict[str, str]] = {}  # volume id -> snapshot, host, window
        self.restore_deletions: list[str] = []
        self._ids = itertools.count(1)
        self.now = datetime(2026, 11, 29, 2, 0)
        self.lost_snapshot_answers = 0  # CreateSnapshot calls that make one, then raise

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

    def configure_boot(self, instance_id: str, user_data: str) -> None:
        if self.state != "stopped":
            raise StartFailedError(f"the instance's boot config cannot be set: {self.state}")
        self.user_data = user_data

    def describe(self, instance_id: str) -> InstanceView:
        return InstanceView(self.state, self.address if self.state == "running" else None)

    def snapshot_volume(self, volume_id: str, tags: Mapping[str, str]) -> str:
        snapshot_id = f"snap-{next(self._ids):017x}"
        self.snapshots[snapshot_id] = {"volume_id": volume_id, "tags": dict(tags),
                                       "state": "pending", "started": self.now}
        if self.lost_snapshot_answers:
            self.lost_snapshot_answers -= 1
            raise ConnectionError("CreateSnapshot: the answer was lost (read timeout)")
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

    def mark_complete(self, snapshot_id: str, complete: bool) -> None:
        if snapshot_id in self.snapshots:
            tags = self.snapshots[snapshot_id]["tags"]
            assert isinstance(tags, dict)
            tags[TAG_COMPLETE] = "true" if complete else "false"

    def snapshots_in_use(self) -> frozenset[str]:
        return frozenset(r["snapshot_id"] for r in self.restores.values())

    def snapshot_states(self, snapshot_ids: Sequence[str]) -> dict[str, str]:
        return {i: str(self.snapshots[i]["state"]) for i in snapshot_ids if i in self.snapshots}

    def recovery_points(self) -> list[RecoveryPoint]:
        points = []
        for snapshot_id, snap in self.snapshots.items():
            tags, started = snap["tags"], snap["started"]
            assert isinstance(tags, dict) and isinstance(started, datetime)
            points.append(RecoveryPoint(snapshot_id, tags[TAG_HOST], tags[TAG_WINDOW],
                                        started, tags.get(TAG_REPORTED) == "succeeded", 20,
                                        str(snap["state"])))
        return points

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.snapshots.pop(snapshot_id, None)

    def create_host_volume(self, host: str, instance_id: str, size_gib: int) -> str:
        volume_id = f"vol-{next(self._ids):017x}"
        self.volumes[volume_id] = host
        return volume_id

    def create_restore_volume(self, snapshot_id: str, host: str, window_id: str,
                              instance_id: str) -> str:
        if snapshot_id not in self.snapshots:
            raise SnapshotGoneError(f"snapshot {snapshot_id} no longer exists")
        volume_id = f"vol-{next(self._ids):017x}"
        self.restores[volume_id] = {"snapshot_id": snapshot_id, "host": host,
                                    "window_id": window_id}
        return volume_id

    def delete_restore_volume(self, volume_id: str, instance_id: str) -> None:
        self.restore_deletions.append(volume_id)
        self.restores.pop(volume_id, None)

    def restore_volumes(self) -> dict[str, tuple[str, datetime]]:
        created = self.now.replace(tzinfo=self.now.tzinfo or timezone.utc)
        return {v: (r["window_id"], created) for v, r in self.restores.items()}
