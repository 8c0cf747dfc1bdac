"""In-place writes on the embedded local stack (issue 12): the push changes only the blocks that
changed, so a run cut off mid-file leaves a half-updated file on its volume. Three windows of
one host whose database file grows: window 1 completes; in window 2 the client's rsync is
killed while the file's new part is being written (a bandwidth limit, and the cut made only
once enough of it has arrived on the archive volume: no timing luck); window 2's snapshot is
incomplete and kept, window 1's point restores byte-identical; window 3's volume is made from
window 2's snapshot, sends no more than what had not arrived (plus a little), and its point
restores byte-identical."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from local.hosts import SampleHost
from local.stack import TERMINAL, LocalStack, StackSettings
from local.trees import Entry, inventory
from tests.e2e.conftest import cut_once_arrived, kill_rsync
from tests.e2e.test_local_stack import (
    run_window,
    sent,
    snapshot_tags,
    volumes_of,
    wait_archives_up,
    wait_shards_open,
    window_snapshots,
)

HOST = "c"
MIB = 1024 * 1024
FIRST = 8 * MIB  # db.bin in window 1
GROWN = 16 * MIB  # what it gains before window 2
ARRIVED = 6 * MIB  # on the archive before the cut
SLOW_KIB = 2000  # window 2's --bwlimit: the new part takes about 8 s


def test_a_run_cut_mid_file_keeps_the_last_complete_point_and_the_next_window_resumes(
        tmp_path: Path) -> None:
    settings = StackSettings(window_hours=0.05, restore_hours=0.05, boot_seconds=0.5,
                             retry_after=1, hosts_per_archive=1)
    with LocalStack(tmp_path / "stack", settings, log=lambda line: None) as stack:
        assert stack.fleet is not None and stack.bus is not None
        host = SampleHost(HOST, tmp_path / "hosts" / HOST, stack.api_url)
        host.write_config()
        rng = random.Random("in-place")
        db = host.data / "db.bin"
        db.parent.mkdir(parents=True)
        db.write_bytes(rng.randbytes(FIRST))
        stack.enrol(HOST, host.keygen_and_init())

        first, codes = run_window(stack, {HOST: host})
        assert codes == {HOST: 0} and first["state"] == "CLOSED", first["reason"]
        first_tree = inventory(host.data)
        first_snap = window_snapshots(stack, first["window_id"])[HOST]["SnapshotId"]

        grow(db, rng)  # a few 4 KiB pages rewritten, 16 MiB appended
        second, arrived = cut_window(stack, host, first_snap)
        assert snapshot_tags(stack, second["window_id"]) == {HOST: "false"}
        cut_snap = window_snapshots(stack, second["window_id"])[HOST]["SnapshotId"]
        # the cut file is half updated, where it lies, in the incomplete snapshot
        sizes = [largest(stack.fleet.ebs.snapshot(s)) for s in (first_snap, cut_snap)]
        assert sizes[0] + ARRIVED <= sizes[1] < sizes[0] + GROWN
        assert list(stack.fleet.ebs.snapshot(cut_snap).rglob(".~tmp~")) == []  # not set aside
        listed = {p["snapshot_id"]: p["complete"] for p in stack.snapshots(HOST)}
        assert listed == {first_snap: True, cut_snap: False}  # retention kept both

        day = point_day(stack, first_snap)
        assert restore(stack, host, day, tmp_path / "window-1") == (first_snap, first_tree)

        host.write_config()  # the next night, at full speed
        third, codes = run_window_checking_basis(stack, host, cut_snap)
        assert codes == {HOST: 0} and third["state"] == "CLOSED", third["reason"]
        assert snapshot_tags(stack, third["window_id"]) == {HOST: "true"}
        third_snap = window_snapshots(stack, third["window_id"])[HOST]["SnapshotId"]
        resumed = sent(third, HOST)
        print(f"\nwindow 2 was cut after {arrived} of the {GROWN} new bytes had arrived; "
              f"window 3 sent {resumed} (window 1: {sent(first, HOST)})")
        assert resumed < FIRST + GROWN  # less than the whole changed file
        assert resumed <= GROWN - arrived + MIB  # nor what had arrived
        assert restore(stack, host, point_day(stack, third_snap),
                       tmp_path / "window-3") == (third_snap, inventory(host.data))
        assert stack.bus.errors == []


def grow(db: Path, rng: random.Random) -> None:
    with db.open("r+b") as file:
        for _ in range(4):
            file.seek(rng.randrange(FIRST // 4096) * 4096)
            file.write(rng.randbytes(4096))
        file.seek(0, os.SEEK_END)
        file.write(rng.randbytes(GROWN))


def cut_window(stack: LocalStack, host: SampleHost, basis: str) -> tuple[dict[str, Any], int]:
    """Window 2 at `SLOW_KIB`: once `ARRIVED` bytes more than its basis snapshot holds are on
    the volume, the client's rsync is killed; the client reports `failed` (exit 5) and the
    window closes. Returns the window and the bytes that had arrived."""
    assert stack.fleet is not None
    host.write_config(bwlimit_kib=SLOW_KIB)
    opened = stack.fire_open_schedule()
    client = host.start("run")
    try:
        window = wait_shards_open(stack, opened["window_id"])
        wait_archives_up(stack, window)
    except BaseException:
        client.kill()
        client.communicate()
        raise
    [shard] = window["shards"]
    volume = stack.fleet.ebs.volume(volumes_of(stack, shard)[HOST]["VolumeId"])
    before = volume_bytes(stack.fleet.ebs.snapshot(basis))
    code, stderr = cut_once_arrived(client, lambda: volume_bytes(volume), before + ARRIVED,
                                    kill_rsync, timeout=120)
    assert code == 5, stderr
    closed = stack.wait_for(opened["window_id"], timeout=300)
    assert closed["state"] == "CLOSED", closed["reason"]
    assert [r["status"] for r in closed["host_reports"]] == ["failed"]
    cut_snap = window_snapshots(stack, opened["window_id"])[HOST]["SnapshotId"]
    return closed, volume_bytes(stack.fleet.ebs.snapshot(cut_snap)) - before


def run_window_checking_basis(stack: LocalStack, host: SampleHost,
                              basis: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Window 3, whose volume must be made from the cut-off window's snapshot (the newest)."""
    opened = stack.fire_open_schedule()
    window = wait_shards_open(stack, opened["window_id"])
    [shard] = window["shards"]
    assert volumes_of(stack, shard)[HOST]["SnapshotId"] == basis
    done = host.command("run", timeout=600)
    assert done.returncode == 0, done.stderr
    return stack.wait_for(opened["window_id"], timeout=300), {HOST: done.returncode}


def restore(stack: LocalStack, host: SampleHost, day: str,
            target: Path) -> tuple[str, dict[str, Entry]]:
    """`offsite-host restore --date DAY` of the data: the point it restored, and the tree."""
    done = host.command("restore", "--date", day, "--path", str(host.data), "--to",
                        str(target), timeout=300)
    _, listed = stack.admin("GET", "/v1/windows")
    for window in listed["windows"]:
        if window["state"] not in TERMINAL:
            stack.wait_for(window["window_id"], timeout=120)
    assert done.returncode == 0, done.stderr
    [point] = [p["snapshot_id"] for p in stack.snapshots(HOST) if p["snapshot_id"] in done.stderr]
    return point, inventory(target)


def point_day(stack: LocalStack, snapshot_id: str) -> str:
    return str(next(p["day"] for p in stack.snapshots(HOST) if p["snapshot_id"] == snapshot_id))


def largest(root: Path) -> int:
    return max(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def volume_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
