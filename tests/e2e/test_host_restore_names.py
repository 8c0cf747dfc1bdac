"""Restore through the real path (rsync, gocryptfs, rdiff-backup) of names a shell makes
awkward: spaces, a leading space, a newline, bytes that are not UTF-8, and symlinks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e.conftest import HostFactory, SessionServer
from tests.e2e.test_host_restore import DAYS, backup, restore, tree

pytestmark = pytest.mark.e2e


def test_names_that_are_not_utf8_spaces_newlines_and_symlinks_come_back(
        make_host: HostFactory, session_server: SessionServer, tmp_path: Path) -> None:
    """A whole tree and a single file of it, restored byte for byte by name; the restore
    window hears a report whose detail is Unicode text even when the path is not UTF-8 (the
    control plane refuses a lone surrogate, and the window would never hear how it ended)."""
    host = make_host()
    odd = os.fsencode(host.source / "odd dir")
    os.makedirs(odd + b"/latin1-\xe9t\xe9")
    for name, data in [(b"with space.txt", b"a"), (b" leading space", b"b"),
                       (b"new\nline", b"c"), (b"latin1-\xe9t\xe9/caf\xe9 \xff.txt", b"d")]:
        with open(odd + b"/" + name, "wb") as handle:
            handle.write(data)
    os.symlink(b"nowhere", odd + b"/dangling")
    os.symlink(b"latin1-\xe9t\xe9", odd + b"/dir link")
    backup(host, session_server, DAYS[0])

    done = restore(host, "--date", DAYS[0], "--path", str(host.source), "--to",
                   str(tmp_path / "all"))
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "all") == tree(host.source)
    single = os.fsdecode(odd + b"/latin1-\xe9t\xe9/caf\xe9 \xff.txt")
    done = restore(host, "--date", DAYS[0], "--path", single, "--to", str(tmp_path / "one"))
    assert done.returncode == 0, done.stderr
    restored = os.fsencode(tmp_path / "one") + b"/caf\xe9 \xff.txt"
    assert os.listdir(os.fsencode(tmp_path / "one")) == [b"caf\xe9 \xff.txt"]
    with open(restored, "rb") as handle:
        assert handle.read() == b"d"
    report = session_server.reports_of(host.name)[-1]
    assert report["status"] == "succeeded" and "caf\\xe9 \\xff.txt" in report["detail"]
    json.dumps(report, ensure_ascii=False).encode("utf-8")  # no lone surrogate in it
