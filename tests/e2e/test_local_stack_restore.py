"""Restores on the embedded local stack, each on an archive of its own (a single-host
instance whose one volume is made from the chosen snapshot, mounted read-only). First by hand:
a backup window writes through a real sshd; while the next backup window is open, a restore
serves the first window's snapshot read-only, checked with real ssh and rsync under the
certificates `POST /v1/sessions` grants, and neither window holds up the other. Then with the
real `offsite-host restore` of the four sample hosts (two archives of two), after three windows
with changes between them: each window's state comes back byte-identical from the day's
retained point, `verify --deep` passes, damaged ciphertext in the restore copy fails loudly
(exit 10, target untouched), and an unknown date or snapshot writes nothing (exit 2).

The first test has a stack of its own and must run before the shared one starts (file order):
two stacks in one process would share the environment and the Unix accounts."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from offsite_host.httpsig import sign_request

from chalicelib.sshcert import ca_public_key_line
from local.aws import aws_client
from local.hosts import SAMPLES, SampleHost, change_sample_data, make_sample_data
from local.stack import TERMINAL, LocalStack, StackSettings
from local.trees import Entry, inventory

HOST = "c"


class Host:
    """What a host does, by hand: signed API calls, then ssh/rsync under a certificate."""

    def __init__(self, stack: LocalStack, root: Path) -> None:
        self.stack, self.root, self.key = stack, root, SigningKey.generate()
        root.mkdir(parents=True)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        url = self.stack.api_url + path
        headers = sign_request(method, url, data, self.key, keyid=HOST, created=int(time.time()),
                               nonce=secrets.token_urlsafe(16))
        request = urllib.request.Request(url, data=data or None, method=method,  # noqa: S310
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def session(self, purpose: str) -> list[str]:
        """The ssh command line of a fresh session (waits out Retry-After)."""
        key = self.root / f"{purpose}-key"
        key.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        body = {"host": HOST, "purpose": purpose,
                "ssh_public_key": key.with_suffix(".pub").read_text().strip()}
        for _ in range(60):
            status, grant = self.call("POST", "/v1/sessions", body)
            if status != 503:
                break
            time.sleep(1)
        assert status == 201, grant
        self.grant = grant
        Path(f"{key}-cert.pub").write_text(grant["certificate"] + "\n")
        known_hosts = self.root / f"{purpose}-known_hosts"
        known_hosts.write_text(grant["known_hosts"] + "\n")
        return ["ssh", "-F", "none", "-p", str(grant["port"]), "-l", grant["user"], "-i", str(key),
                "-o", f"CertificateFile={key}-cert.pub", "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes"]

    def rsync(self, ssh: list[str], source: str, target: str) -> subprocess.CompletedProcess[str]:
        for _ in range(30):  # EC2 says "running" a little before sshd listens, as on AWS
            done = subprocess.run(["rsync", "-rt", "-e", " ".join(ssh), source, target],
                                  capture_output=True, text=True, timeout=120, check=False)
            if "Connection refused" not in done.stderr:
                break
            time.sleep(0.5)
        return done

    def remote(self) -> str:
        """The archive's copy of this host's files, at the address the session named."""
        return f"{self.grant['address']}:archive/"

    def report(self, window_id: str) -> None:
        status, body = self.call("POST", "/v1/reports", {
            "host": HOST, "window_id": window_id, "status": "succeeded"})
        assert status == 200, body


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def window_volumes(stack: LocalStack, window_id: str) -> list[dict[str, Any]]:
    """The volumes a window's archives launched with, while they exist (DescribeVolumes)."""
    assert stack.deployment is not None
    return list(aws_client("ec2", stack.deployment.endpoint).describe_volumes(Filters=[
        {"Name": "tag:offsite:window", "Values": [window_id]}])["Volumes"])


def wait_until(condition: Any, timeout: float = 30) -> None:
    limit = time.monotonic() + timeout
    while not condition() and time.monotonic() < limit:
        time.sleep(0.2)


@pytest.fixture
def stack(tmp_path: Path) -> Any:
    with LocalStack(tmp_path / "stack", StackSettings(window_hours=0.05, restore_hours=0.05),
                    log=lambda line: None) as running:
        yield running


def test_a_restore_during_a_backup_window_reads_the_snapshot_and_cannot_write(
        stack: LocalStack, tmp_path: Path) -> None:
    """Window 1 backs the host up; while window 2 is open, and after the host has written new
    data to window 2's volume, a restore runs on an archive of its own: it serves window 1's
    snapshot read-only, and neither window blocks the other."""
    assert stack.fleet is not None and stack.bus is not None
    host = Host(stack, tmp_path / "host")
    stack.enrol(HOST, ca_public_key_line(host.key))
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    backed_up = secrets.token_bytes(50_000)
    (data / "a.bin").write_bytes(backed_up)
    (data / "sub" / "b.txt").write_text("second file\n")

    # window 1: the host writes its archive, reports, the window snapshots its volume
    first = open_backup(stack)
    ssh = host.session("backup")
    sent = host.rsync(ssh, f"{data}/", host.remote())
    assert sent.returncode == 0, sent.stderr
    host.report(first)
    backup = stack.wait_for(first, timeout=120)
    assert backup["state"] == "CLOSED", backup["reason"]

    status, listed = host.call("GET", f"/v1/hosts/{HOST}/snapshots")
    assert status == 200, listed
    [point] = listed["snapshots"]
    day = datetime.now(timezone.utc).date().isoformat()
    assert (point["day"], point["complete"], point["window_id"]) == (day, True, first)
    assert stack.snapshots(HOST) == listed["snapshots"]

    # window 2: the host writes something new, and has not reported yet
    second = open_backup(stack)
    ssh = host.session("backup")
    backup_address = host.grant["address"]
    (data / "a.bin").write_bytes(b"changed after window 1")  # the restore must not see it
    sent = host.rsync(ssh, f"{data}/", host.remote())
    assert sent.returncode == 0, sent.stderr

    # the restore: an archive of its own, a volume from window 1's snapshot, read-only
    status, restore = host.call("POST", f"/v1/hosts/{HOST}/restores", {"day": day})
    assert status == 202, restore
    assert restore["snapshot_id"] == point["snapshot_id"]
    opened = stack.wait_for(restore["window_id"], ("OPEN",), timeout=60)
    assert opened["purpose"] == "restore"
    [shard] = opened["shards"]
    assert shard["instance_id"] not in {s["instance_id"] for s in
                                        stack.window(second)["shards"]}
    [volume] = window_volumes(stack, restore["window_id"])
    assert volume["SnapshotId"] == point["snapshot_id"]
    ssh = host.session("restore")
    assert host.grant["remote_path"] == "archive/"
    assert host.grant["address"] == shard["address"] != backup_address
    restored = tmp_path / "restored"
    got = host.rsync(ssh, host.remote(), f"{restored}/")
    assert got.returncode == 0, (got.stderr, stack.bus.errors)
    assert tree(restored) == {"a.bin": backed_up, "sub/b.txt": b"second file\n"}

    written = host.rsync(ssh, f"{data}/", host.remote())
    assert written.returncode != 0, "a restore certificate must not write"
    again = tmp_path / "again"
    host.rsync(ssh, host.remote(), f"{again}/")
    assert tree(again) == tree(restored)  # the restore copy is unchanged

    host.report(restore["window_id"])
    ended = stack.wait_for(restore["window_id"], timeout=120)
    assert ended["state"] == "CLOSED", ended["reason"]
    assert ended["snapshots"] == {}
    wait_until(lambda: not window_volumes(stack, restore["window_id"]))
    assert window_volumes(stack, restore["window_id"]) == []
    wait_until(lambda: not (stack.fleet.settings.restore_root / HOST).exists())
    assert not (stack.fleet.settings.restore_root / HOST).exists()

    # window 2 was never held up, and ends as usual with what the host wrote in it
    assert stack.window(second)["state"] == "OPEN"
    host.report(second)
    backup = stack.wait_for(second, timeout=120)
    assert backup["state"] == "CLOSED", backup["reason"]
    newest = stack.snapshots(HOST)[0]
    assert (newest["window_id"], newest["complete"]) == (second, True)
    copy = stack.fleet.ebs.snapshot(newest["snapshot_id"])
    assert (copy / "archive" / "a.bin").read_bytes() == b"changed after window 1"
    assert stack.bus.errors == []


def open_backup(stack: LocalStack) -> str:
    status, opened = stack.admin("POST", "/v1/windows", {"hosts": [HOST]})
    assert status == 202, opened
    stack.wait_for(opened["window_id"], ("OPEN",), timeout=60)
    return str(opened["window_id"])


# The real `offsite-host restore` of the four sample hosts, on one stack and one set of three
# windows shared by the tests below.

WINDOWS = 3
Tree = dict[str, Entry]


@dataclass
class ThreeWindows:
    stack: LocalStack
    hosts: dict[str, SampleHost]
    trees: dict[str, list[Tree]]  # host -> its data as each window backed it up
    day: str  # the three windows' day
    points: dict[str, str]  # host -> the snapshot id retained for that day (window 3's)


def _backup_window(stack: LocalStack, hosts: dict[str, SampleHost]) -> str:
    opened = stack.fire_open_schedule()
    runs = {name: host.start("run") for name, host in hosts.items()}
    for name, run in runs.items():
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, f"{name}: {stderr}"
    window = stack.wait_for(opened["window_id"], timeout=120)
    assert window["state"] == "CLOSED", window["reason"]
    return str(window["window_id"])


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreeWindows]:
    """Three scheduled windows of the four sample hosts, with a day of changes (rewritten
    blocks, an appended log, a new page, deleted and edited files) before the second and the
    third; the data of each host recorded as each window saw it.

    The three share a UTC day, and retention keeps one point a day (the newest): window 3's
    snapshot holds the whole rdiff-backup history, so windows 1 and 2 come back from it with
    `--at 2B` and `--at 1B`."""
    root = tmp_path_factory.mktemp("three-windows")
    settings = StackSettings(window_hours=0.05, restore_hours=0.05, boot_seconds=0.5,
                             retry_after=1, hosts_per_archive=2)
    with LocalStack(root / "stack", settings, log=lambda line: None) as stack:
        hosts = {name: SampleHost(name, root / "hosts" / name, stack.api_url)
                 for name in SAMPLES}
        for host in hosts.values():
            host.write_config()
            make_sample_data(host)
            stack.enrol(host.name, host.keygen_and_init())
        trees: dict[str, list[Tree]] = {name: [] for name in hosts}
        last = ""
        for number in range(1, WINDOWS + 1):
            if number > 1:
                for host in hosts.values():
                    change_sample_data(host, number)
            last = _backup_window(stack, hosts)
            for name, host in hosts.items():
                trees[name].append(inventory(host.data))
        points = {name: stack.snapshots(name) for name in hosts}
        for name, retained in points.items():  # one point for the day: window 3's, complete
            assert [(p["window_id"], p["complete"]) for p in retained] == [(last, True)], name
        day = points["c"][0]["day"]
        yield ThreeWindows(stack, hosts, trees, day,
                           {name: retained[0]["snapshot_id"] for name, retained in points.items()})


def run_restore(stack: LocalStack, host: SampleHost,
                *args: str) -> subprocess.CompletedProcess[str]:
    """`offsite-host restore ...`, then waits until its restore window has closed (the next
    restore would find the archive busy)."""
    done = host.command("restore", *args, timeout=300)
    wait_until_closed(stack)
    return done


def wait_until_closed(stack: LocalStack) -> None:
    _, listed = stack.admin("GET", "/v1/windows")
    for window in listed["windows"]:
        if window["state"] not in TERMINAL:
            stack.wait_for(window["window_id"], timeout=120)


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".offsite-restore-" in p.name]


@pytest.mark.parametrize("name", list(SAMPLES))
def test_each_host_restores_each_window_byte_identical(windows: ThreeWindows, tmp_path: Path,
                                                       name: str) -> None:
    """The day's point, chosen by `--date` or by `--snapshot`, at each of its three backups."""
    host, stack = windows.hosts[name], windows.stack
    chosen = {1: ["--date", windows.day, "--at", "2B"],
              2: ["--snapshot", windows.points[name], "--at", "1B"],
              3: ["--date", windows.day]}
    for number, args in chosen.items():
        target = tmp_path / f"window-{number}"
        done = run_restore(stack, host, *args, "--path", str(host.data), "--to", str(target))
        assert done.returncode == 0, done.stderr
        assert windows.points[name] in done.stderr  # the point it says it restored
        assert inventory(target) == windows.trees[name][number - 1], f"window {number}"
    assert windows.trees[name][0] != windows.trees[name][1] != windows.trees[name][2]
    assert leftovers(tmp_path) == []
    assert not any((host.home / "state" / "restore").iterdir())
    assert stack.bus is not None and stack.bus.errors == []


def test_verify_deep_passes(windows: ThreeWindows) -> None:
    done = windows.hosts["h"].command("verify", "--deep", timeout=300)
    wait_until_closed(windows.stack)
    assert done.returncode == 0, done.stderr
    assert "identical to the local backup" in done.stderr
    assert windows.points["h"] in done.stderr


def flip_a_byte(victim: Path) -> None:
    """Flips one bit in the middle of a file, in place (same size and mtime); a second call
    undoes it."""
    info = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_damaged_ciphertext_in_the_restore_copy_fails_loudly(windows: ThreeWindows,
                                                             tmp_path: Path) -> None:
    stack, host = windows.stack, windows.hosts["c"]
    assert stack.fleet is not None
    snapshot_id = windows.points["c"]
    # the snapshot's copy the stack keeps, which a restore volume is made from: its largest
    # ciphertext file (db.bin's)
    victim = max((p for p in stack.fleet.ebs.snapshot(snapshot_id).rglob("*")
                  if p.is_file() and not p.is_symlink()), key=lambda p: p.stat().st_size)
    flip_a_byte(victim)
    target = tmp_path / "target"
    target.mkdir()
    before = target.stat()
    try:
        done = run_restore(stack, host, "--snapshot", snapshot_id, "--path", str(host.data),
                           "--to", str(target))
    finally:
        flip_a_byte(victim)  # the other tests share this snapshot
    assert done.returncode == 10, done.stderr
    # the manifest the backup run sealed catches it before gocryptfs reads a block
    assert "not what the host sent" in done.stderr and "Traceback" not in done.stderr
    assert list(target.iterdir()) == [] and target.stat().st_mtime_ns == before.st_mtime_ns
    assert leftovers(tmp_path) == []
    _, listed = stack.admin("GET", "/v1/windows")
    restore_window = stack.window(listed["windows"][0]["window_id"])
    assert restore_window["purpose"] == "restore"
    assert [r["status"] for r in restore_window["host_reports"]] == ["failed"]


def test_an_unknown_date_writes_nothing(windows: ThreeWindows, tmp_path: Path) -> None:
    stack, host = windows.stack, windows.hosts["l"]
    _, before = stack.admin("GET", "/v1/windows")
    for args, known in ((["--date", "2031-01-01"], windows.day),
                        (["--snapshot", "snap-00000000"], windows.points["l"])):
        done = run_restore(stack, host, *args, "--to", str(tmp_path / "x"))
        assert done.returncode == 2, done.stderr
        assert "no recovery point" in done.stderr and "Traceback" not in done.stderr
        assert known in done.stderr  # names what there is
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []
    _, after = stack.admin("GET", "/v1/windows")
    assert len(after["windows"]) == len(before["windows"])  # no restore window was opened
