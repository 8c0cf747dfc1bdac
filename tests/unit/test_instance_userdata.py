"""render_user_data: what it embeds, the boot config's records (volumes by device name), what it
refuses, and read_boot_config, which unpacks it again."""

from __future__ import annotations

import base64
import gzip
import random

import pytest
from nacl.signing import SigningKey

from chalicelib.instance.userdata import (
    BOOT_SCRIPT,
    CONFIG_PATH,
    SCRIPT_PATH,
    USER_DATA_LIMIT,
    BootConfig,
    BootConfigError,
    InvalidDeviceNameError,
    LeftOut,
    UserDataTooLargeError,
    boot_script,
    bootable_hosts,
    read_boot_config,
    render_boot_config,
    render_user_data,
)
from chalicelib.names import DEVICE_NAME, InvalidHostNameError
from chalicelib.sshcert import ca_public_key_line

yaml = pytest.importorskip("yaml")

CA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl offsite-ca"
PARAMETER = "/offsite/prod/host-key"
REGION = "eu-west-1"
DEVICES = [f"/dev/sd{letter}" for letter in "fghijklmnopqrstuvwxyz"]  # compute.DEVICE_NAMES


def devices(count: int) -> list[str]:
    return DEVICES[:count]


def hosts(count: int) -> list[tuple[str, str]]:
    return [(f"srv-{i:03d}", device) for i, device in enumerate(devices(count))]


def embedded(user_data: str) -> dict[str, bytes]:
    """The files the bootcmd writes: `echo <b64> | base64 -d | gzip -dc > <path>.new`."""
    files = {}
    for command in yaml.safe_load(user_data)["bootcmd"]:
        if command.startswith("echo "):
            packed, target = command.removeprefix("echo ").split(" | base64 -d | gzip -dc > ")
            files[target.removesuffix(".new")] = gzip.decompress(base64.b64decode(packed))
    return files


def records(config: str) -> list[str]:
    return [line for line in config.splitlines() if not line.startswith("#")]


def test_the_user_data_writes_the_boot_config_and_boot_sh_then_runs_it() -> None:
    user_data = render_user_data(hosts(3), CA, PARAMETER, REGION, uids={"srv-001": 2001})
    assert user_data.startswith("#cloud-config\n")
    document = yaml.safe_load(user_data)
    assert list(document) == ["bootcmd"]
    assert document["bootcmd"][0] == "set -e"
    assert document["bootcmd"][-1] == SCRIPT_PATH
    config = render_boot_config(hosts(3), CA, PARAMETER, REGION, uids={"srv-001": 2001})
    assert embedded(user_data) == {
        CONFIG_PATH: config.encode(), SCRIPT_PATH: boot_script()}


def test_boot_sh_travels_without_its_comment_lines_but_with_every_other_line() -> None:
    """The comments are a third of boot.sh; a heredoc's lines are output, kept as written."""
    source = BOOT_SCRIPT.read_text().splitlines()
    shipped = boot_script().decode().splitlines()
    assert shipped[0] == source[0] == "#!/bin/bash"
    code = [line for line in source[1:] if not line.lstrip().startswith("#")]
    heredoc_comments = [line for line in shipped[1:] if line.lstrip().startswith("#")]
    assert heredoc_comments and all(line in source for line in heredoc_comments)
    assert [line for line in shipped[1:] if line not in heredoc_comments] == code
    assert len(boot_script()) < 0.8 * len(BOOT_SCRIPT.read_bytes())


def test_the_boot_config_lists_the_hosts_sorted_with_their_devices() -> None:
    config = render_boot_config(
        [("web", "/dev/sdf"), ("db", "/dev/sdg")], CA, PARAMETER, REGION, uids={"web": 3000})
    assert records(config) == [
        f"region {REGION}",
        f"host_key_parameter {PARAMETER}",
        f"ca {CA}",
        "host db /dev/sdg",
        "host web /dev/sdf 3000",
    ]


def test_a_restore_archive_lists_only_its_restore_with_the_uid_on_that_line() -> None:
    config = render_boot_config([], CA, PARAMETER, REGION, restores=[("web", "/dev/sdf")],
                                uids={"web": 3000})
    assert records(config)[3:] == ["restore web /dev/sdf 3000"]
    config = render_boot_config([], CA, PARAMETER, REGION, restores=[("web", "/dev/sdf")])
    assert records(config)[3:] == ["restore web /dev/sdf"]


def test_a_host_with_a_backup_and_a_restore_volume_has_its_uid_once() -> None:
    config = render_boot_config([("web", "/dev/sdf")], CA, PARAMETER, REGION,
                                restores=[("web", "/dev/sdg")], uids={"web": 3000})
    assert records(config)[3:] == ["host web /dev/sdf 3000", "restore web /dev/sdg"]


def test_the_same_hosts_in_any_order_give_the_same_user_data() -> None:
    listed = hosts(20)
    shuffled = random.Random(1).sample(listed, len(listed))
    assert render_user_data(listed, CA, PARAMETER, REGION) == render_user_data(
        shuffled, CA, PARAMETER, REGION)


def test_a_full_archive_fits_in_ec2_user_data() -> None:
    """21 devices, each host with a 32-character account and a uid: the most an archive has."""
    listed = [(f"{i:02d}".rjust(32, "h"), device) for i, device in enumerate(DEVICES)]
    uids = {name: 60000 + i for i, (name, _) in enumerate(listed)}
    user_data = render_user_data(listed, CA, PARAMETER, REGION, uids=uids)
    assert len(user_data.encode()) <= USER_DATA_LIMIT
    assert user_data.isascii()


def test_too_large_a_user_data_is_refused_rather_than_truncated() -> None:
    rng = random.Random(3)
    prefix = len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519"
    blobs = [base64.b64encode(prefix + rng.randbytes(36)).decode() for _ in range(300)]
    keys = [f"ssh-ed25519 {blob}" for blob in blobs]  # more than a rotation has: the limit holds
    with pytest.raises(UserDataTooLargeError, match="1 hosts"):
        render_user_data(hosts(1), "\n".join(keys), PARAMETER, REGION)


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
        render_user_data([(name, "/dev/sdf")], CA, PARAMETER, REGION)
    with pytest.raises(InvalidHostNameError):
        render_user_data([], CA, PARAMETER, REGION, restores=[(name, "/dev/sdf")])


BAD_DEVICES = ["", "/dev/sda", "/dev/sda1", "/dev/sde", "/dev/sdF", "/dev/sdff", "/dev/xvdf",
               "sdf", "/dev/nvme1n1", "/dev/sdf ", "/dev/sd", "/dev/../sdf", "/dev/sdf\n",
               "vol-0123456789abcdef0"]


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_a_device_that_is_not_a_data_volumes_is_refused(device: str) -> None:
    assert not DEVICE_NAME.fullmatch(device)
    with pytest.raises(InvalidDeviceNameError):
        render_user_data([("web", device)], CA, PARAMETER, REGION)
    with pytest.raises(InvalidDeviceNameError):
        render_user_data([], CA, PARAMETER, REGION, restores=[("web", device)])


def test_every_device_the_archive_hands_out_is_accepted() -> None:
    assert all(DEVICE_NAME.fullmatch(device) for device in DEVICES)
    render_boot_config(hosts(21), CA, PARAMETER, REGION)


def test_bootable_hosts_leaves_out_only_what_boot_would_refuse() -> None:
    listed, left_out = bootable_hosts([("db", "/dev/sdf"), ("adm", "/dev/sdg"),
                                       ("web", "/dev/sda1"), ("web2", "/dev/sdf"),
                                       ("www", "/dev/sdg"), ("db", "/dev/sdh")])
    assert listed == [("db", "/dev/sdf"), ("www", "/dev/sdg")]
    assert [host.name for host in left_out] == ["adm", "web", "web2", "db"]
    assert all(isinstance(host, LeftOut) and host.reason for host in left_out)
    render_user_data(listed, CA, PARAMETER, REGION)  # what is listed boots


@pytest.mark.parametrize(
    ("listed", "restores"),
    [([("web", "/dev/sdf"), ("web", "/dev/sdg")], []),
     ([("web", "/dev/sdf"), ("db", "/dev/sdf")], []),
     ([], [("web", "/dev/sdf"), ("web", "/dev/sdg")]),
     ([], [("web", "/dev/sdf"), ("db", "/dev/sdf")]),
     ([("web", "/dev/sdf")], [("db", "/dev/sdf")]),
     ([("web", "/dev/sdf")], [("web", "/dev/sdf")])],
    ids=["host twice", "device twice", "restore twice", "restore device twice",
         "a device for a backup and a restore", "one volume as backup and restore"])
def test_a_host_or_a_device_listed_twice_is_refused(
        listed: list[tuple[str, str]], restores: list[tuple[str, str]]) -> None:
    with pytest.raises(BootConfigError, match="twice"):
        render_user_data(listed, CA, PARAMETER, REGION, restores=restores)


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


# read_boot_config ----------------------------------------------------------------------------

def test_read_boot_config_gives_back_what_was_rendered() -> None:
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBUx1pzH3Nl9Wq0l6wq0WJ1kTu7dYvVq3b1YkJtV9Ak next"
    user_data = render_user_data(
        [("web", "/dev/sdg"), ("db", "/dev/sdf")], f"{CA}\n{other}", PARAMETER, REGION,
        uids={"web": 3000, "old": 3001}, restores=[("old", "/dev/sdh"), ("web", "/dev/sdi")],
        account_prefix="o1a2b3-")
    assert read_boot_config(user_data) == BootConfig(
        hosts={"db": "/dev/sdf", "web": "/dev/sdg"},
        restores={"old": "/dev/sdh", "web": "/dev/sdi"},
        account_prefix="o1a2b3-",
        uids={"web": 3000, "old": 3001},
        ca_keys=(CA, other), region=REGION, host_key_parameter=PARAMETER)


def test_read_boot_config_of_a_restore_archive() -> None:
    config = read_boot_config(render_user_data([], CA, PARAMETER, REGION,
                                               restores=[("web", "/dev/sdf")]))
    assert (config.hosts, config.restores, config.uids, config.account_prefix) == (
        {}, {"web": "/dev/sdf"}, {}, "")


def repacked(user_data: str, change: str, to: str) -> str:
    """The user-data with its boot config edited, packed as render_user_data packs it."""
    packed = next(line.split()[2] for line in user_data.splitlines()
                  if line.endswith(f"> {CONFIG_PATH}.new'"))
    config = gzip.decompress(base64.b64decode(packed)).decode()
    assert change in config
    edited = base64.b64encode(gzip.compress(config.replace(change, to).encode())).decode()
    return user_data.replace(packed, edited)


@pytest.mark.parametrize(
    ("change", "to"),
    [("host web /dev/sdf", "host web /dev/sda1"),  # not a data volume's device
     ("host web /dev/sdf", "host web /dev/sdg"),  # a device twice
     ("host web /dev/sdf", "host web /dev/sdf 12 13"),
     ("host web /dev/sdf", "host web /dev/sdf x"),
     ("host web /dev/sdf", "host web"),
     ("host web /dev/sdf", "host web /dev/sdf\nhost web /dev/sdh"),  # a host twice
     ("host web /dev/sdf", "host Web /dev/sdf"),
     ("host web /dev/sdf", "volume web /dev/sdf"),
     ("host db /dev/sdg\nhost web", "host web /dev/sdf\nhost db /dev/sdg\nhost xx"),  # unsorted
     (f"region {REGION}", "region nowhere")])
def test_read_boot_config_refuses_what_render_would_not_write(change: str, to: str) -> None:
    user_data = render_user_data([("web", "/dev/sdf"), ("db", "/dev/sdg")], CA, PARAMETER, REGION)
    with pytest.raises(BootConfigError):
        read_boot_config(repacked(user_data, change, to))


def test_read_boot_config_refuses_user_data_without_a_boot_config() -> None:
    user_data = render_user_data(hosts(1), CA, PARAMETER, REGION)
    for text in ["", "#cloud-config\nbootcmd: []\n",
                 user_data.replace(f"> {CONFIG_PATH}.new", "> /tmp/elsewhere.new")]:
        with pytest.raises(BootConfigError):
            read_boot_config(text)


def test_a_hosts_uid_is_the_same_in_whatever_archive_it_is() -> None:
    from chalicelib.instance.userdata import STABLE_UIDS, stable_uids

    alone = stable_uids(["web-01"])
    among = stable_uids(["web-01", "db-01", "mail", "zz-9"])
    assert alone["web-01"] == among["web-01"]
    assert len(set(among.values())) == 4 and set(among.values()) <= set(STABLE_UIDS)


def test_two_hosts_whose_hashes_meet_get_distinct_uids(monkeypatch: pytest.MonkeyPatch) -> None:
    import chalicelib.instance.userdata as userdata

    monkeypatch.setattr(userdata, "STABLE_UIDS", range(2000, 2002))
    uids = userdata.stable_uids(["a", "b"])
    assert sorted(uids.values()) == [2000, 2001]


def test_the_renderer_gives_each_host_its_stable_uid() -> None:
    from chalicelib.instance.userdata import BootRenderer, read_boot_config, stable_uids

    ca = ca_public_key_line(SigningKey.generate())
    renderer = BootRenderer(lambda: ca, "/offsite/test/host-key", "us-east-1",
                            api_url="https://api.offsite.test/api")
    config = read_boot_config(renderer.user_data([("c", "/dev/sdf"), ("h", "/dev/sdg")]))
    assert config.uids == stable_uids(["c", "h"])
    assert config.api_url == "https://api.offsite.test/api"
    restore = read_boot_config(renderer.user_data([], [("c", "/dev/sdf")]))
    assert restore.uids == {"c": stable_uids(["c"])["c"]}


def test_the_api_url_is_a_record_and_the_renderer_needs_one() -> None:
    """OPEN waits for the instance's ready signal, so an archive that could not send one
    fails its launch at once, naming API_URL, instead of at the boot timeout."""
    from chalicelib.instance.userdata import BootRenderer

    url = "https://abc123.execute-api.eu-west-1.amazonaws.com/api"
    config = render_boot_config(hosts(1), CA, PARAMETER, REGION, api_url=url)
    assert f"api_url {url}" in records(config)
    assert "api_url" not in render_boot_config(hosts(1), CA, PARAMETER, REGION)
    for bad in ("ftp://x", "https://x y", "https://x/'; rm -rf /", "https://x/a\napi_url y"):
        with pytest.raises(BootConfigError, match="API URL"):
            render_boot_config(hosts(1), CA, PARAMETER, REGION, api_url=bad)
    with pytest.raises(BootConfigError, match="API_URL"):
        BootRenderer(lambda: CA, PARAMETER, REGION).user_data(hosts(1))
