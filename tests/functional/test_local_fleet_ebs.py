"""The local fleet's EBS emulation (local/fleet.py over local/ebs.py) against a fake of EC2's
Describe* calls: the order in which volumes and snapshots become, and stop being, directories.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from local.ebs import LocalEbs
from local.fleet import Fleet

T0 = datetime(2026, 12, 1, tzinfo=UTC)


class FakeEc2:
    def __init__(self) -> None:
        self.volumes: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}

    def get_paginator(self, operation: str) -> FakeEc2:
        self._operation = operation
        return self

    def paginate(self, **_: Any) -> list[dict[str, Any]]:
        if self._operation == "describe_volumes":
            return [{"Volumes": list(self.volumes.values())}]
        if self._operation == "describe_snapshots":
            return [{"Snapshots": list(self.snapshots.values())}]
        return [{"Reservations": []}]

    def create_volume(self, volume_id: str, snapshot_id: str | None = None) -> None:
        self.volumes[volume_id] = {"VolumeId": volume_id, "SnapshotId": snapshot_id or ""}

    def create_snapshot(self, snapshot_id: str, volume_id: str) -> None:
        self.snapshots[snapshot_id] = {"SnapshotId": snapshot_id, "VolumeId": volume_id,
                                       "StartTime": T0, "State": "completed"}


class Rig:
    def __init__(self, root: Path) -> None:
        self.ec2 = FakeEc2()
        self.ebs = LocalEbs(root)
        self.fleet = Fleet(self.ec2, self.ebs, accounts=None,  # type: ignore[arg-type]
                           settings=None, log=lambda line: None)  # type: ignore[arg-type]
        self.delivered: list[tuple[str, dict[str, Any]]] = []

    def step(self) -> None:
        self.fleet.step(lambda function, event: self.delivered.append((function, event)))

    def completions(self) -> list[str]:
        return [event["detail"]["snapshot_id"].rsplit("/", 1)[1]
                for function, event in self.delivered if function == "snapshot_state"]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path / "ebs")


def test_a_snapshot_requested_before_its_volume_was_deleted_holds_the_volume(rig: Rig) -> None:
    rig.ec2.create_volume("vol-1")
    rig.step()
    (rig.ebs.volume("vol-1") / "data").write_text("night 1")
    rig.ec2.create_snapshot("snap-1", "vol-1")  # both between two steps of the bus
    del rig.ec2.volumes["vol-1"]
    rig.step()
    assert (rig.ebs.snapshot("snap-1") / "data").read_text() == "night 1"
    assert not rig.ebs.volume("vol-1").exists()
    assert rig.completions() == ["snap-1"]


def test_a_snapshot_is_the_volume_at_the_step_it_is_seen_and_completes_once(rig: Rig) -> None:
    rig.ec2.create_volume("vol-1")
    rig.step()
    (rig.ebs.volume("vol-1") / "data").write_text("before")
    rig.ec2.create_snapshot("snap-1", "vol-1")
    rig.step()
    (rig.ebs.volume("vol-1") / "data").write_text("after")
    rig.step()
    assert (rig.ebs.snapshot("snap-1") / "data").read_text() == "before"
    assert rig.completions() == ["snap-1"]


def test_a_snapshot_is_the_volume_at_its_request_not_at_the_next_step(rig: Rig) -> None:
    """moto calls a snapshot completed at once, so the reconciler may close the shard and delete
    the volume before the bus's next step: the content is taken when the app asks (the
    after-call hook on CreateSnapshot), and the step only delivers the completion."""
    rig.ec2.create_volume("vol-1")
    rig.step()
    (rig.ebs.volume("vol-1") / "data").write_text("night 1")
    rig.ec2.create_snapshot("snap-1", "vol-1")
    rig.fleet.snapshot_requested({"SnapshotId": "snap-1", "VolumeId": "vol-1"})
    assert (rig.ebs.snapshot("snap-1") / "data").read_text() == "night 1"  # before any step
    (rig.ebs.volume("vol-1") / "data").write_text("later")
    rig.fleet.snapshot_requested({"SnapshotId": "snap-2", "VolumeId": "vol-9"})  # not here
    rig.fleet.snapshot_requested({})
    rig.step()
    assert (rig.ebs.snapshot("snap-1") / "data").read_text() == "night 1"
    assert rig.ebs.snapshot_ids() == {"snap-1"}
    assert rig.completions() == ["snap-1"]


def test_a_volume_made_from_a_snapshot_taken_in_the_same_step_holds_its_content(
        rig: Rig) -> None:
    rig.ec2.create_volume("vol-1")
    rig.step()
    (rig.ebs.volume("vol-1") / "data").write_text("night 1")
    rig.ec2.create_snapshot("snap-1", "vol-1")
    rig.ec2.create_volume("vol-2", "snap-1")
    del rig.ec2.volumes["vol-1"]
    rig.step()
    assert (rig.ebs.volume("vol-2") / "data").read_text() == "night 1"
    (rig.ebs.volume("vol-2") / "data").write_text("night 2")  # the snapshot keeps night 1
    assert (rig.ebs.snapshot("snap-1") / "data").read_text() == "night 1"


def test_deleted_snapshots_go_and_foreign_ones_are_ignored(rig: Rig) -> None:
    rig.ec2.create_volume("vol-1")
    rig.step()
    rig.ec2.create_snapshot("snap-1", "vol-1")
    rig.ec2.create_snapshot("snap-2", "vol-0")  # an AMI's: its volume was never here
    rig.step()
    assert rig.ebs.snapshot_ids() == {"snap-1"}
    del rig.ec2.snapshots["snap-1"]
    rig.step()
    assert rig.ebs.snapshot_ids() == set()
    assert rig.completions() == ["snap-1"]


def test_a_volume_from_a_snapshot_never_here_starts_blank(rig: Rig) -> None:
    rig.ec2.create_volume("vol-1", "snap-9")
    rig.step()
    assert list(rig.ebs.volume("vol-1").iterdir()) == []


def test_an_id_is_never_a_path(rig: Rig) -> None:
    rig.ec2.create_volume("vol-../../etc")
    with pytest.raises(RuntimeError, match="not an id"):
        rig.step()
