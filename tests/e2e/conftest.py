"""The host client's end-to-end stage: a test CA, a real sshd on loopback whose accounts are
confined by the certificate's `force-command` (rrsync -wo on the account's volume), a tiny
session server speaking the host-facing contract, and hosts that run the real `offsite-host`.

Everything is made here and removed in teardown, even after a failure: FUSE mounts are
detached, sshd is stopped, the Unix accounts are deleted and the volumes removed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from offsite_host.history import repository_name

SSHD = "/usr/sbin/sshd"
RRSYNC = shutil.which("rrsync") or "/usr/bin/rrsync"
TIMEOUT = 60


def run(argv: list[str], timeout: float = TIMEOUT, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          **kw)


def must(argv: list[str], timeout: float = TIMEOUT) -> str:
    done = run(argv, timeout)
    assert done.returncode == 0, f"{argv[0]} failed ({done.returncode}): {done.stderr}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class Account:
    name: str
    uid: int
    volume: Path


class Archive:
    """The archive instance: sshd + one account and volume per host."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = root / "keys"
        self.keys.mkdir(parents=True)
        self.volumes = Path("/srv") / f"offsite-e2e-{secrets.token_hex(4)}"
        self.volumes.mkdir(parents=True, mode=0o755)
        # sshd reads the principals file as the account, so it lives outside pytest's 0700 tmp
        self.principals = self.volumes / "principals"
        self.principals.mkdir(mode=0o755)
        self.ca = self.keys / "ca"
        must(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e-ca", "-f", str(self.ca)])
        self.host_key = self.keys / "ssh_host_ed25519_key"
        must(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(self.host_key)])
        self.accounts: list[Account] = []
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "sshd.log"
        self._serial = 0

    def start(self) -> None:
        for _ in range(3):  # another process may take the free port before sshd binds it
            self.port = free_port()
            config = self.root / "sshd_config"
            config.write_text(f"""\
ListenAddress 127.0.0.1:{self.port}
HostKey {self.host_key}
PidFile {self.root / "sshd.pid"}
TrustedUserCAKeys {self.ca}.pub
AuthorizedPrincipalsFile {self.principals}/%u
AuthorizedKeysFile none
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
PermitTTY no
AllowTcpForwarding no
X11Forwarding no
StrictModes no
UsePAM no
MaxStartups 50
LogLevel VERBOSE
""")
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
            with self.log.open("ab") as log:
                self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                                stderr=log)
            if self._wait_for_banner():
                return
            self.stop()
        pytest.fail(f"sshd did not start: {self.log.read_text()}")

    def _wait_for_banner(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.kill_connections()
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill_connections(self) -> None:
        """Kills the sshd processes serving connections (the privileged monitor and the
        account's session process), not the listener: the link drops mid-transfer."""
        assert self.process is not None
        for pid in descendants(self.process.pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    os.kill(pid, signal.SIGKILL)

    def add_account(self, name: str) -> Account:
        volume = self.volumes / name
        for _ in range(20):  # another test run may hold the passwd lock
            done = run(["useradd", "-M", "-N", "-d", str(volume), "-s", "/bin/sh", "-p", "*",
                        "-c", "offsite e2e host", name])
            if done.returncode == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"useradd {name} failed: {done.stderr}")
        uid = int(must(["id", "-u", name]).strip())
        account = Account(name, uid, volume)
        self.accounts.append(account)
        volume.mkdir(mode=0o700)
        os.chown(volume, uid, 0)
        (self.principals / name).write_text(name + "\n")
        return account

    def remove_accounts(self) -> None:
        for account in self.accounts:
            kill_user_processes(account.uid)
            for _ in range(20):
                if run(["userdel", account.name]).returncode in (0, 6):  # 6: no such user
                    break
                time.sleep(0.2)
        shutil.rmtree(self.volumes, ignore_errors=True)

    def issue(self, public_line: str, account: Account, validity_s: int, key_id: str,
              root: Path | None = None, access: str = "-wo") -> str:
        """An OpenSSH user certificate over `public_line`, as the control plane would make:
        write-only on the account's volume (a backup), or read-only (`access="-ro"`) on a
        restored copy of it (`root`)."""
        self._serial += 1
        pub = self.root / f"request-{self._serial}.pub"
        pub.write_text(public_line + "\n")
        must(["ssh-keygen", "-q", "-s", str(self.ca), "-I", key_id, "-n", account.name,
              "-z", str(self._serial), "-V", f"-1m:+{validity_s}s", "-O", "clear",
              "-O", f"force-command={RRSYNC} {access} {root or account.volume}", str(pub)])
        return (self.root / f"request-{self._serial}-cert.pub").read_text().strip()

    def known_hosts(self) -> str:
        kind, blob = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}"


@dataclass
class Snapshot:
    """A point-in-time copy of a host's volume, as an EBS snapshot would hold it."""

    snapshot_id: str
    window_id: str
    day: str
    started_at: float
    complete: bool
    copy: Path

    def listed(self) -> dict[str, Any]:
        return {"snapshot_id": self.snapshot_id, "window_id": self.window_id, "day": self.day,
                "started_at": iso(self.started_at), "complete": self.complete, "size_gib": 1}


@dataclass
class RestoreWindow:
    window_id: str
    snapshot: Snapshot
    volume: Path
    """The restored copy the read-only certificate is confined to."""


@dataclass
class HostEntry:
    account: Account
    validity_s: int = 3600
    remote_path: str = "current/"
    script: deque[tuple[int, dict[str, str], bytes]] = field(default_factory=deque)
    snapshots: list[Snapshot] = field(default_factory=list)
    restore: RestoreWindow | None = None
    restores: list[RestoreWindow] = field(default_factory=list)
    on_restore: Callable[[Path], None] | None = None
    """Called with each restored copy before its session is issued (to damage it)."""
    backup_window: str = "w-e2e-1"
    """The backup window sessions are issued for; each snapshot closes it and opens the next."""


class SessionServer:
    """`POST /v1/sessions` and `POST /v1/reports` per the host-facing contract. It does not
    check signatures (another test layer does) but records that each request carried one."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.hosts: dict[str, HostEntry] = {}
        self.requests: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def snapshot(self, host: str, day: str, complete: bool = True) -> Snapshot:
        """Copies the host's volume as it is now, as the window's snapshot of `day`."""
        entry = self.hosts[host]
        number = len(entry.snapshots) + 1
        snap_id = f"snap-{host}-{number}"
        copy = self.archive.volumes / "snapshots" / host / snap_id
        copy.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copytree(entry.account.volume, copy, symlinks=True)
        snap = Snapshot(snap_id, entry.backup_window, day, time.time(), complete, copy)
        entry.snapshots.append(snap)
        entry.backup_window = f"w-e2e-{number + 1}"
        return snap

    def open_restore(self, host: str, snap: Snapshot) -> RestoreWindow:
        """What the control plane does for a restore: a volume made from the snapshot, which
        the host's account can read."""
        entry = self.hosts[host]
        window_id = f"r-{snap.snapshot_id}-{len(entry.restores) + 1}"
        volume = self.archive.volumes / "restored" / window_id
        volume.parent.mkdir(exist_ok=True, mode=0o755)
        shutil.copytree(snap.copy, volume, symlinks=True)
        for path in [volume, *volume.rglob("*")]:
            os.lchown(path, entry.account.uid, 0)
        if entry.on_restore is not None:
            entry.on_restore(volume)
        entry.restore = RestoreWindow(window_id, snap, volume)
        entry.restores.append(entry.restore)
        return entry.restore

    def reports_of(self, host: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.reports if r.get("host") == host]

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[
            int, dict[str, str], bytes]:
        signed = all(h in headers for h in ("signature", "signature-input", "content-digest"))
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        data = json.loads(body) if body else {}
        with self.lock:
            self.requests.append({"path": path, "signed": signed, "body": data,
                                  "digest_ok": headers.get("content-digest") ==
                                  f"sha-256=:{digest}:"})
        if not signed:
            return _json(401, {"error": "bad_signature", "message": "unsigned request"})
        if path == "/api/v1/reports":
            with self.lock:
                self.reports.append(data)
                entry = self.hosts.get(data.get("host", ""))
                if entry and entry.restore and entry.restore.window_id == data.get("window_id"):
                    entry.restore = None  # the report closes the restore window
            return _json(200, {"ok": True})
        parts = path.split("/")
        if len(parts) == 6 and parts[:4] == ["", "api", "v1", "hosts"]:
            return self._hosts_route(parts[4], parts[5], data, headers)
        if path != "/api/v1/sessions":
            return _json(404, {"error": "not_found", "message": path})
        entry = self.hosts.get(data.get("host", ""))
        if entry is None:
            return _json(403, {"error": "unknown_host", "message": "this host is not enrolled"})
        if entry.script:
            return entry.script.popleft()
        now = time.time()
        window, root, access = entry.backup_window, None, "-wo"
        if data.get("purpose") == "restore":
            if entry.restore is None:
                return _json(409, {"error": "no_open_window", "message": "no restore window"})
            window, root, access = entry.restore.window_id, entry.restore.volume, "-ro"
        certificate = self.archive.issue(data["ssh_public_key"], entry.account,
                                         entry.validity_s, f"{entry.account.name}/{window}",
                                         root, access)
        return _json(201, {
            "window_id": window, "address": "127.0.0.1", "port": self.archive.port,
            "user": entry.account.name, "certificate": certificate,
            "known_hosts": self.archive.known_hosts(), "remote_path": entry.remote_path,
            "not_after": iso(now + entry.validity_s), "deadline": iso(now + 3 * 3600)})

    def _hosts_route(self, host: str, route: str, data: dict[str, Any],
                     headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """`GET /v1/hosts/{name}/snapshots` and `POST /v1/hosts/{name}/restores`."""
        entry = self.hosts.get(host)
        if entry is None or headers.get("method") not in ("GET", "POST"):
            return _json(403, {"error": "unknown_host", "message": "this host is not enrolled"})
        newest_first = sorted(entry.snapshots, key=lambda s: s.started_at, reverse=True)
        if route == "snapshots" and headers["method"] == "GET":
            return _json(200, {"host": host, "snapshots": [s.listed() for s in newest_first]})
        if route != "restores" or headers["method"] != "POST":
            return _json(404, {"error": "not_found", "message": route})
        if entry.restore is not None:
            return _json(409, {"error": "window_active", "message": "a restore is open"})
        chosen = [s for s in newest_first if data.get("snapshot_id") in (None, s.snapshot_id)
                  and data.get("day") in (None, s.day)]
        if not chosen:
            return _json(404, {"error": "no_recovery_point", "message": "no such point",
                               "days": sorted({s.day for s in entry.snapshots}, reverse=True)})
        snap = next((s for s in chosen if s.complete), chosen[0])
        if not snap.complete and not data.get("allow_incomplete"):
            return _json(409, {"error": "incomplete_snapshot", "message": snap.snapshot_id})
        restore = self.open_restore(host, snap)
        return _json(202, {"window_id": restore.window_id, "snapshot_id": snap.snapshot_id,
                           "day": snap.day, "complete": snap.complete,
                           "deadline": iso(time.time() + 3600)})


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> tuple[
        int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, \
        json.dumps(payload).encode()


def _handler(server: SessionServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            headers["method"] = self.command
            status, extra, payload = server.answer(self.path, headers, body)
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def cut_once_arrived(client: subprocess.Popen[str], arrived: Callable[[], int], at_least: int,
                     cut: Callable[[subprocess.Popen[str]], None],
                     timeout: float = 60) -> tuple[int, str]:
    """Waits while the running client has sent less than `at_least` (`arrived()`, read from
    the volume, so no timing luck), then `cut`s it; its exit code and stderr. The client never
    outlives this."""
    try:
        limit = time.monotonic() + timeout
        while arrived() < at_least:
            assert client.poll() is None, f"the run ended before the cut: {client.stderr}"
            assert time.monotonic() < limit, "the transfer never got going"
            time.sleep(0.05)
        cut(client)
        _, stderr = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    return client.returncode, stderr


def kill_rsync(client: subprocess.Popen[str]) -> None:
    """SIGKILL to the client's own rsync (the local end of the transfer)."""
    rsyncs = [pid for pid in children_of(client.pid)
              if Path(f"/proc/{pid}/comm").read_text().strip() == "rsync"]
    assert rsyncs, "no rsync under the client"
    for pid in rsyncs:
        os.kill(pid, signal.SIGKILL)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        children = children_of(todo.pop())
        found += children
        todo += children
    return found


def processes_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
    return found


def kill_user_processes(uid: int) -> None:
    for pid in processes_of(uid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until_no_processes(uid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.05)


def unmount_under(root: Path) -> None:
    """Detaches every FUSE mount below `root` (a test that failed mid-run may leave one)."""
    with open("/proc/mounts") as mounts:
        points = [line.split()[1].encode().decode("unicode_escape") for line in mounts]
    for point in sorted((p for p in points if p.startswith(str(root))), reverse=True):
        run(["fusermount3", "-u", "-z", point], timeout=20)


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    server = Archive(tmp_path_factory.mktemp("archive"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.remove_accounts()


@pytest.fixture(scope="session")
def session_server(archive: Archive) -> Iterator[SessionServer]:
    server = SessionServer(archive)
    try:
        yield server
    finally:
        server.close()


MARKER = b"OFFSITE-PLAINTEXT-MARKER-7f3a9c"
TREE_NAMES = ["quarterly-report-marker.txt", "blob-sample.bin", "disk-image-large.img",
              "Ünïcødé-файл-名前.txt", "pointer-to-report", "empty-directory-keep",
              "notes-folder", "binary-folder"]


def make_tree(root: Path, large_bytes: int = 20 * 1024 * 1024) -> None:
    """Text, binary, one large file, a unicode name, a symlink and an empty directory."""
    (root / "notes-folder").mkdir(parents=True)
    (root / "notes-folder" / "quarterly-report-marker.txt").write_bytes(
        b"Quarterly report\n" + MARKER + b"\n" * 3)
    (root / "binary-folder").mkdir()
    (root / "binary-folder" / "blob-sample.bin").write_bytes(os.urandom(70_000) + MARKER)
    if large_bytes:
        (root / "disk-image-large.img").write_bytes(MARKER + os.urandom(large_bytes))
    (root / "Ünïcødé-файл-名前.txt").write_text("unicode: " + MARKER.decode(), "utf-8")
    (root / "pointer-to-report").symlink_to("notes-folder/quarterly-report-marker.txt")
    (root / "empty-directory-keep").mkdir()


def tree_digest(root: Path, skip: str | None = None) -> dict[str, tuple[str, str]]:
    """Every entry below `root`: kind and content hash (or link target)."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if skip and skip in path.relative_to(root).parts:
            continue
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", "")
        else:
            found[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def plaintext_leaks(volume: Path, needles: list[bytes]) -> list[str]:
    """Where a plaintext name or content marker shows on the volume (names, link targets,
    file contents)."""
    leaks = []
    for path in volume.rglob("*"):
        texts = [path.name.encode("utf-8", "surrogateescape")]
        if path.is_symlink():
            texts.append(os.readlink(path).encode("utf-8", "surrogateescape"))
        elif path.is_file():
            texts.append(path.read_bytes())
        for needle in needles:
            if any(needle in text for text in texts):
                leaks.append(f"{needle!r} in {path}")
    return leaks


def volume_bytes(volume: Path, inside: str | None = None) -> int:
    """Total size of the regular files on the volume (only those under a `inside` dir)."""
    return sum(p.stat().st_size for p in volume.rglob("*")
               if p.is_file() and not p.is_symlink()
               and (inside is None or inside in p.relative_to(volume).parts))


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


@dataclass
class Host:
    name: str
    root: Path
    account: Account
    entry: HostEntry
    api_url: str
    settings: dict[str, Any] = field(default_factory=dict)
    setup_output: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    @property
    def source(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "etc" / "host.toml"

    @property
    def password_file(self) -> Path:
        return self.root / "etc" / "gocryptfs.pass"

    @property
    def volume(self) -> Path:
        return self.account.volume

    def write_config(self, **overrides: Any) -> None:
        settings = {"api_url": self.api_url, "host": self.name, "paths": [str(self.source)],
                    "repository": str(self.root / "repository"),
                    "state_dir": str(self.root / "state"), "password_file": "gocryptfs.pass",
                    "key_file": "host.key", "max_wait_s": 20, "deadline_margin_s": 1,
                    "io_timeout_s": 30, **self.settings, **overrides}
        tools = settings.pop("tools", {})
        lines = [f"{key} = {toml_value(value)}" for key, value in settings.items()]
        lines += ["[tools]", *(f"{key} = {toml_value(v)}" for key, v in tools.items())]
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text("\n".join(lines) + "\n", "utf-8")

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "offsite_host", "--config", str(self.config), *args]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        return run(self.argv(*args), timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen[str]:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def restore(self, out: Path, at: str = "now") -> Path:
        """Decrypts a copy of the volume (gocryptfs forward mode, the password and the
        gocryptfs.conf the copy carries) and lets rdiff-backup restore the tree from it."""
        cipher, plain = out.parent / f"{out.name}.cipher", out.parent / f"{out.name}.plain"
        shutil.copytree(self.volume / "current", cipher, symlinks=True)
        plain.mkdir()
        must(["gocryptfs", "-q", "-passfile", str(self.password_file), str(cipher),
              str(plain)])
        try:
            must(["rdiff-backup", "restore", "--at", at,
                  str(plain / repository_name(self.source)), str(out)])
        finally:
            run(["fusermount3", "-u", str(plain)])
        return out


class HostFactory:
    """Makes hosts: an account and volume on the archive, a configuration, an enrolled key
    (`offsite-host keygen`) and an initialised repository (`offsite-host init`)."""

    def __init__(self, archive: Archive, server: SessionServer,
                 tmp: pytest.TempPathFactory) -> None:
        self.archive, self.server, self.tmp = archive, server, tmp
        self.made: list[Host] = []

    def __call__(self, **settings: Any) -> Host:
        name = f"e2e{secrets.token_hex(3)}"
        account = self.archive.add_account(name)
        entry = self.server.hosts[name] = HostEntry(account)
        host = Host(name, self.tmp.mktemp(name), account, entry, self.server.url, settings)
        self.made.append(host)
        host.source.mkdir()
        host.write_config()
        for command in ("keygen", "init"):
            done = host.setup_output[command] = host.cli(command)
            assert done.returncode == 0, done.stderr
        return host

    def cleanup(self) -> None:
        for host in self.made:
            unmount_under(host.root)


@pytest.fixture
def make_host(archive: Archive, session_server: SessionServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostFactory]:
    factory = HostFactory(archive, session_server, tmp_path_factory)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def make_module_host(archive: Archive, session_server: SessionServer,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostFactory]:
    factory = HostFactory(archive, session_server, tmp_path_factory)
    try:
        yield factory
    finally:
        factory.cleanup()
