"""The embedded local stack end to end: real sshd, rsync, gocryptfs and rdiff-backup, the real
`offsite-host` against app.py's API over HTTP, AWS on a moto server, events from the local bus."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.aws import aws_client
from local.hosts import SampleHost, make_sample_data
from local.stack import LocalStack, StackSettings


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


def run_window(stack: LocalStack, hosts: dict[str, SampleHost]) -> tuple[dict[str, Any],
                                                                          dict[str, int]]:
    opened = stack.fire_open_schedule()
    runs = {name: host.start("run") for name, host in hosts.items()}
    codes = {}
    for name, run in runs.items():
        _, stderr = run.communicate(timeout=600)
        codes[name] = run.returncode
        if run.returncode:
            print(f"{name} exited {run.returncode}:\n{stderr}")
    return stack.wait_for(opened["window_id"], timeout=300), codes


def snapshot_tags(stack: LocalStack, window_id: str) -> dict[str, str]:
    assert stack.deployment is not None
    found = aws_client("ec2", stack.deployment.endpoint).describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:offsite:window", "Values": [window_id]}])
    tags = [{t["Key"]: t["Value"] for t in s["Tags"]} for s in found["Snapshots"]]
    return {t["offsite:host"]: t["offsite:complete"] for t in tags}


def sent(window: dict[str, Any], host: str) -> int:
    return next(int(r["bytes_sent"]) for r in window["host_reports"] if r["host"] == host)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    with LocalStack(tmp_path / "stack", StackSettings(window_hours=0.05),
                    log=lambda line: None) as running:
        yield running


def test_a_whole_window_with_four_hosts(stack: LocalStack, tmp_path: Path) -> None:
    hosts = start_hosts(stack, tmp_path, ("c", "h", "o", "l"))
    window, codes = run_window(stack, hosts)
    assert codes == dict.fromkeys(hosts, 0)
    assert window["state"] == "CLOSED", window["reason"]
    assert snapshot_tags(stack, window["window_id"]) == dict.fromkeys(hosts, "true")
    assert stack.bus is not None and stack.bus.errors == []
    assert stack.instance is not None
    for name in hosts:  # each snapshot is a real copy of that host's (encrypted) volume
        snapshots = list((stack.instance.snapshots).iterdir())
        assert any((s / "archive").is_dir() for s in snapshots), name


def test_a_slow_host_is_closed_by_the_deadline_then_completed(tmp_path: Path) -> None:
    slow = {"l": {"bwlimit_kib": 400}}
    with LocalStack(tmp_path / "stack", StackSettings(window_hours=20 / 3600),
                    log=lambda line: None) as stack:
        hosts = start_hosts(stack, tmp_path, ("o", "l"), **slow)
        first, codes = run_window(stack, hosts)
        # l stops itself at the deadline and reports failed, so the window closes then
        assert first["state"] == "CLOSED" and first["missing"] == ["l"]
        assert codes["o"] == 0 and codes["l"] == 4  # 4: deadline reached, resumable
        assert snapshot_tags(stack, first["window_id"]) == {"o": "true", "l": "false"}
        assert stack.instance is not None
        arrived = _volume_bytes(stack.instance.volumes / "l")
        assert arrived > 0
        hosts["l"].write_config()  # the next night the link is fast again
        stack.settings = StackSettings(window_hours=0.05)
        second, codes = _run_longer_window(stack, hosts)
        assert codes == {"o": 0, "l": 0}
        assert snapshot_tags(stack, second["window_id"]) == {"o": "true", "l": "true"}
        total = _volume_bytes(stack.instance.volumes / "l")
        assert sent(second, "l") < total - arrived // 2  # what had arrived was not resent


def _run_longer_window(stack: LocalStack,
                       hosts: dict[str, SampleHost]) -> tuple[dict[str, Any], dict[str, int]]:
    status, body = stack.admin("POST", "/v1/windows", {"duration_hours": 0.05})
    assert status == 201, body
    runs = {name: host.start("run") for name, host in hosts.items()}
    codes = {}
    for name, run in runs.items():
        run.communicate(timeout=600)
        codes[name] = run.returncode
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


def _leftovers(root: Path, ports: list[int], instance: Path | None,
               accounts: list[str] | None = None, group: str | None = None) -> list[str]:
    found = [f"instance files {instance}"] if instance and instance.exists() else []
    processes = subprocess.run(["pgrep", "-af", f"{root}|{instance}"], capture_output=True,
                               text=True, check=False).stdout.strip()
    if processes:
        found.append(f"processes: {processes}")
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if str(root) in line]
    found += [f"mount: {m}" for m in mounts]
    for port in ports:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                found.append(f"port {port} still listening")
    for account in accounts or []:
        if subprocess.run(["id", account], capture_output=True, check=False).returncode == 0:
            found.append(f"account {account}")
    if group and subprocess.run(["getent", "group", group], capture_output=True,
                                check=False).returncode == 0:
        found.append(f"group {group}")
    return found


class MidWindowError(Exception):
    pass


@pytest.mark.parametrize("fail", [False, True])
def test_the_stack_leaves_nothing_running(tmp_path: Path, fail: bool) -> None:
    root, ports, run, instance = tmp_path / "stack", [], None, None
    accounts: list[str] = []
    group = None
    try:
        with LocalStack(root, StackSettings(window_hours=0.05), log=lambda line: None) as stack:
            hosts = start_hosts(stack, tmp_path, ("c", "o"))
            assert stack.deployment is not None
            ports = [stack.api_port, stack.ssh_port,
                     int(stack.deployment.endpoint.rsplit(":", 1)[1])]
            assert stack.instance is not None
            instance, group = stack.instance.root, stack.instance.group
            accounts = stack.instance.accounts
            assert sorted(accounts) == [f"{stack.instance.stack_id}-c",
                                        f"{stack.instance.stack_id}-o"]
            window = stack.fire_open_schedule()
            stack.wait_for(window["window_id"], ("OPEN",), timeout=60)
            run = hosts["c"].start("run")  # with the instance up and the host's FUSE mounted
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
    assert _leftovers(tmp_path, ports, instance, accounts, group) == []
