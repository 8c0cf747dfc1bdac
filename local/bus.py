"""The local event bus: watches the emulated AWS and delivers to the app's own handlers what
AWS would, when AWS would: EC2 state changes (after the instance's boot time, once sshd is up),
EBS snapshot completions (after the point-in-time copy is made), the one-time deadline
schedules at their time, and the reconciler on its rate. A restore volume made from a
snapshot appears on the instance as that snapshot's copy, and goes when EC2 deletes it."""

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
from local.instance import LocalInstance

Log = Callable[[str], None]


class EventBus:
    def __init__(self, clients: dict[str, Any], instance_id: str, instance: LocalInstance,
                 boot_seconds: float, reconcile_seconds: float, log: Log) -> None:
        self._ec2 = clients["ec2"]
        self._scheduler = clients["scheduler"]
        self._instance_id = instance_id
        self._instance = instance
        self._boot_seconds = boot_seconds
        self._reconcile_seconds = reconcile_seconds
        self._log = log
        self._seen_state = "stopped"
        self._running_since: float | None = None
        self._snapshots: dict[str, str] = {}  # id -> host
        self._restores: dict[str, str] = {}  # restore volume id -> host
        self._mounted: dict[str, str] = {}  # host -> the restore volume at its restore mount
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

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for step in (self._watch_restore_volumes, self._watch_instance,
                         self._fire_deadlines, self._watch_snapshots, self._reconcile):
                try:
                    step()
                except Exception:
                    self.errors.append(traceback.format_exc())
                    self._log(f"bus: {step.__name__} failed:\n{traceback.format_exc()}")

    def _watch_instance(self) -> None:
        state = self._ec2.describe_instances(InstanceIds=[self._instance_id])[
            "Reservations"][0]["Instances"][0]["State"]["Name"]
        if state == "running" and self._seen_state != "running":
            self._running_since = self._running_since or time.monotonic()
            if time.monotonic() - self._running_since < self._boot_seconds:
                return  # still booting: sshd not up, no event yet
            self._watch_restore_volumes()  # attached before the start: mounted at boot
            self._instance.start()
            self._deliver_state("running")
        elif state == "stopped" and self._seen_state != "stopped":
            self._instance.stop()
            self._running_since = None
            self._deliver_state("stopped")

    def _deliver_state(self, state: str) -> None:
        self._seen_state = state
        self._log(f"bus: EC2 {self._instance_id} is {state}")
        self.invoke("instance_state", events.instance_state(self._instance_id, state))

    def _watch_restore_volumes(self) -> None:
        found = self._ec2.describe_volumes(Filters=[
            {"Name": "tag-key", "Values": ["offsite:restore-window"]}])["Volumes"]
        current = {v["VolumeId"]: v for v in found}
        for volume_id in set(self._restores) - set(current):  # deleted after the restore
            host = self._restores.pop(volume_id)
            # An older volume of the host may go after its next restore's volume was mounted
            # (the sweep of leftovers): that one stays.
            if self._mounted.get(host) == volume_id:
                self._instance.detach_restore(host)
                del self._mounted[host]
            self._log(f"bus: restore volume {volume_id} deleted")
        for volume_id, volume in current.items():
            if volume_id in self._restores or not volume.get("Attachments"):
                continue
            host = next(t["Value"] for t in volume["Tags"] if t["Key"] == "offsite:host")
            self._instance.attach_restore(host, volume["SnapshotId"])
            self._restores[volume_id] = host
            self._mounted[host] = volume_id
            self._log(f"bus: restore volume {volume_id} of {host} from {volume['SnapshotId']}")

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

    def _watch_snapshots(self) -> None:
        found = self._ec2.describe_snapshots(OwnerIds=["self"], Filters=[
            {"Name": "tag-key", "Values": ["offsite:host"]}])["Snapshots"]
        current = {s["SnapshotId"] for s in found}
        for snapshot_id in set(self._snapshots) - current:  # deleted by retention
            self._instance.delete_snapshot(snapshot_id)
            del self._snapshots[snapshot_id]
        for snap in found:
            if snap["SnapshotId"] in self._snapshots:
                continue
            host = next(t["Value"] for t in snap["Tags"] if t["Key"] == "offsite:host")
            self._instance.snapshot(host, snap["SnapshotId"])
            self._snapshots[snap["SnapshotId"]] = host
            self.invoke("snapshot_state", events.snapshot_completed(
                snap["SnapshotId"], snap["VolumeId"], True, snap["StartTime"]))

    def _reconcile(self) -> None:
        if time.monotonic() - self._last_reconcile >= self._reconcile_seconds:
            self._last_reconcile = time.monotonic()
            self.invoke("reconciler", events.scheduled("offsite-local-reconciler"))
