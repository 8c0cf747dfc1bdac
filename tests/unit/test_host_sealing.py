"""Where the manifest goes on the archive, the rsync lines that move it, and when a point must
carry one."""

from __future__ import annotations

from pathlib import Path

import pytest
from offsite_host import sealing
from offsite_host.session import Session

SESSION = Session("w-1", "203.0.113.7", 2222, "web-1", "cert", "kh", "archive/", 10.0, 20.0)


@pytest.mark.parametrize(("remote_path", "parent"), [
    ("archive/", "./"), ("archive", "./"), ("a/b/archive/", "a/b/"), ("current/", "./")])
def test_the_manifest_lives_beside_the_copy(remote_path: str, parent: str) -> None:
    assert sealing.beside(remote_path) == parent


def test_the_push_writes_only_the_manifest_directory_beside_the_copy() -> None:
    argv = sealing.push_argv("rsync", "ssh -p 2222", "/state/seal", SESSION, io_timeout_s=30)
    assert argv[-2:] == ["/state/seal/", "203.0.113.7:./offsite-manifest/"]
    assert "--delete" not in " ".join(argv) and "-rt" in argv and "--timeout=30" in argv


def test_the_pull_asks_for_the_manifest_alone_from_the_parent() -> None:
    """A filter, not the path itself: rrsync refuses a missing source, and a point written
    before manifests has none."""
    argv = sealing.pull_argv("rsync", "ssh", SESSION, "/state/restore/snap-1.sealed",
                             io_timeout_s=30)
    filters = [a for a in argv if a.startswith(("--include", "--exclude"))]
    assert filters == ["--include=/offsite-manifest/", "--include=/offsite-manifest/manifest",
                       "--exclude=*"]
    assert argv[-2:] == ["203.0.113.7:./", "/state/restore/snap-1.sealed/"]


def test_a_point_must_carry_a_manifest_once_the_host_wrote_one_before_it(
        tmp_path: Path) -> None:
    assert not sealing.required_for(tmp_path, 2_000.0)  # never wrote one: a warning only
    sealing.record_first(tmp_path, 1_000.0)
    sealing.record_first(tmp_path, 5_000.0)  # the first one stays
    assert not sealing.required_for(tmp_path, 999.0)
    assert sealing.required_for(tmp_path, 1_000.0)
    assert sealing.required_for(tmp_path, 4_000.0)
