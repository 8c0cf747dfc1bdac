"""Cut-off transfers: rsync killed mid-file, the archive's sshd killed mid-transfer, and a
certificate that ends mid-transfer. The push writes in place (`--inplace`), so a cut run leaves
what had arrived, half-updated files included, on the live volume: it is never reported
`succeeded`, its snapshot is incomplete, the last complete snapshot restores byte-identical,
and the next run resumes from what had arrived without resending it; a dropped connection is
tried again within the same run, which resumes the same way. `.~tmp~` directories an older
client (`--delay-updates`) left on a volume do not survive a run, nor come back in a restore."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Archive,
    Host,
    HostFactory,
    SessionServer,
    cut_once_arrived,
    kill_rsync,
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
    return cut_once_arrived(host.start("run"), lambda: volume_bytes(host.volume),
                            ARRIVED_AT_LEAST, cut)


def arrived(host: Host) -> int:
    """What the archive kept of the cut transfer: with in-place writes, the volume as it is
    (the cut file half written where it lies)."""
    wait_until_no_processes(host.account.uid)
    return volume_bytes(host.volume)


def resume_and_measure(host: Host, server: SessionServer, kept: int, tmp_path: Path,
                       before: int = 0, at_least: int = ARRIVED_AT_LEAST) -> None:
    """The next run at full speed: it succeeds, sends at most what had not arrived (`kept`
    bytes on the volume at the cut, `before` of them there before the cut run) and leaves a
    volume that decrypts and restores byte-identical to the data."""
    host.write_config(bwlimit_kib=0)  # full speed
    done = host.cli("run")
    assert done.returncode == 0, done.stderr
    resumed = server.reports_of(host.name)[-1]["bytes_sent"]
    total = volume_bytes(host.volume / "current")
    print(f"\ncut after {kept - before} bytes had arrived; the resumed run sent {resumed} of "
          f"{total}")
    assert kept - before >= at_least
    assert resumed <= total - kept + MIB
    assert leftovers(host.volume) == []
    assert tree_digest(host.restore(tmp_path / "resumed")) == tree_digest(host.source)


def leftovers(volume: Path) -> list[Path]:
    """`.~tmp~` directories (an older client's `--delay-updates` holding areas)."""
    return sorted(volume.rglob(".~tmp~"))


def plant_leftovers(root: Path, uid: int) -> None:
    """`.~tmp~` directories, with a file in each, as an older client's cut-off run left them:
    at the top of the copy and in a subdirectory."""
    places = [root, next(p for p in sorted(root.iterdir()) if p.is_dir() and not p.is_symlink())]
    for place in places:
        (place / ".~tmp~").mkdir()
        (place / ".~tmp~" / "half-sent").write_bytes(os.urandom(10_000))
        for path in (place / ".~tmp~", place / ".~tmp~" / "half-sent"):
            os.lchown(path, uid, 0)


@pytest.fixture
def slow_host(make_host: HostFactory) -> Host:
    host = make_host(bwlimit_kib=SLOW_KIB)
    make_tree(host.source, large_bytes=LARGE)
    return host


def test_rsync_killed_mid_file_resumes_without_resending(
        slow_host: Host, session_server: SessionServer, tmp_path: Path) -> None:
    code, stderr = run_and_cut(slow_host, kill_rsync)
    assert code == 5, stderr
    kept = arrived(slow_host)
    # the large file's ciphertext, cut where it was: half written, in place, under its name
    largest = max((p for p in (slow_host.volume / "current").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    assert MIB < largest.stat().st_size < LARGE
    assert leftovers(slow_host.volume) == []
    assert [r["status"] for r in session_server.reports_of(slow_host.name)] == ["failed"]
    resume_and_measure(slow_host, session_server, kept, tmp_path)
    assert [r["status"] for r in session_server.reports_of(slow_host.name)] == [
        "failed", "succeeded"]


def test_sshd_killed_mid_transfer_is_tried_again_without_resending(
        slow_host: Host, session_server: SessionServer, archive: Archive,
        tmp_path: Path) -> None:
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
    assert tree_digest(slow_host.restore(tmp_path / "out")) == tree_digest(slow_host.source)


def test_certificate_ending_mid_transfer_keeps_the_last_complete_snapshot_and_resumes(
        make_host: HostFactory, session_server: SessionServer, tmp_path: Path) -> None:
    """Window 1 completes and is snapshotted. In window 2 a large file is being written in
    place when the certificate ends: the live volume is no longer window 1's copy, window 2's
    snapshot is incomplete, and a restore of the day (its complete point: window 1's) comes back
    byte-identical, with the `.~tmp~` leftovers an older client left in it not fetched. Window
    3 resumes from what window 2's snapshot holds, and removes such leftovers."""
    host = make_host()
    make_tree(host.source, large_bytes=0)
    assert host.cli("run").returncode == 0
    complete = tree_digest(host.source)
    first = session_server.snapshot(host.name, "2030-05-01")
    before = volume_bytes(host.volume)
    (host.source / "arrived-late.img").write_bytes(os.urandom(LARGE))
    host.entry.validity_s = 5  # the run stops 4 s after the session (deadline_margin_s = 1)
    host.write_config(bwlimit_kib=SLOW_KIB // 2)
    done = host.cli("run")
    assert done.returncode == 4, done.stderr
    assert "deadline reached" in done.stderr
    reports = session_server.reports_of(host.name)
    assert [r["status"] for r in reports] == ["succeeded", "failed"]
    assert "deadline" in reports[-1]["detail"]
    kept = arrived(host)
    assert kept > before  # written in place: the live volume holds the cut run's data
    assert kept < before + LARGE  # cut mid-file: --bwlimit lets at most half in before it
    cut = session_server.snapshot(host.name, "2030-05-01", complete=False)

    host.entry.on_restore = lambda volume: plant_leftovers(volume / "current", host.account.uid)
    try:
        done = host.cli("restore", "--date", "2030-05-01", "--path", str(host.source),
                        "--to", str(tmp_path / "last"))
    finally:
        host.entry.on_restore = None
    assert done.returncode == 0, done.stderr
    assert host.entry.restores[-1].snapshot is first
    assert leftovers(host.entry.restores[-1].volume) != []  # they were there to fetch
    assert tree_digest(tmp_path / "last") == complete

    host.entry.validity_s = 3600
    assert cut.copy.is_dir()  # the next window's volume is made from it: here the live one
    plant_leftovers(host.volume / "current", host.account.uid)
    resume_and_measure(host, session_server, kept, tmp_path, before=before, at_least=MIB)
