"""Reading the AWS events the handlers receive, in the shapes AWS documents
(see tests/events/): EC2 state changes and both kinds of EBS snapshot completion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger

logger = Logger(service="offsite", child=True)

SNAPSHOT_CREATED = ("createSnapshot", "createSnapshots")

# The EventBridge rule of the snapshot_state function. "EBS Snapshot Notification" is also the
# detail-type of copySnapshot, shareSnapshot, lockSnapshot, archiveSnapshot ... of any
# snapshot in the account (EBS user guide, "Amazon EventBridge events for Amazon EBS",
# https://docs.aws.amazon.com/ebs/latest/userguide/ebs-cloud-watch-events.html#snapshot-events,
# and "Monitor Amazon EBS snapshot locks using Amazon EventBridge"): only the completions of
# the two calls that make snapshots reach us. createSnapshots ends with its own detail-type,
# "EBS Multi-Volume Snapshots Completion Status", whose `event` is "createSnapshots".
SNAPSHOT_COMPLETIONS: dict[str, Any] = {
    "source": ["aws.ec2"],
    "detail-type": ["EBS Snapshot Notification", "EBS Multi-Volume Snapshots Completion Status"],
    "detail": {"event": list(SNAPSHOT_CREATED)},
}


class UnexpectedEventError(ValueError):
    pass


def instance_state_change(event: Mapping[str, Any]) -> tuple[str, str]:
    """(instance id, state) of an "EC2 Instance State-change Notification"."""
    detail = _detail(event)
    try:
        return str(detail["instance-id"]), str(detail["state"])
    except KeyError as exc:
        raise UnexpectedEventError(f"state-change event without {exc}") from exc


def snapshot_results(event: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """(snapshot id, succeeded) for each snapshot an EBS completion event reports.

    "EBS Snapshot Notification" (createSnapshot) carries one snapshot and a `result`;
    "EBS Multi-Volume Snapshots Completion Status" (createSnapshots) lists every snapshot
    with its own `status`. Snapshot ids arrive as ARNs. Any other snapshot event (a copy, a
    share, a lock: the rule filters them out, but a rule made before the filter still sends
    them) reports nothing: it is not a snapshot of ours completing, and raising would only
    make Lambda retry it.
    """
    detail = _detail(event)
    kind = detail.get("event")
    try:
        if kind == "createSnapshot":
            return [(_snapshot_id(detail["snapshot_id"]), detail.get("result") == "succeeded")]
        if kind == "createSnapshots":
            return [(_snapshot_id(s["snapshot_id"]), s.get("status") == "completed")
                    for s in detail.get("snapshots", [])]
    except (KeyError, TypeError) as exc:
        raise UnexpectedEventError(f"{kind} event without its snapshot id: {exc}") from exc
    logger.debug("not a snapshot completion; ignored", extra={
        "event": kind, "detail_type": event.get("detail-type"),
        "resources": event.get("resources")})
    return []


def _snapshot_id(value: str) -> str:
    return value.rsplit("/", 1)[-1]


def _detail(event: Mapping[str, Any]) -> Mapping[str, Any]:
    detail = event.get("detail")
    if not isinstance(detail, Mapping):
        raise UnexpectedEventError("event has no detail")
    return detail
