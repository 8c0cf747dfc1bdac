"""Reading the AWS events the handlers receive, in the shapes AWS documents
(see tests/events/): EC2 state changes and both kinds of EBS snapshot completion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
    with its own `status`. Snapshot ids arrive as ARNs.
    """
    detail = _detail(event)
    kind = detail.get("event")
    if kind == "createSnapshot":
        return [(_snapshot_id(detail["snapshot_id"]), detail.get("result") == "succeeded")]
    if kind == "createSnapshots":
        return [(_snapshot_id(s["snapshot_id"]), s.get("status") == "completed")
                for s in detail.get("snapshots", [])]
    raise UnexpectedEventError(f"not a snapshot completion: event={kind!r}")


def _snapshot_id(value: str) -> str:
    return value.rsplit("/", 1)[-1]


def _detail(event: Mapping[str, Any]) -> Mapping[str, Any]:
    detail = event.get("detail")
    if not isinstance(detail, Mapping):
        raise UnexpectedEventError("event has no detail")
    return detail
