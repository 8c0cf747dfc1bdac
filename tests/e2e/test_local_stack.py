"""The embedded local stack end to end: real sshd, rsync, gocryptfs and rdiff-backup, the real
`offsite-host` against app.py's API over HTTP, AWS on a moto server, events from the local bus,
and each window's archive fleet made real by local/fleet.py (one sshd per shard on its own
loopback address, EBS volumes and snapshots as directories)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.aws import aws_client
from local.hosts import SampleHost, change_sample_data, make_sample_data
from local.stack import LocalStack, StackSettings, leftovers
from local.trees import inventory

SAMPLE_HOSTS = ("c", "h", "o", "l")


def start_hosts(stack: LocalStack, root: Path, names: tuple[str, ...],
                **config: object) -> dict[str, SampleHost]:
    hosts = {}
    for name in names:
        host = SampleHost(name, root / "hosts" / name, stack.api_url)
        host.write_config(**config.get(name, {}))  # type: ignore[arg-type]
        make_sample_data(host)
        stack.enrol(name, host.keygen_and_init())
        hosts[name] = host
    return hosts


def run_hosts(hosts: dict[str, SampleHost]) -> dict[str, int]:
    """Each host's cron run, all at once; their exit codes."""
    runs = {name: host.start("run") for name, host in hosts.items()}
    codes = {}
    for name, run in runs.items():
        _, stderr = run.communicate(timeout=600)
        codes[name] = run.returncode
        if run.returncode:
            print(f"{name} exited {run.returncode}:\n{stderr}")
    return codes


def run_window(stack: LocalStack, hosts: dict[str, SampleHost]) -> tuple[dict[str, Any],
                                                                          dict[str, int]]:
    opened = stack.fire_open_schedule()
    codes = run_hosts(hosts)
    return stack.wait_for(opened["window_id"], timeout=300), codes


def ec2(stack: LocalStack) -> Any:
    assert stack.deployment is not None
    return aws_client("ec2", stack.deployment.endpoint)


def window_snapshots(stack: LocalStack, window_id: str) -> dict[str, dict[str, Any]]:
    """host -> its snapshot of that window (DescribeSnapshots, with its tags as a dict)."""
    found = ec2(stack).describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:offsite:window", "Values": [window_id]}])
    snapshots = {}
    for snapshot in found["Snapshots"]:
        snapshot["tags"] = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
        snapshots[snapshot["tags"]["offsite:host"]] = snapshot
    return snapshots


def snapshot_tags(stack: LocalStack, window_id: str) -> dict[str, str]:
    return {host: s["tags"]["offsite:complete"]
            for host, s in window_snapshots(stack, window_id).items()}


def sent(window: dict[str, Any], host: str) -> int:
    return next(int(r["bytes_sent"]) for r in window["host_reports"] if r["host"] == host)


def listening(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((address, port)) == 0


def windowleftovers(stack: LocalStack, window: dict[str, Any]) -> list[str]:
    """What a closed window has left that it should not have: an instance not terminated, a
    volume (in EC2 or as a directory), an sshd listening or running, a mount point."""
    assert stack.fleet is not None
    client, found = ec2(stack), []
    reservations = client.describe_instances(Filters=[
        {"Name": "tag:offsite:window", "Values": [window["window_id"]]}])["Reservations"]
    for instance in (i for r in reservations for i in r["Instances"]):
        if instance["State"]["Name"] != "terminated":
            found.append(f"instance {instance['InstanceId']} {instance['State']['Name']}")
    found += [f"volume {v['VolumeId']} {v['State']}" for v in client.describe_volumes(Filters=[
        {"Name": "tag:offsite:window", "Values": [window["window_id"]]}])["Volumes"]]
    found += [f"volume directory {v}" for v in stack.fleet.ebs.volume_ids()]
    for shard in window["shards"]:
        if shard["address"] and listening(shard["address"], stack.ssh_port):
            found.append(f"sshd of {shard['shard_id']} on {shard['address']}")
    processes = subprocess.run(["pgrep", "-af", str(stack.fleet.settings.root)],
                               capture_output=True, text=True, check=False).stdout.strip()
    found += [f"process {line}" for line in processes.splitlines()]
    for mounts in (stack.fleet.settings.mount_root, stack.fleet.settings.restore_root):
        if mounts.exists():
            found += [f"mount point {p}" for p in mounts.iterdir()]
    return found


def wait_nothing_left(stack: LocalStack, window: dict[str, Any],
                      timeout: float = 60) -> list[str]:
    """The leftovers once the terminations and deletions that follow CLOSED have had time
    (a volume still attached is the reconciler's sweep's)."""
    limit = time.monotonic() + timeout
    while (found := windowleftovers(stack, window)) and time.monotonic() < limit:
        time.sleep(0.5)
    return found


def wait_state(stack: LocalStack, window_id: str, state: str,
               timeout: float = 120) -> dict[str, Any]:
    window = stack.wait_for(window_id, (state, "CLOSED", "FAILED"), timeout=timeout)
    assert window["state"] == state, window
    return window


def wait_shards_open(stack: LocalStack, window_id: str, timeout: float = 120) -> dict[str, Any]:
    """The window once every one of its shards is OPEN (the window is OPEN with its first)."""
    limit = time.monotonic() + timeout
    while True:
        window = wait_state(stack, window_id, "OPEN", timeout=timeout)
        if all(s["state"] == "OPEN" for s in window["shards"]):
            return window
        assert time.monotonic() < limit, window["shards"]
        time.sleep(0.2)


def wait_archives_up(stack: LocalStack, window: dict[str, Any], timeout: float = 60) -> None:
    """Until each shard's archive has booted (its volumes made, its sshd listening): OPEN is
    EC2's "running", which comes before the archive's sshd listens, as on AWS."""
    assert stack.fleet is not None
    limit = time.monotonic() + timeout
    for shard in window["shards"]:
        while (archive := stack.fleet.archive(shard["instance_id"])) is None \
                or not archive.running:
            assert time.monotonic() < limit, f"the archive of {shard['shard_id']} is not up"
            time.sleep(0.2)


def volumes_of(stack: LocalStack, shard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """host -> the volume its shard's instance launched with (DescribeVolumes), by the block
    device mapping: the shard's hosts in name order on /dev/sdf, /dev/sdg, ..."""
    client = ec2(stack)
    instance = client.describe_instances(InstanceIds=[shard["instance_id"]])[
        "Reservations"][0]["Instances"][0]
    by_device = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"]}
    volumes = {}
    for host, device in zip(shard["hosts"], ("/dev/sdf", "/dev/sdg", "/dev/sdh"), strict=False):
        [volume] = client.describe_volumes(VolumeIds=[by_device[device]])["Volumes"]
        volumes[host] = volume
    return volumes


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    with LocalStack(tmp_path / "stack", StackSettings(window_hours=0.05),
                    log=lambda line: None) as running:
        yield running


def test_two_windows_of_two_shards_the_second_resumes_from_the_firsts_snapshots(
        tmp_path: Path) -> None:
    """Four hosts as two archives of two. Window 1 starts from blank volumes; window 2's volumes
    are made from window 1's snapshots, so the hosts send only what changed."""
    settings = StackSettings(window_hours=0.05, hosts_per_archive=2)
    with LocalStack(tmp_path / "stack", settings, log=lambda line: None) as stack:
        assert stack.fleet is not None and stack.bus is not None
        hosts = start_hosts(stack, tmp_path, SAMPLE_HOSTS)

        first, codes = run_window(stack, hosts)
        assert codes == dict.fromkeys(hosts, 0)
        assert first["state"] == "CLOSED", first["reason"]
        assert [s["hosts"] for s in first["shards"]] == [["c", "h"], ["l", "o"]]
        assert all(s["state"] == "CLOSED" for s in first["shards"]), first["shards"]
        addresses = {s["address"] for s in first["shards"]}
        assert len(addresses) == 2 and len({s["instance_id"] for s in first["shards"]}) == 2
        snapshots = window_snapshots(stack, first["window_id"])
        assert {h: s["tags"]["offsite:complete"] for h, s in snapshots.items()} == dict.fromkeys(
            hosts, "true")
        for name, snapshot in snapshots.items():  # a real copy of the host's encrypted archive
            copy = stack.fleet.ebs.snapshot(snapshot["SnapshotId"])
            assert any(p.is_file() for p in (copy / "archive").rglob("*")), name
        assert wait_nothing_left(stack, first) == []

        for host in hosts.values():
            change_sample_data(host, 2)
        opened = stack.fire_open_schedule()
        window = wait_shards_open(stack, opened["window_id"])
        wait_archives_up(stack, window)
        for shard in window["shards"]:  # before any host writes: each volume is its snapshot
            for name, volume in volumes_of(stack, shard).items():
                assert volume["SnapshotId"] == snapshots[name]["SnapshotId"], name
                assert volume["Encrypted"] and volume["VolumeType"] == "gp3"
                assert inventory(stack.fleet.ebs.volume(volume["VolumeId"])) == inventory(
                    stack.fleet.ebs.snapshot(volume["SnapshotId"])), name
        codes = run_hosts(hosts)
        second = stack.wait_for(opened["window_id"], timeout=300)
        assert codes == dict.fromkeys(hosts, 0)
        assert second["state"] == "CLOSED", second["reason"]
        assert snapshot_tags(stack, second["window_id"]) == dict.fromkeys(hosts, "true")
        both = {name: (sent(first, name), sent(second, name)) for name in hosts}
        assert sum(b for _, b in both.values()) < sum(a for a, _ in both.values()) / 4, both
        assert sent(second, "c") < sent(first, "c") / 4  # 8 blocks of its 24 MiB changed
        assert wait_nothing_left(stack, second) == []
        assert stack.bus.errors == []


def test_a_slow_host_is_closed_by_the_deadline_then_completed(tmp_path: Path) -> None:
    slow = {"l": {"bwlimit_kib": 400}}
    with LocalStack(tmp_path / "stack", StackSettings(window_hours=20 / 3600),
                    log=lambda line: None) as stack:
        assert stack.fleet is not None
        hosts = start_hosts(stack, tmp_path, ("o", "l"), **slow)
        first, codes = run_window(stack, hosts)
        # l stops itself at the deadline and reports failed, so the window closes then
        assert first["state"] == "CLOSED" and first["missing"] == ["l"]
        assert codes["o"] == 0 and codes["l"] == 4  # 4: deadline reached, resumable
        assert snapshot_tags(stack, first["window_id"]) == {"o": "true", "l": "false"}
        partial = window_snapshots(stack, first["window_id"])["l"]["SnapshotId"]
        arrived = _volume_bytes(stack.fleet.ebs.snapshot(partial))
        assert arrived > 0
        hosts["l"].write_config()  # the next night the link is fast again
        second, codes = _run_longer_window(stack, hosts)
        assert codes == {"o": 0, "l": 0}
        assert snapshot_tags(stack, second["window_id"]) == {"o": "true", "l": "true"}
        done = window_snapshots(stack, second["window_id"])["l"]["SnapshotId"]
        total = _volume_bytes(stack.fleet.ebs.snapshot(done))
        assert sent(second, "l") < total - arrived // 2  # what had arrived was not resent


def _run_longer_window(stack: LocalStack,
                       hosts: dict[str, SampleHost]) -> tuple[dict[str, Any], dict[str, int]]:
    status, body = stack.admin("POST", "/v1/windows", {"duration_hours": 0.05})
    assert status == 202, body
    codes = run_hosts(hosts)
    return stack.wait_for(body["window_id"], timeout=300), codes


def _volume_bytes(volume: Path) -> int:
    return sum(p.stat().st_size for p in volume.rglob("*") if p.is_file())


def test_a_revoked_host_gets_no_session(stack: LocalStack, tmp_path: Path) -> None:
    hosts = start_hosts(stack, tmp_path, ("c", "o"))
    _, codes = run_window(stack, hosts)
    assert codes == {"c": 0, "o": 0}
    status, _ = stack.admin("DELETE", "/v1/hosts/o")
    assert status == 200
    second, codes = run_window(stack, hosts)
    assert codes == {"c": 0, "o": 2}  # 2: configuration error (the server refused this host)
    assert second["expected"] == ["c"] and second["state"] == "CLOSED"
    assert snapshot_tags(stack, second["window_id"]) == {"c": "true"}


class MidWindowError(Exception):
    pass


@pytest.mark.parametrize("fail", [False, True])
def test_the_stack_leaves_nothing_running(tmp_path: Path, fail: bool) -> None:
    """Whether the stack ends normally or in the middle of a window with a host's transfer
    under way: no process, sshd, port, mount, account, group or fleet file is left."""
    root, ports, run, instance = tmp_path / "stack", [], None, None
    accounts: list[str] = []
    group = None
    addresses: list[str] = []
    ssh_port = 0
    ended: LocalStack | None = None
    try:
        settings = StackSettings(window_hours=0.05, hosts_per_archive=1)
        with LocalStack(root, settings, log=lambda line: None) as stack:
            hosts = start_hosts(stack, tmp_path, ("c", "o"))
            assert stack.deployment is not None and stack.fleet is not None
            ports = [stack.api_port, stack.ssh_port,
                     int(stack.deployment.endpoint.rsplit(":", 1)[1])]
            ssh_port = stack.ssh_port
            instance, group = stack.instance_root, stack.fleet.accounts.group
            stack_id = stack.fleet.accounts.stack_id
            window = stack.fire_open_schedule()
            opened = wait_shards_open(stack, window["window_id"])
            addresses = [s["address"] for s in opened["shards"]]
            assert len(set(addresses)) == 2
            wait_archives_up(stack, opened)
            assert all(listening(a, ssh_port) for a in addresses)
            accounts = stack.fleet.accounts.accounts  # made as each archive booted
            assert sorted(accounts) == [f"{stack_id}-c", f"{stack_id}-o"]
            held = "\n".join(stack.leftovers())  # what `make demo` checks once it has ended
            assert all(name in held for name in (*accounts, group, str(instance))), held
            ended = stack
            run = hosts["c"].start("run")  # with its archive up and the host's FUSE mounted
            if fail:
                time.sleep(2)
                raise MidWindowError("a failure in the middle of a window")
            run.communicate(timeout=300)
    except MidWindowError:
        assert fail
    finally:
        if run is not None and run.poll() is None:
            run.terminate()  # cron's run is interrupted too: it must clean up after itself
            run.communicate(timeout=60)
    assert leftovers(tmp_path, ports, instance, accounts, group) == []
    assert ended is not None and ended.leftovers() == []
    assert [a for a in addresses if listening(a, ssh_port)] == []
