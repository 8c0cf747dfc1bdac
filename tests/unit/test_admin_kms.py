"""`offsite-admin init --kms-key`: the SecureStrings are written with the customer managed key,
the stack is given it for the volumes, and the key's policy statements are the ones printed.
(Whether those statements and the roles' policies let each call through is
tests/integration/test_iam_conditions.py's question.)"""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.admin import cli
from chalicelib.admin.initialise import Target, plan_init, put_keys
from chalicelib.admin.kms import (
    KeyArnError,
    key_policy_statements,
    key_region_and_account,
    region_mismatch,
)
from chalicelib.keys import KeyMaterial

KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


class RecordingSsm:
    def __init__(self) -> None:
        self.put: dict[str, dict[str, Any]] = {}

    def put_parameter(self, **kwargs: Any) -> None:
        self.put[kwargs["Name"]] = kwargs


def material(comment: str) -> KeyMaterial:
    return KeyMaterial("CA-SEED", f"ssh-ed25519 CA {comment}", "HOST-PEM", "ssh-ed25519 HOST")


def test_the_private_halves_are_encrypted_with_the_key_given() -> None:
    target = Target("dev", local=False, kms_key=KEY)
    steps = plan_init(target, set(), table_exists=True, deploy=None)
    assert f"encrypted with {KEY}" in steps[0].note
    ssm = RecordingSsm()
    put_keys(ssm, target, steps, make=material)
    keyed = {name: call.get("KeyId") for name, call in ssm.put.items()}
    assert keyed == {"/offsite/dev/ca-key": KEY, "/offsite/dev/ca-key.pub": None,
                     "/offsite/dev/host-key": KEY, "/offsite/dev/host-key.pub": None}


def test_without_a_key_ssm_uses_its_own() -> None:
    target = Target("dev", local=False)
    ssm = RecordingSsm()
    put_keys(ssm, target, plan_init(target, set(), True, None), make=material)
    assert not any("KeyId" in call for call in ssm.put.values())


@pytest.mark.parametrize("flag", ["--kms-key", "--kms-key-arn"])
def test_the_key_is_one_option_for_ssm_and_ebs(flag: str) -> None:
    args = cli.build_parser().parse_args(["init", flag, KEY])
    assert args.kms_key == KEY


@pytest.mark.parametrize("value", ["alias/offsite", "1234abcd-12ab-34cd-56ef-1234567890ab",
                                   "arn:aws:kms:eu-west-1:123456789012:alias/offsite"],
                         ids=["alias", "key-id", "alias-arn"])
def test_a_key_named_otherwise_than_by_its_arn_is_bad_usage(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["init", "--kms-key", value])
    assert exited.value.code == 2
    assert "is not a KMS key ARN" in capsys.readouterr().err
    with pytest.raises(KeyArnError):
        key_region_and_account(value)


def test_the_key_policy_trusts_the_account_through_ebs_and_ssm_only() -> None:
    statements = {s["Sid"]: s for s in key_policy_statements(KEY)}
    assert set(statements) == {"OffsiteVolumesThroughEbs", "OffsiteGrantsForEbsOnly",
                               "OffsiteParametersThroughSsm"}
    for statement in statements.values():
        assert statement["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
        assert statement["Condition"]["StringEquals"]["kms:CallerAccount"] == "123456789012"
    assert statements["OffsiteGrantsForEbsOnly"]["Condition"]["Bool"] == {
        "kms:GrantIsForAWSResource": "true"}
    assert statements["OffsiteParametersThroughSsm"]["Condition"]["StringEquals"][
        "kms:ViaService"] == "ssm.eu-west-1.amazonaws.com"


def test_a_key_of_another_region_is_refused_before_anything_is_done() -> None:
    assert region_mismatch(KEY, "eu-west-1") is None
    assert region_mismatch(KEY, None) is None  # the session's default region decides later
    assert region_mismatch(KEY, "us-east-1") == (
        "the KMS key is in eu-west-1 and the stack in us-east-1: give a key of us-east-1 "
        "(a multi-Region key's replica there, or a key made there)")
