"""The archive instance's EC2 user-data: the boot config and boot.sh, run at every boot.

The user-data is a `#cloud-config` whose only module is `bootcmd`:
- it runs at *every* boot, whereas `runcmd`, `write_files` and user scripts run once per
  instance: a host list changed while the instance was stopped (ModifyInstanceAttribute) would
  otherwise never reach it;
- it runs once the network is up (the host key comes from SSM) and before sshd starts, so sshd
  never serves the image's own host key or configuration to a host that checks strictly.
Its commands write the boot config to `/etc/offsite/instance.conf` and boot.sh to
`/usr/local/sbin/offsite-boot`, then run it; an admin can run it again by hand.

Both files travel gzip'd and base64'd inside the YAML: plain, boot.sh and 300 host lines do not
fit EC2's 16 KiB user-data limit. Packed, boot.sh costs ~9 KB and a host ~20 bytes: 300 hosts
named like `web-prod-03` come to ~15 KB (about 350 fit; fewer with long random names), and more
raise UserDataTooLargeError rather than being cut. gzip runs with a fixed mtime and hosts are
sorted, so the same hosts give the same user-data: "did it change?" is a string comparison.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chalicelib.accounts import AccountNameError, account_name, check_account_prefix
from chalicelib.names import VOLUME_ID, check_host_name

USER_DATA_LIMIT = 16 * 1024  # bytes, as EC2 counts them: before base64
CONFIG_PATH = "/etc/offsite/instance.conf"
SCRIPT_PATH = "/usr/local/sbin/offsite-boot"
BOOT_SCRIPT = Path(__file__).with_name("boot.sh")

REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
PARAMETER_NAME = re.compile(r"[A-Za-z0-9_./-]{1,2048}")
PUBLIC_KEY_LINE = re.compile(r"(?P<type>[a-z0-9@.-]+) (?P<blob>[A-Za-z0-9+/]+={0,2})( [ -~]*)?")
UID_RANGE = range(1000, 65534)


class BootConfigError(ValueError):
    pass


class InvalidVolumeIdError(BootConfigError):
    pass


class UserDataTooLargeError(BootConfigError):
    pass


def render_user_data(
    hosts: Sequence[tuple[str, str]],
    ca_public_key: str,
    host_key_parameter: str,
    region: str,
    *,
    uids: Mapping[str, int] | None = None,
    restores: Sequence[tuple[str, str]] = (),
    account_prefix: str = "",
) -> str:
    """The user-data for these (host name, volume id) pairs.

    Raises chalicelib.names.InvalidHostNameError, InvalidVolumeIdError, BootConfigError (CA
    key, parameter, region, duplicates, uids, accounts too long), AccountNameError (prefix) or
    UserDataTooLargeError; all are ValueErrors.
    """
    config = render_boot_config(hosts, ca_public_key, host_key_parameter, region, uids=uids,
                                restores=restores, account_prefix=account_prefix)
    commands = [
        "set -e",
        "umask 022",
        f"mkdir -p {Path(CONFIG_PATH).parent} {Path(SCRIPT_PATH).parent}",
        *_unpack_commands(config.encode(), CONFIG_PATH, "0644"),
        *_unpack_commands(BOOT_SCRIPT.read_bytes(), SCRIPT_PATH, "0755"),
        SCRIPT_PATH,
    ]
    user_data = "\n".join([
        "#cloud-config",
        "# Offsite archive instance (chalicelib/instance/userdata.py). bootcmd runs at every",
        "# boot, before sshd: it writes the boot config and offsite-boot, then runs it.",
        "bootcmd:",
        *(f"- '{command}'" for command in commands),  # no command holds a single quote
        "",
    ])
    size = len(user_data.encode())
    if size > USER_DATA_LIMIT:
        raise UserDataTooLargeError(
            f"user-data for {len(hosts)} hosts is {size} bytes; EC2 takes {USER_DATA_LIMIT}")
    return user_data


def render_boot_config(
    hosts: Sequence[tuple[str, str]],
    ca_public_key: str,
    host_key_parameter: str,
    region: str,
    *,
    uids: Mapping[str, int] | None = None,
    restores: Sequence[tuple[str, str]] = (),
    account_prefix: str = "",
) -> str:
    """The text of instance.conf, the file boot.sh reads (format in boot.sh's header).
    `restores` are (host, volume id) pairs of restore volumes, each for a listed host.
    `account_prefix` goes before each host's name to make its account (chalicelib/accounts.py);
    the record is written only when there is one, so the default config is unchanged."""
    uids = uids or {}
    if not REGION.fullmatch(region):
        raise BootConfigError(f"not an AWS region: {region!r}")
    if not PARAMETER_NAME.fullmatch(host_key_parameter):
        raise BootConfigError(f"not an SSM parameter name: {host_key_parameter!r}")
    lines = [
        "# Offsite archive instance boot config: read by offsite-boot at every boot.",
        f"region {region}",
        f"host_key_parameter {host_key_parameter}",
        *(f"ca {line}" for line in _ca_key_lines(ca_public_key)),
    ]
    if check_account_prefix(account_prefix):
        lines.append(f"account_prefix {account_prefix}")
    names = {name for name, _ in hosts}
    if unknown := set(uids) - names:
        raise BootConfigError(f"uids given for hosts not listed: {sorted(unknown)}")
    for name, volume_id in sorted(_checked_hosts(hosts)):
        _check_account(account_prefix, name)
        uid = uids.get(name)
        if uid is not None and uid not in UID_RANGE:
            raise BootConfigError(f"uid of {name} must be in [1000, 65533], not {uid}")
        lines.append(f"host {name} {volume_id}" + ("" if uid is None else f" {uid}"))
    if len(set(uids.values())) < len(uids):
        raise BootConfigError("two hosts share a uid")
    for name, volume_id in sorted(restores):
        if name not in names:
            raise BootConfigError(f"a restore volume for {name}, which is not listed")
        if not VOLUME_ID.fullmatch(volume_id):
            raise InvalidVolumeIdError(
                f"restore volume id of {name} must match {VOLUME_ID.pattern}: {volume_id!r}")
        lines.append(f"restore {name} {volume_id}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class BootRenderer:
    """The window service's Boot port: the user-data for a window's hosts, with the CA public
    key read when asked (so a rotated CA reaches the next boot)."""

    ca_public_key: Callable[[], str]
    host_key_parameter: str
    region: str
    account_prefix: str = ""

    def user_data(self, hosts: Sequence[tuple[str, str]],
                  restores: Sequence[tuple[str, str]] = ()) -> str:
        return render_user_data(hosts, self.ca_public_key(), self.host_key_parameter,
                                self.region, restores=restores,
                                account_prefix=self.account_prefix)


def _check_account(prefix: str, name: str) -> None:
    try:
        account_name(prefix, name)
    except AccountNameError as exc:  # the window fails with this reason, not the Lambda
        raise BootConfigError(str(exc)) from exc


@dataclass(frozen=True)
class LeftOut:
    """A host the boot config cannot list, and why."""

    name: str
    reason: str


def bootable_hosts(
    hosts: Sequence[tuple[str, str]], account_prefix: str = "",
) -> tuple[list[tuple[str, str]], list[LeftOut]]:
    """The (host, volume id) pairs the boot config can list, and the hosts it must leave out:
    a host enrolled before the API refused its name or volume id, one whose account would be
    too long with the stage's prefix, or on a volume an earlier host already has. Leaving one
    out keeps it from failing the boot of all the others."""
    listed: list[tuple[str, str]] = []
    left_out: list[LeftOut] = []
    for name, volume_id in hosts:
        try:
            _check_host(name, volume_id, listed)
            account_name(account_prefix, name)
        except ValueError as exc:
            left_out.append(LeftOut(str(name), str(exc)))
        else:
            listed.append((name, volume_id))
    return listed, left_out


def _checked_hosts(hosts: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    listed: list[tuple[str, str]] = []
    for name, volume_id in hosts:
        _check_host(name, volume_id, listed)
        listed.append((name, volume_id))
    return listed


def _check_host(name: str, volume_id: str, listed: Sequence[tuple[str, str]]) -> None:
    check_host_name(name)  # also refuses reserved and all-digit names: it becomes an account
    if not isinstance(volume_id, str) or not VOLUME_ID.fullmatch(volume_id):
        raise InvalidVolumeIdError(
            f"volume id of {name} must match {VOLUME_ID.pattern}: {volume_id!r}")
    if any(name == other or volume_id == volume for other, volume in listed):
        raise BootConfigError(f"host {name} or volume {volume_id} is listed twice")


def _ca_key_lines(text: str) -> list[str]:
    """One or more OpenSSH public key lines (several while the CA rotates)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise BootConfigError("no CA public key")
    for line in lines:
        match = PUBLIC_KEY_LINE.fullmatch(line)
        if not match or not _blob_names_type(match["blob"], match["type"]):
            raise BootConfigError(f"not an OpenSSH public key line: {line[:40]!r}...")
    return lines


def _blob_names_type(blob: str, key_type: str) -> bool:
    """RFC 4253 6.6: the key blob starts with its type as an SSH `string`."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error:
        return False
    name = key_type.encode()
    return raw[:4 + len(name)] == len(name).to_bytes(4, "big") + name


def _unpack_commands(content: bytes, path: str, mode: str) -> list[str]:
    """Shell commands that write `content` to `path` with `mode`, atomically."""
    packed = base64.b64encode(gzip.compress(content, compresslevel=9, mtime=0)).decode()
    return [
        f"echo {packed} | base64 -d | gzip -dc > {path}.new",
        f"chmod {mode} {path}.new",
        f"mv -f {path}.new {path}",
    ]
