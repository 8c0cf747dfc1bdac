"""Two hosts back up at once; neither can read, list or write the other's volume, whatever it
does with its certificate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Archive,
    Host,
    HostFactory,
    SessionServer,
    make_tree,
    must,
    run,
    tree_digest,
)

pytestmark = pytest.mark.e2e


class Credentials:
    """A certificate for `host`'s account, made the way the session server makes them, and the
    ssh command line that uses it."""

    def __init__(self, archive: Archive, host: Host, tmp: Path) -> None:
        self.key = tmp / f"{host.name}-key"
        must(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)])
        cert = archive.issue(Path(f"{self.key}.pub").read_text().strip(), host.account, 600,
                             f"{host.name}/probe")
        Path(f"{self.key}-cert.pub").write_text(cert + "\n")
        self.known_hosts = tmp / f"{host.name}-known_hosts"
        self.known_hosts.write_text(archive.known_hosts() + "\n")
        self.port = archive.port

    def ssh(self, user: str) -> list[str]:
        return ["ssh", "-F", "none", "-p", str(self.port), "-l", user, "-i", str(self.key),
                "-o", f"CertificateFile={self.key}-cert.pub", "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "LogLevel=ERROR"]

    def rsync(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["rsync", "-e", " ".join(self.ssh(user)), *args], timeout=30)


@pytest.fixture
def two_hosts(make_host: HostFactory, session_server: SessionServer) -> tuple[Host, Host]:
    first, second = make_host(), make_host()
    for host in (first, second):
        make_tree(host.source, large_bytes=2 * 1024 * 1024)
    # the first host finds the window still opening, and is told to come back in a second
    first.entry.script.append((503, {"Retry-After": "1"}, b'{"error": "window_opening"}'))
    clients = [host.start("run") for host in (first, second)]
    for client in clients:
        _, stderr = client.communicate(timeout=120)
        assert client.returncode == 0, stderr
    for host in (first, second):
        assert [r["status"] for r in session_server.reports_of(host.name)] == ["succeeded"]
    asked = [r for r in session_server.requests if r["path"] == "/api/v1/sessions"
             and r["body"]["host"] == first.name]
    assert len(asked) == 2
    return first, second


def test_two_hosts_at_once_cannot_reach_each_others_volume(
        two_hosts: tuple[Host, Host], archive: Archive, tmp_path: Path) -> None:
    first, second = two_hosts
    before = tree_digest(second.volume)
    creds = Credentials(archive, first, tmp_path)
    probe = tmp_path / "probe.txt"
    probe.write_text("written by the first host\n")
    theirs = f"{second.volume}/current/"

    # read or list: a backup certificate is write-only, on its own volume as on any other
    for source in ("127.0.0.1:current/", f"127.0.0.1:../{second.name}/current/",
                   f"127.0.0.1:{theirs}"):
        listing = creds.rsync(first.name, "--list-only", source)
        assert listing.returncode != 0
        assert "gocryptfs" not in listing.stdout
    # write: `..` is refused, and an absolute path lands inside the first host's own volume
    assert creds.rsync(first.name, str(probe), f"127.0.0.1:../{second.name}/").returncode != 0
    creds.rsync(first.name, str(probe), f"127.0.0.1:{theirs}")
    # log in as the other account, or run anything but rsync
    assert creds.rsync(second.name, str(probe), "127.0.0.1:current/").returncode != 0
    shell = run([*creds.ssh(first.name), "127.0.0.1", "cat /etc/passwd; ls", theirs],
                timeout=30)
    assert shell.returncode != 0
    assert "root:" not in shell.stdout
    # and on the archive's file system, one account cannot even list the other's volume
    listing = run(["ls", str(second.volume)], timeout=10, user=first.account.uid)
    assert listing.returncode != 0

    assert tree_digest(second.volume) == before
    assert not any(p.name == "probe.txt" for p in second.volume.rglob("*"))
