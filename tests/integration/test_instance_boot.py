"""boot.sh for real, as root, in a sandbox: loop devices stand in for the EBS volumes, found
by the block device mapping's device name as on a Nitro instance: through the /dev/sdX link that
Amazon Linux's udev rule makes, or else through an nvme<x>n1 device whose NVMe vendor data
names sdX (read by a stub ebsnvme-id or nvme, as this machine has no EBS). The accounts are
real; mkfs, mount, useradd and sshd are real; only the root paths (config, sshd config, mount
roots, dev dir), the tools dir, the host-key fetch and the sshd reload point into the sandbox.

The sandbox lives under /var/lib, not /tmp: sshd's StrictModes refuses a principals file below a
world-writable directory. Everything made here (mounts, loop devices, accounts, groups, the
sandbox) is undone in teardown, also after a failure.
"""

from __future__ import annotations

import grp
import os
import pwd
import random
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chalicelib.boot_signal import check_signal, parse_signal, parse_signal_body
from chalicelib.instance.userdata import (
    CONFIG_PATH,
    SCRIPT_PATH,
    boot_script,
    render_boot_config,
    render_user_data,
)

from .test_boot_signal import Api, api

__all__ = ["api"]

TOOLS = ["losetup", "mkfs.ext4", "blkid", "mount", "useradd", "sshd", "ssh-keygen", "rsync"]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(tool) is None for tool in TOOLS),
    reason="needs root, loop devices, e2fsprogs, shadow and OpenSSH",
)

MIB = 1024 * 1024
PARAMETER = "/offsite/test/host-key"
REGION = "eu-west-1"
RRSYNC = "/usr/bin/rrsync"
INSTANCE = "i-0a1b2c3d4e5f60718"
STALE_UID = 4242  # owner of the data on the pre-existing volume: an earlier account's uid
DISTRIBUTION_SSHD_CONFIG = """\
# stands for the distribution's sshd_config, which boot.sh makes include the drop-in dir
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
"""
DISTRIBUTION_DROPIN = """\
# like Amazon Linux's 50-redhat.conf: read after boot.sh's drop-in, so it must not win
X11Forwarding yes
PasswordAuthentication yes
PermitRootLogin yes
"""


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env
    )


def check(args: list[str]) -> str:
    result = run(args)
    assert result.returncode == 0, f"{shlex.join(args)}: {result.stderr}"
    return result.stdout


@dataclass
class Host:
    name: str
    device_name: str  # in the block device mapping: /dev/sdf, ...
    device: str = ""  # the loop device standing for the volume
    uid: int | None = None


@dataclass
class Sandbox:
    root: Path
    group: str
    hosts: list[Host]
    cleanup: ExitStack
    env: dict[str, str] = field(default_factory=dict)

    @property
    def etc(self) -> Path:
        return self.root / "etc/offsite"

    @property
    def sshd_config(self) -> Path:
        return self.root / "etc/ssh/sshd_config"

    @property
    def dropin(self) -> Path:
        return self.root / "etc/ssh/sshd_config.d/00-offsite.conf"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def reloads(self) -> Path:
        return self.root / "reloads"

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    @property
    def tools(self) -> Path:
        return self.root / "tools"

    def mount_path(self, host: Host) -> Path:
        return self.root / "srv/offsite" / host.name

    def restore_path(self, host: Host) -> Path:
        return self.root / "srv/offsite-restore" / host.name

    @property
    def script(self) -> Path:
        """boot.sh as the instance gets it (user-data ships it without its comment lines)."""
        shipped = self.root / "boot.sh"
        if not shipped.exists():
            shipped.write_bytes(boot_script())
        return shipped

    def boot(self) -> subprocess.CompletedProcess[str]:
        return run(["bash", str(self.script)], env={**os.environ, **self.env})


def make_sandbox(cleanup: ExitStack, hosts: list[Host], device_wait: int = 5) -> Sandbox:
    root = Path(tempfile.mkdtemp(prefix="offsite-boot-", dir="/var/lib"))
    cleanup.callback(remove_sandbox, root)
    root.chmod(0o755)  # the accounts traverse it to reach their volumes
    sandbox = Sandbox(root, f"oftg-{secrets.token_hex(3)}", hosts, cleanup)
    cleanup.callback(run, ["groupdel", sandbox.group])
    for host in hosts:
        cleanup.callback(run, ["userdel", host.name])  # the account's own group goes with it
    for path in [sandbox.etc, sandbox.dropin.parent, sandbox.keys, sandbox.dev, sandbox.tools]:
        path.mkdir(parents=True)
    sandbox.keys.chmod(0o700)
    sandbox.sshd_config.write_text(DISTRIBUTION_SSHD_CONFIG)
    (sandbox.dropin.parent / "50-distribution.conf").write_text(DISTRIBUTION_DROPIN)
    host_key = sandbox.keys / "host_key"
    check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test-host", "-f", str(host_key)])
    check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test-ca", "-f", str(root / "ca")])
    fetch = f'test "$1" = {PARAMETER} && test "$2" = {REGION} && cat {host_key}'
    sandbox.env = {
        "OFFSITE_ETC": str(sandbox.etc),
        "OFFSITE_SSHD_CONFIG": str(sandbox.sshd_config),
        "OFFSITE_SSHD_DROPIN_DIR": str(sandbox.dropin.parent),
        "OFFSITE_MOUNT_ROOT": str(root / "srv/offsite"),
        "OFFSITE_DEV_DIR": str(sandbox.dev),
        "OFFSITE_TOOLS": str(sandbox.tools),  # empty unless a test puts a stub there
        "OFFSITE_GROUP": sandbox.group,
        "OFFSITE_DEVICE_WAIT": str(device_wait),
        "OFFSITE_HOST_KEY_COMMAND": fetch,
        "OFFSITE_SSHD_RELOAD": f"echo reload >> {sandbox.reloads}",
        "OFFSITE_RESTORE_ROOT": str(root / "srv/offsite-restore"),
    }
    return sandbox


def remove_sandbox(root: Path) -> None:
    for mount in reversed(mounts_under(root)):
        run(["umount", "--lazy", mount])
    if not mounts_under(root):  # never recurse into a volume still mounted
        shutil.rmtree(root, ignore_errors=True)


def mounts_under(root: Path) -> list[str]:
    targets = run(["findmnt", "-rno", "TARGET"]).stdout.split()
    return sorted(t for t in targets if t.startswith(f"{root}/"))


def attach_volume(sandbox: Sandbox, host: Host, prepare: Callable[[Path], None] | None,
                  link: bool = True) -> None:
    """A 40 MiB sparse image on a loop device, linked as udev links the mapping's device name
    (`link`), or not (then only an NVMe device may name it: see `as_nvme`)."""
    image = sandbox.root / "images" / f"{host.name}-{host.device_name[-3:]}.img"
    image.parent.mkdir(exist_ok=True)
    with image.open("wb") as file:
        file.truncate(40 * MIB)
    if prepare is not None:
        prepare(image)
    host.device = check(["losetup", "-f", "--show", str(image)]).strip()
    sandbox.cleanup.callback(run, ["losetup", "-d", host.device])
    for mount in (sandbox.mount_path(host), sandbox.restore_path(host)):  # before losetup -d
        sandbox.cleanup.callback(run, ["umount", str(mount)])
    if link:
        (sandbox.dev / host.device_name.removeprefix("/dev/")).symlink_to(host.device)


EBS_MODEL = "Amazon Elastic Block Store"


def as_nvme(sandbox: Sandbox, host: Host, index: int, vendor_name: str,
            model: str = EBS_MODEL) -> Path:
    """dev/nvme<index>n1 for the host's loop device, its identify-controller data (model
    number, vendor-specific block device name) where the stub tools read it."""
    nvme = sandbox.dev / f"nvme{index}n1"
    nvme.symlink_to(host.device)
    identify = bytearray(4096)
    identify[24:64] = model.encode().ljust(40)
    identify[3072:3104] = vendor_name.encode().ljust(32)
    (sandbox.tools / f"{nvme.name}.id-ctrl").write_bytes(bytes(identify))
    return nvme


STUBS = {
    # nvme-cli: `nvme id-ctrl --raw-binary <dev>` writes the 4096-byte identify structure.
    "nvme": 'test "$1 $2" = "id-ctrl --raw-binary" || exit 2\n'
            'f="$(dirname "$0")/$(basename "$3").id-ctrl"\n'
            'test -f "$f" || exit 1\ncat "$f"\n',
    # amazon-ec2-utils: `ebsnvme-id -b <dev>` prints the vendor's block device name; it fails on
    # a device whose controller is not EBS.
    "ebsnvme-id": 'test "$1" = -b || exit 2\n'
                  'f="$(dirname "$0")/$(basename "$2").id-ctrl"\n'
                  'test -f "$f" || exit 1\n'
                  f'tail -c +25 "$f" | head -c 40 | grep -q "^{EBS_MODEL} *$" || exit 1\n'
                  'tail -c +3073 "$f" | head -c 32\n',
}


def install_stub(sandbox: Sandbox, tool: str) -> None:
    stub = sandbox.tools / tool
    stub.write_text(f"#!/bin/sh\n{STUBS[tool]}")
    stub.chmod(0o755)


def write_config(sandbox: Sandbox, hosts: Sequence[Host], restores: Sequence[Host] = (),
                 api_url: str = "") -> None:
    ca_line = (sandbox.root / "ca.pub").read_text()
    uids = {host.name: host.uid for host in [*hosts, *restores] if host.uid is not None}
    config = render_boot_config(
        [(host.name, host.device_name) for host in hosts], ca_line, PARAMETER, REGION,
        uids=uids, restores=[(host.name, host.device_name) for host in restores],
        api_url=api_url)
    (sandbox.etc / "instance.conf").write_text(config)


def new_host(label: str, suffix: str, device_name: str, uid: int | None = None) -> Host:
    return Host(f"oft-{suffix}-{label}", device_name, uid=uid)


def free_id() -> int:
    while True:
        candidate = random.randint(20000, 39999)
        try:
            pwd.getpwuid(candidate)
        except KeyError:
            try:
                grp.getgrgid(candidate)
            except KeyError:
                return candidate


def with_old_data(image: Path) -> None:
    """A filesystem written by an earlier instance: data of a uid that no longer exists."""
    check(["mkfs.ext4", "-q", "-F", "-L", "preexisting", str(image)])
    with tempfile.TemporaryDirectory(dir=image.parent) as mnt:
        check(["mount", "-o", "loop", str(image), mnt])
        try:
            (Path(mnt) / "old-backup.txt").write_text("from last week\n")
            os.chown(Path(mnt) / "old-backup.txt", STALE_UID, STALE_UID)
            os.chown(mnt, STALE_UID, STALE_UID)
        finally:
            check(["umount", mnt])


def with_unknown_data(image: Path) -> None:
    with image.open("r+b") as file:
        file.write(secrets.token_bytes(MIB))


Booted = tuple[Sandbox, subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def booted() -> Iterator[Booted]:
    suffix = secrets.token_hex(3)
    longest = new_host("", suffix, "/dev/sdg", uid=free_id())
    longest.name = (longest.name + "b" * 32)[:32]
    hosts = [new_host("a", suffix, "/dev/sdf"), longest, new_host("c", suffix, "/dev/sdh")]
    with ExitStack() as cleanup:
        sandbox = make_sandbox(cleanup, hosts)
        for host, prepare in zip(hosts, [None, None, with_old_data], strict=True):
            attach_volume(sandbox, host, prepare)
        write_config(sandbox, hosts)
        yield sandbox, sandbox.boot()


def filesystem_uuid(device: str) -> str:
    return check(["blkid", "-p", "-s", "UUID", "-o", "value", device]).strip()


def test_first_boot_mounts_each_volume_owned_by_its_account(booted: Booted) -> None:
    sandbox, result = booted
    assert result.returncode == 0, result.stderr
    for host in sandbox.hosts:
        mnt = sandbox.mount_path(host)
        assert check(["findmnt", "-rno", "SOURCE", "--mountpoint", str(mnt)]).strip() == host.device
        assert check(["blkid", "-p", "-s", "TYPE", "-o", "value", host.device]).strip() == "ext4"
        account = pwd.getpwnam(host.name)
        assert (account.pw_dir, account.pw_shell) == (str(mnt), "/bin/sh")
        assert host.uid in (None, account.pw_uid)
        assert sandbox.group in check(["id", "-nG", host.name]).split()
        assert check(["getent", "shadow", host.name]).split(":")[1] == "*"
        stat = mnt.stat()
        assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777) == (
            account.pw_uid, account.pw_gid, 0o700)
        principals = sandbox.etc / "principals" / host.name
        assert principals.read_text() == f"{host.name}\n"
    assert len(sandbox.hosts[1].name) == 32


def test_a_volume_with_a_filesystem_keeps_it_and_its_data(booted: Booted) -> None:
    sandbox, _ = booted
    host = sandbox.hosts[2]
    label = check(["blkid", "-p", "-s", "LABEL", "-o", "value", host.device]).strip()
    assert label == "preexisting"
    old = sandbox.mount_path(host) / "old-backup.txt"
    assert old.read_text() == "from last week\n"
    assert old.stat().st_uid == pwd.getpwnam(host.name).pw_uid  # the stale uid's files follow
    assert (sandbox.mount_path(host) / "lost+found").stat().st_uid == 0


def test_sshd_accepts_the_config_it_wrote(booted: Booted) -> None:
    sandbox, _ = booted
    check(["sshd", "-t", "-f", str(sandbox.dropin)])
    check(["sshd", "-t", "-f", str(sandbox.sshd_config)])
    first = sandbox.sshd_config.read_text().splitlines()[0]
    assert first == f"Include {sandbox.dropin.parent}/*.conf"
    host = sandbox.hosts[0]
    for_host = effective(sandbox, host.name)
    for_root = effective(sandbox, "root")
    for setting in [
        f"hostkey {sandbox.etc}/ssh_host_key",
        f"trustedusercakeys {sandbox.etc}/ca.pub",
        f"authorizedprincipalsfile {sandbox.etc}/principals/%u",
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "permitrootlogin no",
        "allowagentforwarding no",
        "allowtcpforwarding no",
        "x11forwarding no",
    ]:
        assert setting in for_host and setting in for_root
    for setting in ["permittty no", "authorizedkeysfile none", "disableforwarding yes",
                    "authenticationmethods publickey"]:
        assert setting in for_host and setting not in for_root
    installed = (sandbox.etc / "ssh_host_key").read_bytes()
    assert installed == (sandbox.keys / "host_key").read_bytes()
    assert (sandbox.etc / "ssh_host_key").stat().st_mode & 0o777 == 0o600


def effective(sandbox: Sandbox, user: str) -> set[str]:
    """sshd's settings for a connection of `user`, with Match blocks applied."""
    args = ["sshd", "-T", "-f", str(sandbox.sshd_config), "-C", f"user={user},host=h,addr=10.0.0.1"]
    return set(check(args).splitlines())


@pytest.mark.parametrize("unmount_first", [False, True], ids=["running", "rebooted"])
def test_a_second_boot_changes_nothing(booted: Booted, unmount_first: bool) -> None:
    """Run again as is, then as after a reboot (volumes unmounted): same files, accounts,
    mounts and filesystems; a file written after the first boot is still there."""
    sandbox, _ = booted
    for host in sandbox.hosts:
        marker = sandbox.mount_path(host) / "written-after-boot"
        marker.write_text(host.name)
    before = snapshot(sandbox)
    if unmount_first:
        for host in sandbox.hosts:
            check(["umount", str(sandbox.mount_path(host))])
    result = sandbox.boot()
    assert result.returncode == 0, result.stderr
    assert snapshot(sandbox) == before
    assert sandbox.reloads.read_text() == "reload\n"  # the first boot's only
    assert "wrote" not in result.stderr and "formatted" not in result.stderr
    for host in sandbox.hosts:
        assert (sandbox.mount_path(host) / "written-after-boot").read_text() == host.name


def snapshot(sandbox: Sandbox) -> dict[str, object]:
    """What a boot could change: files with their bytes and metadata, accounts, mounts, volumes."""
    files = {}
    for path in sorted((sandbox.root / "etc").rglob("*")):
        stat = path.lstat()
        content = path.read_bytes() if path.is_file() else b""
        files[str(path)] = (content, stat.st_mode, stat.st_uid, stat.st_gid, stat.st_mtime_ns)
    names = {host.name for host in sandbox.hosts} | {sandbox.group}
    accounts = [
        line for database in ("/etc/passwd", "/etc/shadow", "/etc/group")
        for line in Path(database).read_text().splitlines() if line.split(":")[0] in names
    ]
    volumes = {
        host.name: (filesystem_uuid(host.device), oct(sandbox.mount_path(host).stat().st_mode))
        for host in sandbox.hosts
    }
    return {"files": files, "accounts": accounts, "mounts": mounts_under(sandbox.root),
            "volumes": volumes}


def test_a_certificate_logs_in_as_its_own_host_only(booted: Booted) -> None:
    sandbox, _ = booted
    own, other = sandbox.hosts[0], sandbox.hosts[1]
    client = sandbox.keys / "client"
    check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test-client", "-f", str(client)])
    command = f"{RRSYNC} -wo {sandbox.mount_path(own)}"
    check(["ssh-keygen", "-q", "-s", str(sandbox.root / "ca"), "-I", f"{own.name} window-1",
           "-n", own.name, "-V", "-5m:+10m", "-O", "clear", "-O", f"force-command={command}",
           f"{client}.pub"])
    payload = sandbox.keys / "payload.bin"
    payload.write_bytes(secrets.token_bytes(4096))
    with running_sshd(sandbox) as ssh:
        sent = run(["rsync", "-e", ssh, str(payload), f"{own.name}@127.0.0.1:"])
        refused = run(["rsync", "-e", ssh, str(payload), f"{other.name}@127.0.0.1:"])
    assert sent.returncode == 0, sent.stderr
    landed = sandbox.mount_path(own) / "payload.bin"
    assert landed.read_bytes() == payload.read_bytes()
    assert landed.stat().st_uid == pwd.getpwnam(own.name).pw_uid
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert not (sandbox.mount_path(other) / "payload.bin").exists()


@contextmanager
def running_sshd(sandbox: Sandbox) -> Iterator[str]:
    """sshd on a free loopback port with the sandbox's config; yields rsync's `-e` command.
    UsePAM is off here only: a container's PAM session stack may refuse logins on its own."""
    log = sandbox.keys / "sshd.log"
    for _ in range(3):  # another process may take the port before sshd binds it
        port = free_port()
        args = ["/usr/sbin/sshd", "-D", "-e", "-f", str(sandbox.sshd_config)]
        args += ["-o", f"ListenAddress=127.0.0.1:{port}", "-o", "UsePAM=no"]
        with log.open("w") as log_file:
            process = subprocess.Popen(args, stderr=log_file)
        try:
            if wait_for_banner(port, process):
                yield ssh_command(sandbox, port)
                return
        finally:
            process.terminate()
            process.wait(timeout=10)
    pytest.fail(f"sshd did not start: {log.read_text()}")


def ssh_command(sandbox: Sandbox, port: int) -> str:
    keys = sandbox.keys
    public = (sandbox.etc / "ssh_host_key.pub").read_text().split()[:2]
    (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(public)}\n")
    return shlex.join([
        "ssh", "-F", "none", "-p", str(port), "-i", str(keys / "client"),
        "-o", f"CertificateFile={keys / 'client-cert.pub'}", "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={keys / 'known_hosts'}", "-o", "ConnectTimeout=5",
    ])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def test_a_missing_or_unknown_volume_fails_that_host_only() -> None:
    suffix = secrets.token_hex(3)
    good, missing, unknown = (new_host(label, suffix, device) for label, device in
                              [("ok", "/dev/sdf"), ("gone", "/dev/sdg"), ("junk", "/dev/sdh")])
    with ExitStack() as cleanup:
        sandbox = make_sandbox(cleanup, [good, missing, unknown], device_wait=0)
        attach_volume(sandbox, good, None)
        attach_volume(sandbox, unknown, with_unknown_data)
        install_stub(sandbox, "nvme")  # it is asked, and names nothing
        original = Path(unknown.device).read_bytes()[:MIB]
        write_config(sandbox, [good, missing, unknown])
        result = sandbox.boot()
        assert result.returncode == 1
        assert f"{missing.name}: /dev/sdg is not attached" in result.stderr
        assert f"{unknown.name}: /dev/sdh is not blank" in result.stderr
        assert mounts_under(sandbox.root) == [str(sandbox.mount_path(good))]
        assert Path(unknown.device).read_bytes()[:MIB] == original
        assert not sandbox.mount_path(missing).exists()  # its home: the account cannot make it
        unmounted = sandbox.mount_path(unknown).stat()  # its home, where it must not write
        assert (unmounted.st_uid, unmounted.st_mode & 0o777) == (0, 0o755)
        assert not any(sandbox.mount_path(unknown).iterdir())
        check(["sshd", "-t", "-f", str(sandbox.sshd_config)])


@pytest.mark.parametrize(
    ("tool", "vendor_name"),
    [("ebsnvme-id", "sdg"), ("ebsnvme-id", "/dev/sdg"), ("nvme", "sdg"), ("nvme", "xvdg")])
def test_a_volume_without_its_link_is_found_by_its_nvme_vendor_data(
        tool: str, vendor_name: str) -> None:
    """No /dev/sdg link (udev has not made it, or the image has no such rule): the NVMe device
    whose controller names sdg is the volume. An instance-store NVMe device that claims sdg
    too is not EBS and is ignored; so is an EBS device that names another device."""
    suffix = secrets.token_hex(3)
    linked, unlinked = new_host("l", suffix, "/dev/sdf"), new_host("n", suffix, "/dev/sdg")
    decoy, other = Host("decoy", "/dev/sdx"), Host("other", "/dev/sdy")
    with ExitStack() as cleanup:
        sandbox = make_sandbox(cleanup, [linked, unlinked], device_wait=0)
        attach_volume(sandbox, linked, None)
        attach_volume(sandbox, decoy, with_unknown_data, link=False)
        attach_volume(sandbox, other, with_unknown_data, link=False)
        attach_volume(sandbox, unlinked, None, link=False)
        as_nvme(sandbox, decoy, 1, "sdg", model="Amazon EC2 NVMe Instance Storage")
        as_nvme(sandbox, other, 2, "sdy")
        nvme = as_nvme(sandbox, unlinked, 3, vendor_name)
        install_stub(sandbox, tool)
        write_config(sandbox, [linked, unlinked])
        result = sandbox.boot()
        assert result.returncode == 0, result.stderr
        assert f"/dev/sdg is {nvme} (its NVMe controller names it)" in result.stderr
        for host in (linked, unlinked):
            source = check(["findmnt", "-rno", "SOURCE", "--mountpoint",
                            str(sandbox.mount_path(host))]).strip()
            assert source == host.device
        assert sandbox.boot().returncode == 0  # a second boot finds it mounted, and keeps it


def test_two_device_names_leading_to_one_device_are_both_refused() -> None:
    suffix = secrets.token_hex(3)
    first, second = new_host("a", suffix, "/dev/sdf"), new_host("b", suffix, "/dev/sdg")
    with ExitStack() as cleanup:
        sandbox = make_sandbox(cleanup, [first, second], device_wait=0)
        attach_volume(sandbox, first, None)
        second.device = first.device
        (sandbox.dev / "sdg").symlink_to(first.device)
        write_config(sandbox, [first, second])
        result = sandbox.boot()
        assert result.returncode == 1
        assert "both lead to" in result.stderr
        assert mounts_under(sandbox.root) == []
        assert run(["blkid", "-p", first.device]).returncode == 2  # never formatted


def test_a_device_that_appears_while_boot_waits_is_used() -> None:
    host = new_host("w", secrets.token_hex(3), "/dev/sdf")
    with ExitStack() as cleanup:
        sandbox = make_sandbox(cleanup, [host], device_wait=60)
        attach_volume(sandbox, host, None, link=False)
        write_config(sandbox, [host])
        boot = subprocess.Popen(["bash", str(sandbox.script)], env={**os.environ, **sandbox.env},
                                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)  # boot has looked once and found nothing
            (sandbox.dev / "sdf").symlink_to(host.device)
            _, stderr = boot.communicate(timeout=120)
        finally:
            if boot.poll() is None:
                boot.kill()
        assert boot.returncode == 0, stderr
        assert mounts_under(sandbox.root) == [str(sandbox.mount_path(host))]


def snapshot_of(sandbox: Sandbox, host: Host, owner: int) -> Host:
    """A "snapshot" of host's volume as the restore volume on the next free device: a copy of
    its image whose root (and files) belong to `owner`, the uid the host had on that archive."""
    image = sandbox.root / "images" / f"{host.name}-{host.device_name[-3:]}.img"
    restore = Host(host.name, "/dev/sdz")

    def copy_of_backup(target: Path) -> None:
        shutil.copyfile(image, target)
        with tempfile.TemporaryDirectory(dir=target.parent) as mnt:
            check(["mount", "-o", "loop", str(target), mnt])
            try:
                for path in [Path(mnt), *Path(mnt).rglob("*")]:
                    if path.name != "lost+found":
                        os.chown(path, owner, owner)
            finally:
                check(["umount", mnt])

    attach_volume(sandbox, restore, copy_of_backup)
    return restore


def test_a_restore_archive_makes_the_account_and_mounts_the_copy_read_only() -> None:
    """A restore archive lists only the restore: the host's account is made, with the uid that
    owns the copy, home at the copy; nothing is mounted at the backup mount root."""
    host = new_host("r", secrets.token_hex(3), "/dev/sdf")
    owner = free_id()
    with ExitStack() as cleanup:
        sandbox = make_sandbox(cleanup, [host])
        attach_volume(sandbox, host, None)
        write_config(sandbox, [host])
        assert sandbox.boot().returncode == 0  # the backup archive of a past window
        (sandbox.mount_path(host) / "archive.bin").write_bytes(b"backed up")
        check(["umount", str(sandbox.mount_path(host))])
        check(["userdel", host.name])  # that archive is gone: a new instance has no account
        (sandbox.dev / "sdf").unlink()
        (sandbox.etc / "principals" / host.name).unlink()
        restore = snapshot_of(sandbox, host, owner)
        write_config(sandbox, [], restores=[restore])
        for boot in range(2):  # a second boot changes nothing
            result = sandbox.boot()
            assert result.returncode == 0, result.stderr
            assert ("restore /dev/sdz mounted read-only" in result.stderr) == (boot == 0)
            mnt = sandbox.restore_path(host)
            assert mounts_under(sandbox.root) == [str(mnt)]
            account = pwd.getpwnam(host.name)
            assert (account.pw_uid, account.pw_dir) == (owner, str(mnt))
            assert (sandbox.etc / "principals" / host.name).read_text() == f"{host.name}\n"
            options = check(["findmnt", "-rno", "OPTIONS", "--mountpoint", str(mnt)]).split(",")
            assert "ro" in options
            read = run(["runuser", "-u", host.name, "--", "cat", str(mnt / "archive.bin")])
            assert read.stdout == "backed up", read.stderr
            with pytest.raises(OSError):
                (mnt / "new").write_text("refused")


def test_a_restore_volume_beside_the_backup_volume_is_mounted_read_only() -> None:
    host = new_host("m", secrets.token_hex(3), "/dev/sdf")
    with ExitStack() as cleanup:
        sandbox = make_sandbox(cleanup, [host])
        attach_volume(sandbox, host, None)
        write_config(sandbox, [host])
        assert sandbox.boot().returncode == 0
        (sandbox.mount_path(host) / "archive.bin").write_bytes(b"backed up")
        check(["umount", str(sandbox.mount_path(host))])
        restore = snapshot_of(sandbox, host, pwd.getpwnam(host.name).pw_uid)
        write_config(sandbox, [host], restores=[restore])
        result = sandbox.boot()
        assert result.returncode == 0, result.stderr
        assert "restore /dev/sdz mounted read-only" in result.stderr
        mnt = sandbox.restore_path(host)
        assert (mnt / "archive.bin").read_bytes() == b"backed up"
        assert "ro" in check(["findmnt", "-rno", "OPTIONS", "--mountpoint", str(mnt)]).split(",")
        stat = mnt.stat()
        assert (stat.st_uid, stat.st_mode & 0o777) == (pwd.getpwnam(host.name).pw_uid, 0o700)
        assert pwd.getpwnam(host.name).pw_dir == str(sandbox.mount_path(host))
        assert sandbox.boot().returncode == 0  # a second boot changes nothing


def test_the_user_data_unpacks_its_files_with_the_instance_tools(tmp_path: Path) -> None:
    """Each bootcmd `echo <b64> | base64 -d | gzip -dc > <path>.new`, run by sh for real."""
    check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ca")])
    ca_line = (tmp_path / "ca.pub").read_text()
    listed = [(f"srv-{i:03d}", f"/dev/sd{c}") for i, c in enumerate("fghijklmnopqrstuvwxy")]
    restores = [("srv-old", "/dev/sdz")]
    expected = {
        f"{CONFIG_PATH}.new": render_boot_config(listed, ca_line, PARAMETER, REGION,
                                                 restores=restores).encode(),
        f"{SCRIPT_PATH}.new": boot_script(),
    }
    unpacked = {}
    user_data = render_user_data(listed, ca_line, PARAMETER, REGION, restores=restores)
    for line in user_data.splitlines():
        if line.startswith("- 'echo "):
            pipeline, target = line.removeprefix("- '").removesuffix("'").split(" > ")
            result = subprocess.run(["sh", "-c", pipeline], capture_output=True, check=True)
            unpacked[target] = result.stdout
    assert unpacked == expected


def test_with_an_account_prefix_each_host_gets_the_prefixed_account() -> None:
    """ACCOUNT_PREFIX (chalicelib/accounts.py): the account, its principals file and its
    volume's owner are <prefix><host>; the volume stays at the host's mount path."""
    suffix = secrets.token_hex(3)
    host, prefix = new_host("p", suffix, "/dev/sdf"), f"pf{suffix}-"
    account = prefix + host.name
    with ExitStack() as cleanup:
        sandbox = make_sandbox(cleanup, [host])
        cleanup.callback(run, ["userdel", account])
        attach_volume(sandbox, host, None)
        config = render_boot_config([(host.name, host.device_name)],
                                    (sandbox.root / "ca.pub").read_text(), PARAMETER, REGION,
                                    account_prefix=prefix)
        (sandbox.etc / "instance.conf").write_text(config)
        for _ in range(2):  # the second boot keeps the prefixed principals file
            result = sandbox.boot()
            assert result.returncode == 0, result.stderr
            entry = pwd.getpwnam(account)
            assert entry.pw_dir == str(sandbox.mount_path(host))
            assert sandbox.mount_path(host).stat().st_uid == entry.pw_uid
            assert sorted(p.name for p in (sandbox.etc / "principals").iterdir()) == [account]
            assert (sandbox.etc / "principals" / account).read_text() == f"{account}\n"
        assert run(["id", host.name]).returncode != 0  # no account named as the bare host


def signals(sandbox: Sandbox, recorder: Api) -> list[tuple[str, str]]:
    """(status, reason) of each signal posted, each checked as the control plane checks it."""
    said = []
    host_public = (sandbox.etc / "ssh_host_key.pub").read_text().strip()
    for path, body in recorder.posts:
        message, armored = parse_signal_body(body)
        signal = parse_signal(message)
        assert path == f"/v1/archives/{INSTANCE}/{signal.status}"
        check_signal(message, armored, host_public, INSTANCE, signal.status, signal.time)
        said.append((signal.status, signal.reason))
    return said


def test_a_boot_that_failed_says_why_at_once(api: tuple[Api, str]) -> None:
    recorder, url = api
    suffix = secrets.token_hex(3)
    good, missing = new_host("ok", suffix, "/dev/sdf"), new_host("gone", suffix, "/dev/sdg")
    with ExitStack() as cleanup:
        sandbox = make_sandbox(cleanup, [good, missing], device_wait=0)
        sandbox.env.update({"OFFSITE_INSTANCE_ID": INSTANCE, "OFFSITE_SIGNAL_TRIES": "2",
                            "OFFSITE_SIGNAL_START": "echo started >> $0.started"})
        attach_volume(sandbox, good, None)
        write_config(sandbox, [good, missing], api_url=url)
        result = sandbox.boot()
        assert result.returncode == 1
        [(status, reason)] = signals(sandbox, recorder)
        assert status == "failed"
        assert f"[setup_host {missing.name}]" in reason
        assert f"{missing.name}: /dev/sdg is not attached" in reason
        assert not list(sandbox.root.glob("**/*.started"))  # no ready check after a failure


def test_a_boot_that_worked_says_ready_once_sshd_answers_with_the_host_key(
        api: tuple[Api, str]) -> None:
    recorder, url = api
    host = new_host("ok", secrets.token_hex(3), "/dev/sdf")
    with ExitStack() as cleanup:
        sandbox = make_sandbox(cleanup, [host])
        started = sandbox.root / "signal-ready-started"
        sandbox.env.update({"OFFSITE_INSTANCE_ID": INSTANCE, "OFFSITE_SIGNAL_TRIES": "2",
                            "OFFSITE_SIGNAL_START": f'echo "$1" > {started}'})
        attach_volume(sandbox, host, None)
        write_config(sandbox, [host], api_url=url)
        result = sandbox.boot()
        assert result.returncode == 0, result.stderr
        assert recorder.posts == []  # bootcmd runs before sshd: it only starts the check
        assert started.read_text().strip().endswith("boot.sh")

        # sshd is not up: the check waits, then says so
        nobody = {**sandbox.env, "OFFSITE_SSHD_PORT": str(free_port()),
                  "OFFSITE_SIGNAL_WAIT": "1"}
        waited = run(["bash", str(sandbox.script), "signal-ready"], env={**os.environ, **nobody})
        assert waited.returncode == 1
        assert signals(sandbox, recorder) == [
            ("failed", f"not ready 1 s after boot: sshd does not answer on 127.0.0.1 port "
                       f"{nobody['OFFSITE_SSHD_PORT']}")]

        recorder.posts.clear()
        with running_sshd(sandbox) as ssh:
            port = ssh.split("-p ")[1].split()[0]
            env = {**sandbox.env, "OFFSITE_SSHD_PORT": port}
            ready = run(["bash", str(sandbox.script), "signal-ready"], env={**os.environ, **env})
        assert ready.returncode == 0, ready.stderr
        [(status, reason)] = signals(sandbox, recorder)
        assert status == "ready" and "sshd answers with the host key" in reason
