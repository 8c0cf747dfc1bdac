"""gocryptfs command lines (the tool itself runs in e2e)."""

from __future__ import annotations

from pathlib import Path

from offsite_host.encrypt import init_argv, mount_argv, unmount_argv

PW, REPO, MNT = Path("/etc/offsite/pw"), Path("/var/lib/offsite/repo"), Path("/s/view")


def test_reverse_mode_read_only_with_a_password_file() -> None:
    assert init_argv("gocryptfs", PW, REPO) == [
        "gocryptfs", "-init", "-reverse", "-q", "-passfile", str(PW), str(REPO)]
    assert mount_argv("gocryptfs", PW, REPO, MNT) == [
        "gocryptfs", "-reverse", "-ro", "-q", "-passfile", str(PW), str(REPO), str(MNT)]


def test_unmount_per_platform() -> None:
    assert unmount_argv("fusermount3", MNT, "linux") == ["fusermount3", "-u", str(MNT)]
    assert unmount_argv("fusermount3", MNT, "linux", lazy=True) == [
        "fusermount3", "-u", "-z", str(MNT)]
    assert unmount_argv("umount", MNT, "darwin") == ["umount", str(MNT)]
    assert unmount_argv("umount", MNT, "darwin", lazy=True) == ["umount", "-f", str(MNT)]
