"""The condition evaluator the IAM table relies on, against the IAM User Guide's own rules
("Condition operators"; "Creating a condition with multiple keys or values"; "Single-valued vs.
multivalued context keys")."""

from __future__ import annotations

from typing import Any

import pytest

from .iam_evaluation import Request, UnknownOperatorError, condition_holds, decision

TAGGED = {"aws:ResourceTag/offsite:window": ["w-1"], "aws:TagKeys": ["offsite:host"],
          "ec2:Encrypted": ["true"], "kms:ViaService": ["ssm.eu-west-1.amazonaws.com"]}


@pytest.mark.parametrize(("condition", "holds"), [
    ({"Null": {"aws:ResourceTag/offsite:window": "false"}}, True),
    ({"Null": {"aws:ResourceTag/offsite:window": "true"}}, False),
    ({"Null": {"aws:RequestTag/offsite:window": "true"}}, True),
    ({"StringEquals": {"aws:ResourceTag/offsite:window": ["w-2", "w-1"]}}, True),  # OR
    ({"StringEquals": {"aws:resourcetag/offsite:window": "w-1"}}, True),  # key names: any case
    ({"StringEquals": {"aws:ResourceTag/offsite:window": "W-1"}}, False),  # values: exact
    ({"StringNotEquals": {"aws:ResourceTag/offsite:window": "w-1"}}, False),
    ({"StringNotEquals": {"aws:ResourceTag/offsite:window": "w-2"}}, True),
    ({"StringLike": {"kms:ViaService": "ssm.*.amazonaws.com"}}, True),
    ({"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}}, False),
    ({"StringEquals": {"aws:RequestTag/offsite:window": "w-1"}}, False),  # absent key
    ({"StringEqualsIfExists": {"aws:RequestTag/offsite:window": "w-1"}}, True),
    ({"Bool": {"ec2:Encrypted": "true"}}, True),
    ({"Bool": {"ec2:Encrypted": "false"}}, False),
    ({"ForAllValues:StringEquals": {"aws:TagKeys": ["offsite:host"]}}, True),
    ({"ForAllValues:StringEquals": {"aws:TagKeys": ["offsite:complete"]}}, False),
    ({"ForAllValues:StringEquals": {"aws:RequestTag/none": ["x"]}}, True),  # over no values
    ({"ForAnyValue:StringEquals": {"aws:TagKeys": ["offsite:complete", "offsite:host"]}}, True),
    ({"ArnLike": {"kms:ViaService": "ssm.*"}}, True),
    # every operator and every key must hold (AND)
    ({"Null": {"aws:ResourceTag/offsite:window": "false"},
      "Bool": {"ec2:Encrypted": "false"}}, False),
])
def test_operators(condition: dict[str, Any], holds: bool) -> None:
    assert condition_holds(condition, TAGGED) is holds


def test_an_operator_it_does_not_know_is_an_error() -> None:
    with pytest.raises(UnknownOperatorError):
        condition_holds({"NumericLessThan": {"ec2:VolumeSize": "100"}}, {"ec2:VolumeSize": ["1"]})


def test_a_deny_wins_and_nothing_matching_is_an_implicit_deny() -> None:
    allow = {"Effect": "Allow", "Action": "ec2:RunInstances", "Resource": "arn:aws:ec2:*:*:*"}
    deny = {"Effect": "Deny", "Action": "ec2:runinstances", "Resource": "arn:aws:ec2:*:*:volume/*",
            "Condition": {"Bool": {"ec2:Encrypted": "false"}}}
    policy = {"Statement": [allow, deny]}
    volume = "arn:aws:ec2:eu-west-1:1:volume/*"
    assert decision([policy], Request("ec2:RunInstances", volume, {"ec2:Encrypted": ["true"]})
                    ) == "allow"
    assert decision([policy], Request("ec2:RunInstances", volume, {"ec2:Encrypted": ["false"]})
                    ) == "deny"
    assert decision([policy], Request("ec2:StopInstances", volume)) == "implicit"
    assert decision([policy], Request("ec2:RunInstances", "arn:aws:s3:::b")) == "implicit"
