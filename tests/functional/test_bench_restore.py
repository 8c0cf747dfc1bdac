"""Smoke test of bench/restore on a data set of a few MB: a backup through the real path to a
throwaway sshd, sealed as a run seals it, then the client's restore (fetch under `rrsync -ro`,
the manifest check, gocryptfs forward mount, rdiff-backup restore) beside a plain rsync.
Checked: the figures the data forces, the identity of both copies, the order of the times, and
that nothing is left behind. No wall-clock speed is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.restore import Figures, as_json, is_complete, measure, report, tree_differences

from .bench_rig import assert_left_nothing, real_tools

SIZE_MB = 3.0


@pytest.fixture(scope="module")
def figures() -> Figures:
    return measure(SIZE_MB, quiet=True)


def test_a_complete_file_is_a_data_set_path_at_its_full_size() -> None:
    sizes = {"home/a/f.txt": 10}
    assert is_complete(("home", "a", "f.txt"), 10, sizes)
    assert is_complete((".target.offsite-restore-x", "tree", "repo", "home", "a", "f.txt"), 10,
                       sizes)
    assert not is_complete(("home", "a", "f.txt"), 9, sizes)  # still being written
    assert not is_complete(("home", "a", ".f.txt.Xy12Zq"), 10, sizes)  # rsync's temporary name
    assert not is_complete(("home", "a", "rdiff-backup.tmp.3"), 10, sizes)


def test_tree_differences_finds_missing_extra_and_changed_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "d").mkdir(parents=True)
        (root / "d" / "same").write_bytes(b"x" * 100)
    assert tree_differences(a, b) == []
    (a / "d" / "bytes").write_bytes(b"abc")
    (b / "d" / "bytes").write_bytes(b"abd")
    (a / "gone").write_bytes(b"")
    (b / "extra").mkdir()
    assert tree_differences(a, b) == ["only in the original: gone", "only in the copy: extra",
                                      "other bytes: d/bytes"]


@real_tools
def test_the_restore_gives_back_every_byte(figures: Figures) -> None:
    assert figures.plaintext_bytes >= SIZE_MB * 1_000_000 - 1
    assert figures.identical
    assert (figures.restored_files, figures.restored_bytes) == (figures.files,
                                                                figures.plaintext_bytes)
    assert (figures.plain_files, figures.plain_bytes) == (figures.files, figures.plaintext_bytes)


@real_tools
def test_the_fetch_carries_the_ciphertext_and_the_baseline_the_plaintext(
        figures: Figures) -> None:
    plain, fetched = figures.plain.pull.bytes_received, figures.restore.fetch.bytes_received
    assert plain > figures.plaintext_bytes
    # gocryptfs adds 18 bytes a file and 32 a 4 KiB block; rdiff-backup its metadata
    assert fetched > plain + 32 * (figures.plaintext_bytes // 4096)


@real_tools
def test_the_times_come_in_the_order_the_design_forces(figures: Figures) -> None:
    r, p = figures.restore, figures.plain
    assert r.first_file_at_s is not None and p.first_file_at_s is not None
    assert 0 < p.first_file_at_s <= p.pull.seconds
    # nothing is restored before the whole ciphertext is fetched, authenticated and mounted
    # (the copy during the fetch writes provisional files elsewhere)
    assert r.decrypt_starts_at_s == pytest.approx(r.fetch.seconds + r.early_stop_s
                                                  + r.manifest_s + r.authenticate_s)
    assert r.decrypt_starts_at_s + r.mount_s <= r.first_file_at_s <= r.in_target_at_s \
        <= r.total_s
    assert r.total_s == pytest.approx(r.decrypt_starts_at_s + r.mount_s + r.restore_s
                                      + r.unmount_s)


@real_tools
def test_the_copy_is_authenticated_against_its_manifest_before_the_mount(
        figures: Figures) -> None:
    # every file and directory of the fetched ciphertext tree is in the manifest: at least the
    # data set's files, and more (gocryptfs' and rdiff-backup's own)
    assert figures.restore.authenticated_entries > figures.files


@real_tools
def test_nothing_is_left_behind(figures: Figures) -> None:
    assert_left_nothing(Path(figures.work), "offsite-bench-restore-", figures.sshd_pid,
                        figures.account)


@real_tools
def test_the_report_and_the_json_carry_the_figures(figures: Figures) -> None:
    text = report(figures)
    assert f"{figures.restored_bytes:,} bytes, identical" in text
    assert f"{figures.restore.fetch.bytes_received:,}" in text
    assert f"({figures.restore.authenticated_entries:,} entries)" in text
    data = json.loads(as_json(figures))
    assert data["restore"]["total_s"] == figures.restore.total_s
    assert data["restored_bytes"] == figures.plaintext_bytes


@real_tools
def test_the_newest_point_is_the_checked_mirror_copy_with_rdiff_backup_beside(
        figures: Figures) -> None:
    r = figures.restore
    assert r.how.startswith(f"copied the newest mirror: {figures.files} files, "
                            f"{figures.plaintext_bytes} bytes, each checked against")
    # rdiff-backup restored the same mount too (checked identical), the 'before' of one run
    assert r.rdiff_backup_s > 0
    assert r.total_by_rdiff_backup_s == pytest.approx(r.total_s - r.restore_s
                                                      + r.rdiff_backup_s)
    assert "before: restore with rdiff-backup / plain rsync" in report(figures)
