"""The archive instance on this machine: a real sshd on loopback that runs while the emulated
EC2 instance runs, one real Unix account per host, each host's volume a directory it alone
owns, snapshots as point-in-time copies, and a restore volume (made from a snapshot) as a copy
of that snapshot at the host's restore mount, read-only for the host's account.

sshd checks the certificates exactly as on EC2 (TrustedUserCAKeys, one principals file per
account, the certificate's forced rrsync); only the volumes are directories, not EBS.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

GROUP = "offsite-local"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class InstanceError(RuntimeError):
    pass


class LocalInstance:
    def __init__(self, root: Path, port: int, ca_public_line: str, host_key_pem: str) -> None:
        self.root = root
        root.chmod(0o755)
        self.port = port
        self.volumes = root / "volumes"
        self.snapshots = root / "snapshots"
        self.restores = root / "restore"  # RESTORE_ROOT: one read-only "mount" per host
        self._etc = root / "etc"
        self._ca = ca_public_line
        self._host_key = host_key_pem
        self._sshd: subprocess.Popen[bytes] | None = None
        self._accounts: list[str] = []

    # accounts and volumes ------------------------------------------------------------------
    def add_host(self, host: str) -> None:
        """The account named as the host, its volume, and its principals file."""
        _ensure_group()
        for shared in (self.root, self.volumes, self._etc, self._etc / "principals"):
            shared.mkdir(parents=True, exist_ok=True)
            shared.chmod(0o755)  # sshd reads the principals file as the account
        if not _account_exists(host):
            subprocess.run(["useradd", "--no-create-home", "--home-dir", str(self.volumes / host),
                            "--shell", "/bin/sh", "--gid", GROUP, "--password", "*", host],
                           check=True, capture_output=True, timeout=30)
            self._accounts.append(host)
        elif _primary_group(host) != GROUP:
            raise InstanceError(f"an account named {host} already exists on this machine")
        volume = self.volumes / host
        volume.mkdir(parents=True, exist_ok=True)
        shutil.chown(volume, user=host, group=GROUP)
        volume.chmod(0o700)
        principals = self._etc / "principals" / host
        principals.write_text(f"{host}\n")
        principals.chmod(0o644)

    def remove_accounts(self) -> None:
        for account in self._accounts:
            subprocess.run(["userdel", account], capture_output=True, timeout=30, check=False)
        self._accounts.clear()

    def snapshot(self, host: str, snapshot_id: str) -> Path:
        """A point-in-time copy of the host's volume (the instance is stopped meanwhile)."""
        target = self.snapshots / snapshot_id
        if not target.exists():
            self.snapshots.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{snapshot_id}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run(["cp", "-a", str(self.volumes / host), str(partial)], check=True,
                           timeout=600)
            partial.rename(target)
        return target

    def delete_snapshot(self, snapshot_id: str) -> None:
        shutil.rmtree(self.snapshots / snapshot_id, ignore_errors=True)

    def attach_restore(self, host: str, snapshot_id: str) -> Path:
        """A volume made from `snapshot_id`, mounted read-only for `host` (as boot.sh mounts
        one with `-o ro`): a copy of the snapshot where no write bit is left, its root the
        account's alone (0500)."""
        target = self.restores / host
        self.detach_restore(host)
        self.restores.mkdir(parents=True, exist_ok=True)
        self.restores.chmod(0o755)
        partial = self.restores / f".{host}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["cp", "-a", str(self.snapshots / snapshot_id), str(partial)],
                       check=True, timeout=600)
        subprocess.run(["chmod", "-R", "a-w", str(partial)], check=True, timeout=600)
        shutil.chown(partial, user=host, group=GROUP)
        partial.chmod(0o500)
        partial.rename(target)
        return target

    def detach_restore(self, host: str) -> None:
        target = self.restores / host
        if target.exists():
            subprocess.run(["chmod", "-R", "u+w", str(target)], check=False, timeout=600)
            shutil.rmtree(target, ignore_errors=True)

    # sshd ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._sshd is not None and self._sshd.poll() is None

    def start(self) -> None:
        if self.running:
            return
        config = self._write_config()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = (self.root / "sshd.log").open("ab")
        self._sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                      stdout=log, stderr=log)
        self._wait_listening()

    def stop(self) -> None:
        """Like stopping the instance: sshd and every session it serves end now."""
        if self._sshd is None:
            return
        if self._sshd.poll() is None:
            self._sshd.send_signal(signal.SIGKILL)
        self._sshd.wait(timeout=10)
        self._kill_sessions()
        self._sshd = None

    def _kill_sessions(self) -> None:
        for account in os.listdir(self.volumes) if self.volumes.exists() else []:
            if _account_exists(account) and _primary_group(account) == GROUP:
                subprocess.run(["pkill", "-KILL", "-u", account], capture_output=True,
                               check=False, timeout=10)

    def _write_config(self) -> Path:
        self._etc.mkdir(parents=True, exist_ok=True)
        host_key = self._etc / "ssh_host_ed25519_key"
        host_key.write_text(self._host_key)
        host_key.chmod(0o600)
        (self._etc / "ca.pub").write_text(self._ca + "\n")
        config = self._etc / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"PidFile {self._etc}/sshd.pid", f"TrustedUserCAKeys {self._etc}/ca.pub",
            f"AuthorizedPrincipalsFile {self._etc}/principals/%u", "AuthorizedKeysFile none",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin no", "UsePAM no", "StrictModes no", "PermitTTY no",
            "AllowTcpForwarding no", "AllowAgentForwarding no", "X11Forwarding no",
            f"AllowGroups {GROUP}", "LogLevel VERBOSE", "MaxStartups 100:30:200", ""]))
        return config

    def _wait_listening(self) -> None:
        import socket

        for _ in range(100):
            if self._sshd is not None and self._sshd.poll() is not None:
                raise InstanceError(f"sshd exited; see {self.root / 'sshd.log'}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise InstanceError("sshd did not start listening")


def _ensure_group() -> None:
    subprocess.run(["groupadd", "-f", GROUP], check=True, capture_output=True, timeout=30)


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _primary_group(name: str) -> str:
    import grp

    return grp.getgrgid(pwd.getpwnam(name).pw_gid).gr_name
