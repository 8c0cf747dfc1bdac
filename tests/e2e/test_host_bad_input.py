"""Bad input: each case ends with a clear message and its documented exit code, and the
volume's last complete copy is exactly as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest
from offsite_host.lock import RunLock

from tests.e2e.conftest import (
    Host,
    HostFactory,
    SessionServer,
    make_tree,
    must,
    run,
    tree_digest,
    unmount_under,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def host(make_module_host: HostFactory) -> Host:
    made = make_module_host()
    make_tree(made.source, large_bytes=256 * 1024)
    done = made.cli("run")
    assert done.returncode == 0, done.stderr
    return made


@pytest.fixture(autouse=True)
def volume_untouched(host: Host) -> Iterator[None]:
    """Every case here must leave the volume as it found it; the configuration is reset."""
    before = tree_digest(host.volume)
    password = host.password_file.read_bytes()
    yield
    host.password_file.write_bytes(password)
    host.entry.script.clear()
    host.write_config()
    assert tree_digest(host.volume) == before


def expect(done: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_no_configuration(tmp_path: Path) -> None:
    done = run([sys.executable, "-m", "offsite_host", "--config", str(tmp_path / "host.toml"),
                "run"])
    expect(done, 2, f"no configuration at {tmp_path / 'host.toml'}")


def test_configuration_errors_name_the_key(host: Host) -> None:
    host.config.write_text(host.config.read_text().replace("state_dir", "statedir"))
    expect(host.cli("run"), 2, "unknown setting in host.toml: statedir (did you mean state_dir?)")
    host.write_config(retention_days=0)
    expect(host.cli("run"), 2, "retention_days must be an integer >= 1")


def test_source_path_missing_or_not_a_directory(host: Host, tmp_path: Path) -> None:
    host.write_config(paths=[str(tmp_path / "gone")])
    expect(host.cli("run"), 2, f"paths: {tmp_path / 'gone'} does not exist")
    (tmp_path / "file").write_text("x")
    host.write_config(paths=[str(tmp_path / "file")])
    expect(host.cli("run"), 2, "is not a directory")


def test_unreadable_source_path(host: Host, tmp_path: Path) -> None:
    """A source on a mount whose daemon died: every access fails (ENOTCONN), even for root."""
    cipher, mountpoint = tmp_path / "cipher", tmp_path / "mnt"
    cipher.mkdir()
    mountpoint.mkdir()
    must(["gocryptfs", "-init", "-q", "-extpass", "echo pw", str(cipher)])
    must(["gocryptfs", "-q", "-extpass", "echo pw", str(cipher), str(mountpoint)])
    try:
        daemon = must(["pgrep", "-f", f"gocryptfs.*{mountpoint}"]).split()
        for pid in daemon:
            os.kill(int(pid), signal.SIGKILL)
        host.write_config(paths=[str(host.source), str(mountpoint)])
        expect(host.cli("run"), 2, f"paths: cannot read {mountpoint}")
    finally:
        unmount_under(tmp_path)


def test_wrong_encryption_password(host: Host, session_server: SessionServer) -> None:
    host.password_file.write_text("not the password\n")
    expect(host.cli("run"), 2, "gocryptfs refused the password")
    last = session_server.reports_of(host.name)[-1]
    assert last["status"] == "failed" and "password" in last["detail"]


def test_missing_tools(host: Host) -> None:
    host.write_config(tools={"rsync": "/nonexistent/bin/rsync"})
    expect(host.cli("run"), 2, "rsync not found: '/nonexistent/bin/rsync'")
    host.write_config(tools={"gocryptfs": "gocryptfs-not-installed"})
    done = host.cli("run")
    expect(done, 2, "set tools.gocryptfs in host.toml")
    assert "cppcryptfs" in done.stderr


@pytest.mark.parametrize("body, says", [
    (b"<html>gateway</html>", "is not the Offsite API: it answered HTTP 201"),
    (json.dumps({"window_id": "w-1", "address": "127.0.0.1", "port": "22"}).encode(),
     "malformed session answer"),
    (json.dumps({"window_id": "w-1", "address": "-oProxyCommand=sh", "port": 22, "user": "u",
                 "certificate": "x", "known_hosts": "x", "remote_path": "../other",
                 "not_after": 1, "deadline": 1}).encode(), "malformed session answer"),
], ids=["html", "port-as-text", "hostile-fields"])
def test_malformed_session_answer(host: Host, body: bytes, says: str) -> None:
    host.entry.script.extend([(201, {"Content-Type": "application/json"}, body)])
    expect(host.cli("run"), 9, says)


def test_server_answers_map_to_exit_codes(host: Host) -> None:
    script: deque[tuple[int, dict[str, str], bytes]] = host.entry.script
    script.append((409, {}, json.dumps({"error": "no_open_window",
                                        "next_window": "2030-01-01T02:00:00Z"}).encode()))
    repository = host.root / "repository"
    before = sorted(p.relative_to(repository) for p in repository.rglob("*"))
    expect(host.cli("run"), 3, "no backup window is open; next window 2030-01-01T02:00:00Z")
    after = sorted(p.relative_to(repository) for p in repository.rglob("*"))
    assert after == before  # asked before the local work: no rdiff-backup run was spent
    script.append((403, {}, json.dumps({"error": "unknown_host",
                                        "message": "host is revoked"}).encode()))
    expect(host.cli("run"), 2, "unknown_host: host is revoked")


def test_another_run_holds_the_lock(host: Host) -> None:
    with RunLock(host.root / "state" / "run.lock"):
        expect(host.cli("run"), 7, "another offsite-host run holds")
    status = host.cli("status")
    assert "exit 7" not in status.stdout  # a refused run leaves the last summary alone
