"""Certificates from `chalicelib.sshcert` against the real OpenSSH tools and a real sshd.

Every key is made here (ssh-keygen or pynacl) in a temporary directory; no certificate or private
key is ever printed. The sshd runs as root on a free loopback port with two throw-away Unix
accounts whose home directories stand for their volumes; the forced command is rrsync, as on the
archive instance.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    SSHCertificate,
    SSHCertificateType,
    load_ssh_private_key,
    load_ssh_public_identity,
)
from nacl.signing import SigningKey

from chalicelib.sshcert import (
    CertificateSpec,
    ca_public_key_line,
    parse_ed25519_public_key,
    public_key_fingerprint,
    sign_user_certificate,
)

SSHD = "/usr/sbin/sshd"
RRSYNC = "/usr/bin/rrsync"
TIMEOUT_S = 20


@dataclass(frozen=True)
class Account:
    name: str
    home: Path


@dataclass(frozen=True)
class Client:
    key: Path
    public_line: str


@dataclass(frozen=True)
class Server:
    port: int
    known_hosts: Path
    log: Path


@dataclass(frozen=True)
class Dirs:
    keys: Path
    volumes: Path
    outside: Path
    local: Path


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT_S, env=env
    )


def ssh_keygen(path: Path, comment: str) -> Path:
    run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
    ).check_returncode()
    return path


@pytest.fixture(scope="module")
def dirs() -> Iterator[Dirs]:
    # Not pytest's tmp_path: its parents are 0700 and the test accounts must reach their homes.
    base = Path(tempfile.mkdtemp(prefix="offsite-sshcert-"))
    try:
        base.chmod(0o755)
        made = Dirs(base / "keys", base / "volumes", base / "outside", base / "local")
        for path, mode in [(made.keys, 0o700), (made.volumes, 0o755), (made.outside, 0o777)]:
            path.mkdir()
            path.chmod(mode)  # "outside" is writable by anyone: only rrsync keeps a host out
        made.local.mkdir()
        yield made
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def accounts(dirs: Dirs) -> Iterator[dict[str, Account]]:
    suffix = secrets.token_hex(4)
    with ExitStack() as cleanup:
        made = {}
        for label in ("a", "b"):
            account = Account(f"offsite-t-{label}-{suffix}", dirs.volumes / f"{label}-{suffix}")
            add_user(account)
            cleanup.callback(run, ["userdel", "--force", "--remove", account.name])
            made[label] = account
        yield made


def add_user(account: Account) -> None:
    # Password "*" rather than useradd's locking "!": sshd without PAM refuses a locked account
    # even for certificate logins. Retries cover another run holding the passwd lock.
    args = ["useradd", "--create-home", "--home-dir", str(account.home), "--password", "*"]
    args += ["--shell", "/bin/sh", "--comment", "offsite sshcert test", account.name]
    for _ in range(10):
        result = run(args)
        if result.returncode == 0:
            return
        time.sleep(0.2)
    pytest.fail(f"useradd {account.name} failed: {result.stderr}")


@pytest.fixture(scope="module")
def ca() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def client(dirs: Dirs) -> Client:
    key = ssh_keygen(dirs.keys / "client", "offsite-test-client")
    return Client(key, key.with_suffix(".pub").read_text().strip())


@pytest.fixture(scope="module")
def server(dirs: Dirs, ca: SigningKey, accounts: dict[str, Account]) -> Iterator[Server]:
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    host_key = ssh_keygen(dirs.keys / "host", "offsite-test-host")
    ca_file = dirs.keys / "ca.pub"
    ca_file.write_text(ca_public_key_line(ca, "offsite-test-ca") + "\n")
    for _ in range(3):  # another process may take the free port before sshd binds it
        port = free_port()
        config = write_sshd_config(dirs.keys, port, host_key, ca_file)
        log = dirs.keys / f"sshd-{port}.log"
        with log.open("w") as log_file:
            process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log_file)
        try:
            if wait_for_banner(port, process):
                known_hosts = dirs.keys / "known_hosts"
                host_line = host_key.with_suffix(".pub").read_text().split()[:2]
                known_hosts.write_text(f"[127.0.0.1]:{port} {' '.join(host_line)}\n")
                yield Server(port, known_hosts, log)
                return
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    pytest.fail(f"sshd did not start after 3 attempts: {log.read_text()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_sshd_config(keys: Path, port: int, host_key: Path, ca_file: Path) -> Path:
    config = keys / f"sshd_config-{port}"
    config.write_text(
        f"""\
ListenAddress 127.0.0.1:{port}
HostKey {host_key}
PidFile {keys / f"sshd-{port}.pid"}
TrustedUserCAKeys {ca_file}
AuthorizedKeysFile none
AuthorizedPrincipalsFile none
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
StrictModes no
UsePAM no
LogLevel VERBOSE
"""
    )
    return config


def wait_for_banner(port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(8).startswith(b"SSH-2.0"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def issue(
    dirs: Dirs,
    ca: SigningKey,
    client: Client,
    principal: str,
    command: str,
    *,
    lifetime: tuple[timedelta, timedelta] = (timedelta(minutes=-5), timedelta(minutes=30)),
    source_address: str | None = "127.0.0.1/32",
) -> Path:
    """Certify the client key now and write the certificate next to it; returns its path."""
    now = datetime.now(UTC)
    serial = secrets.randbits(63)
    spec = CertificateSpec(
        public_key_line=client.public_line,
        principal=principal,
        key_id=f"offsite-test principal={principal} serial={serial}",
        serial=serial,
        nonce=secrets.token_bytes(32),
        valid_after=now + lifetime[0],
        valid_before=now + lifetime[1],
        force_command=command,
        source_address=source_address,
    )
    path = dirs.keys / f"cert-{serial}.pub"
    path.write_text(sign_user_certificate(spec, ca) + "\n")
    return path


def backup_command(account: Account) -> str:
    return f"{RRSYNC} -wo {account.home}"


def ssh_args(server: Server, client: Client, cert: Path) -> list[str]:
    ssh = ["ssh", "-F", "none", "-i", str(client.key), "-o", f"CertificateFile={cert}"]
    ssh += ["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes"]
    ssh += ["-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "GlobalKnownHostsFile=none"]
    return [
        *ssh,
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=5",
        "-p",
        str(server.port),
    ]


def rsync(
    server: Server, client: Client, cert: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return run(["rsync", "-e", shlex.join(ssh_args(server, client, cert)), *args])


def log_size(server: Server) -> int:
    return server.log.stat().st_size


def wait_for_log(server: Server, since: int, pattern: str) -> str:
    """The sshd log written after offset `since`, once it matches `pattern` (it lags the client)."""
    deadline = time.monotonic() + 5
    while True:
        with server.log.open() as log:
            log.seek(since)
            text = log.read()
        if re.search(pattern, text) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def ssh_keygen_fingerprint(public_line: str, dirs: Dirs) -> str:
    path = dirs.keys / f"fingerprint-{secrets.token_hex(4)}.pub"
    path.write_text(public_line + "\n")
    return run(["ssh-keygen", "-l", "-f", str(path)]).stdout.split()[1]


def ssh_keygen_listing(cert: Path) -> dict[str, list[str]]:
    """`ssh-keygen -L` as {field: values}; a field's values are its inline value or its list."""
    result = run(
        ["ssh-keygen", "-L", "-f", str(cert)], env={"TZ": "UTC", "PATH": os.environ["PATH"]}
    )
    result.check_returncode()
    fields: dict[str, list[str]] = {}
    name = ""
    for line in result.stdout.splitlines()[1:]:
        if line.startswith(" " * 16) or line.startswith("\t\t"):
            fields[name].append(line.strip())
        else:
            name, _, value = line.strip().partition(":")
            fields[name] = [value.strip()] if value.strip() else []
    return fields


def fixed_spec(client: Client, source_address: str | None) -> CertificateSpec:
    return CertificateSpec(
        public_key_line=client.public_line,
        principal="offsite-alpha",
        key_id="host=alpha window=w-1 request=r-1",
        serial=2**63 + 7,
        nonce=bytes(range(32)),
        valid_after=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        valid_before=1_704_175_445,  # 2024-01-02T06:04:05Z
        force_command="/usr/bin/rrsync -wo /srv/offsite/alpha",
        source_address=source_address,
    )


def load_certificate(line: str) -> SSHCertificate:
    cert = load_ssh_public_identity(line.encode())
    assert isinstance(cert, SSHCertificate)
    return cert


def write_cert(dirs: Dirs, line: str) -> Path:
    path = dirs.keys / f"cert-{secrets.token_hex(4)}.pub"
    path.write_text(line + "\n")
    return path


@pytest.mark.parametrize("source_address", [None, "127.0.0.1/32,192.0.2.0/24"])
def test_ssh_keygen_reads_back_the_intended_fields(
    dirs: Dirs, ca: SigningKey, client: Client, source_address: str | None
) -> None:
    cert = write_cert(dirs, sign_user_certificate(fixed_spec(client, source_address), ca))

    fields = ssh_keygen_listing(cert)

    ca_fingerprint = ssh_keygen_fingerprint(ca_public_key_line(ca), dirs)
    assert fields["Type"] == ["ssh-ed25519-cert-v01@openssh.com user certificate"]
    assert fields["Public key"] == [
        f"ED25519-CERT {ssh_keygen_fingerprint(client.public_line, dirs)}"
    ]
    assert fields["Signing CA"] == [f"ED25519 {ca_fingerprint} (using ssh-ed25519)"]
    assert ca_fingerprint == public_key_fingerprint(ca_public_key_line(ca))
    assert fields["Key ID"] == ['"host=alpha window=w-1 request=r-1"']
    assert fields["Serial"] == [str(2**63 + 7)]
    assert fields["Valid"] == ["from 2024-01-02T03:04:05 to 2024-01-02T06:04:05"]
    assert fields["Principals"] == ["offsite-alpha"]
    expected_options = ["force-command /usr/bin/rrsync -wo /srv/offsite/alpha"]
    if source_address:
        expected_options.append(f"source-address {source_address}")
    assert fields["Critical Options"] == expected_options
    assert fields["Extensions"] == ["(none)"]


def test_cryptography_loads_the_certificate_and_verifies_the_ca_signature(
    dirs: Dirs, ca: SigningKey, client: Client
) -> None:
    line = sign_user_certificate(fixed_spec(client, "127.0.0.1/32"), ca)

    cert = load_certificate(line)

    cert.verify_cert_signature()
    signer = cert.signature_key()
    assert isinstance(signer, Ed25519PublicKey)
    assert signer.public_bytes(Encoding.Raw, PublicFormat.Raw) == bytes(ca.verify_key)
    certified = cert.public_key()
    assert isinstance(certified, Ed25519PublicKey)
    raw = certified.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert raw == parse_ed25519_public_key(client.public_line)
    assert cert.type == SSHCertificateType.USER
    assert (cert.serial, cert.nonce) == (2**63 + 7, bytes(range(32)))
    assert cert.key_id == b"host=alpha window=w-1 request=r-1"
    assert cert.valid_principals == [b"offsite-alpha"]
    assert (cert.valid_after, cert.valid_before) == (1_704_164_645, 1_704_175_445)
    assert cert.critical_options == {
        b"force-command": b"/usr/bin/rrsync -wo /srv/offsite/alpha",
        b"source-address": b"127.0.0.1/32",
    }
    assert cert.extensions == {}


def test_same_bytes_as_ssh_keygen_signing_the_same_fields(dirs: Dirs, client: Client) -> None:
    ca_key = ssh_keygen(dirs.keys / f"ca-{secrets.token_hex(4)}", "keygen-ca")
    subject = dirs.keys / f"subject-{secrets.token_hex(4)}.pub"
    subject.write_text(client.public_line + "\n")
    args = ["ssh-keygen", "-q", "-s", str(ca_key), "-I", "host=alpha window=w-1", "-z", "42"]
    args += ["-n", "offsite-alpha", "-V", "20240102030405Z:20240102060405Z", "-O", "clear"]
    args += ["-O", "force-command=/usr/bin/rrsync -wo /srv/offsite/alpha"]
    args += ["-O", "source-address=127.0.0.1/32", str(subject)]
    run(args).check_returncode()
    theirs = subject.with_name(subject.stem + "-cert.pub").read_text().split()[1]
    private = load_ssh_private_key(ca_key.read_bytes(), password=None)
    seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    nonce = load_certificate(f"ssh-ed25519-cert-v01@openssh.com {theirs}").nonce

    spec = CertificateSpec(
        public_key_line=client.public_line,
        principal="offsite-alpha",
        key_id="host=alpha window=w-1",
        serial=42,
        nonce=nonce,
        valid_after=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        valid_before=datetime(2024, 1, 2, 6, 4, 5, tzinfo=UTC),
        force_command="/usr/bin/rrsync -wo /srv/offsite/alpha",
        source_address="127.0.0.1/32",
    )
    ours = sign_user_certificate(spec, SigningKey(seed)).split()[1]

    identical = ours == theirs  # compared apart from the assert, so pytest never prints either
    assert identical, "our certificate differs from the one ssh-keygen -s made"


def source_tree(dirs: Dirs, name: str) -> tuple[Path, bytes]:
    tree = dirs.local / name
    (tree / "increments").mkdir(parents=True)
    payload = secrets.token_bytes(200_000)
    (tree / "archive.bin").write_bytes(payload)
    (tree / "increments" / "note.txt").write_text(name)
    return tree, payload


def test_fresh_certificate_backs_up_real_bytes_into_its_volume(
    dirs: Dirs, ca: SigningKey, client: Client, accounts: dict[str, Account], server: Server
) -> None:
    a = accounts["a"]
    tree, payload = source_tree(dirs, "fresh")
    cert = issue(dirs, ca, client, a.name, backup_command(a))
    since = log_size(server)

    result = rsync(server, client, cert, "-a", f"{tree}/", f"{a.name}@127.0.0.1:fresh/")

    assert result.returncode == 0, result.stderr
    assert (a.home / "fresh" / "archive.bin").read_bytes() == payload
    assert (a.home / "fresh" / "increments" / "note.txt").read_text() == "fresh"
    assert (a.home / "fresh" / "archive.bin").stat().st_uid == a.home.stat().st_uid
    log = wait_for_log(server, since, "Accepted certificate ID")
    assert f'Accepted certificate ID "offsite-test principal={a.name} ' in log


def assert_refused(
    result: subprocess.CompletedProcess[str], server: Server, since: int, why: str
) -> None:
    """The login failed, and sshd's log says why (so it was this certificate that was refused)."""
    assert result.returncode != 0
    assert "Permission denied (publickey)" in result.stderr
    assert re.search(why, wait_for_log(server, since, why))


def test_expired_certificate_is_refused(
    dirs: Dirs, ca: SigningKey, client: Client, accounts: dict[str, Account], server: Server
) -> None:
    a = accounts["a"]
    tree, _ = source_tree(dirs, "expired")
    past = (timedelta(hours=-2), timedelta(minutes=-1))
    cert = issue(dirs, ca, client, a.name, backup_command(a), lifetime=past)
    since = log_size(server)

    result = rsync(server, client, cert, "-a", f"{tree}/", f"{a.name}@127.0.0.1:expired/")

    assert_refused(result, server, since, "Certificate invalid: expired")
    assert not (a.home / "expired").exists()


def test_certificate_from_another_ca_is_refused(
    dirs: Dirs, client: Client, accounts: dict[str, Account], server: Server
) -> None:
    a = accounts["a"]
    tree, _ = source_tree(dirs, "other-ca")
    other_ca = SigningKey.generate()
    cert = issue(dirs, other_ca, client, a.name, backup_command(a))
    since = log_size(server)

    result = rsync(server, client, cert, "-a", f"{tree}/", f"{a.name}@127.0.0.1:other-ca/")

    other = re.escape(public_key_fingerprint(ca_public_key_line(other_ca)))
    assert_refused(result, server, since, f"Failed publickey for {a.name} .* CA ED25519 {other}")
    assert not (a.home / "other-ca").exists()


def test_certificate_for_one_account_cannot_log_in_as_another(
    dirs: Dirs, ca: SigningKey, client: Client, accounts: dict[str, Account], server: Server
) -> None:
    a, b = accounts["a"], accounts["b"]
    tree, _ = source_tree(dirs, "cross")
    cert = issue(dirs, ca, client, a.name, backup_command(b))
    since = log_size(server)

    result = rsync(server, client, cert, "-a", f"{tree}/", f"{b.name}@127.0.0.1:cross/")

    assert_refused(result, server, since, "Certificate invalid: name is not a listed principal")
    assert not (b.home / "cross").exists()


def test_certificate_is_refused_from_outside_its_source_address(
    dirs: Dirs, ca: SigningKey, client: Client, accounts: dict[str, Account], server: Server
) -> None:
    a = accounts["a"]
    tree, _ = source_tree(dirs, "elsewhere")
    cert = issue(dirs, ca, client, a.name, backup_command(a), source_address="192.0.2.1/32")
    since = log_size(server)

    result = rsync(server, client, cert, "-a", f"{tree}/", f"{a.name}@127.0.0.1:elsewhere/")

    assert_refused(result, server, since, "not from a permitted source address")
    assert not (a.home / "elsewhere").exists()


def test_forced_rrsync_keeps_writes_inside_the_volume(
    dirs: Dirs, ca: SigningKey, client: Client, accounts: dict[str, Account], server: Server
) -> None:
    a, b = accounts["a"], accounts["b"]
    tree, payload = source_tree(dirs, "escape")
    planted = dirs.local / "planted"
    planted.mkdir()
    (planted / "out").symlink_to(dirs.outside)
    cert = issue(dirs, ca, client, a.name, backup_command(a))
    assert rsync(server, client, cert, "-a", f"{planted}/", f"{a.name}@127.0.0.1:").returncode == 0
    assert (a.home / "out").is_symlink()

    def push(target: str, *options: str) -> subprocess.CompletedProcess[str]:
        return rsync(
            server, client, cert, "-a", *options, f"{tree}/", f"{a.name}@127.0.0.1:{target}"
        )

    refused = [push("../../outside/"), push(f"../{b.home.name}/"), push("out/")]
    rerooted = push(f"{dirs.outside}/", "--mkpath")

    assert all(r.returncode != 0 and "rrsync error" in r.stderr for r in refused), [
        r.stderr for r in refused
    ]
    assert rerooted.returncode == 0, rerooted.stderr
    # rrsync reads an absolute path as rooted at the volume: the bytes land inside it.
    inside = a.home / dirs.outside.relative_to("/") / "archive.bin"
    assert inside.read_bytes() == payload
    assert list(dirs.outside.iterdir()) == []
    assert not (b.home / "archive.bin").exists()


def test_backup_certificate_cannot_read_back(
    dirs: Dirs, ca: SigningKey, client: Client, accounts: dict[str, Account], server: Server
) -> None:
    a = accounts["a"]
    tree, _ = source_tree(dirs, "readback")
    cert = issue(dirs, ca, client, a.name, backup_command(a))
    pushed = rsync(server, client, cert, "-a", f"{tree}/", f"{a.name}@127.0.0.1:readback/")
    assert pushed.returncode == 0, pushed.stderr
    restored = dirs.local / "restored"
    restored.mkdir()

    result = rsync(server, client, cert, "-a", f"{a.name}@127.0.0.1:readback/", f"{restored}/")

    assert result.returncode != 0
    assert "reading from write-only server is not allowed" in result.stderr
    assert list(restored.iterdir()) == []


def test_certificate_grants_no_pty_and_no_forwarding(
    dirs: Dirs, ca: SigningKey, client: Client, accounts: dict[str, Account], server: Server
) -> None:
    a = accounts["a"]
    cert = issue(dirs, ca, client, a.name, backup_command(a))
    ssh = ssh_args(server, client, cert)

    pty = run([*ssh, "-tt", f"{a.name}@127.0.0.1"])
    forward = run([*ssh, "-W", f"127.0.0.1:{server.port}", f"{a.name}@127.0.0.1"])

    assert "PTY allocation request failed" in pty.stderr
    assert forward.returncode != 0
    assert "administratively prohibited" in forward.stderr
