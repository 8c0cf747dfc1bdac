"""render_user_data: what it embeds, its size for a few hundred hosts, what it refuses."""

from __future__ import annotations

import base64
import gzip
import random

import pytest

from chalicelib.instance.userdata import (
    BOOT_SCRIPT,
    CONFIG_PATH,
    SCRIPT_PATH,
    USER_DATA_LIMIT,
    BootConfigError,
    InvalidVolumeIdError,
    LeftOut,
    UserDataTooLargeError,
    bootable_hosts,
    render_boot_config,
    render_user_data,
)
from chalicelib.names import InvalidHostNameError

yaml = pytest.importorskip("yaml")

CA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl offsite-ca"
PARAMETER = "/offsite/prod/host-key"
REGION = "eu-west-1"


def volume_ids(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [f"vol-{rng.getrandbits(68):017x}" for _ in range(count)]


def hosts(count: int) -> list[tuple[str, str]]:
    return [(f"srv-{i:03d}", volume) for i, volume in enumerate(volume_ids(count))]


def embedded(user_data: str) -> dict[str, bytes]:
    """The files the bootcmd writes: `echo <b64> | base64 -d | gzip -dc > <path>.new`."""
    files = {}
    for command in yaml.safe_load(user_data)["bootcmd"]:
        if command.startswith("echo "):
            packed, target = command.removeprefix("echo ").split(" | base64 -d | gzip -dc > ")
            files[target.removesuffix(".new")] = gzip.decompress(base64.b64decode(packed))
    return files


def test_the_user_data_writes_the_boot_config_and_boot_sh_then_runs_it() -> None:
    user_data = render_user_data(hosts(3), CA, PARAMETER, REGION, uids={"srv-001": 2001})
    assert user_data.startswith("#cloud-config\n")
    document = yaml.safe_load(user_data)
    assert list(document) == ["bootcmd"]
    assert document["bootcmd"][0] == "set -e"
    assert document["bootcmd"][-1] == SCRIPT_PATH
    config = render_boot_config(hosts(3), CA, PARAMETER, REGION, uids={"srv-001": 2001})
    assert embedded(user_data) == {
        CONFIG_PATH: config.encode(), SCRIPT_PATH: BOOT_SCRIPT.read_bytes()}


def test_the_boot_config_lists_the_hosts_sorted() -> None:
    volumes = volume_ids(2)
    config = render_boot_config(
        [("web", volumes[0]), ("db", volumes[1])], CA, PARAMETER, REGION, uids={"web": 3000})
    records = [line for line in config.splitlines() if not line.startswith("#")]
    assert records == [
        f"region {REGION}",
        f"host_key_parameter {PARAMETER}",
        f"ca {CA}",
        f"host db {volumes[1]}",
        f"host web {volumes[0]} 3000",
    ]


def test_the_same_hosts_in_any_order_give_the_same_user_data() -> None:
    listed = hosts(20)
    shuffled = random.Random(1).sample(listed, len(listed))
    assert render_user_data(listed, CA, PARAMETER, REGION) == render_user_data(
        shuffled, CA, PARAMETER, REGION)


def test_three_hundred_hosts_fit_in_ec2_user_data() -> None:
    user_data = render_user_data(hosts(300), CA, PARAMETER, REGION)
    assert len(user_data.encode()) <= USER_DATA_LIMIT
    assert user_data.isascii()


def test_too_many_hosts_is_refused_rather_than_truncated() -> None:
    with pytest.raises(UserDataTooLargeError, match="1000 hosts"):
        render_user_data(hosts(1000), CA, PARAMETER, REGION)


def test_several_ca_keys_are_kept_for_a_rotation() -> None:
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBUx1pzH3Nl9Wq0l6wq0WJ1kTu7dYvVq3b1YkJtV9Ak next"
    config = render_boot_config(hosts(1), f"{CA}\n\n{other}\n", PARAMETER, REGION)
    assert [line for line in config.splitlines() if line.startswith("ca ")] == [
        f"ca {CA}", f"ca {other}"]


@pytest.mark.parametrize(
    "name", ["", "Web", "web_1", "-web", "a" * 33, "web 1", "web;id", "123", "root", "adm",
             "halt", "ec2-instance-connect", "wheel"])
def test_a_host_name_that_cannot_be_an_account_is_refused(name: str) -> None:
    with pytest.raises(InvalidHostNameError):
        render_user_data([(name, volume_ids(1)[0])], CA, PARAMETER, REGION)


@pytest.mark.parametrize(
    "volume_id", ["", "vol-1234567", "vol-0123456789abcdef01", "vol-0123456789ABCDEF0",
                  "vol-zz", "vol-0123456789", "vol-0123456789abcdef",
                  "0123456789abcdef0", "vol-01234567 ", "snap-0123456789abcdef0"])
def test_a_malformed_volume_id_is_refused(volume_id: str) -> None:
    with pytest.raises(InvalidVolumeIdError):
        render_user_data([("web", volume_id)], CA, PARAMETER, REGION)


def test_bootable_hosts_leaves_out_only_what_boot_would_refuse() -> None:
    first, second = volume_ids(2)
    listed, left_out = bootable_hosts([("db", first), ("adm", second), ("web", "vol-zz"),
                                       ("web2", first), ("www", second)])
    assert listed == [("db", first), ("www", second)]
    assert [host.name for host in left_out] == ["adm", "web", "web2"]
    assert all(isinstance(host, LeftOut) and host.reason for host in left_out)
    render_user_data(listed, CA, PARAMETER, REGION)  # what is listed boots


def test_a_host_or_a_volume_listed_twice_is_refused() -> None:
    first, second = volume_ids(2)
    for listed in ([("web", first), ("web", second)], [("web", first), ("db", first)]):
        with pytest.raises(BootConfigError, match="twice"):
            render_user_data(listed, CA, PARAMETER, REGION)


@pytest.mark.parametrize(
    "ca",
    ["", "ssh-ed25519", "ssh-ed25519 not-base64!", CA.replace("ssh-ed25519 ", "ssh-rsa "),
     f"{CA}\x00", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
     " comment\nsneaky HostKey /etc/shadow"])
def test_a_ca_key_that_is_not_a_public_key_line_is_refused(ca: str) -> None:
    with pytest.raises(BootConfigError):
        render_user_data(hosts(1), ca, PARAMETER, REGION)


@pytest.mark.parametrize(
    ("parameter", "region"),
    [("", REGION), ("/offsite/host key", REGION), ("/offsite/$(id)", REGION),
     (PARAMETER, ""), (PARAMETER, "eu-west"), (PARAMETER, "eu-west-1; reboot")])
def test_a_malformed_parameter_or_region_is_refused(parameter: str, region: str) -> None:
    with pytest.raises(BootConfigError):
        render_user_data(hosts(1), CA, parameter, region)


@pytest.mark.parametrize(
    "uids", [{"srv-000": 0}, {"srv-000": 999}, {"srv-000": 65534}, {"nobody": 2000},
             {"srv-000": 2000, "srv-001": 2000}])
def test_a_uid_out_of_range_unknown_or_shared_is_refused(uids: dict[str, int]) -> None:
    with pytest.raises(BootConfigError):
        render_user_data(hosts(2), CA, PARAMETER, REGION, uids=uids)
