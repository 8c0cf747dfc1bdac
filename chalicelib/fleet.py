"""The archive fleet, as pure code: which hosts each archive instance serves, on which devices,
and which (instance type, subnet) pairs a launch may try, in order.

Archives run only on Nitro instance types: their EBS volumes appear as NVMe devices that
boot.sh finds by the block device mapping's name. On Nitro, EBS volumes, network interfaces and
NVMe instance-store volumes share one attachment limit, 28 on most types ("Amazon EBS volume
limits for Amazon EC2 instances", EC2 User Guide), and the device names we map are /dev/sdf to
/dev/sdz ("Device names on Linux instances": the range recommended for EBS volumes): 21 data
volumes beside the root volume and the network interface.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

DEVICE_NAMES = tuple(f"/dev/sd{c}" for c in "fghijklmnopqrstuvwxyz")
NITRO_ATTACHMENTS = 28  # shared by the root volume, the data volumes and the one ENI
MAX_HOSTS_PER_ARCHIVE = min(len(DEVICE_NAMES), NITRO_ATTACHMENTS - 2)
DEFAULT_HOSTS_PER_ARCHIVE = 20
# Cheapest first: Graviton (t4g) is the cheapest small type in the price file.
DEFAULT_INSTANCE_TYPES = ("t4g.small", "t3a.small", "t3.small")
# The AMI, per architecture: Amazon Linux 2023's public SSM parameters, which RunInstances
# resolves itself at launch ("Use a Systems Manager parameter instead of an AMI ID", EC2 User
# Guide: ImageId "resolve:ssm:<public parameter>").
DEFAULT_IMAGES = {
    "arm64": "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
    "x86_64":
        "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
}

# Families built on Nitro (EC2 User Guide, "Instances built on the AWS Nitro System"); Xen ones
# (t2, m4, c4, r4, ...) present EBS as /dev/xvd* without NVMe and are refused.
_NITRO_FAMILY = re.compile(
    r"(t3a?|t4g|a1|[cmr][5-9][a-z]*(-flex)?|i3en|i4[gi]|i7ie?|x2[a-z]*|z1d|inf[12]|g[4-6][a-z]*)")
_GRAVITON_FAMILY = re.compile(r"(a1|[a-z]+[0-9]+g[a-z]*)")
_INSTANCE_TYPE = re.compile(r"([a-z][a-z0-9-]*)\.([a-z0-9]+)")


class FleetConfigError(ValueError):
    pass


def family(instance_type: str) -> str:
    found = _INSTANCE_TYPE.fullmatch(instance_type)
    if not found:
        raise FleetConfigError(f"not an EC2 instance type: {instance_type!r}")
    return found.group(1)


def architecture(instance_type: str) -> str:
    """arm64 for Graviton types, x86_64 for the others."""
    return "arm64" if _GRAVITON_FAMILY.fullmatch(family(instance_type)) else "x86_64"


def check_instance_types(types: Sequence[str]) -> tuple[str, ...]:
    """The types, each checked to be a Nitro type (boot.sh finds volumes as NVMe devices)."""
    for instance_type in types:
        if not _NITRO_FAMILY.fullmatch(family(instance_type)):
            raise FleetConfigError(
                f"{instance_type} is not built on the Nitro system; archives need NVMe EBS "
                f"devices: use a type such as {', '.join(DEFAULT_INSTANCE_TYPES)}")
    if not types:
        raise FleetConfigError("name at least one instance type")
    return tuple(types)


def check_hosts_per_archive(value: int) -> int:
    if not 1 <= value <= MAX_HOSTS_PER_ARCHIVE:
        raise FleetConfigError(
            f"hosts per archive must be 1 to {MAX_HOSTS_PER_ARCHIVE} (one data volume per host, "
            f"on /dev/sdf-/dev/sdz, within Nitro's {NITRO_ATTACHMENTS} attachments)")
    return value


def plan_shards(hosts: Iterable[str], per_archive: int) -> dict[str, frozenset[str]]:
    """The hosts split into as few archives as `per_archive` allows, as even as can be
    (sizes differ by one at most), in name order: shard id -> hosts."""
    names = sorted(set(hosts))
    if not names:
        return {}
    count = math.ceil(len(names) / check_hosts_per_archive(per_archive))
    width = max(2, len(str(count)))
    base, extra = divmod(len(names), count)
    shards, start = {}, 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        shards[f"s{index + 1:0{width}d}"] = frozenset(names[start:start + size])
        start += size
    return shards


def devices(hosts: Iterable[str]) -> dict[str, str]:
    """Each host's device on its archive, in name order: host -> /dev/sdX."""
    names = sorted(hosts)
    if len(names) > MAX_HOSTS_PER_ARCHIVE:
        raise FleetConfigError(f"{len(names)} hosts on one archive; at most "
                               f"{MAX_HOSTS_PER_ARCHIVE}")
    return dict(zip(names, DEVICE_NAMES, strict=False))


@dataclass(frozen=True)
class Placement:
    instance_type: str
    subnet_id: str | None  # None: the launch template's (or the default VPC's)
    image_id: str


def placements(types: Sequence[str], subnets: Sequence[str],
               images: Mapping[str, str] | None = None) -> list[Placement]:
    """Every (type, subnet) pair in the order a launch tries them: each type (cheapest first)
    in every subnet (so every Availability Zone) before the next type."""
    images = images or DEFAULT_IMAGES
    where: list[str | None] = list(subnets) or [None]
    return [Placement(t, s, images[architecture(t)])
            for t in check_instance_types(types) for s in where]
