"""The nightly verification reads what changed, not what is stored (issue 12), and still
catches damage on the archive: in a file this run sent (damaged after the push, before the
check), in a file an earlier, cut-off run sent and this run's push does not send again, and in
a file no run has sent for weeks once its slice comes round. A run whose sent files still
differ after one repair is never reported `succeeded`.

The archive copy is damaged the way a bad disk would: a flipped byte, size and time kept, so
only a checksum sees it. Which slices are due is forced through the state the client keeps
(`verify-slices.json`), as a fake clock would: all fresh, or one a whole cycle old."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from offsite_host.verify_plan import DAY_S, slice_of
from offsite_host.verify_state import save_checked

from tests.e2e.conftest import (
    Host,
    HostFactory,
    SessionServer,
    free_port,
    make_tree,
    tree_digest,
)
from tests.e2e.test_host_repair import damage_keeping_size_and_time, view_digest
from tests.e2e.test_host_transport import Faults

pytestmark = pytest.mark.e2e

CYCLE = 20


def slices_checked(host: Host, overdue: int | None = None) -> None:
    """Every slice checked just now, except `overdue`, checked a whole cycle ago."""
    now = time.time()
    save_checked(host.root / "state", [now - CYCLE * DAY_S if i == overdue else now
                                       for i in range(CYCLE)])


def largest(volume: Path) -> Path:
    files = [p for p in (volume / "current").rglob("*")
             if p.is_file() and ".~tmp~" not in p.parts]
    return max(files, key=lambda p: p.stat().st_size)


def edit_large_file(host: Host) -> None:
    with (host.source / "disk-image-large.img").open("r+b") as large:
        large.seek(1024 * 1024)
        large.write(b"edited tonight" * 300)


@pytest.fixture
def host_with_faults(make_host: HostFactory) -> tuple[Host, Faults]:
    host = make_host()
    faults = Faults(host)
    faults.plan()
    make_tree(host.source, large_bytes=3 * 1024 * 1024)
    host.write_config()
    first = host.cli("run")
    assert first.returncode == 0, first.stderr
    assert "verified all " in first.stderr  # a first run knows nothing yet: it reads everything
    faults.log.unlink()
    return host, faults


def test_a_file_this_run_sent_and_the_archive_damaged_is_caught_and_repaired(
        host_with_faults: tuple[Host, Faults], session_server: SessionServer) -> None:
    """The view has not changed since the last verified run, but the archive copy of the large
    file is short (the push's quick check sees that): only the push's own list names the file
    it resends, which is damaged again before the check."""
    host, faults = host_with_faults
    victim = largest(host.volume)
    with victim.open("r+b") as handle:
        handle.truncate(victim.stat().st_size // 2)
    slices_checked(host)
    faults.plan(damage={"2": str(victim)})  # 1 transfer, 2 verify (damaged first), 3 repair

    done = host.cli("run")

    assert done.returncode == 0, done.stderr
    assert "resending them with checksums" in done.stderr
    report = session_server.reports_of(host.name)[-1]
    assert report["status"] == "succeeded" and "repaired 1 files" in report["detail"]
    assert "sent entries" in report["detail"] and "slice" not in report["detail"]
    assert "unverified" not in report["detail"]
    assert tree_digest(host.volume / "current", skip=".~tmp~") == view_digest(host)


def test_a_run_whose_sent_file_still_differs_after_the_repair_fails(
        host_with_faults: tuple[Host, Faults], session_server: SessionServer) -> None:
    host, faults = host_with_faults
    victim = largest(host.volume)
    edit_large_file(host)
    slices_checked(host)
    faults.plan(damage={"2": str(victim), "4": str(victim)})  # 4: the check after the repair

    done = host.cli("run")

    assert done.returncode == 6, done.stderr
    assert "after resending them once" in done.stderr
    assert faults.connections == 4
    assert session_server.reports_of(host.name)[-1]["status"] == "failed"


def test_what_a_cut_off_run_sent_is_checked_by_the_next_run_which_does_not_resend_it(
        host_with_faults: tuple[Host, Faults], session_server: SessionServer) -> None:
    host, faults = host_with_faults
    victim = largest(host.volume)
    edit_large_file(host)
    faults.plan(refuse_from=2, closed_port=free_port())  # sent, then the archive is gone
    host.write_config(connect_wait_s=2)
    cut = host.cli("run")
    assert cut.returncode == 5 and "verification could not run" in cut.stderr, cut.stderr
    damage_keeping_size_and_time(victim)  # as if that run's write had gone wrong
    faults.plan()
    faults.log.unlink()
    slices_checked(host)

    done = host.cli("run")  # nothing changed: its push does not send the large file again

    assert done.returncode == 0, done.stderr
    report = session_server.reports_of(host.name)[-1]
    assert report["status"] == "succeeded" and "repaired 1 files" in report["detail"]
    assert "unverified since an earlier run" in report["detail"]
    assert "slice" not in report["detail"]
    assert tree_digest(host.volume / "current", skip=".~tmp~") == view_digest(host)


def test_a_file_no_run_has_sent_for_weeks_is_read_when_its_slice_comes_round(
        host_with_faults: tuple[Host, Faults], session_server: SessionServer) -> None:
    host, _ = host_with_faults
    current = host.volume / "current"
    victim = largest(current.parent)  # the large file: unchanged, so never sent again
    damage_keeping_size_and_time(victim)
    index = slice_of(victim.relative_to(current).as_posix(), CYCLE)
    slices_checked(host, overdue=index)  # its slice was last read a whole cycle ago

    done = host.cli("run")

    assert done.returncode == 0, done.stderr
    report = session_server.reports_of(host.name)[-1]
    assert report["status"] == "succeeded" and "repaired 1 files" in report["detail"]
    assert f"slice {index + 1}/{CYCLE} (" in report["detail"]
    assert tree_digest(current, skip=".~tmp~") == view_digest(host)
    assert host.cli("verify", "--full").returncode == 0


def test_plain_verify_checks_the_due_slices_and_full_verify_everything(
        host_with_faults: tuple[Host, Faults]) -> None:
    host, _ = host_with_faults
    current = host.volume / "current"
    victim = largest(current.parent)
    damage_keeping_size_and_time(victim)
    index = slice_of(victim.relative_to(current).as_posix(), CYCLE)
    slices_checked(host, overdue=(index + 1) % CYCLE)

    quick = host.cli("verify")
    assert quick.returncode == 0, quick.stderr  # the damaged file's slice is not due
    assert f"slice {(index + 1) % CYCLE + 1}/{CYCLE} (" in quick.stderr

    full = host.cli("verify", "--full")
    assert full.returncode == 6, full.stderr
    assert "differs from the encrypted view in 1 entries" in full.stderr

    slices_checked(host, overdue=index)
    assert host.cli("verify").returncode == 6


def test_a_directory_removed_from_the_data_is_checked_gone_from_the_archive(
        host_with_faults: tuple[Host, Faults], session_server: SessionServer) -> None:
    """The push deletes the directory and what was in it; the check lists them (rsync cannot
    take an entry whose directory is gone: the directory is listed instead)."""
    host, _ = host_with_faults
    for path in sorted((host.source / "binary-folder").rglob("*"), reverse=True):
        path.unlink()
    (host.source / "binary-folder").rmdir()
    slices_checked(host)

    done = host.cli("run")

    assert done.returncode == 0, done.stderr
    assert session_server.reports_of(host.name)[-1]["status"] == "succeeded"
    assert tree_digest(host.volume / "current", skip=".~tmp~") == view_digest(host)
