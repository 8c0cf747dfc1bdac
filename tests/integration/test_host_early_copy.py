"""The newest mirror copied while the fetch runs (early.py), with real rdiff-backup and
gocryptfs: the ciphertext arrives in two parts, the early copy takes what has arrived and the
rest once it does, and the copy after the fetch (mirror.copy) takes each early copy only when
the file it was read from is still the same: a file written again after its early copy, a
different metadata snapshot, a damaged file, are all copied (or refused) after the fetch as
before. Waits are for a condition, bounded; nothing asserts how fast anything ran."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from offsite_host import encrypt, unpack
from offsite_host.early import Copied, Copies, EarlyCopy, identity
from offsite_host.exitcodes import RestoreError
from offsite_host.restore_plan import Selection

from .test_host_mirror_copy import RDIFF, SOURCE, back_up, listing, make_source

GOCRYPTFS, FUSERMOUNT = shutil.which("gocryptfs"), shutil.which("fusermount3") or shutil.which(
    "fusermount")
pytestmark = pytest.mark.skipif(
    None in (GOCRYPTFS, FUSERMOUNT, shutil.which("rdiff-backup")) or not Path("/dev/fuse").exists(),
    reason="gocryptfs, FUSE and rdiff-backup are system packages of the host client")


class Archive:
    """A backed-up source, its ciphertext (the reverse view, copied out), and a staging
    directory the ciphertext 'arrives' in, file by file, as a fetch would bring it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.source = make_source(root)
        self.repository = back_up(self.source, root)  # holds the repository `data`
        self.password = root / "password"
        self.password.write_text("correct horse battery staple\n")
        self.password.chmod(0o600)
        encrypt.initialise(str(GOCRYPTFS), self.password, self.repository)
        self.ciphertext = root / "ciphertext"
        with encrypt.mounted_view(str(GOCRYPTFS), str(FUSERMOUNT), self.password,
                                  self.repository, root / "view", print) as view:
            shutil.copytree(view, self.ciphertext, symlinks=True)
        self.staging = root / "staging"
        self.staging.mkdir()

    def files(self) -> list[Path]:
        return sorted(p for p in self.ciphertext.rglob("*") if p.is_file())

    def arrive(self, files: list[Path]) -> None:
        """As rsync brings them: each file whole under a temporary name, then renamed."""
        for path in files:
            to = self.staging / path.relative_to(self.ciphertext)
            to.parent.mkdir(parents=True, exist_ok=True)
            temporary = to.with_name(f".{to.name}.XyZ123")
            shutil.copy2(path, temporary)
            temporary.rename(to)

    def mount(self, cipherdir: Path, mountpoint: Path) -> AbstractContextManager[Path]:
        return encrypt.mounted_plain(str(GOCRYPTFS), str(FUSERMOUNT), self.password, cipherdir,
                                     mountpoint, print)

    def copying(self, into: Path) -> EarlyCopy:
        """The early copy of the staging directory into `into`, started."""
        copier = EarlyCopy(self.staging, self.root / "plain-early", into, [("data", ())],
                           self.mount, pause_s=0.05)
        copier.start()
        return copier

    def restore(self, out: Path, early: Copies | None) -> str:
        with self.mount(self.staging, self.root / "mnt") as plain:
            return unpack.restore_into(RDIFF, plain, "now", Selection(SOURCE, "data", ()),
                                       out, early)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    yield Archive(tmp_path)
    subprocess.run([str(FUSERMOUNT), "-u", "-z", str(tmp_path / "plain-early")],
                   capture_output=True, check=False)


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"waited a minute for {what}"
        time.sleep(0.05)


def regular_files(source: Path) -> int:
    return sum(1 for p in source.rglob("*") if p.is_file() and not p.is_symlink())


def copied(copier: EarlyCopy, count: int, what: str) -> None:
    until(lambda: len(copier.copies[0].files) == count, what)


def stopped_within_a_minute(copier: EarlyCopy) -> None:
    """Stopped from another thread, so that one that never stops fails the test."""
    stopped = threading.Event()
    threading.Thread(target=lambda: (copier.stop(), stopped.set()), daemon=True).start()
    assert stopped.wait(60), "the early copy did not stop"


def test_files_are_copied_as_they_arrive_and_taken_when_unchanged(
        archive: Archive, tmp_path: Path) -> None:
    files = archive.files()
    big = [p for p in files if p.stat().st_size > 1 << 20]
    assert len(big) == 1  # big.bin's ciphertext: held back, it arrives last
    copier = archive.copying(tmp_path / "early")
    try:
        archive.arrive([p for p in files if p not in big])
        total = regular_files(archive.source)
        copied(copier, total - 1, "every file that has arrived")
        archive.arrive(big)
        copied(copier, total, "the last file")
    finally:
        copies = copier.stop()
    assert copier.note == "" and not os.path.ismount(tmp_path / "plain-early")
    said = archive.restore(tmp_path / "out", copies[0])
    assert said.endswith(f"SHA-1 ({total} of them while the fetch ran)"), said
    assert listing(tmp_path / "out") == listing(archive.source)


@pytest.mark.parametrize("found_by", ["inode", "path"])
def test_a_file_written_again_after_its_early_copy_is_copied_again(
        archive: Archive, tmp_path: Path, found_by: str) -> None:
    """The fetch writes a file again after the early copy's last look and before it ends:
    the copy after the fetch finds it changed, by the fetched copy's inodes (the list `stop`
    makes) or, without that list, through the mount."""
    archive.arrive(archive.files())
    copier = archive.copying(tmp_path / "early")
    total = regular_files(archive.source)
    try:
        copied(copier, total, "all files")
    finally:
        copier._done.set()  # its last look; the fetch goes on a moment
        copier.join()
    (notes,) = [p for p in archive.files()  # notes.txt: 3,500 bytes, 18 + 3,500 + 32 of ciphertext
                if p.stat().st_size == 18 + 3500 + 32]
    archive.arrive([notes])  # the same bytes, a new file: rsync's rename of a rewritten file
    copies = copier.stop()  # the fetch has ended
    if found_by == "path":
        copies[0].present = None
    said = archive.restore(tmp_path / "out", copies[0])
    assert said.endswith(f"({total - 1} of them while the fetch ran)"), said
    assert listing(tmp_path / "out") == listing(archive.source)


def test_an_early_copy_that_is_not_the_recorded_file_is_not_taken(
        archive: Archive, tmp_path: Path) -> None:
    """Read from the very file, unchanged, but not what rdiff-backup recorded (a part kept
    from a cut-off fetch has another size and SHA-1): copied again after the fetch."""
    archive.arrive(archive.files())
    with archive.mount(archive.staging, tmp_path / "look") as plain:
        read_from = identity(os.stat(plain / "data" / "empty"))
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "empty").write_bytes(b"not what was recorded")
    copies = Copies(tmp_path / "early", {(b"empty",): Copied(read_from, "0" * 40)})
    said = archive.restore(tmp_path / "out", copies)
    assert "while the fetch ran" not in said
    assert (tmp_path / "out" / "empty").read_bytes() == b""


def test_a_damaged_file_is_never_copied_early_and_still_fails_the_restore(
        archive: Archive, tmp_path: Path) -> None:
    files = archive.files()
    big = next(p for p in files if p.stat().st_size > 1 << 20)
    with big.open("r+b") as f:  # one byte inside the second ciphertext block
        f.seek(18 + 4128 + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    archive.arrive(files)
    copier = archive.copying(tmp_path / "early")
    total = regular_files(archive.source)
    try:
        copied(copier, total - 1, "every undamaged file")
    finally:
        copies = copier.stop()
    assert (b"big.bin",) not in copies[0].files
    with pytest.raises(RestoreError, match=r"damaged|I/O error|authentication"):
        archive.restore(tmp_path / "out", copies[0])  # (place() removes what it began)


def test_stopped_before_anything_arrived_it_mounts_nothing(archive: Archive,
                                                          tmp_path: Path) -> None:
    copier = archive.copying(tmp_path / "early")
    stopped_within_a_minute(copier)
    assert copier.copies[0].files == {} and not os.path.ismount(tmp_path / "plain-early")


def test_a_fifo_in_the_copy_is_passed_over_not_waited_on(archive: Archive,
                                                         tmp_path: Path) -> None:
    """A fifo where the mirror has files (a hostile or damaged archive): opening it to read
    would block for ever; the early copy passes it over and stops when asked."""
    archive.arrive(archive.files())
    writable = tmp_path / "rw"
    writable.mkdir()
    subprocess.run([str(GOCRYPTFS), "-q", "-passfile", str(archive.password),
                    str(archive.staging), str(writable)], check=True)
    try:
        os.mkfifo(writable / "data" / "a-fifo")
    finally:
        subprocess.run([str(FUSERMOUNT), "-u", str(writable)], check=True)
    copier = archive.copying(tmp_path / "early")
    total = regular_files(archive.source)
    try:
        copied(copier, total, "every regular file")
    finally:
        stopped_within_a_minute(copier)
    assert (b"a-fifo",) not in copier.copies[0].files
