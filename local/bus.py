"""The local event bus: watches the emulated AWS and delivers to the app's own handlers what
AWS would, when AWS would: EC2 state changes (after the instance's boot time, once sshd is up),
EBS snapshot completions (after the point-in-time copy is made), the one-time deadline
schedules at their time, and the reconciler on its rate.

`FleetBus` follows the per-window archive fleet (local/fleet.py: one sshd per shard, EBS as
directories).
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from chalice.local import LambdaContext

import app as app_module
from local import events
from local.aws import SCHEDULE_GROUP
from local.fleet import Fleet

Log = Callable[[str], None]


class _Bus:
    """The loop, the deadline schedules, the reconciler and Lambda invocation; subclasses name
    what else they watch (`_steps`)."""

    def __init__(self, clients: dict[str, Any], reconcile_seconds: float, log: Log) -> None:
        self._scheduler = clients["scheduler"]
        self._reconcile_seconds = reconcile_seconds
        self._log = log
        self._last_reconcile = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="event-bus", daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def invoke(self, function: str, event: dict[str, Any]) -> Any:
        """Invoke one of app.py's functions as Lambda would."""
        context = LambdaContext(function, memory_size=512, max_runtime_ms=900_000)
        return app_module.app.handler_map[function](event, context)

    def _steps(self) -> list[Callable[[], None]]:
        return [self._fire_deadlines, self._reconcile]

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for step in self._steps():
                try:
                    step()
                except Exception:
                    self.errors.append(traceback.format_exc())
                    self._log(f"bus: {step.__name__} failed:\n{traceback.format_exc()}")

    def _fire_deadlines(self) -> None:
        schedules = self._scheduler.list_schedules(GroupName=SCHEDULE_GROUP)["Schedules"]
        gone = self._scheduler.exceptions.ResourceNotFoundException
        for summary in schedules:
            try:  # the window may close early and delete its schedule between the two calls
                schedule = self._scheduler.get_schedule(Name=summary["Name"],
                                                        GroupName=SCHEDULE_GROUP)
            except gone:
                continue
            at = datetime.strptime(schedule["ScheduleExpression"], "at(%Y-%m-%dT%H:%M:%S)")
            if at.replace(tzinfo=timezone.utc) <= datetime.now(timezone.utc):
                try:
                    self._scheduler.delete_schedule(Name=summary["Name"],
                                                    GroupName=SCHEDULE_GROUP)
                except gone:
                    continue  # deleted by the window's early close: a deleted one never fires
                self._log(f"bus: schedule {summary['Name']} fires")
                self.invoke("window_deadline", json.loads(schedule["Target"]["Input"]))

    def _reconcile(self) -> None:
        if time.monotonic() - self._last_reconcile >= self._reconcile_seconds:
            self._last_reconcile = time.monotonic()
            self.invoke("reconciler", events.scheduled("offsite-local-reconciler"))


class FleetBus(_Bus):
    """The bus of the per-window fleet: `fleet.step` (EBS, then the instances), then the
    deadlines and the reconciler."""

    def __init__(self, clients: dict[str, Any], fleet: Fleet, reconcile_seconds: float,
                 log: Log) -> None:
        super().__init__(clients, reconcile_seconds, log)
        self.fleet = fleet

    def _steps(self) -> list[Callable[[], None]]:
        return [self._watch_fleet, *super()._steps()]

    def _watch_fleet(self) -> None:
        self.fleet.step(self.invoke)
