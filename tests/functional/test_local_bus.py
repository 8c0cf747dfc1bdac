"""The local event bus's restore volumes, against fakes of EC2 and the local instance."""

from __future__ import annotations

from typing import Any

from local.bus import EventBus


class FakeEc2:
    def __init__(self) -> None:
        self.volumes: list[dict[str, Any]] = []

    def describe_volumes(self, **_: Any) -> dict[str, Any]:
        return {"Volumes": list(self.volumes)}


class FakeInstance:
    def __init__(self) -> None:
        self.mounted: dict[str, str] = {}  # host -> snapshot

    def attach_restore(self, host: str, snapshot_id: str) -> None:
        self.mounted[host] = snapshot_id

    def detach_restore(self, host: str) -> None:
        self.mounted.pop(host, None)


def restore_volume(volume_id: str, host: str, snapshot_id: str) -> dict[str, Any]:
    return {"VolumeId": volume_id, "SnapshotId": snapshot_id, "Attachments": [{"State": "x"}],
            "Tags": [{"Key": "offsite:host", "Value": host},
                     {"Key": "offsite:restore-window", "Value": "w"}]}


def test_an_older_volume_deleted_after_the_next_restore_mounted_leaves_that_one() -> None:
    ec2, instance = FakeEc2(), FakeInstance()
    bus = EventBus({"ec2": ec2, "scheduler": None}, "i-0", instance,  # type: ignore[arg-type]
                   boot_seconds=0, reconcile_seconds=60, log=lambda line: None)
    first = restore_volume("vol-1", "o", "snap-1")
    ec2.volumes = [first]
    bus._watch_restore_volumes()
    assert instance.mounted == {"o": "snap-1"}
    ec2.volumes = [first, restore_volume("vol-2", "o", "snap-2")]  # the sweep has not run yet
    bus._watch_restore_volumes()
    assert instance.mounted == {"o": "snap-2"}
    ec2.volumes = ec2.volumes[1:]  # the sweep deletes the leftover
    bus._watch_restore_volumes()
    assert instance.mounted == {"o": "snap-2"}
    ec2.volumes = []  # the restore ends
    bus._watch_restore_volumes()
    assert instance.mounted == {}
