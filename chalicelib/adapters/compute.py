"""The archive instances, their volumes and the volumes' snapshots, on EC2, and a fake.

An archive instance lives for one window's shard: RunInstances makes it and, through the block
device mapping, one volume per host from that host's newest snapshot; after the window its
volumes are snapshotted, then it is terminated and its volumes deleted.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from chalicelib.fleet import Placement
from chalicelib.retention import RecoveryPoint

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

TAG_WINDOW = "offsite:window"
TAG_SHARD = "offsite:shard"
TAG_PURPOSE = "offsite:purpose"  # backup | restore, on archive instances and their volumes
TAG_HOST = "offsite:host"
# "true" only once EBS completed the snapshot of a host that reported success; "pending" until
# it settles, "false" otherwise (retention.RecoveryPoint.complete is the definition).
TAG_COMPLETE = "offsite:complete"
TAG_REPORTED = "offsite:reported"  # the host's report in that window: succeeded | failed | none

# RunInstances errors after which another (type, subnet) pair may still launch: no capacity of
# that type in that zone, the type not offered there, a quota, or throttling that boto3's own
# retries did not get past ("Error codes for the Amazon EC2 API").
_TRY_NEXT = {"InsufficientInstanceCapacity", "InsufficientCapacity", "InstanceLimitExceeded",
             "VcpuLimitExceeded", "Unsupported", "InsufficientFreeAddressesInSubnet",
             "RequestLimitExceeded", "Throttling"}
_GONE = ("InvalidVolume.NotFound", "InvalidInstanceID.NotFound", "InvalidSnapshot.NotFound")


class StartFailedError(Exception):
    pass


class SnapshotGoneError(LookupError):
    pass


class VolumeNotFoundError(LookupError):
    """InvalidVolume.NotFound: no such volume in this region and account."""


@dataclass(frozen=True)
class VolumeSpec:
    host: str
    device: str
    size_gib: int
    snapshot_id: str | None = None  # None: a blank volume (the host's first backup)


@dataclass(frozen=True)
class LaunchSpec:
    window_id: str
    shard_id: str
    purpose: str  # backup | restore
    user_data: str
    volumes: tuple[VolumeSpec, ...]
    placements: tuple[Placement, ...]
    launch_template: str | None = None  # id (lt-...) or name
    kms_key_id: str | None = None  # None: the account's default EBS key


@dataclass(frozen=True)
class Launched:
    instance_id: str
    instance_type: str
    subnet_id: str | None


@dataclass(frozen=True)
class InstanceView:
    instance_id: str
    state: str  # pending | running | stopping | stopped | shutting-down | terminated
    address: str | None
    devices: Mapping[str, str] = field(default_factory=dict)  # device name -> volume id


@dataclass(frozen=True)
class LeftOver:
    """One of our instances or volumes, as the sweep sees it."""

    resource_id: str
    window_id: str
    shard_id: str
    state: str
    created: datetime


class Compute(Protocol):
    def launch(self, spec: LaunchSpec) -> Launched:
        """One archive instance, trying each placement in turn; raises StartFailedError with
        every placement's cause when none launched."""

    def stop(self, instance_ids: Sequence[str]) -> None: ...

    def terminate(self, instance_ids: Sequence[str]) -> None:
        """Instances already gone are fine."""

    def describe(self, instance_ids: Sequence[str]) -> dict[str, InstanceView]:
        """The instances EC2 still lists; an id it does not know is left out."""

    def tag_volumes(self, hosts: Mapping[str, str]) -> None:
        """Names each volume's host in its `offsite:host` tag: volume id -> host."""

    def snapshot_volume(self, volume_id: str, tags: Mapping[str, str]) -> str: ...

    def find_snapshot(self, window_id: str, host: str) -> str | None:
        """The snapshot already made of `host`'s volume for `window_id`, if EC2 lists one."""

    def mark_complete(self, snapshot_id: str, complete: bool) -> None:
        """Writes the settled truth into the snapshot's `offsite:complete` tag."""

    def snapshots_in_use(self) -> frozenset[str]:
        """Snapshots that one of our volumes was made from, while that volume exists."""

    def snapshot_states(self, snapshot_ids: Sequence[str]) -> dict[str, str]:
        """pending | completed | error, per id that EC2 still knows."""

    def recovery_points(self, hosts: Iterable[str] | None = None) -> list[RecoveryPoint]:
        """Our snapshots (of these hosts only, when given)."""

    def delete_snapshot(self, snapshot_id: str) -> None: ...

    def delete_volume(self, volume_id: str) -> bool:
        """True when it is gone (or was); False while it is still attached (in use)."""

    def leftover_instances(self) -> list[LeftOver]:
        """Our archive instances that are not terminated."""

    def leftover_volumes(self) -> list[LeftOver]:
        """Our window volumes that still exist."""


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def client_token(spec: LaunchSpec, attempt: int) -> str:
    """RunInstances' idempotency token for this shard's `attempt`-th placement: a retried or
    duplicated launch gets the instance the first call made, not a second one ("Ensure
    idempotency in Amazon EC2 API requests": up to 64 ASCII characters)."""
    token = f"{spec.window_id}.{spec.shard_id}.{attempt}"
    return token if len(token) <= 64 else hashlib.sha256(token.encode()).hexdigest()[:64]


def _tags(pairs: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in pairs.items()]


class Ec2Compute:
    def __init__(self, client: EC2Client, address: str = "public") -> None:
        self._ec2 = client
        self._address_key = "PrivateIpAddress" if address == "private" else "PublicIpAddress"

    def launch(self, spec: LaunchSpec) -> Launched:
        causes: list[str] = []
        for attempt, placement in enumerate(spec.placements):
            try:
                instance = self._ec2.run_instances(**self._request(spec, placement, attempt))[
                    "Instances"][0]
            except ClientError as exc:
                where = placement.subnet_id or "default subnet"
                causes.append(f"{placement.instance_type} in {where}: {_code(exc)}")
                if _code(exc) not in _TRY_NEXT:  # a snapshot gone, a bad template: say so now
                    message = exc.response.get("Error", {}).get("Message", "")
                    raise StartFailedError(f"{'; '.join(causes)} ({message})") from exc
                continue
            return Launched(instance["InstanceId"], placement.instance_type, placement.subnet_id)
        raise StartFailedError("; ".join(causes) or "no placement to try")

    def _request(self, spec: LaunchSpec, placement: Placement, attempt: int) -> dict[str, Any]:
        labels = {TAG_WINDOW: spec.window_id, TAG_SHARD: spec.shard_id, TAG_PURPOSE: spec.purpose}
        request: dict[str, Any] = {
            "MinCount": 1, "MaxCount": 1, "ClientToken": client_token(spec, attempt),
            "ImageId": placement.image_id, "InstanceType": placement.instance_type,
            # RunInstances takes the user-data as text: botocore base64-encodes it (unlike
            # ModifyInstanceAttribute, where the caller must).
            "UserData": spec.user_data,
            "BlockDeviceMappings": [self._mapping(v, spec.kms_key_id) for v in spec.volumes],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": _tags(
                    {**labels, "Name": f"offsite {spec.window_id} {spec.shard_id}"})},
                {"ResourceType": "volume", "Tags": _tags(labels)}],
        }
        if spec.launch_template:
            key = "LaunchTemplateId" if spec.launch_template.startswith("lt-") \
                else "LaunchTemplateName"
            request["LaunchTemplate"] = {key: spec.launch_template, "Version": "$Default"}
        if placement.subnet_id:
            request["SubnetId"] = placement.subnet_id
        return request

    @staticmethod
    def _mapping(volume: VolumeSpec, kms_key_id: str | None) -> dict[str, Any]:
        # Volumes outlive the instance (DeleteOnTermination false): they are deleted only once
        # their snapshot has completed. A volume made from an encrypted snapshot is encrypted.
        ebs: dict[str, Any] = {"VolumeSize": volume.size_gib, "VolumeType": "gp3",
                               "DeleteOnTermination": False, "Encrypted": True}
        if volume.snapshot_id:
            ebs["SnapshotId"] = volume.snapshot_id
        if kms_key_id:
            ebs["KmsKeyId"] = kms_key_id
        return {"DeviceName": volume.device, "Ebs": ebs}

    def stop(self, instance_ids: Sequence[str]) -> None:
        if instance_ids:
            self._ec2.stop_instances(InstanceIds=list(instance_ids))

    def terminate(self, instance_ids: Sequence[str]) -> None:
        for instance_id in instance_ids:  # one by one: one id already gone fails the call
            try:
                self._ec2.terminate_instances(InstanceIds=[instance_id])
            except ClientError as exc:
                if _code(exc) != "InvalidInstanceID.NotFound":
                    raise

    def describe(self, instance_ids: Sequence[str]) -> dict[str, InstanceView]:
        if not instance_ids:
            return {}
        # A filter, not InstanceIds: an id EC2 no longer lists is left out instead of failing
        # the whole call with InvalidInstanceID.NotFound.
        pages = self._ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-id", "Values": list(instance_ids)}])
        views = {}
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    views[instance["InstanceId"]] = InstanceView(
                        instance["InstanceId"], instance["State"]["Name"],
                        str(instance.get(self._address_key) or "") or None,
                        {m["DeviceName"]: m["Ebs"]["VolumeId"]
                         for m in instance.get("BlockDeviceMappings", []) if "Ebs" in m})
        return views

    def tag_volumes(self, hosts: Mapping[str, str]) -> None:
        for volume_id, host in hosts.items():
            self._ec2.create_tags(Resources=[volume_id], Tags=[{"Key": TAG_HOST, "Value": host}])

    def snapshot_volume(self, volume_id: str, tags: Mapping[str, str]) -> str:
        try:
            return self._create_snapshot(volume_id, tags)
        except ClientError as exc:
            # "The specified volume does not exist" ("Error codes for the Amazon EC2 API"):
            # a mistyped id, or a volume of another region or account.
            if _code(exc) != "InvalidVolume.NotFound":
                raise
            raise VolumeNotFoundError(f"no volume {volume_id} in this region and account") \
                from exc

    def _create_snapshot(self, volume_id: str, tags: Mapping[str, str]) -> str:
        answer = self._ec2.create_snapshot(
            VolumeId=volume_id,
            Description=f"offsite {tags.get(TAG_HOST)} {tags.get(TAG_WINDOW)}",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": _tags(tags)}],  # type: ignore[misc,list-item]
        )
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
        # A volume made from a snapshot names it in SnapshotId for as long as the volume lives.
        pages = self._ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": "tag-key", "Values": [TAG_WINDOW]}])
        return frozenset(volume["SnapshotId"] for page in pages for volume in page["Volumes"]
                         if volume.get("SnapshotId"))

    def snapshot_states(self, snapshot_ids: Sequence[str]) -> dict[str, str]:
        states: dict[str, str] = {}
        for snapshot_id in snapshot_ids:
            try:
                found = self._ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
            except ClientError as exc:
                if _code(exc) != "InvalidSnapshot.NotFound":
                    raise
                continue
            states.update({s["SnapshotId"]: s["State"] for s in found})
        return states

    def recovery_points(self, hosts: Iterable[str] | None = None) -> list[RecoveryPoint]:
        wanted = sorted(hosts) if hosts is not None else None
        if wanted == []:
            return []
        host_filter: Any = ({"Name": f"tag:{TAG_HOST}", "Values": wanted} if wanted
                            else {"Name": "tag-key", "Values": [TAG_HOST]})
        points = []
        pages = self._ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"], Filters=[host_filter])
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
            if _code(exc) != "InvalidSnapshot.NotFound":
                raise

    def delete_volume(self, volume_id: str) -> bool:
        # "The volume must be in the available state (not attached to an instance)"
        # (DeleteVolume, EC2 API Reference): right after TerminateInstances it may still be
        # in use; the reconciler's sweep tries again.
        try:
            self._ec2.delete_volume(VolumeId=volume_id)
        except ClientError as exc:
            if _code(exc) == "VolumeInUse":
                return False
            if _code(exc) != "InvalidVolume.NotFound":
                raise
        return True

    def leftover_instances(self) -> list[LeftOver]:
        pages = self._ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "tag-key", "Values": [TAG_WINDOW]},
            {"Name": "instance-state-name",
             "Values": ["pending", "running", "stopping", "stopped"]}])
        return [LeftOver(i["InstanceId"], _tag(i, TAG_WINDOW), _tag(i, TAG_SHARD),
                         i["State"]["Name"],
                         i["LaunchTime"])
                for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def leftover_volumes(self) -> list[LeftOver]:
        pages = self._ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": "tag-key", "Values": [TAG_WINDOW]}])
        return [LeftOver(v["VolumeId"], _tag(v, TAG_WINDOW), _tag(v, TAG_SHARD), v["State"],
                         v["CreateTime"])
                for page in pages for v in page["Volumes"]]


def _tag(resource: Mapping[str, Any], key: str) -> str:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), "")


class FakeCompute:
    """EC2 as the services see it: launches, stops and terminations take effect at once,
    snapshots are pending until `complete_snapshot`. Counts every call, so tests can say
    "exactly one stop" or "calls per host"."""

    def __init__(self, unavailable: Iterable[str] = ()) -> None:
        # "t3.small" (every subnet) or "t3.small@subnet-b": no capacity there
        self.unavailable = set(unavailable)
        self.instances: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._tokens: dict[str, str] = {}
        self.now = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)
        self.lost_snapshot_answers = 0  # CreateSnapshot calls that make one, then raise

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):017x}"

    def launch(self, spec: LaunchSpec) -> Launched:
        causes = []
        for attempt, placement in enumerate(spec.placements):
            self.calls["launch"] += 1
            where = placement.subnet_id or "default subnet"
            if {placement.instance_type, f"{placement.instance_type}@{where}"} & self.unavailable:
                causes.append(f"{placement.instance_type} in {where}: "
                              "InsufficientInstanceCapacity")
                continue
            token = client_token(spec, attempt)
            if token not in self._tokens:
                self._tokens[token] = self._make(spec, placement)
            return Launched(self._tokens[token], placement.instance_type, placement.subnet_id)
        raise StartFailedError("; ".join(causes))

    def _make(self, spec: LaunchSpec, placement: Placement) -> str:
        instance_id = self._id("i")
        devices = {}
        for volume in spec.volumes:
            volume_id = self._id("vol")
            self.volumes[volume_id] = {"snapshot_id": volume.snapshot_id, "host": None,
                                       "size_gib": volume.size_gib, "instance": instance_id,
                                       "window_id": spec.window_id, "created": self.now,
                                       "shard_id": spec.shard_id,
                                       "kms_key_id": spec.kms_key_id}
            devices[volume.device] = volume_id
        self.instances[instance_id] = {
            "state": "pending", "type": placement.instance_type, "subnet": placement.subnet_id,
            "address": f"203.0.113.{len(self.instances) % 250 + 1}", "devices": devices,
            "spec": spec, "launched": self.now}
        return instance_id

    def stop(self, instance_ids: Sequence[str]) -> None:
        self.calls["stop"] += 1
        for instance_id in instance_ids:
            if self.instances[instance_id]["state"] != "terminated":
                self.instances[instance_id]["state"] = "stopped"

    def terminate(self, instance_ids: Sequence[str]) -> None:
        for instance_id in instance_ids:
            self.calls["terminate"] += 1
            instance = self.instances.get(instance_id)
            if instance is None:
                continue
            instance["state"] = "terminated"
            for volume_id in instance["devices"].values():
                if volume_id in self.volumes:
                    self.volumes[volume_id]["instance"] = None

    def describe(self, instance_ids: Sequence[str]) -> dict[str, InstanceView]:
        self.calls["describe"] += 1
        return {i: InstanceView(i, str(self.instances[i]["state"]),
                                str(self.instances[i]["address"])
                                if self.instances[i]["state"] == "running" else None,
                                dict(self.instances[i]["devices"]))
                for i in instance_ids if i in self.instances}

    def tag_volumes(self, hosts: Mapping[str, str]) -> None:
        self.calls["tag_volumes"] += 1
        for volume_id, host in hosts.items():
            self.volumes[volume_id]["host"] = host

    def snapshot_volume(self, volume_id: str, tags: Mapping[str, str]) -> str:
        self.calls["snapshot"] += 1
        if volume_id not in self.volumes:
            raise VolumeNotFoundError(f"no volume {volume_id} in this region and account")
        snapshot_id = self._id("snap")
        size = self.volumes[volume_id]["size_gib"] if volume_id in self.volumes else 8
        self.snapshots[snapshot_id] = {"volume_id": volume_id, "tags": dict(tags),
                                       "state": "pending", "started": self.now,
                                       "size_gib": size}
        if self.lost_snapshot_answers:
            self.lost_snapshot_answers -= 1
            raise ConnectionError("CreateSnapshot: the answer was lost (read timeout)")
        return snapshot_id

    def complete_snapshot(self, snapshot_id: str, state: str = "completed") -> None:
        self.snapshots[snapshot_id]["state"] = state

    def find_snapshot(self, window_id: str, host: str) -> str | None:
        self.calls["find_snapshot"] += 1
        return next((i for i, s in self.snapshots.items()
                     if s["tags"].get(TAG_WINDOW) == window_id
                     and s["tags"].get(TAG_HOST) == host), None)

    def mark_complete(self, snapshot_id: str, complete: bool) -> None:
        if snapshot_id in self.snapshots:
            self.snapshots[snapshot_id]["tags"][TAG_COMPLETE] = "true" if complete else "false"

    def snapshots_in_use(self) -> frozenset[str]:
        return frozenset(v["snapshot_id"] for v in self.volumes.values() if v["snapshot_id"])

    def snapshot_states(self, snapshot_ids: Sequence[str]) -> dict[str, str]:
        return {i: str(self.snapshots[i]["state"]) for i in snapshot_ids if i in self.snapshots}

    def recovery_points(self, hosts: Iterable[str] | None = None) -> list[RecoveryPoint]:
        self.calls["recovery_points"] += 1
        wanted = None if hosts is None else set(hosts)
        return [RecoveryPoint(i, s["tags"][TAG_HOST], s["tags"].get(TAG_WINDOW, ""),
                              s["started"], s["tags"].get(TAG_REPORTED) == "succeeded",
                              int(s["size_gib"]), str(s["state"]))
                for i, s in self.snapshots.items()
                if wanted is None or s["tags"][TAG_HOST] in wanted]

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.snapshots.pop(snapshot_id, None)

    def delete_volume(self, volume_id: str) -> bool:
        self.calls["delete_volume"] += 1
        volume = self.volumes.get(volume_id)
        if volume is not None and volume["instance"] is not None:
            return False
        self.volumes.pop(volume_id, None)
        return True

    def leftover_instances(self) -> list[LeftOver]:
        return [LeftOver(i, x["spec"].window_id, x["spec"].shard_id, x["state"], x["launched"])
                for i, x in self.instances.items() if x["state"] != "terminated"]

    def leftover_volumes(self) -> list[LeftOver]:
        return [LeftOver(i, v["window_id"], v["shard_id"],
                         "in-use" if v["instance"] else "available", v["created"])
                for i, v in self.volumes.items()]

    # for tests: EC2's side of things
    def boot(self) -> list[str]:
        """Every pending instance comes up; their ids."""
        booted = [i for i, x in self.instances.items() if x["state"] == "pending"]
        for instance_id in booted:
            self.instances[instance_id]["state"] = "running"
        return booted

    def running(self) -> list[str]:
        return [i for i, x in self.instances.items() if x["state"] != "terminated"]
