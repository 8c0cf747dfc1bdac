"""Removing what one `offsite-admin smoke` made, and nothing else.

Everything is found by what only this run can own: its host's name (new, random, checked
unused before enrolling), the key it enrolled, and the ids of the windows that expected that
host. Windows are let finish first (the control plane deletes their archives and volumes);
the host record goes next, and only then its snapshots: the last good copy of a host that
still exists is never deleted, and a host that is gone has none to keep.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.adapters.compute import TAG_HOST, TAG_WINDOW
from chalicelib.admin.api import AdminApi, ApiError, ApiUnreachableError
from chalicelib.admin.smoke_report import Leftovers

TERMINAL = ("CLOSED", "FAILED")


@dataclass
class Made:
    """What the run made so far: cleanup removes exactly this."""

    host: str
    public_key: str | None = None  # set once enrolled
    work_dir: Path | None = None


@dataclass
class Cleanup:
    api: AdminApi
    ec2: Any
    dynamodb: Any
    table: str
    wait_s: float
    poll_s: float
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def __call__(self, made: Made) -> Leftovers:
        left = Leftovers()
        try:
            if made.public_key is not None:  # enrolled: there is something in AWS
                self._remove_from_aws(made.host, made.public_key, left)
        except (ClientError, BotoCoreError) as exc:  # e.g. AccessDenied: say so, go on
            left.kept.append(f"what is left of {made.host} in AWS (the cleanup stopped: {exc})")
        finally:
            if made.work_dir is not None:
                self._remove_work_dir(made.work_dir, left)
        return left

    def _remove_from_aws(self, host: str, public_key: str, left: Leftovers) -> None:
        windows = self._end_windows(host, left)
        if windows:
            self._wait_instances_gone(windows, left)
        if not self._remove_host(host, public_key, left):
            if windows:
                left.kept.append(f"the snapshots of {host}: the host is still enrolled, so "
                                 "its newest recovery point stays")
            return
        if windows:
            self._remove_snapshots(host, windows, left)
            self._remove_volumes(host, windows, left)

    # windows -------------------------------------------------------------------------------
    def _end_windows(self, host: str, left: Leftovers) -> set[str]:
        """The ids of every window that expected the host; each closed and let finish."""
        try:
            listed = self.api.call("GET", "/v1/windows").get("windows", [])
        except (ApiError, ApiUnreachableError) as exc:
            left.kept.append(f"the windows of {host}: cannot list them ({exc})")
            return set()
        ours = [w for w in listed if host in (w.get("expected") or [])]
        for window in ours:
            if window.get("state") not in TERMINAL:
                self._close(window["window_id"], left)
        for window in ours:
            state = self._wait_terminal(window["window_id"])
            if state not in TERMINAL:
                left.kept.append(f"window {window['window_id']} is still {state}: its archive "
                                 "and volume go when it ends (the reconciler finishes it)")
            else:
                left.ended.append(f"window {window['window_id']} ({state}; its record stays "
                                  "in the window history)")
        return {str(w["window_id"]) for w in ours}

    def _close(self, window_id: str, left: Leftovers) -> None:
        try:
            self.api.call("POST", f"/v1/windows/{window_id}/close")
        except ApiError as exc:
            if exc.status != 409:  # 409: it is closing or closed already
                left.kept.append(f"window {window_id}: closing it failed ({exc})")
        except ApiUnreachableError as exc:
            left.kept.append(f"window {window_id}: closing it failed ({exc})")

    def _wait_terminal(self, window_id: str) -> str:
        limit = self.clock() + self.wait_s
        while True:
            try:
                state = str(self.api.call("GET", f"/v1/windows/{window_id}")["state"])
            except (ApiError, ApiUnreachableError) as exc:
                return f"unknown ({exc})"
            if state in TERMINAL or self.clock() > limit:
                return state
            self.sleep(self.poll_s)

    def _wait_instances_gone(self, windows: Collection[str], left: Leftovers) -> None:
        """The control plane terminates a window's archives once its snapshots complete;
        one still there after the wait is reported (it bills until terminated)."""
        limit = self.clock() + self.wait_s
        while True:
            pages = self.ec2.get_paginator("describe_instances").paginate(Filters=[
                {"Name": f"tag:{TAG_WINDOW}", "Values": sorted(windows)},
                {"Name": "instance-state-name",
                 "Values": ["pending", "running", "stopping", "stopped"]}])
            alive = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
            if not alive:
                return
            if self.clock() > limit:
                left.kept += [f"instance {i['InstanceId']} ({i['State']['Name']}) of window "
                              f"{_tag(i, TAG_WINDOW)}: the control plane has not terminated "
                              "it" for i in alive]
                return
            self.sleep(self.poll_s)

    # the host ------------------------------------------------------------------------------
    def _remove_host(self, host: str, public_key: str, left: Leftovers) -> bool:
        """Revokes it (the API), then deletes its record, only if it still holds the key this
        run enrolled: a host of the same name enrolled meanwhile by someone else stays."""
        try:
            self.api.call("DELETE", f"/v1/hosts/{host}")
        except ApiError as exc:
            if exc.status == 404:  # the enrolment never happened: nothing to remove
                return True
            left.kept.append(f"host {host}: revoking it failed ({exc})")
            return False
        except ApiUnreachableError as exc:
            left.kept.append(f"host {host}: revoking it failed ({exc})")
            return False
        try:  # conditional on the key: a same-named host enrolled since by someone else stays
            self.dynamodb.delete_item(
                TableName=self.table, Key={"pk": {"S": "HOST"}, "sk": {"S": host}},
                ConditionExpression="public_key = :key",
                ExpressionAttributeValues={":key": {"S": public_key}})
        except ClientError as exc:
            left.kept.append(f"host {host} (revoked): its record in {self.table} stays "
                             f"({_code(exc)})")
            return False
        left.removed.append(f"host {host} (revoked, its record deleted)")
        return True

    # EBS -----------------------------------------------------------------------------------
    def _remove_snapshots(self, host: str, windows: Collection[str], left: Leftovers) -> None:
        # Filters are ANDed, the values of one filter ORed (DescribeSnapshots, EC2 API
        # Reference, "Filter.N"): this host's snapshots taken in this run's windows only.
        found = self.ec2.describe_snapshots(OwnerIds=["self"], Filters=[
            {"Name": f"tag:{TAG_HOST}", "Values": [host]},
            {"Name": f"tag:{TAG_WINDOW}", "Values": sorted(windows)}])["Snapshots"]
        for snapshot in found:
            snapshot_id = snapshot["SnapshotId"]
            try:
                self.ec2.delete_snapshot(SnapshotId=snapshot_id)
            except ClientError as exc:  # reported; the others are still deleted
                left.kept.append(f"snapshot {snapshot_id} of {host} ({_code(exc)})")
                continue
            left.removed.append(f"snapshot {snapshot_id} of {host}")

    def _remove_volumes(self, host: str, windows: Collection[str], left: Leftovers) -> None:
        """The control plane deletes a window's volumes when it ends; one it could not (a
        window that failed) is deleted here, if detached."""
        found = self.ec2.describe_volumes(Filters=[
            {"Name": f"tag:{TAG_HOST}", "Values": [host]},
            {"Name": f"tag:{TAG_WINDOW}", "Values": sorted(windows)}])["Volumes"]
        for volume in found:
            volume_id = volume["VolumeId"]
            # DeleteVolume: "The volume must be in the available state (not attached to an
            # instance)" (EC2 API Reference); an attached one goes with its window's end.
            if volume["State"] != "available":
                left.kept.append(f"volume {volume_id} of {host} ({volume['State']})")
                continue
            try:
                self.ec2.delete_volume(VolumeId=volume_id)
            except ClientError as exc:
                left.kept.append(f"volume {volume_id} of {host} ({_code(exc)})")
                continue
            left.removed.append(f"volume {volume_id} of {host}")

    # this workstation ----------------------------------------------------------------------
    def _remove_work_dir(self, work_dir: Path, left: Leftovers) -> None:
        """The host's keys, data, repository and restore: unmounts what offsite-host left
        mounted below it (a run cut off mid-way), then removes it."""
        for mount in mounts_below(work_dir):
            subprocess.run(["fusermount3", "-u", "-z", str(mount)], capture_output=True,
                           check=False)
        shutil.rmtree(work_dir, ignore_errors=True)
        if work_dir.exists():
            left.kept.append(f"work directory {work_dir}")
        else:
            left.removed.append(f"work directory {work_dir} (the host's keys, data, "
                                "repository and restored copy)")


def mounts_below(root: Path) -> list[Path]:
    """Mount points below `root`, deepest first (Linux: /proc/self/mounts; elsewhere none)."""
    try:
        table = Path("/proc/self/mounts").read_text()
    except OSError:
        return []
    prefix = str(root.resolve()) + os.sep
    points = [Path(line.split()[1].replace("\\040", " ")) for line in table.splitlines()
              if len(line.split()) > 1]
    return sorted((p for p in points if str(p).startswith(prefix)),
                  key=lambda p: len(p.parts), reverse=True)


def _tag(resource: dict[str, Any], key: str) -> str:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), "")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "error"))
