"""Smoke test of bench/wire on a data set of a few MB: the real rdiff-backup, gocryptfs, rsync
and a throwaway sshd, then the figures checked against what the data forces them to be, and the
machine checked for anything the bench left behind. No wall-clock time is asserted."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from bench.peers import PEERS
from bench.volumes import EBS_BLOCK, changed_bytes
from bench.wire import (
    Figures,
    Shape,
    apply_changes,
    as_json,
    ciphertext_size,
    generate,
    measure,
    parse_args,
    report,
    scaling,
)

from .bench_rig import assert_left_nothing, real_tools

SIZE_MB = 3.0


@pytest.fixture(scope="module")
def figures() -> Figures:
    return measure(SIZE_MB, quiet=True)


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_data_set_and_its_change_are_the_same_for_the_same_seed(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    data = generate(a, Shape.of(1), seed=7)
    assert generate(b, Shape.of(1), seed=7) == data
    assert apply_changes(a, data, seed=8) == apply_changes(b, data, seed=8)
    assert _digest(a) == _digest(b)
    assert data.files == len(data.large) + len(data.logs) + len(data.small) > 20


def test_the_change_set_has_every_kind_of_change(tmp_path: Path) -> None:
    data = generate(tmp_path, Shape.of(1), seed=7)
    kinds = {c.kind: c for c in apply_changes(tmp_path, data, seed=8)}
    assert set(kinds) == {"edits inside large files", "appended log files", "new files",
                          "deleted files"}
    assert all(c.files > 0 and c.plaintext_bytes > 0 for c in kinds.values())
    assert kinds["deleted files"].whole_file_bytes == 0
    edits = kinds["edits inside large files"]
    assert edits.whole_file_bytes == sum(ciphertext_size((tmp_path / rel).stat().st_size)
                                         for rel in data.large)


def test_a_scaled_change_on_a_larger_data_set_is_the_change_of_the_smaller(
        tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    one = {c.kind: c for c in apply_changes(small, generate(small, Shape.of(1), 7), 8)}
    two = {c.kind: c for c in apply_changes(large, generate(large, Shape.of(10), 7), 8,
                                            scale=0.1)}
    assert two["edits inside large files"].plaintext_bytes == \
        one["edits inside large files"].plaintext_bytes
    assert two["new files"].files == one["new files"].files
    assert two["deleted files"].files == one["deleted files"].files
    appended = one["appended log files"].plaintext_bytes
    assert abs(two["appended log files"].plaintext_bytes - appended) < appended * 0.1
    assert parse_args(["--scaling", "2000,200"]).scaling == [200.0, 2000.0]


def test_changed_bytes_counts_512_kib_blocks_whose_content_differs(tmp_path: Path) -> None:
    before, after = tmp_path / "before.img", tmp_path / "after.img"
    image = bytearray(4 * EBS_BLOCK)
    before.write_bytes(image)
    image[EBS_BLOCK + 7] = 1  # one byte in block 1
    image[3 * EBS_BLOCK - 1: 3 * EBS_BLOCK + 1] = b"\1\1"  # across blocks 2 and 3
    after.write_bytes(bytes(image) + b"\0" * EBS_BLOCK + b"x")  # grown: a zero block, then data
    assert changed_bytes(before, after) == 4 * EBS_BLOCK
    assert changed_bytes(before, before) == 0


def test_ciphertext_size_follows_the_gocryptfs_format() -> None:
    assert ciphertext_size(0) == 0
    assert ciphertext_size(1) == 18 + 1 + 32
    assert ciphertext_size(4096) == 18 + 4096 + 32
    assert ciphertext_size(4097) == 18 + 4097 + 64


@real_tools
def test_the_initial_send_carries_all_the_data(figures: Figures) -> None:
    assert figures.plaintext_bytes >= SIZE_MB * 1_000_000 - 1
    assert figures.initial.plain.bytes_sent > figures.plaintext_bytes
    # ciphertext is larger than plaintext, and the repository adds rdiff-backup's metadata
    assert figures.initial.encrypted.bytes_sent > figures.initial.plain.bytes_sent


@real_tools
def test_the_change_costs_more_than_plain_rsync_and_far_less_than_whole_files(
        figures: Figures) -> None:
    written = sum(c.plaintext_bytes for c in figures.changes if c.kind != "deleted files")
    plain, encrypted = figures.change.plain.bytes_sent, figures.change.encrypted.bytes_sent
    assert plain >= written  # rsync must at least send the new data itself
    assert encrypted >= plain
    edits = next(c for c in figures.changes if c.kind == "edits inside large files")
    assert encrypted * 3 < edits.whole_file_bytes < figures.whole_file_bytes


@real_tools
def test_the_size_formula_matches_the_real_view(figures: Figures) -> None:
    assert figures.formula_files > figures.files
    assert figures.formula_predicted == figures.formula_shown > figures.plaintext_bytes


@real_tools
def test_the_volumes_changed_blocks_hold_at_least_what_the_change_wrote(
        figures: Figures) -> None:
    for changed in (figures.encrypted_volume_changed, figures.plain_volume_changed):
        assert changed % EBS_BLOCK == 0
        # the new data (random edits, new log lines, new files) is on the volume and was not
        assert changed >= figures.changed_plaintext_bytes > 0
    # the encrypted path also writes rdiff-backup's increments and metadata
    assert figures.encrypted_volume_changed >= figures.plain_volume_changed


@real_tools
def test_the_peers_that_are_installed_ran_on_the_same_change(figures: Figures) -> None:
    installed = [kind.name for kind in PEERS if kind.installed()]
    assert [p.name for p in figures.peers] == installed
    for peer in figures.peers:
        assert peer.name in peer.version
        assert peer.initial.repository_bytes > 0
        assert 0 < peer.added_bytes < peer.initial.repository_bytes


@real_tools
def test_nothing_is_left_behind(figures: Figures) -> None:
    work = Path(figures.work)
    assert_left_nothing(work, "offsite-bench-wire-", figures.sshd_pid, figures.account)
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    assert str(work) not in loops.stdout


@real_tools
def test_the_report_and_the_json_carry_the_figures(figures: Figures) -> None:
    text = report(figures)
    assert f"{figures.change.encrypted.bytes_sent:,}" in text
    assert f"{figures.whole_file_bytes:,}" in text
    assert ": exact" in text
    assert f"{figures.encrypted_volume_changed:,}" in text
    assert f"{figures.plain_volume_changed:,}" in text
    for peer in figures.peers:
        assert peer.version in text and f"{peer.added_bytes:,}" in text
    assert ("Offsite / restic: initial" in text) == ("restic" in {p.name for p in figures.peers})
    data = json.loads(as_json(figures, [figures]))
    assert data["change"]["encrypted"]["bytes_sent"] == figures.change.encrypted.bytes_sent
    assert data["whole_file_bytes"] == figures.whole_file_bytes
    assert data["encrypted_volume_changed"] == figures.encrypted_volume_changed
    assert [p["added_bytes"] for p in data["peers"]] == [p.added_bytes for p in figures.peers]
    assert data["scaling"][0]["nightly_s"] == figures.nightly_s
    assert "= 1.00 (goal <= 1.3" in scaling([figures, figures])
    assert "initial send: plain rsync / full path = " in text
    assert data["initial"]["seal_s"] == figures.initial.seal_s > 0  # the seal was timed


@real_tools
def test_the_nightly_verification_reads_the_change_and_one_slice_not_everything(
        figures: Figures) -> None:
    assert figures.initial.verified.startswith("verified all ")  # it knew nothing yet
    assert figures.initial.verify_s == figures.initial.verify_full_s  # one check, not two
    change = figures.change.verified
    assert " sent entries + " in change and "/20 (" in change
    assert change in report(figures)
