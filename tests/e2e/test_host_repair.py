"""A ciphertext file damaged on the archive with its size and time unchanged: rsync's quick
check never resends it, so the run's verification finds it, resends exactly it with checksums,
verifies again and succeeds, saying so; afterwards the archive copy is byte-identical to the
encrypted view. The repair happens once: damage that is back at the second check is exit 6.
The damage here is in files the run did not send, so each check here first forgets which
slices were read (`forget_checks`): the run then reads everything, as a first run does
(test_host_verify_incremental.py has the nightly, incremental check)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from offsite_host.encrypt import mounted_view
from offsite_host.verify_state import SLICES_FILE

from tests.e2e.conftest import Host, HostFactory, SessionServer, make_tree, tree_digest
from tests.e2e.test_host_transport import Faults

pytestmark = pytest.mark.e2e


def damage_keeping_size_and_time(path: Path) -> None:
    stat = path.stat()
    with path.open("r+b") as handle:
        handle.seek(stat.st_size // 2)
        byte = handle.read(1)
        handle.seek(stat.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def forget_checks(host: Host) -> None:
    (host.root / "state" / SLICES_FILE).unlink()


def view_digest(host: Host) -> dict[str, tuple[str, str]]:
    """The encrypted view as the client ships it (mounted as the client mounts it)."""
    mountpoint = host.root / "check-view"
    with mounted_view("gocryptfs", "fusermount3", host.password_file, host.root / "repository",
                      mountpoint, lambda _: None):
        return tree_digest(mountpoint)


def test_damage_on_the_archive_is_repaired_by_the_next_run(
        make_host: HostFactory, session_server: SessionServer) -> None:
    host = make_host()
    make_tree(host.source, large_bytes=3 * 1024 * 1024)
    assert host.cli("run").returncode == 0
    current = host.volume / "current"
    victim = max((p for p in current.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    damage_keeping_size_and_time(victim)
    assert host.cli("verify", "--full").returncode == 6  # only checksums see the damage
    forget_checks(host)

    done = host.cli("run")

    assert done.returncode == 0, done.stderr
    assert "resending them with checksums" in done.stderr
    assert "matches the encrypted view after repairing 1 files" in done.stderr
    report = session_server.reports_of(host.name)[-1]
    assert report["status"] == "succeeded" and "repaired 1 files" in report["detail"]
    assert tree_digest(current, skip=".~tmp~") == view_digest(host)
    assert host.cli("verify").returncode == 0


def test_a_difference_still_there_after_the_repair_is_a_mismatch(
        make_host: HostFactory, session_server: SessionServer) -> None:
    host = make_host()
    faults = Faults(host)
    faults.plan()
    make_tree(host.source, large_bytes=3 * 1024 * 1024)
    host.write_config()
    assert host.cli("run").returncode == 0
    current = host.volume / "current"
    victim = max((p for p in current.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    damage_keeping_size_and_time(victim)
    # connections of the next run: 1 transfer, 2 verify, 3 repair, 4 verify again
    faults.plan(damage={"4": str(victim)})
    faults.log.unlink()
    forget_checks(host)

    done = host.cli("run")

    assert done.returncode == 6, done.stderr
    assert "differs from the encrypted view in 1 entries after resending them once" in done.stderr
    assert faults.connections == 4  # one repair, not a loop
    assert session_server.reports_of(host.name)[-1]["status"] == "failed"


STRANGERS = [b" leading space", b"trailing space ", b"new\nline", b"not-utf8-\xff", b"back\\#012"]


def test_strangers_with_awkward_names_on_the_archive_are_deleted_by_the_repair(
        make_host: HostFactory, session_server: SessionServer) -> None:
    """Files the host never sent appear on the archive after the transfer (its --delete-delay
    could not see them): verification lists them, the repair deletes exactly those names
    (a leading or trailing space, a newline, a byte that is not UTF-8, rsync's own escape),
    and the second check passes."""
    host = make_host()
    faults = Faults(host)
    faults.plan()
    make_tree(host.source, large_bytes=0)
    host.write_config()
    assert host.cli("run").returncode == 0
    # connections of the next run: 1 transfer, 2 verify, 3 repair, 4 verify again, 5 manifest
    faults.plan(extra={"2": [name.hex() for name in STRANGERS]})
    faults.log.unlink()
    forget_checks(host)

    done = host.cli("run")

    assert done.returncode == 0, done.stderr
    assert f"after repairing {len(STRANGERS)} files" in done.stderr
    assert faults.connections == 5
    assert session_server.reports_of(host.name)[-1]["status"] == "succeeded"
    assert tree_digest(host.volume / "current", skip=".~tmp~") == view_digest(host)
