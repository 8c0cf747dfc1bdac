"""One archive instance (one shard) on this machine: what its boot does, then its sshd.

At boot each backup host's volume directory is put at MOUNT_ROOT/<host> and each restore
volume at RESTORE_ROOT/<host> (links to the volume's directory: rrsync resolves its directory
with realpath before confining rsync to it), owned by the host's account; then a real sshd
listens on the instance's private address (a loopback address: the stack's subnets are in
127.0.0.0/8) and the stage's port. sshd checks certificates exactly as on EC2
(TrustedUserCAKeys, one principals file per account of *this* instance's hosts, the
certificate's forced rrsync); only the volumes are directories, not EBS.

Stopping it ends sshd and every session it serves (its whole process tree: the accounts
themselves may have a session on another archive, a restore, which stays), and unmounts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class ArchiveError(RuntimeError):
    pass


@dataclass(frozen=True)
class Mount:
    """A volume's directory at `at` (MOUNT_ROOT/<host> or RESTORE_ROOT/<host>) for `account`."""

    host: str
    account: str
    volume: Path
    at: Path
    read_only: bool = False


@dataclass(frozen=True)
class SshdSettings:
    port: int
    group: str  # the stack's group: AllowGroups
    ca_public_line: str
    host_key_pem: str
    log_dir: Path


class ArchiveInstance:
    def __init__(self, instance_id: str, address: str, root: Path, sshd: SshdSettings) -> None:
        self.instance_id = instance_id
        self.address = address
        self.root = root  # the instance's own files; gone when it terminates
        self.log = sshd.log_dir / f"{instance_id}.sshd.log"  # kept: what to read after a failure
        self._settings = sshd
        self._mounts: list[Mount] = []
        self._sshd: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._sshd is not None and self._sshd.poll() is None

    @property
    def mounts(self) -> list[Mount]:
        return list(self._mounts)

    @property
    def etc(self) -> Path:
        """As boot.sh's $OFFSITE_ETC: the host key (ssh_host_key), principals, ..."""
        return self.root / "etc"

    def boot(self, mounts: list[Mount]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # sshd reads the principals file as the account
        self._mounts = list(mounts)
        for mount in mounts:
            _mount(mount, self._settings.group)
        self._start_sshd()

    def stop(self) -> None:
        """As the instance stops: sshd and each session it serves end now; volumes unmount."""
        if self._sshd is not None:
            _kill_tree(self._sshd)
            self._sshd = None
        for mount in self._mounts:
            _unmount(mount)
        self._mounts = []

    def terminate(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _start_sshd(self) -> None:
        config = self._write_config()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self._sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                          stdout=log, stderr=log)
        self._wait_listening()

    def _write_config(self) -> Path:
        etc = self.root / "etc"
        principals = etc / "principals"
        principals.mkdir(parents=True, exist_ok=True)
        for directory in (etc, principals):
            directory.chmod(0o755)
        for mount in self._mounts:
            (principals / mount.account).write_text(f"{mount.account}\n")
            (principals / mount.account).chmod(0o644)
        host_key = etc / "ssh_host_key"  # where boot.sh installs it, and signs with it
        host_key.touch(mode=0o600)
        host_key.write_text(self._settings.host_key_pem)
        (etc / "ca.pub").write_text(self._settings.ca_public_line + "\n")
        config = etc / "sshd_config"
        config.write_text("\n".join([
            f"Port {self._settings.port}", f"ListenAddress {self.address}",
            f"HostKey {host_key}", f"PidFile {etc}/sshd.pid",
            f"TrustedUserCAKeys {etc}/ca.pub", f"AuthorizedPrincipalsFile {principals}/%u",
            "AuthorizedKeysFile none", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin no", "UsePAM no",
            "StrictModes no", "PermitTTY no", "AllowTcpForwarding no",
            "AllowAgentForwarding no", "X11Forwarding no",
            f"AllowGroups {self._settings.group}", "LogLevel VERBOSE",
            "MaxStartups 100:30:200", ""]))
        return config

    def _wait_listening(self) -> None:
        for _ in range(200):
            if self._sshd is not None and self._sshd.poll() is not None:
                raise ArchiveError(f"sshd of {self.instance_id} exited; see {self.log}")
            with socket.socket() as probe:
                if probe.connect_ex((self.address, self._settings.port)) == 0:
                    return
            time.sleep(0.05)
        raise ArchiveError(f"sshd of {self.instance_id} did not start listening")


def _mount(mount: Mount, group: str) -> None:
    """The volume's root becomes the account's alone (0700; a restore: read-only, 0500, as
    boot.sh mounts it `-o ro`), then appears at its mount point."""
    if mount.read_only:
        subprocess.run(["chmod", "-R", "a-w", "--", str(mount.volume)], check=True, timeout=600)
    shutil.chown(mount.volume, user=mount.account, group=group)
    mount.volume.chmod(0o500 if mount.read_only else 0o700)
    mount.at.parent.mkdir(parents=True, exist_ok=True)
    mount.at.parent.chmod(0o755)
    link = mount.at.with_name(f".{mount.at.name}.link")
    link.unlink(missing_ok=True)
    link.symlink_to(mount.volume)
    link.rename(mount.at)  # replaces an older instance's link: the newest boot wins


def _unmount(mount: Mount) -> None:
    """Removes the mount point if it is still this volume's (a later boot may have taken it)."""
    if os.path.islink(mount.at) and Path(os.readlink(mount.at)) == mount.volume:
        mount.at.unlink()


def _kill_tree(sshd: subprocess.Popen[bytes]) -> None:
    """Kills sshd and all its descendants. sshd puts each connection in a session of its own
    (setsid), so no process group holds them all: the tree is frozen (SIGSTOP, so that nothing
    forks or is reparented meanwhile), then killed."""
    frozen: set[int] = set()
    if sshd.poll() is None:
        os.kill(sshd.pid, signal.SIGSTOP)
        frozen.add(sshd.pid)
        while more := _children(frozen) - frozen:
            for pid in more:
                _signal(pid, signal.SIGSTOP)
            frozen |= more
        for pid in frozen:
            _signal(pid, signal.SIGKILL)
    sshd.wait(timeout=10)
    limit = time.monotonic() + 30
    while any(_alive(pid) for pid in frozen):  # the sessions' rsync gone, not only signalled
        if time.monotonic() > limit:
            raise ArchiveError(f"processes of sshd {sshd.pid} outlive SIGKILL")
        time.sleep(0.05)


def _children(parents: set[int]) -> set[int]:
    found = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended meanwhile
            continue
        if int(fields[1]) in parents:  # fields after "(comm)": state, ppid, ...
            found.add(int(stat_file.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Not gone and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal(pid: int, number: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)
