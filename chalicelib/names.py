"""Host names: each becomes a Unix account on the instance and a path, so only a narrow
alphabet is accepted."""

from __future__ import annotations

import re

HOST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


# Accounts a Linux image already has: a host of that name would become that account.
RESERVED = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
    "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "sshd", "messagebus",
    "admin", "ubuntu", "debian", "ec2-user", "centos", "fedora", "ssm-user", "chrony",
    "systemd-network", "systemd-resolve", "systemd-timesync", "systemd-coredump", "polkitd",
    "_apt", "tss", "offsite",
})


class InvalidHostNameError(ValueError):
    pass


def check_host_name(name: object) -> str:
    """The name, if it can safely be a Unix account (the certificate's principal) and a path."""
    if not isinstance(name, str) or not HOST_NAME.fullmatch(name):
        raise InvalidHostNameError(
            f"host name must match {HOST_NAME.pattern} (lowercase letters, digits, '-'; "
            "at most 32 characters)")
    if name in RESERVED or name.isdigit():
        raise InvalidHostNameError(f"host name {name!r} is reserved on the archive instance")
    return name
