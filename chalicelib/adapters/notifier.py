"""Telling the admins: an SNS topic, and a fake that keeps the messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient


class Notifier(Protocol):
    def notify(self, subject: str, message: str) -> None: ...


class SnsNotifier:
    def __init__(self, client: SNSClient, topic_arn: str) -> None:
        self._sns = client
        self._topic_arn = topic_arn

    def notify(self, subject: str, message: str) -> None:
        # SNS subjects are at most 100 printable ASCII characters.
        self._sns.publish(TopicArn=self._topic_arn, Subject=subject[:100], Message=message)


class FakeNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def notify(self, subject: str, message: str) -> None:
        self.sent.append((subject, message))
