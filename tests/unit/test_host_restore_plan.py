"""Restore arguments, checked before anything is fetched, and reading rdiff-backup's answer."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from offsite_host.compare import differences
from offsite_host.exitcodes import ConfigError
from offsite_host.restore_plan import (
    Selection,
    TargetState,
    check_at,
    check_target,
    restore_argv,
    restore_problem,
    select,
)

P = PurePosixPath
PATHS = (P("/etc"), P("/srv/www"), P("/srv/www/big"))
PRIVATE = (P("/var/lib/offsite/repository"), P("/var/lib/offsite/state"))


@pytest.mark.parametrize("text", ["now", "3D", "1W2D", "36h", "2B", "0B", "1700000000",
                                  "2030-03-17", "2030-03-17T01:30:00Z",
                                  "2030-03-17T01:30:00+02:00", "3/17/2030"])
def test_rdiff_backup_times(text: str) -> None:
    assert check_at(text) == text


@pytest.mark.parametrize("text", ["", "yesterday", "-3D", "3d", "now; rm -rf /", "2B3"])
def test_not_a_time(text: str) -> None:
    with pytest.raises(ConfigError, match="--at"):
        check_at(text)


def test_select_the_deepest_configured_path() -> None:
    assert select(P("/srv/www/big/a/b"), PATHS) == [
        Selection(P("/srv/www/big/a/b"), "srv_www_big", ("a", "b"))]
    assert select(P("/srv/www/site"), PATHS) == [Selection(P("/srv/www/site"), "srv_www",
                                                           ("site",))]
    assert select(P("/etc"), PATHS) == [Selection(P("/etc"), "etc", ())]
    assert [s.repository for s in select(None, PATHS)] == ["etc", "srv_www", "srv_www_big"]


@pytest.mark.parametrize("path", ["/home", "/srv", "/etcetera", "etc/passwd",
                                  "/etc/../root"])
def test_select_refuses_a_path_outside_the_backup(path: str) -> None:
    with pytest.raises(ConfigError, match="--path"):
        select(P(path), PATHS)


def test_a_new_or_empty_target_is_fine() -> None:
    for state in (TargetState.ABSENT, TargetState.EMPTY):
        check_target(P("/tmp/restored"), state, PATHS, PRIVATE, overwrite=False)
        check_target(P("/etc/restored-copy"), state, PATHS, PRIVATE, overwrite=False)


def test_a_non_empty_target_needs_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"not empty.*--force-overwrite"):
        check_target(P("/tmp/x"), TargetState.NOT_EMPTY, PATHS, PRIVATE, overwrite=False)
    check_target(P("/tmp/x"), TargetState.NOT_EMPTY, PATHS, PRIVATE, overwrite=True)


@pytest.mark.parametrize("target", ["/etc", "/srv", "/"])
def test_a_live_path_needs_the_flag_even_when_empty(target: str) -> None:
    with pytest.raises(ConfigError, match="live data"):
        check_target(P(target), TargetState.EMPTY, PATHS, (), overwrite=False)
    check_target(P(target), TargetState.EMPTY, PATHS, (), overwrite=True)


@pytest.mark.parametrize("target", ["/var/lib/offsite", "/var/lib/offsite/state/x", "/"])
def test_never_over_the_clients_own_directories(target: str) -> None:
    with pytest.raises(ConfigError, match="offsite-host itself"):
        check_target(P(target), TargetState.ABSENT, PATHS, PRIVATE, overwrite=True)


def test_target_must_be_a_directory_and_absolute() -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        check_target(P("/tmp/file"), TargetState.NOT_A_DIRECTORY, PATHS, PRIVATE, True)
    with pytest.raises(ConfigError, match="absolute"):
        check_target(P("relative"), TargetState.ABSENT, PATHS, PRIVATE, False)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_mount_point_is_never_replaced(overwrite: bool) -> None:
    """rename(2) and rmdir(2) refuse a mount point (EBUSY): say so before the fetch."""
    with pytest.raises(ConfigError, match=r"mount point.*inside it \(e\.g\. /mnt/disk/restored\)"):
        check_target(P("/mnt/disk"), TargetState.MOUNT_POINT, PATHS, PRIVATE, overwrite)


def test_restore_argv() -> None:
    assert restore_argv("rdiff-backup", "2B", Path("/m/etc/ssh"), Path("/t/x")) == [
        "rdiff-backup", "restore", "--at", "2B", "/m/etc/ssh", "/t/x"]


def test_restore_problem_is_strict() -> None:
    logfile = "WARNING: Unable to open logfile 'x/restore.log' due to Read-only file system\n"
    assert restore_problem(0, "") is None
    assert restore_problem(2, logfile) is None
    eio = logfile + "ERROR: Could not complete restore due to exception '[Errno 5] Input/output"
    assert "damaged" in (restore_problem(3, eio) or "")
    assert "damaged" in (restore_problem(2, "Input/output error on x") or "")
    failed = restore_problem(1, logfile + "ERROR: something else\n")
    assert failed is not None and "something else" in failed and "logfile" not in failed
    assert restore_problem(4, "") is not None


def test_a_hash_warning_fails_the_restore_though_rdiff_backup_exits_0() -> None:
    mismatch = ("WARNING: Calculated hash 8f3a of file data/report.txt doesn't match recorded "
                "hash 1c2d\n")
    missing = "WARNING: Hash for file data/blob.bin missing, cannot check\n"
    problem = restore_problem(0, mismatch + missing)
    assert problem is not None and "2 restored files" in problem
    assert "data/report.txt doesn't match recorded hash" in problem
    assert "SHA-1" in (restore_problem(2, missing) or "")


def test_differences_name_what_differs() -> None:
    want = {"a": ("file", 0o644, "h1"), "d": ("dir", 0o755, ""), "l": ("link", 0o777, "a"),
            "m": ("file", 0o600, "h2")}
    got = {"a": ("file", 0o600, "h1"), "d": ("file", 0o755, "x"), "l": ("link", 0o777, "b"),
           "n": ("file", 0o600, "h2")}
    assert differences(want, got) == [
        "mode: a is 0600, expected 0644", "kind: d is a file, expected a dir",
        "target: l", "missing: m", "unexpected: n"]
    assert differences(want, dict(want)) == []
