"""The archive fleet on this machine: follows what the control plane asks of EC2 on the moto
server and makes it real, then says so with the events AWS would send.

Each `step`, in this order:
1. volumes (DescribeVolumes) and snapshots (DescribeSnapshots) are read, volumes first: a
   snapshot requested before its volume's deletion is then always seen in the same step as
   that deletion, or an earlier one;
2. each new volume gets its directory (a copy of its snapshot's, or empty);
3. each new snapshot becomes a copy of its volume's directory, and its completion is
   delivered ("EBS Snapshot Notification");
4. only then are the directories of deleted volumes and snapshots removed;
5. instances tagged offsite:window: one that runs boots after `boot_seconds` (its boot config
   read from its user-data, each device's volume found in its block device mapping), then
   "running" is delivered, then the instance says it is ready the way an archive does: boot.sh's
   own signal step (`offsite-boot signal ready ...`) signs with the archive's host key and posts
   to the stack's API (the config's api_url); it says `failed` when a host's volume was not
   attached, as boot.sh would, and says nothing when its boot config is unusable (boot.sh dies
   before it has a host key: the reconciler's boot timeout ends that shard);
   stopped -> its sshd and sessions end, "stopped"; terminated -> the same, its files go,
   "terminated". Its volumes stay until DeleteVolume (DeleteOnTermination
   false).
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.instance.userdata import (
    BOOT_SCRIPT,
    BootConfig,
    BootConfigError,
    read_boot_config,
    render_boot_config,
)
from chalicelib.keys import KeyMaterial
from local import events
from local.accounts import StackAccounts
from local.archive import ArchiveInstance, Mount, SshdSettings
from local.ebs import EbsError, LocalEbs

Deliver = Callable[[str, dict[str, Any]], Any]  # (app.py function, event)
Log = Callable[[str], None]
WINDOW_TAG = "offsite:window"


@dataclass(frozen=True)
class FleetSettings:
    root: Path  # the instances' own files
    mount_root: Path  # MOUNT_ROOT
    restore_root: Path  # RESTORE_ROOT
    sshd: SshdSettings
    boot_seconds: float


@dataclass
class _Tracked:
    seen: str = "pending"  # the last state delivered
    running_since: float | None = None
    archive: ArchiveInstance | None = None
    left_out: list[str] = field(default_factory=list)  # why a host was not mounted


@dataclass
class _Disks:
    """What the EBS directories must follow: DescribeVolumes and DescribeSnapshots."""

    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)


class Fleet:
    def __init__(self, ec2: Any, ebs: LocalEbs, accounts: StackAccounts,
                 settings: FleetSettings, log: Log) -> None:
        self._ec2 = ec2
        self.ebs = ebs
        self.accounts = accounts
        self.settings = settings
        self._log = log
        self._instances: dict[str, _Tracked] = {}
        self._delivered: set[str] = set()  # snapshots whose completion was delivered
        self._foreign: set[str] = set()  # snapshots of volumes never here (an AMI's)

    @classmethod
    def create(cls, root: Path, ec2: Any, ssh_port: int, keys: KeyMaterial,
               boot_seconds: float, log: Log, log_dir: Path | None = None) -> Fleet:
        """A stack's fleet, its files under `root` (whose parents its accounts must be able
        to traverse): ebs/, instances/, mounts/ (MOUNT_ROOT), restore/ (RESTORE_ROOT); each
        instance's sshd log in `log_dir` (default root/logs). `close()` when the stack ends."""
        accounts = StackAccounts(root / "mounts")
        sshd = SshdSettings(ssh_port, accounts.group, keys.ca_public_line,
                            keys.host_private_pem, log_dir or root / "logs")
        settings = FleetSettings(root / "instances", root / "mounts", root / "restore", sshd,
                                 boot_seconds)
        return cls(ec2, LocalEbs(root / "ebs"), accounts, settings, log)

    def close(self) -> None:
        """Every archive ends (sshd, sessions, files), then the stack's accounts and group."""
        try:
            self.stop_all()
        finally:
            self.accounts.release()

    def archive(self, instance_id: str) -> ArchiveInstance | None:
        tracked = self._instances.get(instance_id)
        return None if tracked is None else tracked.archive

    def step(self, deliver: Deliver) -> None:
        disks = _Disks(_by_id(self._pages("describe_volumes", "Volumes"), "VolumeId"),
                       _by_id(self._pages("describe_snapshots", "Snapshots", OwnerIds=["self"]),
                              "SnapshotId"))
        self._make_volumes(disks, only_ready=True)
        self._take_snapshots(disks, deliver)
        self._make_volumes(disks, only_ready=False)
        for volume_id in self.ebs.volume_ids() - disks.volumes.keys():
            self.ebs.delete_volume(volume_id)
            self._log(f"fleet: volume {volume_id} deleted")
        for snapshot_id in self.ebs.snapshot_ids() - disks.snapshots.keys():
            self.ebs.delete_snapshot(snapshot_id)
            self._delivered.discard(snapshot_id)
            self._log(f"fleet: snapshot {snapshot_id} deleted")
        instances = self._pages("describe_instances", "Reservations", Filters=[
            {"Name": "tag-key", "Values": [WINDOW_TAG]}])
        for instance in (i for reservation in instances for i in reservation["Instances"]):
            self._follow(instance, deliver)

    def snapshot_requested(self, parsed: dict[str, Any], **_: Any) -> None:
        """boto3's after-call hook on the app's CreateSnapshot: the volume's content is copied
        now, as EBS captures it when the snapshot is requested, because moto calls a snapshot
        completed at once and the reconciler may close the shard (and delete the volume) on
        that before the next step. A copy that fails here is made by the step."""
        snapshot_id, volume_id = parsed.get("SnapshotId"), parsed.get("VolumeId")
        if not snapshot_id or not volume_id or volume_id not in self.ebs.volume_ids():
            return
        try:
            self.ebs.take_snapshot(snapshot_id, volume_id)
        except (EbsError, OSError, subprocess.SubprocessError) as exc:
            self._log(f"fleet: snapshot {snapshot_id} not copied at its request: {exc}")

    def stop_all(self) -> None:
        """The stack ends: every archive's sshd and sessions end, its files go."""
        for tracked in self._instances.values():
            if tracked.archive is not None:
                tracked.archive.terminate()
                tracked.archive = None

    # EBS -------------------------------------------------------------------------------------
    def _make_volumes(self, disks: _Disks, only_ready: bool) -> None:
        """`only_ready`: only those whose snapshot, if any, is here already (a snapshot taken
        in this very step is copied first)."""
        have, snapshots = self.ebs.volume_ids(), self.ebs.snapshot_ids()
        for volume_id, volume in disks.volumes.items():
            if volume_id in have:
                continue
            source = volume.get("SnapshotId") or None
            if source is not None and source not in snapshots:
                if only_ready:
                    continue
                self._log(f"fleet: {volume_id} made blank: snapshot {source} is not here")
                source = None
            self.ebs.make_volume(volume_id, source)
            self._log(f"fleet: volume {volume_id} made" + (f" from {source}" if source else ""))

    def _take_snapshots(self, disks: _Disks, deliver: Deliver) -> None:
        have, volumes = self.ebs.snapshot_ids(), self.ebs.volume_ids()
        for snapshot_id, snapshot in disks.snapshots.items():
            if snapshot_id not in have:
                if snapshot["VolumeId"] not in volumes:
                    if snapshot_id not in self._foreign:
                        self._foreign.add(snapshot_id)  # said once
                        self._log(f"fleet: {snapshot_id} is of a volume never here: ignored")
                    continue
                self.ebs.take_snapshot(snapshot_id, snapshot["VolumeId"])
                self._log(f"fleet: snapshot {snapshot_id} of {snapshot['VolumeId']} taken")
            if snapshot_id not in self._delivered:
                deliver("snapshot_state", events.snapshot_completed(
                    snapshot_id, snapshot["VolumeId"], True, snapshot["StartTime"]))
                self._delivered.add(snapshot_id)

    # instances -------------------------------------------------------------------------------
    def _follow(self, instance: dict[str, Any], deliver: Deliver) -> None:
        instance_id, state = instance["InstanceId"], instance["State"]["Name"]
        tracked = self._instances.setdefault(instance_id, _Tracked())
        if state == "running" and tracked.seen != "running":
            tracked.running_since = tracked.running_since or time.monotonic()
            if time.monotonic() - tracked.running_since < self.settings.boot_seconds:
                return  # still booting: sshd not up, no event yet
            tracked.archive, config = self._boot(instance, tracked)
            self._deliver_state(tracked, instance_id, "running", deliver)
            if tracked.archive is not None and config is not None and config.api_url:
                self._say_booted(tracked, config)
        elif state in ("stopping", "stopped") and tracked.seen != "stopped":
            self._end(tracked, terminate=False)
            if state == "stopped":
                self._deliver_state(tracked, instance_id, "stopped", deliver)
        elif state in ("shutting-down", "terminated") and tracked.seen != "terminated":
            self._end(tracked, terminate=True)
            if state == "terminated":
                self._deliver_state(tracked, instance_id, "terminated", deliver)

    def _end(self, tracked: _Tracked, terminate: bool) -> None:
        tracked.running_since = None
        if tracked.archive is not None:
            if terminate:
                tracked.archive.terminate()
                tracked.archive = None
            else:
                tracked.archive.stop()

    def _deliver_state(self, tracked: _Tracked, instance_id: str, state: str,
                       deliver: Deliver) -> None:
        self._log(f"fleet: EC2 {instance_id} is {state}")
        deliver("instance_state", events.instance_state(instance_id, state))
        tracked.seen = state

    def _say_booted(self, tracked: _Tracked, config: BootConfig) -> None:
        """boot.sh's signal step, run for real: the archive's host key signs, curl posts."""
        archive = tracked.archive
        assert archive is not None
        status = "failed" if tracked.left_out else "ready"
        reason = "; ".join(tracked.left_out) or (
            f"{len(config.hosts)} volume(s) and {len(config.restores)} restore(s) mounted; "
            "sshd answers with the host key")
        conf = archive.etc / "instance.conf"
        conf.write_text(render_boot_config(
            sorted(config.hosts.items()), "\n".join(config.ca_keys), config.host_key_parameter,
            config.region, uids=config.uids, restores=sorted(config.restores.items()),
            account_prefix=config.account_prefix, api_url=config.api_url))
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(archive.root),
               "OFFSITE_ETC": str(archive.etc),
               "OFFSITE_CONFIG": str(conf), "OFFSITE_INSTANCE_ID": archive.instance_id,
               "OFFSITE_SIGNAL_TRIES": "3"}
        result = subprocess.run(["bash", str(BOOT_SCRIPT), "signal", status, reason], env=env,
                                capture_output=True, text=True, timeout=120, check=False)
        said = result.stderr.strip().replace("offsite-boot: ", "")
        self._log(f"fleet: {archive.instance_id} says {status}: {said}")

    def _boot(self, instance: dict[str, Any],
              tracked: _Tracked) -> tuple[ArchiveInstance | None, BootConfig | None]:
        """The archive, booted, and its boot config; no archive when its user-data names
        nothing it can serve (on EC2 the instance runs all the same, without sshd: the same is
        delivered here)."""
        instance_id = instance["InstanceId"]
        tracked.left_out = []
        attribute = self._ec2.describe_instance_attribute(InstanceId=instance_id,
                                                          Attribute="userData")
        # "User data must be base64-decoded when you retrieve it"
        # (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-add-user-data.html)
        encoded = attribute.get("UserData", {}).get("Value", "")
        try:
            config = read_boot_config(base64.b64decode(encoded).decode())
            if config.account_prefix != self.accounts.prefix:
                raise BootConfigError(f"account prefix {config.account_prefix!r}, not the "
                                      f"stack's {self.accounts.prefix!r}")
        except (BootConfigError, ValueError) as exc:
            self._log(f"fleet: {instance_id} boots without sshd: {exc}")
            return None, None
        archive = ArchiveInstance(instance_id, instance["PrivateIpAddress"],
                                  self.settings.root / instance_id, self.settings.sshd)
        try:
            archive.boot(self._mounts(instance, config.hosts, config.restores, tracked))
        except BaseException:
            archive.terminate()  # tried again at the next step
            raise
        self._log(f"fleet: {instance_id} serves {sorted(config.hosts)}"
                  + (f", restores {sorted(config.restores)}" if config.restores else "")
                  + f" on {archive.address}:{self.settings.sshd.port}")
        return archive, config

    def _mounts(self, instance: dict[str, Any], hosts: dict[str, str],
                restores: dict[str, str], tracked: _Tracked) -> list[Mount]:
        attached = {m["DeviceName"]: m["Ebs"]["VolumeId"]
                    for m in instance.get("BlockDeviceMappings", []) if "Ebs" in m}
        mounts = []
        for names, root, read_only in ((hosts, self.settings.mount_root, False),
                                       (restores, self.settings.restore_root, True)):
            for host, device in sorted(names.items()):
                if device not in attached:
                    # boot.sh waits, then leaves the host out: its data never lands elsewhere
                    self._log(f"fleet: {instance['InstanceId']}: no volume on {device} for "
                              f"{host}: left out")
                    tracked.left_out.append(f"{host}: {device} is not attached")
                    continue
                volume = self.ebs.volume(attached[device])
                if not volume.is_dir():  # made in this step's EBS pass; a retry if not
                    raise RuntimeError(f"volume {attached[device]} of {host} is not here yet")
                mounts.append(Mount(host, self.accounts.ensure(host), volume, root / host,
                                    read_only))
        return mounts

    def _pages(self, operation: str, key: str, **request: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for page in self._ec2.get_paginator(operation).paginate(**request):
            found.extend(page[key])
        return found


def _by_id(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in items}
