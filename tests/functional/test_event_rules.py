"""The EventBridge rules app.py declares (chalice writes them verbatim into the template's
EventPattern), evaluated as EventBridge evaluates them, on events in the shapes AWS sends."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.app import CloudWatchEventConfig
from moto.events.models import EventPattern

import app as app_module

from .app_rig import HOSTS, AppRig, app_rig, aws_event, offsite_snapshots, snapshot_event

__all__ = ["app_rig"]
EVENTS = Path(__file__).parents[1] / "events"


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((EVENTS / name).read_text()))


def rule(function: str) -> dict[str, Any]:
    (pattern,) = [s.event_pattern for s in app_module.app.event_sources
                  if isinstance(s, CloudWatchEventConfig) and s.name == function]
    return dict(pattern)


def matches(pattern: dict[str, Any], event: Any) -> bool:
    """EventBridge's matching for the part of the pattern language our rules use: every field
    the pattern names must be in the event, with one of the listed values (a field holding an
    array matches if any element does); a nested object matches the event's nested object.
    Anything else in a pattern is refused here, so that a rule using more gets a matcher
    that knows it (EventBridge user guide, "Amazon EventBridge event patterns":
    https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-event-patterns.html)."""
    for field, wanted in pattern.items():
        if not isinstance(event, dict) or field not in event:
            return False
        value = event[field]
        if isinstance(wanted, dict):
            if not matches(wanted, value):
                return False
            continue
        assert isinstance(wanted, list) and all(isinstance(w, str) for w in wanted), wanted
        values = value if isinstance(value, list) else [value]
        if not any(v in wanted for v in values):
            return False
    return True


COMPLETIONS = ["ebs-snapshot-notification.json", "ebs-multi-volume-snapshots.json"]
OTHERS = ["ebs-copy-snapshot.json", "ebs-share-snapshot.json", "ebs-lock-snapshot.json",
          "ec2-state-stopped.json", "scheduled-event.json"]


@pytest.mark.parametrize("name", COMPLETIONS + OTHERS)
def test_the_snapshot_rule_takes_the_completions_only(name: str) -> None:
    pattern, event = rule("snapshot_state"), load(name)
    expected = name in COMPLETIONS
    assert matches(pattern, event) is expected
    assert EventPattern(json.dumps(pattern), pattern).matches_event(event) is expected


def test_a_failed_completion_still_matches() -> None:
    event = load("ebs-snapshot-notification.json")
    event["detail"]["result"] = "failed"
    assert matches(rule("snapshot_state"), event)


@pytest.mark.parametrize("name", ["ec2-state-running.json", "ec2-state-stopped.json"])
def test_the_instance_rule_takes_state_changes(name: str) -> None:
    assert matches(rule("instance_state"), load(name))
    assert not matches(rule("instance_state"), load("ebs-snapshot-notification.json"))


def test_snapshots_that_are_not_ours_are_ignored(app_rig: AppRig,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """While a window snapshots its volumes: the completion of a snapshot somebody else made in
    the account, the copy and the share of one of ours, reach the handler and change nothing
    (no error for Lambda to retry, no tag written, one debug line each); our own completions
    then close the window."""
    answer = app_rig.post("/v1/windows", {})
    window_id = str(answer.json_body["window_id"])
    app_rig.boot(window_id)
    for host in HOSTS:
        app_rig.report(window_id, host)
    assert app_rig.stopped(window_id)["state"] == "SNAPSHOTTING"
    ec2 = boto3.client("ec2")
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    theirs = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ours = offsite_snapshots()[0]["SnapshotId"]
    copied = aws_event("ebs-copy-snapshot.json",
                       source=f"arn:aws:ec2::us-east-1:snapshot/{ours}")
    shared = aws_event("ebs-share-snapshot.json",
                       snapshot_id=f"arn:aws:ec2::us-east-1:snapshot/{ours}")
    for module in ("events", "windows"):  # powertools gives each child logger its own level
        caplog.set_level(logging.DEBUG, logger=f"offsite.chalicelib.{module}")
    caplog.clear()
    for event in (snapshot_event(theirs, volume), copied, shared,
                  snapshot_event("snap-0000000000000dead", volume)):
        app_rig.client.lambda_.invoke("snapshot_state", event)
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name.startswith("offsite")] == [
        ("DEBUG", "snapshot not awaited"), ("DEBUG", "not a snapshot completion; ignored"),
        ("DEBUG", "not a snapshot completion; ignored"), ("DEBUG", "snapshot not awaited")]
    assert app_rig.window(window_id)["state"] == "SNAPSHOTTING"
    assert ec2.describe_snapshots(SnapshotIds=[theirs])["Snapshots"][0].get("Tags", []) == []
    app_rig.settle_snapshots(window_id=window_id)
    assert app_rig.window(window_id)["state"] == "CLOSED"
