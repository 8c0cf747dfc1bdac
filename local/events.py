"""The events AWS would deliver, in the shapes AWS documents (tests/events/ holds samples)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from local.aws import ACCOUNT, REGION


def _envelope(detail_type: str, source: str, resources: list[str],
              detail: dict[str, Any]) -> dict[str, Any]:
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type,
            "source": source, "account": ACCOUNT,
            "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION, "resources": resources, "detail": detail}


def instance_state(instance_id: str, state: str) -> dict[str, Any]:
    arn = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{instance_id}"
    return _envelope("EC2 Instance State-change Notification", "aws.ec2", [arn],
                     {"instance-id": instance_id, "state": state})


def snapshot_completed(snapshot_id: str, volume_id: str, succeeded: bool,
                       started: datetime) -> dict[str, Any]:
    arn = f"arn:aws:ec2::{REGION}:snapshot/{snapshot_id}"
    now = datetime.now(timezone.utc)
    return _envelope("EBS Snapshot Notification", "aws.ec2", [arn], {
        "event": "createSnapshot", "result": "succeeded" if succeeded else "failed",
        "cause": "", "request-id": "", "snapshot_id": arn,
        "source": f"arn:aws:ec2::{REGION}:volume/{volume_id}",
        "startTime": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "endTime": now.strftime("%Y-%m-%dT%H:%M:%SZ")})


def scheduled(rule: str) -> dict[str, Any]:
    return _envelope("Scheduled Event", "aws.events",
                     [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{rule}"], {})
