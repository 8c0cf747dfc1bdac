"""Fanning a window's launches out: one invocation of the `launch_shard` function per shard,
so that opening a window of fifty archives is fifty small Lambdas, not fifty RunInstances in
the request that opened it (as instance-scheduler's orchestrator fans out its schedulers)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient

logger = Logger(service="offsite", child=True)

LaunchShard = Callable[[str, str], object]


def launch_event(window_id: str, shard_id: str) -> dict[str, str]:
    """What `launch_shard` receives."""
    return {"window_id": window_id, "shard_id": shard_id}


class LambdaLauncher:
    """Asynchronous invocations: "Lambda places the event in a queue and returns a success
    response without additional information" (Invoke, InvocationType Event, Lambda API
    Reference); a failed one is retried twice by Lambda, and the reconciler launches a shard
    whose launch never happened."""

    def __init__(self, client: LambdaClient, function_name: str) -> None:
        self._lambda = client
        self._function = function_name

    def launch(self, window_id: str, shard_ids: Sequence[str]) -> None:
        for shard_id in shard_ids:
            self._lambda.invoke(FunctionName=self._function, InvocationType="Event",
                                Payload=json.dumps(launch_event(window_id, shard_id)).encode())


class InlineLauncher:
    """Each launch now, in this call (the tests, the bench)."""

    def __init__(self, launch_shard: LaunchShard) -> None:
        self._launch_shard = launch_shard
        self.launched: list[tuple[str, str]] = []

    def launch(self, window_id: str, shard_ids: Sequence[str]) -> None:
        for shard_id in shard_ids:
            self.launched.append((window_id, shard_id))
            self._launch_shard(window_id, shard_id)


class ThreadLauncher:
    """Each launch in a thread of its own, as Lambda would run it elsewhere, while the caller
    answers at once (the local stack, where there is no Lambda service)."""

    def __init__(self, launch_shard: LaunchShard) -> None:
        self._launch_shard = launch_shard

    def launch(self, window_id: str, shard_ids: Sequence[str]) -> None:
        for shard_id in shard_ids:
            threading.Thread(target=self._run, args=(window_id, shard_id), daemon=True,
                             name=f"launch-{shard_id}").start()

    def _run(self, window_id: str, shard_id: str) -> None:
        try:
            self._launch_shard(window_id, shard_id)
        except Exception:  # Lambda would log it and retry; the reconciler launches again
            logger.exception("launch failed", extra={"window_id": window_id,
                                                     "shard_id": shard_id})
