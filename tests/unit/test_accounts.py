"""A host's account on the archive instance: ACCOUNT_PREFIX + host name, checked where the
setting is read and where the boot config is rendered."""

from __future__ import annotations

import pytest

from chalicelib.accounts import AccountNameError, account_name, check_account_prefix
from chalicelib.instance.userdata import BootConfigError, render_boot_config
from chalicelib.settings import InvalidSettingError, Settings
from tests.unit.test_instance_userdata import CA, PARAMETER, REGION

REQUIRED = {"TABLE_NAME": "t", "INSTANCE_ID": "i-0", "TOPIC_ARN": "arn:t",
            "DEADLINE_TARGET_ARN": "arn:d", "SCHEDULER_ROLE_ARN": "arn:r"}


def test_without_a_prefix_the_account_is_the_host_name() -> None:
    assert account_name("", "web-1") == "web-1"
    assert Settings.from_env(REQUIRED).account_prefix == ""


def test_with_a_prefix_the_account_is_prefix_and_host() -> None:
    assert account_name("o1a2b3-", "c") == "o1a2b3-c"
    assert Settings.from_env({**REQUIRED, "ACCOUNT_PREFIX": "o1a2b3-"}).account_prefix == \
        "o1a2b3-"


@pytest.mark.parametrize("prefix", ["1abc-", "-x", "Ab-", "a b", "a_b", "a" * 17, "a/b"])
def test_a_prefix_that_cannot_start_a_unix_account_is_refused(prefix: str) -> None:
    with pytest.raises(AccountNameError):
        check_account_prefix(prefix)
    with pytest.raises(InvalidSettingError, match="ACCOUNT_PREFIX"):
        Settings.from_env({**REQUIRED, "ACCOUNT_PREFIX": prefix})


def test_an_account_longer_than_32_characters_is_refused() -> None:
    assert account_name("o1a2b3-", "h" * 25) == "o1a2b3-" + "h" * 25  # 32: the limit
    with pytest.raises(AccountNameError, match="too long for the account prefix"):
        account_name("o1a2b3-", "h" * 26)


def test_the_boot_config_names_the_prefix_only_when_there_is_one() -> None:
    hosts = [("c", "/dev/sdf")]
    assert "account_prefix" not in render_boot_config(hosts, CA, PARAMETER, REGION)
    config = render_boot_config(hosts, CA, PARAMETER, REGION, account_prefix="o1a2b3-")
    assert "account_prefix o1a2b3-" in config.splitlines()
    with pytest.raises(BootConfigError, match="too long for the account prefix"):
        render_boot_config([("h" * 26, "/dev/sdf")], CA, PARAMETER, REGION,
                           account_prefix="o1a2b3-")
    with pytest.raises(AccountNameError):
        render_boot_config(hosts, CA, PARAMETER, REGION, account_prefix="Bad")
