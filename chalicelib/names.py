"""Names that become part of the archive instance: host names (each a Unix account and a path),
EBS volume ids (given at enrolment) and the device names of the block device mapping (each
found by boot.sh at boot). One rule for each, used at the API's edge or where the archive is
launched, and again when the boot config is rendered."""

from __future__ import annotations

import functools
import re
from pathlib import Path

HOST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
RESERVED_NAMES_FILE = Path(__file__).with_name("reserved_names.txt")

# EC2 API reference / user guide, "Resource IDs": `vol-` and 8 (before 2016) or 17 (since)
# characters; EC2 writes them in lowercase hex. boot.sh's VOLUME_RE is the same rule.
VOLUME_ID = re.compile(r"vol-(?:[0-9a-f]{8}|[0-9a-f]{17})")

# EC2 user guide, "Device names for volumes on Amazon EC2 instances": /dev/sd[f-z] are the names
# for EBS data volumes on Linux (the root volume has /dev/sda1 or /dev/xvda). The archive's
# block device mapping hands them out in host-name order (adapters/compute.DEVICE_NAMES), so an
# archive has at most 21 volumes. boot.sh's DEVICE_RE is the same rule.
DEVICE_NAME = re.compile(r"/dev/sd[f-z]")


class InvalidHostNameError(ValueError):
    pass


class InvalidVolumeIdError(ValueError):
    pass


class InvalidDeviceNameError(ValueError):
    pass


@functools.cache
def reserved_names() -> frozenset[str]:
    """Accounts and groups the archive instance's image already has (see the data file)."""
    return parse_name_list(RESERVED_NAMES_FILE.read_text(encoding="utf-8"))


def parse_name_list(text: str) -> frozenset[str]:
    """One name a line; `#` starts a comment; blank lines are skipped."""
    return frozenset(name for line in text.splitlines() if (name := line.split("#")[0].strip()))


def check_host_name(name: object) -> str:
    """The name, if it can safely be a Unix account (the certificate's principal) and a path."""
    if not isinstance(name, str) or not HOST_NAME.fullmatch(name):
        raise InvalidHostNameError(
            f"host name must match {HOST_NAME.pattern} (lowercase letters, digits, '-'; "
            "at most 32 characters)")
    if name in reserved_names() or name.isdigit():
        raise InvalidHostNameError(
            f"host name {name!r} is reserved: the archive instance already has an account "
            "or group of that name")
    return name


def check_volume_id(volume_id: object) -> str:
    """The id, if it is an EBS volume id as EC2 writes them."""
    if not isinstance(volume_id, str) or not VOLUME_ID.fullmatch(volume_id):
        raise InvalidVolumeIdError(
            f"volume_id must be an EBS volume id: 'vol-' and 8 or 17 lowercase hex digits, "
            f"not {str(volume_id)[:40]!r}")
    return volume_id


def check_device_name(device: object) -> str:
    """The name, if it is a data volume's device name in the archive's block device mapping."""
    if not isinstance(device, str) or not DEVICE_NAME.fullmatch(device):
        raise InvalidDeviceNameError(
            f"device must be one of /dev/sdf to /dev/sdz, not {str(device)[:40]!r}")
    return device
