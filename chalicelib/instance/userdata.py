"""The archive instance's EC2 user-data: the boot config and boot.sh, run at every boot.

The control plane gives the user-data to RunInstances when it launches a shard's archive, as
the str render_user_data returns: "The AWS SDK for Python (Boto3) performs base64-encoding of
the UserData parameter for you" (EC2 user guide, "Work with instance user data"). At
that moment the volumes do not exist yet (the block device mapping makes them), so the boot
config names each host's volume by its device name (/dev/sdf, /dev/sdg, ... in host-name
order), and boot.sh finds the device the volume became (see boot.sh).

The user-data is a `#cloud-config` whose only module is `bootcmd`, which cloud-init runs at
*every* boot, once the network is up (the host key comes from SSM) and before sshd starts, so
sshd never serves the image's own host key or configuration to a host that checks strictly.
(An archive lives for one window, but a reboot, or an admin running offsite-boot again, must
find the same state.) Its commands write the boot config to `/etc/offsite/instance.conf` and
boot.sh to `/usr/local/sbin/offsite-boot`, then run it.

Both files travel gzip'd and base64'd inside the YAML: EC2 takes 16 KiB of user-data. boot.sh
travels without its comment lines (`boot_script`: its documentation stays in the repository,
and a heredoc's lines are kept as they are). Packed, it costs ~10 KB and a host ~20 bytes;
an archive has at most 21 volumes (the device names), so only a CA list of hundreds of keys
could pass the limit, and that raises
UserDataTooLargeError rather than being cut. gzip runs with a fixed mtime and records are
sorted, so the same hosts give the same user-data: "did it change?" is a string comparison.
read_boot_config unpacks what this module renders (the local stack boots its emulated
archives from it).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chalicelib.accounts import AccountNameError, account_name, check_account_prefix
from chalicelib.names import DEVICE_NAME, check_host_name

USER_DATA_LIMIT = 16 * 1024  # bytes, as EC2 counts them: before base64
CONFIG_PATH = "/etc/offsite/instance.conf"
SCRIPT_PATH = "/usr/local/sbin/offsite-boot"
BOOT_SCRIPT = Path(__file__).with_name("boot.sh")

REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
PARAMETER_NAME = re.compile(r"[A-Za-z0-9_./-]{1,2048}")
PUBLIC_KEY_LINE = re.compile(r"(?P<type>[a-z0-9@.-]+) (?P<blob>[A-Za-z0-9+/]+={0,2})( [ -~]*)?")
UID_RANGE = range(1000, 65534)
API_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~-]+)*")
CONFIG_COMMAND = re.compile(
    r"- 'echo (?P<packed>[A-Za-z0-9+/=]+) \| base64 -d \| gzip -dc > "
    + re.escape(CONFIG_PATH) + r"\.new'")


class BootConfigError(ValueError):
    pass


class InvalidDeviceNameError(BootConfigError):
    pass


class UserDataTooLargeError(BootConfigError):
    pass


@dataclass(frozen=True)
class BootConfig:
    """What a boot config says: host -> device of its backup volume, host -> device of its
    restore volume, the account prefix, and the uids given (host -> uid)."""

    hosts: dict[str, str]
    restores: dict[str, str]
    account_prefix: str
    uids: dict[str, int]
    ca_keys: tuple[str, ...] = ()
    region: str = ""
    host_key_parameter: str = ""
    api_url: str = ""  # where the instance posts its ready/failed signal (boot_signal.py)


def render_user_data(
    hosts: Sequence[tuple[str, str]],
    ca_public_key: str,
    host_key_parameter: str,
    region: str,
    *,
    uids: Mapping[str, int] | None = None,
    restores: Sequence[tuple[str, str]] = (),
    account_prefix: str = "",
    api_url: str = "",
) -> str:
    """The user-data for these (host name, device name) pairs and restore (host name, device
    name) pairs.

    Raises chalicelib.names.InvalidHostNameError, InvalidDeviceNameError, BootConfigError (CA
    key, parameter, region, duplicates, uids, accounts too long), AccountNameError (prefix) or
    UserDataTooLargeError; all are ValueErrors.
    """
    config = render_boot_config(hosts, ca_public_key, host_key_parameter, region, uids=uids,
                                restores=restores, account_prefix=account_prefix,
                                api_url=api_url)
    commands = [
        "set -e",
        "umask 022",
        f"mkdir -p {Path(CONFIG_PATH).parent} {Path(SCRIPT_PATH).parent}",
        *_unpack_commands(config.encode(), CONFIG_PATH, "0644"),
        *_unpack_commands(boot_script(), SCRIPT_PATH, "0755"),
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


_HEREDOC = re.compile(r"(?<!<)<<-?'?([A-Za-z_]+)'?")


def boot_script() -> bytes:
    """boot.sh as the instance gets it: the same lines but its full-line comments (the
    shebang kept, a heredoc's lines kept as they are: they are its output)."""
    kept, terminator = [], None
    for number, line in enumerate(BOOT_SCRIPT.read_text().splitlines(keepends=True)):
        if terminator is not None:
            kept.append(line)
            terminator = None if line.strip() == terminator else terminator
        elif number == 0 or not line.lstrip().startswith("#"):
            kept.append(line)
            if found := _HEREDOC.search(line):
                terminator = found[1]
    return "".join(kept).encode()


def render_boot_config(
    hosts: Sequence[tuple[str, str]],
    ca_public_key: str,
    host_key_parameter: str,
    region: str,
    *,
    uids: Mapping[str, int] | None = None,
    restores: Sequence[tuple[str, str]] = (),
    account_prefix: str = "",
    api_url: str = "",
) -> str:
    """The text of instance.conf, the file boot.sh reads (format in boot.sh's header).
    `hosts` are (host, device) pairs of backup volumes; `restores` (host, device) pairs of
    restore volumes, each for a host that may or may not have a backup volume too (a restore
    archive lists only restores). No device serves two volumes, no host has two of a kind.
    `uids` (host -> uid) are for listed hosts. `account_prefix` goes before each host's name
    to make its account (chalicelib/accounts.py); the record is written only when there is
    one, so the default config is unchanged; likewise `api_url`, the API the instance tells
    that its boot is done (no record: it tells nobody)."""
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
    if api_url:
        if not API_URL.fullmatch(api_url):
            raise BootConfigError(f"not an API URL: {api_url[:80]!r}")
        lines.append(f"api_url {api_url}")
    backups = _checked_pairs(hosts, "host", [])
    restored = _checked_pairs(restores, "restore", backups)
    names = {name for name, _ in backups} | {name for name, _ in restored}
    if unknown := set(uids) - names:
        raise BootConfigError(f"uids given for hosts not listed: {sorted(unknown)}")
    for uid_name, uid in sorted(uids.items()):
        if uid not in UID_RANGE:
            raise BootConfigError(f"uid of {uid_name} must be in [1000, 65533], not {uid}")
    if len(set(uids.values())) < len(uids):
        raise BootConfigError("two hosts share a uid")
    for name in sorted(names):
        _check_account(account_prefix, name)
    with_backup = {name for name, _ in backups}
    for name, device in sorted(backups):
        lines.append(f"host {name} {device}{_uid_field(uids, name)}")
    for name, device in sorted(restored):  # the uid goes on the host line when there is one
        uid_field = "" if name in with_backup else _uid_field(uids, name)
        lines.append(f"restore {name} {device}{uid_field}")
    return "\n".join(lines) + "\n"


def read_boot_config(user_data: str) -> BootConfig:
    """The boot config inside user-data that render_user_data made. Raises BootConfigError
    when there is none or it is not what render_boot_config would write for its own values."""
    match = CONFIG_COMMAND.search(user_data)
    if match is None:
        raise BootConfigError(f"no {CONFIG_PATH} in this user-data")
    try:
        text = gzip.decompress(base64.b64decode(match["packed"], validate=True)).decode()
    except (binascii.Error, OSError, EOFError, UnicodeDecodeError) as exc:
        raise BootConfigError(f"{CONFIG_PATH} does not unpack: {exc}") from exc
    config = _parse_boot_config(text)
    try:  # render's checks are the rules; a config that is not canonical was not rendered here
        rendered = render_boot_config(
            sorted(config.hosts.items()), "\n".join(config.ca_keys), config.host_key_parameter,
            config.region, uids=config.uids, restores=sorted(config.restores.items()),
            account_prefix=config.account_prefix, api_url=config.api_url)
    except BootConfigError:
        raise
    except ValueError as exc:  # a host name or account prefix
        raise BootConfigError(str(exc)) from exc
    if rendered != text:
        raise BootConfigError(f"{CONFIG_PATH} is not one this module renders")
    return config


def _parse_boot_config(text: str) -> BootConfig:
    values = {"region": "", "host_key_parameter": "", "account_prefix": "", "api_url": ""}
    ca_keys: list[str] = []
    volumes: dict[str, dict[str, str]] = {"host": {}, "restore": {}}
    uids: dict[str, int] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        fields = rest.split(" ")
        if kind in values:
            values[kind] = rest
        elif kind == "ca":
            ca_keys.append(rest)
        elif kind in volumes and len(fields) in (2, 3) and fields[0] not in volumes[kind]:
            volumes[kind][fields[0]] = fields[1]
            if len(fields) == 3:
                uids[fields[0]] = _uid_value(fields[2])
        elif kind and not kind.startswith("#"):
            raise BootConfigError(f"unknown or malformed record: {line[:80]!r}")
    return BootConfig(volumes["host"], volumes["restore"], values["account_prefix"], uids,
                      tuple(ca_keys), values["region"], values["host_key_parameter"],
                      values["api_url"])


def _uid_value(text: str) -> int:
    if not text.isdigit():
        raise BootConfigError(f"not a uid: {text[:20]!r}")
    return int(text)


def _uid_field(uids: Mapping[str, int], name: str) -> str:
    return f" {uids[name]}" if name in uids else ""


@dataclass(frozen=True)
class BootRenderer:
    """The window service's Boot port: the user-data for a window's hosts, with the CA public
    key read when asked (so a rotated CA reaches the next boot). A shard opens only when its
    instance says it is ready, so without `api_url` no archive could ever open: its launch
    fails at once with that reason rather than at the boot timeout."""

    ca_public_key: Callable[[], str]
    host_key_parameter: str
    region: str
    account_prefix: str = ""
    api_url: str = ""

    def user_data(self, hosts: Sequence[tuple[str, str]],
                  restores: Sequence[tuple[str, str]] = ()) -> str:
        """`hosts` and `restores`: (host name, device name) pairs."""
        if not self.api_url:
            raise BootConfigError("API_URL is not set: an archive instance could not say it "
                                  "is ready")
        names = {name for name, _ in [*hosts, *restores]}
        return render_user_data(hosts, self.ca_public_key(), self.host_key_parameter,
                                self.region, restores=restores, uids=stable_uids(names),
                                account_prefix=self.account_prefix, api_url=self.api_url)


STABLE_UIDS = range(2000, 65000)  # above the image's own users (ec2-user is 1000)


def stable_uids(names: Iterable[str]) -> dict[str, int]:
    """Each host's uid on its archive, the same from window to window whatever shard it is in,
    so that boot never has to re-own a volume's files: from a hash of its name, the next free
    one (in name order) when two hosts of one archive meet."""
    uids: dict[str, int] = {}
    taken: set[int] = set()
    span = len(STABLE_UIDS)
    for name in sorted(names):
        digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
        offset = digest % span
        while STABLE_UIDS[offset] in taken:
            offset = (offset + 1) % span
        uids[name] = STABLE_UIDS[offset]
        taken.add(uids[name])
    return uids


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
    """The (host, device name) pairs the boot config can list, and the hosts it must leave
    out: a host enrolled before the API refused its name, one whose account would be too long
    with the stage's prefix, a device that is not a data volume's or that an earlier host
    already has. Leaving one out keeps it from failing the boot of all the others."""
    listed: list[tuple[str, str]] = []
    left_out: list[LeftOut] = []
    for name, device in hosts:
        try:
            _check_pair(name, device, "host", listed, [])
            account_name(account_prefix, name)
        except ValueError as exc:
            left_out.append(LeftOut(str(name), str(exc)))
        else:
            listed.append((name, device))
    return listed, left_out


def _checked_pairs(pairs: Sequence[tuple[str, str]], kind: str,
                   others: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    listed: list[tuple[str, str]] = []
    for name, device in pairs:
        _check_pair(name, device, kind, listed, others)
        listed.append((name, device))
    return listed


def _check_pair(name: str, device: str, kind: str, listed: Sequence[tuple[str, str]],
                others: Sequence[tuple[str, str]]) -> None:
    """`listed`: pairs of the same kind so far; `others`: pairs of the other kind."""
    check_host_name(name)  # also refuses reserved and all-digit names: it becomes an account
    if not isinstance(device, str) or not DEVICE_NAME.fullmatch(device):
        raise InvalidDeviceNameError(
            f"{kind} device of {name} must be one of /dev/sdf to /dev/sdz: {device!r}")
    if any(name == other for other, _ in listed):
        raise BootConfigError(f"{kind} {name} is listed twice")
    if any(device == used for _, used in [*listed, *others]):
        raise BootConfigError(f"device {device} of {kind} {name} is listed twice")


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
