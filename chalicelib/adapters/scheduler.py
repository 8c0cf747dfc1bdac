"""The window's one-time deadline, as an EventBridge Scheduler schedule, and a fake."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
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


def at_expression(at: datetime) -> str:
    """Scheduler's one-time `at(yyyy-mm-ddThh:mm:ss)` takes whole seconds; rounded up, so the
    schedule never fires before the deadline it stands for (the handler refuses an early
    one as "not reached yet")."""
    if at.tzinfo is not None:  # the expression is read in ScheduleExpressionTimezone="UTC"
        at = at.astimezone(timezone.utc)
    whole = at.replace(microsecond=0)
    if whole < at:
        whole += timedelta(seconds=1)
    return f"at({whole.strftime('%Y-%m-%dT%H:%M:%S')})"


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
            ScheduleExpression=at_expression(at),
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
