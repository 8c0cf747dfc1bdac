"""The window's one-time deadline, as an EventBridge Scheduler schedule, and a fake."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_scheduler import EventBridgeSchedulerClient


class DeadlineScheduler(Protocol):
    def create_deadline(self, window_id: str, at: datetime) -> None: ...

    def delete_deadline(self, window_id: str) -> None:
        """Deleting a deadline that already fired (or never existed) is not an error."""


def deadline_schedule_name(window_id: str) -> str:
    return f"offsite-deadline-{window_id}"


class EventBridgeScheduler:
    def __init__(self, client: EventBridgeSchedulerClient, target_arn: str, role_arn: str,
                 group: str) -> None:
        self._scheduler = client
        self._target_arn = target_arn
        self._role_arn = role_arn
        self._group = group

    def create_deadline(self, window_id: str, at: datetime) -> None:
        # Scheduler hands `Input` to the Lambda as the event itself (no envelope).
        self._scheduler.create_schedule(
            Name=deadline_schedule_name(window_id), GroupName=self._group,
            ScheduleExpression=f"at({at.strftime('%Y-%m-%dT%H:%M:%S')})",
            ScheduleExpressionTimezone="UTC", FlexibleTimeWindow={"Mode": "OFF"},
            ActionAfterCompletion="DELETE",
            Target={"Arn": self._target_arn, "RoleArn": self._role_arn,
                    "Input": json.dumps({"window_id": window_id})})

    def delete_deadline(self, window_id: str) -> None:
        try:
            self._scheduler.delete_schedule(Name=deadline_schedule_name(window_id),
                                            GroupName=self._group)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise


class FakeScheduler:
    def __init__(self) -> None:
        self.deadlines: dict[str, datetime] = {}
        self.deleted: list[str] = []

    def create_deadline(self, window_id: str, at: datetime) -> None:
        self.deadlines[window_id] = at

    def delete_deadline(self, window_id: str) -> None:
        if self.deadlines.pop(window_id, None) is not None:
            self.deleted.append(window_id)
