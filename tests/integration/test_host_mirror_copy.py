"""The newest state restored by copying the mirror (mirror.py through unpack.restore_into), on
a real rdiff-backup repository: the same tree `rdiff-backup restore --at now` gives (names,
kinds, bytes, modes, times, symlink targets), every file checked against rdiff-backup's
record, a damaged mirror refused, and what the copy cannot reproduce left to rdiff-backup."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path, PurePath

import pytest
from offsite_host import unpack
from offsite_host.exitcodes import ConfigError, RestoreError
from offsite_host.restore_plan import Selection

RDIFF = shutil.which("rdiff-backup") or "rdiff-backup"
pytestmark = pytest.mark.skipif(shutil.which("rdiff-backup") is None,
                                reason="rdiff-backup is a system package of the host client")
SOURCE = PurePath("/srv/data")


def make_source(root: Path) -> Path:
    src = root / "source"
    (src / "deep" / "er").mkdir(parents=True)
    (src / "deep" / "er" / "notes.txt").write_text("a line\n" * 500)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    (src / "empty").write_bytes(b"")
    (src / "new\nline").write_text("odd name\n")
    (src / "private.key").write_text("not really\n")
    (src / "private.key").chmod(0o600)
    (src / "deep" / "link").symlink_to("er/notes.txt")
    (src / "deep" / "dangling").symlink_to("../nowhere")
    (src / "ro").mkdir()
    (src / "ro" / "kept").write_text("read-only dir\n")
    (src / "ro").chmod(0o500)
    for i, path in enumerate(sorted(src.rglob("*"), reverse=True)):
        if not path.is_symlink():
            os.utime(path, (1_900_000_000 + i, 1_900_000_000 + i))
    return src


def back_up(src: Path, root: Path) -> Path:
    plain = root / "plain"
    plain.mkdir(exist_ok=True)
    subprocess.run([RDIFF, "backup", str(src), str(plain / "data")], check=True,
                   capture_output=True)
    return plain


def listing(root: Path) -> dict[str, tuple[object, ...]]:
    found: dict[str, tuple[object, ...]] = {}
    for path in [root, *root.rglob("*")]:
        rel = path.relative_to(root).as_posix()
        if rel.startswith("rdiff-backup-data"):
            continue
        st = path.lstat()
        if path.is_symlink():
            found[rel] = ("sym", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", st.st_mode & 0o7777, int(st.st_mtime))
        else:
            found[rel] = ("reg", st.st_mode & 0o7777, int(st.st_mtime), path.read_bytes())
    return found


def restore(plain: Path, out: Path, inner: tuple[str, ...] = (), at: str = "now") -> str:
    return unpack.restore_into(RDIFF, plain, at, Selection(SOURCE, "data", inner), out)


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    return back_up(make_source(tmp_path), tmp_path)


def test_the_copy_is_what_rdiff_backup_restores(plain: Path, tmp_path: Path) -> None:
    said = restore(plain, tmp_path / "copied")
    assert said.startswith("copied the newest mirror: 6 files,")
    subprocess.run([RDIFF, "restore", "--at", "now", str(plain / "data"),
                    str(tmp_path / "by-rdiff")], check=True, capture_output=True)
    copied = listing(tmp_path / "copied")
    assert copied == listing(tmp_path / "by-rdiff")
    assert copied["ro"][:2] == ("dir", 0o500) and copied["private.key"][1] == 0o600
    assert copied["deep/link"] == ("sym", "er/notes.txt")


def test_a_path_inside_and_a_path_absent(plain: Path, tmp_path: Path) -> None:
    restore(plain, tmp_path / "one", ("deep", "er", "notes.txt"))
    assert (tmp_path / "one").read_text() == "a line\n" * 500
    restore(plain, tmp_path / "sub", ("deep",))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["dangling", "er", "link"]
    with pytest.raises(ConfigError, match="is not in the backup at now"):
        restore(plain, tmp_path / "none", ("no-such",))


@pytest.mark.parametrize("damage", ["flipped", "truncated", "missing", "replaced"])
def test_a_damaged_mirror_file_is_refused(plain: Path, tmp_path: Path, damage: str) -> None:
    """What gocryptfs cannot see (no manifest, or a file rolled back to an older version that
    still decrypts) must still fail the copy: rdiff-backup's recorded size and SHA-1."""
    victim = plain / "data" / "big.bin"
    data = bytearray(victim.read_bytes())
    if damage == "flipped":
        data[len(data) // 2] ^= 1
        victim.write_bytes(bytes(data))
    elif damage == "truncated":
        victim.write_bytes(bytes(data[:4096]))
    elif damage == "missing":
        victim.unlink()
    else:
        shutil.copyfile(plain / "data" / "deep" / "er" / "notes.txt", victim)
    with pytest.raises(RestoreError, match=r"recorded SHA-1 check .*big\.bin"):
        restore(plain, tmp_path / "out")


def test_what_the_copy_cannot_reproduce_goes_to_rdiff_backup(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    os.link(src / "big.bin", src / "big.hardlink")
    plain = back_up(src, tmp_path)
    said = restore(plain, tmp_path / "out")
    assert said.startswith("rdiff-backup restore (not a plain copy: big.bin: a hard link)")
    assert (tmp_path / "out" / "big.hardlink").stat().st_ino == \
        (tmp_path / "out" / "big.bin").stat().st_ino


def test_an_older_time_goes_to_rdiff_backup(plain: Path, tmp_path: Path) -> None:
    (tmp_path / "source" / "empty").write_text("no longer empty\n")
    time.sleep(1.1)  # rdiff-backup names its backups by the second
    back_up(tmp_path / "source", tmp_path)
    said = restore(plain, tmp_path / "out", at="1B")
    assert said.startswith("rdiff-backup restore --at 1B")
    assert (tmp_path / "out" / "empty").read_bytes() == b""
    restore(plain, tmp_path / "newest")
    assert (tmp_path / "newest" / "empty").read_text() == "no longer empty\n"
