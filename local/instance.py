"""The archive instance on this machine: a real sshd on loopback that runs while the emulated
EC2 instance runs, one real Unix account per host, each host's volume a directory it alone
owns, snapshots as point-in-time copies, and a restore volume (made from a snapshot) as a copy
of that snapshot at the host's restore mount, read-only for the host's account.

sshd checks the certificates exactly as on EC2 (TrustedUserCAKeys, one principals file per
account, the certificate's forced rrsync); only the volumes are directories, not EBS.

Several stacks may run on one machine (a demo beside a test run): each instance claims an id
of its own by creating its group `offsite-<id>` (groupadd refuses a name that exists), and its
accounts are `<id>-<host>` (the control plane's ACCOUNT_PREFIX, chalicelib/accounts.py). It
never adopts an account it did not make, and only ever kills its own accounts' processes.
"""

from __future__ import annotations

import pwd
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from chalicelib.accounts import account_name

GROUP_PREFIX = "offsite-"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
ACCOUNT_TOOL_WAIT = 60.0  # seconds: another stack's useradd/userdel may hold /etc/passwd's lock
EXISTS = 9  # useradd's and groupadd's exit status: the name is taken


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
        self._accounts: dict[str, str] = {}  # host -> the account this instance made
        self.stack_id = _claim_group()
        self.group = GROUP_PREFIX + self.stack_id
        self.account_prefix = f"{self.stack_id}-"  # the control plane's ACCOUNT_PREFIX

    @property
    def accounts(self) -> list[str]:
        return list(self._accounts.values())

    # accounts and volumes ------------------------------------------------------------------
    def account(self, host: str) -> str:
        return account_name(self.account_prefix, host)

    def add_host(self, host: str) -> None:
        """The host's account (made here, never adopted), its volume and principals file."""
        account = self.account(host)
        for shared in (self.root, self.volumes, self._etc, self._etc / "principals"):
            shared.mkdir(parents=True, exist_ok=True)
            shared.chmod(0o755)  # sshd reads the principals file as the account
        if host not in self._accounts:
            made = _account_tool(["useradd", "--no-create-home", "--home-dir",
                                  str(self.volumes / host), "--shell", "/bin/sh", "--gid",
                                  self.group, "--password", "*", account])
            if made.returncode == EXISTS:
                raise InstanceError(f"an account named {account} already exists on this "
                                    "machine, not made by this stack: it is not used")
            _check(made)
            self._accounts[host] = account
        volume = self.volumes / host
        volume.mkdir(parents=True, exist_ok=True)
        shutil.chown(volume, user=account, group=self.group)
        volume.chmod(0o700)
        principals = self._etc / "principals" / account
        principals.write_text(f"{account}\n")
        principals.chmod(0o644)

    def release(self) -> None:
        """Removes this instance's accounts, then its group (after stop(): no session left).
        Tries each; a failure is raised once all were tried."""
        removals = [_account_tool(["userdel", account]) for account in self.accounts]
        self._accounts.clear()
        removals.append(_account_tool(["groupdel", self.group]))
        for done in removals:
            _check(done)

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
        shutil.chown(partial, user=self.account(host), group=self.group)
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
        """Kills the processes of this instance's accounts (never another stack's), and waits
        until they are gone: userdel refuses an account that still runs a process."""
        limit = time.monotonic() + 60
        for account in self.accounts:
            uid = pwd.getpwnam(account).pw_uid
            while _live_processes(uid):
                subprocess.run(["pkill", "-KILL", "-u", account], capture_output=True,
                               check=False, timeout=10)
                if time.monotonic() > limit:
                    raise InstanceError(f"processes of {account} outlive SIGKILL")
                time.sleep(0.1)

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
            f"AllowGroups {self.group}", "LogLevel VERBOSE", "MaxStartups 100:30:200", ""]))
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


def _claim_group() -> str:
    """A stack id no other stack on this machine holds: its group is made here, and groupadd
    refuses a name that exists, so two stacks can never claim the same one."""
    for _ in range(20):
        stack_id = f"o{secrets.token_hex(3)}"
        made = _account_tool(["groupadd", GROUP_PREFIX + stack_id])
        if made.returncode != EXISTS:
            _check(made)
            return stack_id
    raise InstanceError("no free stack id after 20 tries")


def _live_processes(uid: int) -> list[int]:
    """The pids of `uid`'s processes that are not zombies."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines()
                          if ":" in line)
        except OSError:  # the process ended meanwhile
            continue
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            found.append(int(status.parent.name))
    return found


def _account_tool(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """useradd, userdel, groupadd or groupdel; waits while another process holds the lock on
    /etc/passwd or /etc/group (another stack adding or removing its accounts)."""
    limit = time.monotonic() + ACCOUNT_TOOL_WAIT
    while True:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if "lock" not in done.stderr or time.monotonic() > limit:
            return done
        time.sleep(0.2)


def _check(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise InstanceError(f"{' '.join(done.args)} failed ({done.returncode}): "
                            f"{done.stderr.strip()}")
