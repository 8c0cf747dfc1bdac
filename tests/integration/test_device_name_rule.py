"""One device name rule: boot.sh's DEVICE_RE (bash, on the instance) accepts exactly what
chalicelib.names.DEVICE_NAME (where the boot config is rendered) accepts, so a device the
control plane maps is a device that boots."""

from __future__ import annotations

import re
import subprocess

import pytest

from chalicelib.instance.userdata import BOOT_SCRIPT
from chalicelib.names import DEVICE_NAME

CANDIDATES = [
    "/dev/sdf", "/dev/sdz", "/dev/sda", "/dev/sda1", "/dev/sde", "/dev/sdF", "/dev/sdff",
    "/dev/xvdf", "sdf", "/dev/sdf ", " /dev/sdf", "/dev/sdf\nx", "/dev/nvme1n1", "/dev/sd",
    "/dev/sd[f-z]", "vol-0123456789abcdef0",
]


def _boot_rule() -> str:
    match = re.search(r"^DEVICE_RE='([^']*)'", BOOT_SCRIPT.read_text(), re.MULTILINE)
    assert match, "boot.sh defines DEVICE_RE"
    return match[1]


def _boot_accepts(device: str) -> bool:
    test = subprocess.run(["bash", "-c", '[[ $1 =~ $2 ]]', "bash", device, _boot_rule()],
                          check=False)
    return test.returncode == 0


@pytest.mark.parametrize("device", CANDIDATES)
def test_boot_and_the_renderer_agree(device: str) -> None:
    assert _boot_accepts(device) == bool(DEVICE_NAME.fullmatch(device))


def test_the_data_volume_names_are_accepted_and_others_are_not() -> None:
    assert {d for d in CANDIDATES if DEVICE_NAME.fullmatch(d)} == {"/dev/sdf", "/dev/sdz"}
    assert all(_boot_accepts(f"/dev/sd{c}") for c in "fghijklmnopqrstuvwxyz")
