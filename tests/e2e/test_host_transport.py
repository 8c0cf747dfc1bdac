"""Connection-level failures are not data failures. Faults are injected deterministically:
the client's `[tools] ssh` is a wrapper that, on chosen connections, first takes the volume's
rrsync lock itself (as the archive's rsync of a dropped connection still holds it) or sends
ssh to a port where nothing listens (as a stopped instance); or the archive's rsync is
signalled (as an instance shutting down); or it damages a file on the archive first, or adds
one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Archive,
    Host,
    HostFactory,
    SessionServer,
    free_port,
    make_tree,
    processes_of,
    volume_bytes,
)
from tests.e2e.test_host_interrupt import ARRIVED_AT_LEAST, SLOW_KIB, run_and_cut

pytestmark = pytest.mark.e2e

WRAPPER = """\
import fcntl, json, os, sys, time
plan = json.loads(open(sys.argv[1]).read())
n = len(open(plan["log"]).readlines()) + 1 if os.path.exists(plan["log"]) else 1
with open(plan["log"], "a") as log:
    log.write(f"{n}\\n")
args = sys.argv[2:]
if n in plan.get("locked", []):
    fd = os.open(plan["volume"], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    if os.fork() == 0:  # the holder, detached from rsync's pipes, keeps the lock a while
        os.setsid()
        if os.fork() == 0:
            with open(plan["holders"], "a") as holders:
                holders.write(f"{os.getpid()}\\n")
            null = os.open(os.devnull, os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(null, std)
            time.sleep(plan["hold_s"])
        os._exit(0)
    os.wait()
    os.close(fd)
if str(n) in plan.get("damage", {}):  # flip a byte, keeping size and time
    path = plan["damage"][str(n)]
    stat = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(stat.st_size // 2)
        byte = handle.read(1)[0]
        handle.seek(stat.st_size // 2)
        handle.write(bytes([byte ^ 0xFF]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
for name in plan.get("extra", {}).get(str(n), []):  # a stranger on the archive (hex name)
    with open(os.fsencode(plan["volume"]) + b"/current/" + bytes.fromhex(name), "wb") as f:
        f.write(b"not sent by the host")
if n >= plan.get("refuse_from", 1 << 30):
    args[args.index("-p") + 1] = str(plan["closed_port"])
os.execvp("ssh", ["ssh", *args])
"""


class Faults:
    def __init__(self, host: Host) -> None:
        self.host, self.dir = host, host.root / "faults"
        self.dir.mkdir()
        self.plan_file, self.log = self.dir / "plan.json", self.dir / "connections"
        self.holders = self.dir / "holders"
        script = self.dir / "ssh"
        script.write_text(f"#!/bin/sh\nexec {sys.executable} {self.dir / 'wrapper.py'} "
                          f"{self.plan_file} \"$@\"\n")
        script.chmod(0o755)
        (self.dir / "wrapper.py").write_text(WRAPPER)
        host.settings["tools"] = {"ssh": str(script)}

    def plan(self, **plan: object) -> None:
        self.plan_file.write_text(json.dumps({
            "log": str(self.log), "volume": str(self.host.volume),
            "holders": str(self.holders), **plan}))

    @property
    def connections(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0

    def release(self) -> None:
        for line in self.holders.read_text().split() if self.holders.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line), signal.SIGKILL)


@pytest.fixture
def faulty(make_host: HostFactory) -> Iterator[tuple[Host, Faults]]:
    host = make_host()
    faults = Faults(host)
    try:
        yield host, faults
    finally:
        faults.release()


def test_a_volume_still_locked_at_verify_is_tried_again(
        faulty: tuple[Host, Faults], session_server: SessionServer) -> None:
    host, faults = faulty
    make_tree(host.source, large_bytes=0)
    faults.plan(locked=[2], hold_s=3)  # connection 2 is the verification
    host.write_config()
    done = host.cli("run")
    assert done.returncode == 0, done.stderr
    assert "rrsync lock" in done.stderr and "trying again" in done.stderr
    assert faults.connections >= 3
    assert session_server.reports_of(host.name)[-1]["status"] == "succeeded"


def test_a_verification_that_never_connects_is_a_transfer_failure_not_a_mismatch(
        faulty: tuple[Host, Faults], session_server: SessionServer) -> None:
    host, faults = faulty
    make_tree(host.source, large_bytes=0)
    faults.plan(locked=[2], hold_s=300)
    host.write_config(connect_wait_s=5, io_timeout_s=10)  # the lock is waited for 40 s
    done = host.cli("run")
    assert done.returncode == 5, done.stderr
    assert "verification could not run" in done.stderr
    assert "Another instance of rrsync" in done.stderr
    report = session_server.reports_of(host.name)[-1]
    assert report["status"] == "failed" and "could not run" in report["detail"]


def test_a_dropped_link_the_session_end_leaves_no_time_to_resume_is_the_deadline(
        faulty: tuple[Host, Faults], session_server: SessionServer, archive: Archive) -> None:
    host, faults = faulty
    make_tree(host.source, large_bytes=12 * 1024 * 1024)
    faults.plan(refuse_from=2, closed_port=free_port())  # the instance is gone after the cut
    host.entry.validity_s = 30
    host.write_config(bwlimit_kib=SLOW_KIB)
    code, stderr = run_and_cut(host, lambda _: archive.kill_connections())
    assert code == 4, stderr
    assert "deadline reached during the transfer" in stderr
    assert faults.connections >= 2  # it did try again until the session's end
    report = session_server.reports_of(host.name)[-1]
    assert report["status"] == "failed" and "deadline" in report["detail"]


def test_an_archive_shutting_down_mid_transfer_is_the_deadline(
        make_host: HostFactory, session_server: SessionServer) -> None:
    host = make_host(bwlimit_kib=SLOW_KIB)
    make_tree(host.source, large_bytes=12 * 1024 * 1024)

    def shut_down(_: object) -> None:  # what stopping the instance does to its rsync
        for pid in processes_of(host.account.uid):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "rsync":
                os.kill(pid, signal.SIGTERM)

    code, stderr = run_and_cut(host, shut_down)
    assert code == 4, stderr
    assert "the archive is shutting down" in stderr and "trying again" not in stderr
    assert volume_bytes(host.volume) >= ARRIVED_AT_LEAST
