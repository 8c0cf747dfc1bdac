"""A host backs up a tree through the whole path into a real sshd: what lands on its volume is
ciphertext only, a restore from that copy returns the tree byte for byte (latest and older),
and a second run after an edit inside the large file sends about the edit, not the file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    MARKER,
    TREE_NAMES,
    Host,
    HostFactory,
    SessionServer,
    make_tree,
    plaintext_leaks,
    tree_digest,
)

pytestmark = pytest.mark.e2e

EDIT_OFFSET = 10 * 1024 * 1024 + 1234
EDIT = os.urandom(64 * 1024)


@dataclass
class TwoRuns:
    host: Host
    first_tree: dict[str, tuple[str, str]]
    second_tree: dict[str, tuple[str, str]]


@pytest.fixture(scope="module")
def two_runs(make_module_host: HostFactory) -> TwoRuns:
    """Run 1 on the full tree; then an edit inside the large file, a file added and one
    deleted; run 2."""
    host = make_module_host()
    make_tree(host.source)
    first = host.cli("run")
    assert first.returncode == 0, first.stderr
    first_tree = tree_digest(host.source)
    with (host.source / "disk-image-large.img").open("r+b") as large:
        large.seek(EDIT_OFFSET)
        large.write(EDIT)
    (host.source / "notes-folder" / "added-later.txt").write_text("second run\n")
    (host.source / "Ünïcødé-файл-名前.txt").unlink()
    second = host.cli("run")
    assert second.returncode == 0, second.stderr
    return TwoRuns(host, first_tree, tree_digest(host.source))


def test_each_run_is_signed_verified_and_reported(two_runs: TwoRuns,
                                                  session_server: SessionServer) -> None:
    reports = session_server.reports_of(two_runs.host.name)
    assert [r["status"] for r in reports] == ["succeeded", "succeeded"]
    assert all(r["window_id"] == "w-e2e-1" and r["files"] > 0 for r in reports)
    requests = [r for r in session_server.requests if r["body"].get("host") == two_runs.host.name]
    assert len(requests) == 4
    assert all(r["signed"] and r["digest_ok"] for r in requests)
    status = two_runs.host.cli("status")
    assert status.returncode == 0
    assert "succeeded (exit 0)" in status.stdout


def test_volume_holds_only_ciphertext(two_runs: TwoRuns) -> None:
    needles = [MARKER, *(name.encode() for name in TREE_NAMES), b"added-later",
               b"rdiff-backup-data", b"mirror_metadata"]
    assert (two_runs.host.volume / "current" / "gocryptfs.conf").is_file()
    assert plaintext_leaks(two_runs.host.volume, needles) == []


def test_history_writes_no_per_file_statistics(two_runs: TwoRuns) -> None:
    """Each run's file_statistics would be new ciphertext on the wire every night; the restores
    below show that nothing a restore needs went with them."""
    data_dirs = list((two_runs.host.root / "repository").glob("*/rdiff-backup-data"))
    assert data_dirs
    for data in data_dirs:
        assert len(list(data.glob("session_statistics.*"))) == 2
        assert list(data.glob("file_statistics.*")) == []


def test_restore_latest_is_byte_identical(two_runs: TwoRuns, tmp_path: Path) -> None:
    restored = two_runs.host.restore(tmp_path / "latest")
    assert tree_digest(restored) == two_runs.second_tree


def test_restore_older_increment_is_byte_identical(two_runs: TwoRuns, tmp_path: Path) -> None:
    restored = two_runs.host.restore(tmp_path / "older", at="1B")
    assert tree_digest(restored) == two_runs.first_tree


def test_incremental_run_sends_a_small_multiple_of_the_edit(
        two_runs: TwoRuns, session_server: SessionServer) -> None:
    first, second = session_server.reports_of(two_runs.host.name)
    print(f"\nfirst run: {first['bytes_sent']} bytes sent; after a {len(EDIT)}-byte edit inside "
          f"the 20 MiB file: {second['bytes_sent']} bytes sent")
    assert first["bytes_sent"] > 20 * 1024 * 1024
    # The edited ciphertext blocks, rdiff-backup's reverse diff holding the old bytes, and
    # rsync's per-block match tokens: a few times the edit, a fraction of a percent of the file.
    assert second["bytes_sent"] < 4 * len(EDIT)


def test_verify_command_checks_the_archive_copy(two_runs: TwoRuns) -> None:
    host = two_runs.host
    quick = host.cli("verify")
    assert quick.returncode == 0, quick.stderr
    assert "0 sent entries" in quick.stderr  # what changed since the last run, the due slices
    victim = max((p for p in (host.volume / "current").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    stat = victim.stat()
    original = victim.read_bytes()
    try:
        with victim.open("r+b") as handle:  # same size, same mtime: only --checksum sees it
            handle.seek(len(original) // 2)
            handle.write(bytes([original[len(original) // 2] ^ 0xFF]))
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        done = host.cli("verify", "--full")
        assert done.returncode == 6, done.stderr
        assert "differs from the encrypted view" in done.stderr
    finally:
        victim.write_bytes(original)
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
