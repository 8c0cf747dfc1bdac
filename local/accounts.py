"""The Unix accounts of one local stack: its own group `offsite-<stack id>` and one account
`<stack id>-<host>` per host (the control plane's ACCOUNT_PREFIX, chalicelib/accounts.py).

Several stacks may run on one machine (a demo beside a test run): each claims an id of its own
by creating its group (groupadd refuses a name that exists). A stack never adopts an account
it did not make, and only ever kills its own accounts' processes.

On AWS each archive instance makes the accounts of the hosts its boot config lists. Here the
archives of a stack share one machine, so a host has one account per stack, made the first
time an archive that lists the host boots, and kept until the stack ends: the uid, hence the
ownership of the files in the host's snapshots, stays the same from one window to the next.
"""

from __future__ import annotations

import pwd
import secrets
import subprocess
import time
from pathlib import Path

from chalicelib.accounts import account_name

GROUP_PREFIX = "offsite-"
ACCOUNT_TOOL_WAIT = 60.0  # seconds: another stack's useradd/userdel may hold /etc/passwd's lock
EXISTS = 9  # useradd's and groupadd's exit status: the name is taken


class AccountError(RuntimeError):
    pass


class StackAccounts:
    """`home_root`/<host> is each account's home: the host's MOUNT_ROOT on the archive."""

    def __init__(self, home_root: Path) -> None:
        self.home_root = home_root
        self.stack_id = claim_group()
        self.group = GROUP_PREFIX + self.stack_id
        self.prefix = f"{self.stack_id}-"  # the control plane's ACCOUNT_PREFIX
        self._made: dict[str, str] = {}  # host -> the account this stack made

    @property
    def accounts(self) -> list[str]:
        return list(self._made.values())

    def account(self, host: str) -> str:
        return account_name(self.prefix, host)

    def ensure(self, host: str) -> str:
        """The host's account, made now if this stack has not made it yet (never adopted)."""
        if host in self._made:
            return self._made[host]
        account = self.account(host)
        made = account_tool(["useradd", "--no-create-home", "--home-dir",
                             str(self.home_root / host), "--shell", "/bin/sh", "--gid",
                             self.group, "--password", "*", account])
        if made.returncode == EXISTS:
            raise AccountError(f"an account named {account} already exists on this machine, "
                               "not made by this stack: it is not used")
        check(made)
        self._made[host] = account
        return account

    def release(self) -> None:
        """Ends the accounts' processes, removes the accounts, then the group. Tries each; a
        failure is raised once all were tried."""
        for account in self.accounts:
            end_processes(account)
        removals = [account_tool(["userdel", account]) for account in self.accounts]
        self._made.clear()
        removals.append(account_tool(["groupdel", self.group]))
        for done in removals:
            check(done)


def claim_group() -> str:
    """A stack id no other stack on this machine holds: its group is made here, and groupadd
    refuses a name that exists, so two stacks can never claim the same one."""
    for _ in range(20):
        stack_id = f"o{secrets.token_hex(3)}"
        made = account_tool(["groupadd", GROUP_PREFIX + stack_id])
        if made.returncode != EXISTS:
            check(made)
            return stack_id
    raise AccountError("no free stack id after 20 tries")


def end_processes(account: str, timeout: float = 60.0) -> None:
    """Kills every process of `account` (one of ours) and waits until they are gone: userdel
    refuses an account that still runs a process."""
    uid = pwd.getpwnam(account).pw_uid
    limit = time.monotonic() + timeout
    while live_processes(uid):
        subprocess.run(["pkill", "-KILL", "-u", account], capture_output=True, check=False,
                       timeout=10)
        if time.monotonic() > limit:
            raise AccountError(f"processes of {account} outlive SIGKILL")
        time.sleep(0.1)


def live_processes(uid: int) -> list[int]:
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


def account_tool(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """useradd, userdel, groupadd or groupdel; waits while another process holds the lock on
    /etc/passwd or /etc/group (another stack adding or removing its accounts)."""
    limit = time.monotonic() + ACCOUNT_TOOL_WAIT
    while True:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if "lock" not in done.stderr or time.monotonic() > limit:
            return done
        time.sleep(0.2)


def check(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise AccountError(f"{' '.join(done.args)} failed ({done.returncode}): "
                           f"{done.stderr.strip()}")
