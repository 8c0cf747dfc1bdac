"""Restore: any retained day comes back byte for byte (content, names, symlinks, modes) through
the real path (restore window, read-only certificate, rsync, gocryptfs, rdiff-backup); damaged
ciphertext fails loudly; bad requests are refused with nothing overwritten; `verify --deep`
proves a point readable."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Host,
    HostFactory,
    SessionServer,
    Snapshot,
    make_tree,
    must,
    run,
    tree_digest,
)

pytestmark = pytest.mark.e2e

DAYS = ["2030-03-01", "2030-03-02", "2030-03-03"]
INCOMPLETE_DAY = "2030-03-04"
Tree = dict[str, tuple[str, int, str]]


def tree(root: Path) -> Tree:
    """Every entry below `root`: kind, permission bits, content hash or link target."""
    found: Tree = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            found[path.relative_to(root).as_posix()] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            found[path.relative_to(root).as_posix()] = ("dir", mode, "")
        else:
            found[path.relative_to(root).as_posix()] = (
                "file", mode, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


@dataclass
class ThreeDays:
    host: Host
    trees: dict[str, Tree]
    snapshots: dict[str, Snapshot]


def backup(host: Host, server: SessionServer, day: str, complete: bool = True) -> Snapshot:
    done = host.cli("run")
    assert done.returncode == 0, done.stderr
    return server.snapshot(host.name, day, complete)


@pytest.fixture(scope="module")
def days(make_module_host: HostFactory, session_server: SessionServer) -> ThreeDays:
    """Three nightly backups with changes between them (content, a new file, a deleted one, a
    re-pointed symlink, modes), each snapshotted as its day; then an incomplete fourth."""
    host = make_module_host()
    src = host.source
    make_tree(src, large_bytes=512 * 1024)
    (src / "notes-folder" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "notes-folder" / "run.sh").chmod(0o755)
    (src / "binary-folder" / "blob-sample.bin").chmod(0o640)
    (src / "binary-folder").chmod(0o750)
    trees, snaps = {}, {}
    for number, day in enumerate(DAYS):
        if number == 1:
            (src / "notes-folder" / "quarterly-report-marker.txt").write_text("edited on day 2\n")
            (src / "notes-folder" / "added-day-2.txt").write_text("new\n")
            (src / "Ünïcødé-файл-名前.txt").unlink()
            (src / "notes-folder" / "run.sh").chmod(0o700)
        if number == 2:
            (src / "pointer-to-report").unlink()
            (src / "pointer-to-report").symlink_to("notes-folder/added-day-2.txt")
            (src / "binary-folder" / "blob-sample.bin").write_bytes(os.urandom(50_000))
            (src / "day-3-only").mkdir(mode=0o711)
        snaps[day] = backup(host, session_server, day)
        trees[day] = tree(src)
    session_server.snapshot(host.name, INCOMPLETE_DAY, complete=False)
    return ThreeDays(host, trees, snaps)


@pytest.fixture(autouse=True)
def restore_window_closed(days: ThreeDays) -> Iterator[None]:
    """Every case ends with its restore window reported (closed) and nothing left mounted."""
    yield
    entry = days.host.entry
    entry.on_restore = None
    assert entry.restore is None, "the restore window was not reported"
    with open("/proc/mounts") as mounts:
        assert str(days.host.root) not in mounts.read()


def restore(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return host.cli("restore", *args, timeout=180)


def expect(done: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert done.returncode == code, done.stderr
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".offsite-restore-" in p.name]


@pytest.mark.parametrize("day", DAYS)
def test_each_day_restores_byte_identical(days: ThreeDays, session_server: SessionServer,
                                          tmp_path: Path, day: str) -> None:
    host = days.host
    done = restore(host, "--date", day, "--path", str(host.source), "--to",
                   str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "out") == days.trees[day]
    report = session_server.reports_of(host.name)[-1]
    assert report["status"] == "succeeded"
    # the newest state of the point: copied out of the mirror, every file checked
    assert "copied the newest mirror: " in report["detail"]
    assert "checked against rdiff-backup's recorded size and SHA-1" in report["detail"]
    assert report["window_id"] == host.entry.restores[-1].window_id
    assert host.entry.restores[-1].snapshot is days.snapshots[day]
    assert leftovers(tmp_path) == []
    assert not any((host.root / "state" / "restore").iterdir())


def test_at_an_older_increment_inside_the_point(days: ThreeDays, session_server: SessionServer,
                                                tmp_path: Path) -> None:
    host = days.host
    done = restore(host, "--date", DAYS[2], "--at", "2B", "--path", str(host.source), "--to",
                   str(tmp_path / "older"))
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "older") == days.trees[DAYS[0]]
    assert "rdiff-backup restore --at 2B" in session_server.reports_of(host.name)[-1]["detail"]


def test_a_path_below_a_configured_one_and_no_path(days: ThreeDays, tmp_path: Path) -> None:
    host = days.host
    sub = host.source / "notes-folder"
    done = restore(host, "--date", DAYS[1], "--path", str(sub), "--to", str(tmp_path / "sub"))
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "sub") == {k.removeprefix("notes-folder/"): v
                                      for k, v in days.trees[DAYS[1]].items()
                                      if k.startswith("notes-folder/")}
    one = sub / "run.sh"
    done = restore(host, "--date", DAYS[1], "--path", str(one), "--to", str(tmp_path / "file"))
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "file") == {"run.sh": days.trees[DAYS[1]]["notes-folder/run.sh"]}
    done = restore(host, "--date", DAYS[0], "--to", str(tmp_path / "all"))
    assert done.returncode == 0, done.stderr
    (name,) = [p.name for p in (tmp_path / "all").iterdir()]
    assert tree(tmp_path / "all" / name) == days.trees[DAYS[0]]


def test_listing_the_recovery_points(days: ThreeDays) -> None:
    for args in (["snapshots"], ["restore", "--list"]):
        done = days.host.cli(*args)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert [line.split()[0] for line in lines[1:]] == [INCOMPLETE_DAY, *DAYS[::-1]]
        assert "INCOMPLETE" in lines[1] and "complete" in lines[2]


def test_a_restore_certificate_cannot_write(days: ThreeDays, session_server: SessionServer,
                                            tmp_path: Path) -> None:
    host = days.host
    window = session_server.open_restore(host.name, days.snapshots[DAYS[0]])
    try:
        key = tmp_path / "id_ed25519"
        must(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        cert = session_server.archive.issue(Path(f"{key}.pub").read_text().strip(),
                                            host.account, 600, "probe", window.volume, "-ro")
        Path(f"{key}-cert.pub").write_text(cert + "\n")
        known = tmp_path / "known_hosts"
        known.write_text(session_server.archive.known_hosts() + "\n")
        ssh = (f"ssh -F none -p {session_server.archive.port} -l {host.name} -i {key} "
               f"-o CertificateFile={key}-cert.pub -o IdentitiesOnly=yes -o BatchMode=yes "
               f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={known}")
        (tmp_path / "push").mkdir()
        (tmp_path / "push" / "intruder.txt").write_text("must not land\n")
        before = tree_digest(window.volume)
        pushed = run(["rsync", "-r", "-e", ssh, f"{tmp_path / 'push'}/",
                      "127.0.0.1:current/"])
        assert pushed.returncode != 0
        assert "read-only" in pushed.stderr or "sending to read-only" in pushed.stderr, \
            pushed.stderr
        assert tree_digest(window.volume) == before
        pulled = run(["rsync", "-r", "-e", ssh, "127.0.0.1:current/", f"{tmp_path / 'pull'}/"])
        assert pulled.returncode == 0, pulled.stderr
        assert (tmp_path / "pull" / "gocryptfs.conf").is_file()
    finally:
        host.entry.restore = None


def flip_a_byte(volume: Path) -> None:
    """Damages the largest ciphertext file in place: same size, same mtime."""
    victim = max((p for p in (volume / "current").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    info = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_corrupted_ciphertext_fails_loudly(days: ThreeDays, session_server: SessionServer,
                                           tmp_path: Path) -> None:
    host = days.host
    host.entry.on_restore = flip_a_byte
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (tmp_path / "absent", empty):
        done = restore(host, "--date", DAYS[2], "--path", str(host.source), "--to",
                       str(target))
        expect(done, 10, "the fetched copy is not what the host sent")
        assert session_server.reports_of(host.name)[-1]["status"] == "failed"
    assert not (tmp_path / "absent").exists()
    assert list(empty.iterdir()) == []
    assert leftovers(tmp_path) == []
    host.entry.on_restore = None
    done = restore(host, "--date", DAYS[2], "--path", str(host.source), "--to", str(empty))
    assert done.returncode == 0, done.stderr  # a damaged fetch is not reused
    assert tree(empty) == days.trees[DAYS[2]]


CIPHER_BLOCK, CIPHER_HEADER = 4096 + 32, 18  # gocryptfs: 4 KiB of data + IV and tag; header


def ciphertext_files(volume: Path) -> list[Path]:
    """The copy's ciphertext files, largest first (not gocryptfs' own configuration)."""
    files = [p for p in (volume / "current").rglob("*")
             if p.is_file() and not p.is_symlink() and p.name != "gocryptfs.conf"]
    return sorted(files, key=lambda p: (-p.stat().st_size, str(p)))


def truncate_at_a_block(volume: Path) -> None:
    """Cuts the largest file after its first half of whole blocks: gocryptfs sees a shorter,
    perfectly authentic file."""
    victim = ciphertext_files(volume)[0]
    blocks = (victim.stat().st_size - CIPHER_HEADER) // CIPHER_BLOCK
    assert blocks >= 2
    os.truncate(victim, CIPHER_HEADER + CIPHER_BLOCK * (blocks // 2))


def remove_a_file(volume: Path) -> None:
    ciphertext_files(volume)[0].unlink()


def add_a_file(volume: Path) -> None:
    """A stranger beside the real files, with a name like gocryptfs' own."""
    model = ciphertext_files(volume)[0]
    (model.parent / "AAAAAAAAAAAAAAAAAAAAAA").write_bytes(model.read_bytes())


def swap_two_files(volume: Path) -> None:
    """Two ciphertext files trade places: each still decrypts (gocryptfs keeps a file's id in
    its own header), as the other's content."""
    first, second = ciphertext_files(volume)[:2]
    held = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(held)


def roll_back_a_file(older: Path) -> Callable[[Path], None]:
    """One ciphertext file replaced by its version from the older snapshot `older` (the same
    path, so the same file id: it decrypts), the rest current."""
    def damage(volume: Path) -> None:
        for victim in ciphertext_files(volume):
            old = older / victim.relative_to(volume)
            if old.is_file() and old.read_bytes() != victim.read_bytes():
                shutil.copyfile(old, victim)
                return
        raise AssertionError("no file differs from the older snapshot")
    return damage


def roll_back_the_point(older: Path) -> Callable[[Path], None]:
    """The whole copy and its manifest replaced by an older day's, consistent with each
    other: only the window the manifest names gives it away."""
    def damage(volume: Path) -> None:
        for name in ("current", "offsite-manifest"):
            shutil.rmtree(volume / name, ignore_errors=True)
            if (older / name).exists():  # (today's main writes no manifest)
                shutil.copytree(older / name, volume / name, symlinks=True)
        owner = volume.stat().st_uid
        for path in volume.rglob("*"):
            os.lchown(path, owner, 0)
    return damage


DAMAGE = ["truncated", "missing", "extra", "flipped", "swapped", "rolled-back-file",
          "rolled-back-point"]


def damage_of(kind: str, days: ThreeDays) -> Callable[[Path], None]:
    older = days.snapshots[DAYS[0]].copy
    return {"truncated": truncate_at_a_block, "missing": remove_a_file, "extra": add_a_file,
            "flipped": flip_a_byte, "swapped": swap_two_files,
            "rolled-back-file": roll_back_a_file(older),
            "rolled-back-point": roll_back_the_point(older)}[kind]


def users_tree(target: Path) -> Tree:
    """A target full of the user's own data, which a failed restore must leave alone."""
    (target / "mine").mkdir(parents=True)
    (target / "mine" / "keep.txt").write_text("the user's own\n")
    (target / "pointer").symlink_to("mine/keep.txt")
    return tree(target)


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_copy_never_restores(days: ThreeDays, session_server: SessionServer,
                                       tmp_path: Path, kind: str) -> None:
    host = days.host
    target = tmp_path / "target"
    before = users_tree(target)
    host.entry.on_restore = damage_of(kind, days)
    done = restore(host, "--date", DAYS[2], "--path", str(host.source), "--to", str(target),
                   "--force-overwrite")
    expect(done, 10, "the fetched copy is not what the host sent")
    assert "nothing was decrypted" in done.stderr
    report = session_server.reports_of(host.name)[-1]
    assert report["status"] == "failed" and "not what the host sent" in report["detail"]
    assert tree(target) == before
    assert leftovers(tmp_path) == []
    assert not any((host.root / "state" / "restore").iterdir())


@pytest.mark.parametrize("kind", DAMAGE)
def test_verify_deep_fails_on_a_damaged_copy(days: ThreeDays, session_server: SessionServer,
                                             kind: str) -> None:
    host = days.host
    host.entry.on_restore = damage_of(kind, days)
    done = host.cli("verify", "--deep", timeout=180)
    expect(done, 10, "the fetched copy is not what the host sent")
    report = session_server.reports_of(host.name)[-1]
    assert report["status"] == "failed" and "not what the host sent" in report["detail"]


def without_manifest(then: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """The point as an archive written before manifests existed holds it (then `then`)."""
    def damage(volume: Path) -> None:
        shutil.rmtree(volume / "offsite-manifest", ignore_errors=True)  # (main: none)
        if then is not None:
            then(volume)
    return damage


@pytest.fixture
def before_manifests(days: ThreeDays) -> Iterator[None]:
    """The host as one that has never shipped a manifest (a rebuilt machine, or one upgraded
    since): its record of the first manifest is put aside for the test."""
    marker = days.host.root / "state" / "manifest-since"
    kept = marker.read_bytes() if marker.exists() else None  # (today's main writes none)
    marker.unlink(missing_ok=True)
    yield
    if kept is not None:
        marker.write_bytes(kept)


def test_a_point_without_manifest_restores_unauthenticated(
        days: ThreeDays, session_server: SessionServer, tmp_path: Path,
        before_manifests: None) -> None:
    host = days.host
    host.entry.on_restore = without_manifest()
    done = restore(host, "--date", DAYS[1], "--path", str(host.source), "--to",
                   str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "could not be authenticated" in done.stderr
    assert tree(tmp_path / "out") == days.trees[DAYS[1]]
    report = session_server.reports_of(host.name)[-1]
    assert report["status"] == "succeeded" and "could not be authenticated" in report["detail"]
    done = host.cli("verify", "--deep", timeout=180)
    assert done.returncode == 0, done.stderr
    assert "could not be authenticated" in done.stderr


def test_without_manifest_rdiff_backups_hashes_still_catch_a_rolled_back_file(
        days: ThreeDays, session_server: SessionServer, tmp_path: Path,
        before_manifests: None) -> None:
    host = days.host
    target = tmp_path / "target"
    before = users_tree(target)
    host.entry.on_restore = without_manifest(roll_back_a_file(days.snapshots[DAYS[0]].copy))
    done = restore(host, "--date", DAYS[2], "--path", str(host.source), "--to", str(target),
                   "--force-overwrite")
    expect(done, 10, "recorded SHA-1 check")
    assert session_server.reports_of(host.name)[-1]["status"] == "failed"
    assert tree(target) == before and leftovers(tmp_path) == []


def test_without_manifest_a_block_failing_authentication_fails_the_mirror_copy(
        days: ThreeDays, session_server: SessionServer, tmp_path: Path,
        before_manifests: None) -> None:
    """No manifest to catch it first: gocryptfs answers the flipped block with EIO, and the
    copy of the newest state fails on it, as rdiff-backup's restore did."""
    host = days.host
    target = tmp_path / "target"
    before = users_tree(target)
    host.entry.on_restore = without_manifest(flip_a_byte)
    done = restore(host, "--date", DAYS[2], "--path", str(host.source), "--to", str(target),
                   "--force-overwrite")
    expect(done, 10, "damaged")
    assert session_server.reports_of(host.name)[-1]["status"] == "failed"
    assert tree(target) == before and leftovers(tmp_path) == []


def test_a_removed_manifest_is_damage_once_the_host_writes_them(
        days: ThreeDays, session_server: SessionServer, tmp_path: Path) -> None:
    host = days.host
    host.entry.on_restore = without_manifest()
    done = restore(host, "--date", DAYS[2], "--path", str(host.source), "--to",
                   str(tmp_path / "out"))
    expect(done, 10, "the recovery point has no manifest")
    assert session_server.reports_of(host.name)[-1]["status"] == "failed"
    assert not (tmp_path / "out").exists()


def test_unknown_date(days: ThreeDays, tmp_path: Path) -> None:
    opened = len(days.host.entry.restores)
    done = restore(days.host, "--date", "2031-01-01", "--to", str(tmp_path / "x"))
    expect(done, 2, "no recovery point on 2031-01-01")
    assert DAYS[0] in done.stderr
    done = restore(days.host, "--date", "2030-02-30", "--to", str(tmp_path / "x"))
    expect(done, 2, "is not a day")
    assert len(days.host.entry.restores) == opened
    assert not (tmp_path / "x").exists()


def test_a_day_with_only_an_incomplete_point(days: ThreeDays, tmp_path: Path) -> None:
    host = days.host
    opened = len(host.entry.restores)
    done = restore(host, "--date", INCOMPLETE_DAY, "--path", str(host.source), "--to",
                   str(tmp_path / "x"))
    expect(done, 2, "--allow-incomplete")
    assert len(host.entry.restores) == opened and not (tmp_path / "x").exists()
    done = restore(host, "--date", INCOMPLETE_DAY, "--allow-incomplete", "--path",
                   str(host.source), "--to", str(tmp_path / "x"))
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "x") == days.trees[DAYS[2]]
    # no run finished in that window: the tree and manifest are the last complete run's
    last = days.snapshots[DAYS[2]].window_id
    assert f"this incomplete point carries the tree of window {last}" in done.stderr


def test_a_path_not_in_the_backup(days: ThreeDays, session_server: SessionServer,
                                  tmp_path: Path) -> None:
    host = days.host
    opened = len(host.entry.restores)
    done = restore(host, "--date", DAYS[0], "--path", "/etc", "--to", str(tmp_path / "x"))
    expect(done, 2, "is not in the backup")
    assert len(host.entry.restores) == opened
    missing = host.source / "day-3-only"  # exists on day 3 only
    done = restore(host, "--date", DAYS[0], "--path", str(missing), "--to", str(tmp_path / "x"))
    expect(done, 2, "is not in the backup")
    assert session_server.reports_of(host.name)[-1]["status"] == "failed"
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


def test_a_target_that_is_not_empty(days: ThreeDays, tmp_path: Path) -> None:
    host = days.host
    opened = len(host.entry.restores)
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine\n")
    done = restore(host, "--date", DAYS[0], "--path", str(host.source), "--to", str(target))
    expect(done, 2, "is not empty")
    done = restore(host, "--date", DAYS[0], "--path", str(host.source), "--to",
                   str(host.source))
    expect(done, 2, "live data")
    assert len(host.entry.restores) == opened
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    done = restore(host, "--date", DAYS[0], "--path", str(host.source), "--to", str(target),
                   "--force-overwrite")
    assert done.returncode == 0, done.stderr
    assert tree(target) == days.trees[DAYS[0]]


def test_a_target_below_a_file(days: ThreeDays, tmp_path: Path) -> None:
    """Refused before anything is fetched (it was a traceback after the whole fetch, and the
    restore window never heard how it ended)."""
    host = days.host
    opened = len(host.entry.restores)
    (tmp_path / "a-file").write_text("mine\n")
    done = restore(host, "--date", DAYS[0], "--path", str(host.source), "--to",
                   str(tmp_path / "a-file" / "out"))
    expect(done, 2, "is not a directory")
    assert len(host.entry.restores) == opened
    assert (tmp_path / "a-file").read_text() == "mine\n" and leftovers(tmp_path) == []


def test_a_mount_point_as_target(days: ThreeDays, tmp_path: Path) -> None:
    """A freshly mounted, empty disk: rename(2) and rmdir(2) refuse a mount point, so a restore
    into it was a traceback after the whole fetch (its window never told). It is refused before
    anything is fetched, and a directory inside it works."""
    host = days.host
    disk = tmp_path / "disk"
    disk.mkdir()
    must(["mount", "-t", "tmpfs", "-o", "size=64m", "offsite-e2e", str(disk)])
    try:
        opened = len(host.entry.restores)
        for extra in ((), ("--force-overwrite",)):
            done = restore(host, "--date", DAYS[0], "--path", str(host.source), "--to",
                           str(disk), *extra)
            expect(done, 2, "is a mount point")
        assert len(host.entry.restores) == opened and list(disk.iterdir()) == []
        done = restore(host, "--date", DAYS[0], "--path", str(host.source), "--to",
                       str(disk / "restored"))
        assert done.returncode == 0, done.stderr
        assert tree(disk / "restored") == days.trees[DAYS[0]]
    finally:
        must(["umount", str(disk)])


def test_verify_deep_passes_on_a_good_copy_and_fails_on_a_damaged_one(
        days: ThreeDays, session_server: SessionServer) -> None:
    host = days.host
    done = host.cli("verify", "--deep", timeout=180)
    assert done.returncode == 0, done.stderr
    assert "identical to the local backup" in done.stderr
    report = session_server.reports_of(host.name)[-1]
    assert report["status"] == "succeeded"
    assert host.entry.restores[-1].snapshot is days.snapshots[DAYS[2]]
    host.entry.on_restore = flip_a_byte
    done = host.cli("verify", "--deep", timeout=180)
    expect(done, 10, "not what the host sent")
    assert session_server.reports_of(host.name)[-1]["status"] == "failed"


def test_verify_deep_after_the_local_repository_moved_on(days: ThreeDays) -> None:
    host = days.host
    (host.source / "after-the-snapshot.txt").write_text("local only\n")
    done = host.cli("run")
    assert done.returncode == 0, done.stderr
    done = host.cli("verify", "--deep", timeout=180)
    assert done.returncode == 0, done.stderr
