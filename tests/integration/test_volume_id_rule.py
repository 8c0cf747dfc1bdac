"""One volume id rule: boot.sh's VOLUME_RE (bash, on the instance) accepts exactly what
chalicelib.names.VOLUME_ID (the API's edge) accepts, so an id enrolled is an id that boots."""

from __future__ import annotations

import re
import subprocess

import pytest

from chalicelib.instance.userdata import BOOT_SCRIPT
from chalicelib.names import VOLUME_ID

CANDIDATES = [
    "vol-0123abcd", "vol-0123456789abcdef0", "vol-zz", "vol-0123456789", "vol-0123456",
    "vol-0123456789abcdef", "vol-0123456789abcdef01", "vol-0123456789ABCDEF0", "vol-",
    "vol-0123abcd ", " vol-0123abcd", "vol-0123abcd\nx", "snap-0123456789abcdef0", "vol-abcdefgh",
]


def _boot_rule() -> str:
    match = re.search(r"^VOLUME_RE='([^']*)'", BOOT_SCRIPT.read_text(), re.MULTILINE)
    assert match, "boot.sh defines VOLUME_RE"
    return match[1]


def _boot_accepts(volume_id: str) -> bool:
    test = subprocess.run(["bash", "-c", '[[ $1 =~ $2 ]]', "bash", volume_id, _boot_rule()],
                          check=False)
    return test.returncode == 0


@pytest.mark.parametrize("volume_id", CANDIDATES)
def test_boot_and_the_api_agree(volume_id: str) -> None:
    assert _boot_accepts(volume_id) == bool(VOLUME_ID.fullmatch(volume_id))


def test_both_lengths_ec2_uses_are_accepted_and_others_are_not() -> None:
    accepted = {v for v in CANDIDATES if VOLUME_ID.fullmatch(v)}
    assert accepted == {"vol-0123abcd", "vol-0123456789abcdef0"}
