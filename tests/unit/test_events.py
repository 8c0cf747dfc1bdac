"""Reading the AWS events exactly as AWS sends them (tests/events/ holds the payloads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.events import UnexpectedEventError, instance_state_change, snapshot_results

EVENTS = Path(__file__).parents[1] / "events"


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((EVENTS / name).read_text()))


def test_instance_state_change() -> None:
    assert instance_state_change(load("ec2-state-running.json")) == \
        ("i-0abc123def4567890", "running")
    assert instance_state_change(load("ec2-state-stopped.json"))[1] == "stopped"


def test_single_snapshot_notification() -> None:
    assert snapshot_results(load("ebs-snapshot-notification.json")) == \
        [("snap-0123456789abcdef0", True)]


def test_single_snapshot_failure() -> None:
    event = load("ebs-snapshot-notification.json")
    event["detail"]["result"] = "failed"
    assert snapshot_results(event) == [("snap-0123456789abcdef0", False)]


def test_multi_volume_completion() -> None:
    event = load("ebs-multi-volume-snapshots.json")
    event["detail"]["snapshots"][1]["status"] = "failed"
    assert snapshot_results(event) == [("snap-0aaaaaaaaaaaaaaa1", True),
                                       ("snap-0bbbbbbbbbbbbbbb2", False)]


@pytest.mark.parametrize("event", [
    {}, {"detail": "x"}, {"detail": {"event": "createSnapshot"}},
    {"detail": {"event": "createSnapshots", "snapshots": [{"status": "completed"}]}}])
def test_malformed_events_are_refused(event: dict[str, Any]) -> None:
    with pytest.raises(UnexpectedEventError):
        snapshot_results(event)


@pytest.mark.parametrize("name", ["ebs-copy-snapshot.json", "ebs-share-snapshot.json",
                                  "ebs-lock-snapshot.json"])
def test_other_snapshot_events_report_nothing(name: str) -> None:
    """Not a completion of ours: nothing to settle, and nothing raised for Lambda to retry."""
    assert snapshot_results(load(name)) == []
