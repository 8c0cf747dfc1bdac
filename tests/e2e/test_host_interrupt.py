"""Cut-off transfers: rsync killed mid-file, the archive's sshd killed mid-transfer, and a
certificate that ends mid-transfer. A cut run is never reported `succeeded`, the last
complete copy on the volume survives, and the next run resumes without resending what had
arrived; a dropped connection is tried again within the same run, which resumes the same
way."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Archive,
    Host,
    HostFactory,
    SessionServer,
    children_of,
    make_tree,
    tree_digest,
    volume_bytes,
    wait_until_no_processes,
)

pytestmark = pytest.mark.e2e

LARGE = 12 * 1024 * 1024
SLOW_KIB = 3000  # --bwlimit: the large file takes about 4 s
ARRIVED_AT_LEAST = 4 * 1024 * 1024
MIB = 1024 * 1024


def run_and_cut(host: Host, cut: Callable[[subprocess.Popen[str]], None]) -> tuple[int, str]:
    """Starts a run, waits until a good part of the data is on the volume, cuts it."""
    client = host.start("run")
    try:
        deadline = time.monotonic() + 60
        while volume_bytes(host.volume) < ARRIVED_AT_LEAST:
            assert client.poll() is None, f"the run ended before the cut: {client.stderr}"
            assert time.monotonic() < deadline, "the transfer never got going"
            time.sleep(0.05)
        cut(client)
        _, stderr = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    return client.returncode, stderr


def kill_local_rsync(client: subprocess.Popen[str]) -> None:
    rsyncs = [pid for pid in children_of(client.pid)
              if Path(f"/proc/{pid}/comm").read_text().strip() == "rsync"]
    assert rsyncs, "no rsync under the client"
    for pid in rsyncs:
        os.kill(pid, signal.SIGKILL)


def arrived(host: Host) -> int:
    """What the archive kept of the cut transfer (rsync's `.~tmp~` holding areas)."""
    wait_until_no_processes(host.account.uid)
    return volume_bytes(host.volume, inside=".~tmp~")


def resume_and_measure(host: Host, server: SessionServer, kept: int,
                       at_least: int = ARRIVED_AT_LEAST) -> None:
    host.write_config(bwlimit_kib=0)  # full speed
    done = host.cli("run")
    assert done.returncode == 0, done.stderr
    resumed = server.reports_of(host.name)[-1]["bytes_sent"]
    total = volume_bytes(host.volume / "current")
    print(f"\ncut after {kept} bytes had arrived; the resumed run sent {resumed} of {total}")
    assert kept >= at_least
    assert resumed <= total - kept + MIB
    assert volume_bytes(host.volume, inside=".~tmp~") == 0  # nothing left half-way


@pytest.fixture
def slow_host(make_host: HostFactory) -> Host:
    host = make_host(bwlimit_kib=SLOW_KIB)
    make_tree(host.source, large_bytes=LARGE)
    return host


def test_rsync_killed_mid_file_resumes_without_resending(
        slow_host: Host, session_server: SessionServer) -> None:
    code, stderr = run_and_cut(slow_host, kill_local_rsync)
    assert code == 5, stderr
    kept = arrived(slow_host)
    assert [r["status"] for r in session_server.reports_of(slow_host.name)] == ["failed"]
    resume_and_measure(slow_host, session_server, kept)
    assert [r["status"] for r in session_server.reports_of(slow_host.name)] == [
        "failed", "succeeded"]


def test_sshd_killed_mid_transfer_is_tried_again_without_resending(
        slow_host: Host, session_server: SessionServer, archive: Archive) -> None:
    """A dropped connection is the network's fault, not the data's: the same run connects
    again and resumes from what had arrived (at least ARRIVED_AT_LEAST before the cut)."""
    code, stderr = run_and_cut(slow_host, lambda _: archive.kill_connections())
    assert code == 0, stderr
    assert "the connection to the archive dropped; trying again" in stderr
    [report] = session_server.reports_of(slow_host.name)
    assert report["status"] == "succeeded"
    total = volume_bytes(slow_host.volume / "current")
    print(f"\ncut after at least {ARRIVED_AT_LEAST} bytes had arrived; the try after it sent "
          f"{report['bytes_sent']} of {total}")
    assert report["bytes_sent"] <= total - ARRIVED_AT_LEAST + MIB
    assert volume_bytes(slow_host.volume, inside=".~tmp~") == 0


def test_certificate_ending_mid_transfer_is_resumable_and_keeps_the_last_copy(
        make_host: HostFactory, session_server: SessionServer, tmp_path: Path) -> None:
    host = make_host()
    make_tree(host.source, large_bytes=0)
    assert host.cli("run").returncode == 0
    complete = tree_digest(host.source)
    on_volume = tree_digest(host.volume / "current")
    (host.source / "arrived-late.img").write_bytes(os.urandom(LARGE))
    host.entry.validity_s = 5  # the run stops 4 s after the session (deadline_margin_s = 1)
    host.write_config(bwlimit_kib=SLOW_KIB // 2)
    started = time.monotonic()
    done = host.cli("run")
    assert done.returncode == 4, done.stderr
    assert "deadline reached" in done.stderr
    assert time.monotonic() - started < 30
    reports = session_server.reports_of(host.name)
    assert [r["status"] for r in reports] == ["succeeded", "failed"]
    assert "deadline" in reports[-1]["detail"]
    after = tree_digest(host.volume / "current", skip=".~tmp~")
    assert {k: v for k, v in after.items() if k in on_volume} == on_volume
    assert set(after) - set(on_volume) <= {k for k in after if after[k][0] == "dir"}
    assert tree_digest(host.restore(tmp_path / "last-complete")) == complete
    kept = arrived(host)
    host.entry.validity_s = 3600
    resume_and_measure(host, session_server, kept, at_least=MIB)
