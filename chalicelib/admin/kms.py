"""A customer managed KMS key for a stage (`offsite-admin init --kms-key`): the SSM
SecureStrings (the CA and host private keys) and the window volumes are encrypted with it.

Using a key takes two permissions: the key's policy must let it be used, and the caller's IAM
policy must allow it. The stack gives the second (api_handler and the archive role decrypt
through SSM only, policies/; launch_shard uses the key through EC2 only, the template's
LaunchShardEbsKeyPolicy). The first lives in the key, outside the stack: `key_policy_statements`
are the statements to add to it. They leave the choice of who to the account's IAM policies
(principal: the account) and let the key be used for Offsite only through the two services, and
through SSM only for Offsite's parameters:
- EBS: "Requirements for Amazon EBS encryption", Permissions for users (CreateGrant, Decrypt,
  DescribeKey, GenerateDataKeyWithoutPlainText, ReEncrypt; CreateGrant only with
  kms:GrantIsForAWSResource), https://docs.aws.amazon.com/ebs/latest/userguide/ebs-encryption-requirements.html
- SSM: "How AWS Systems Manager Parameter Store uses AWS KMS" (a SecureString is encrypted and
  decrypted by SSM on the caller's behalf with kms:Encrypt / kms:Decrypt, its ARN as the
  encryption context PARAMETER_ARN), KMS Developer Guide;
- kms:ViaService and kms:CallerAccount: "AWS KMS condition keys", KMS Developer Guide.
The key must be a symmetric encryption key in the stack's region (EBS takes no other).
"""

from __future__ import annotations

import re
from typing import Any

KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):([0-9]{12}):key/[a-zA-Z0-9-]+$")
EBS_USE = ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext",
           "kms:ReEncryptFrom", "kms:ReEncryptTo"]


class KeyArnError(ValueError):
    pass


def key_region_and_account(key_arn: str) -> tuple[str, str]:
    """A key ARN's region and account; an alias or a bare key id is refused (the template's
    EbsKmsKeyArn takes the ARN only)."""
    match = KEY_ARN.match(key_arn)
    if match is None:
        raise KeyArnError(f"{key_arn!r} is not a KMS key ARN (arn:aws:kms:<region>:<account>:"
                          "key/<id>)")
    return match[1], match[2]


def key_policy_statements(key_arn: str, partition: str = "aws") -> list[dict[str, Any]]:
    """The statements the key's policy needs for Offsite, beside its administrators' own."""
    region, account = key_region_and_account(key_arn)
    account_root = {"AWS": f"arn:{partition}:iam::{account}:root"}
    through = {"kms:CallerAccount": account}
    return [
        {"Sid": "OffsiteVolumesThroughEbs", "Effect": "Allow", "Principal": account_root,
         "Action": EBS_USE, "Resource": "*",
         "Condition": {"StringEquals": {**through,
                                        "kms:ViaService": f"ec2.{region}.amazonaws.com"}}},
        {"Sid": "OffsiteGrantsForEbsOnly", "Effect": "Allow", "Principal": account_root,
         "Action": "kms:CreateGrant", "Resource": "*",
         "Condition": {"StringEquals": {**through,
                                        "kms:ViaService": f"ec2.{region}.amazonaws.com"},
                       "Bool": {"kms:GrantIsForAWSResource": "true"}}},
        {"Sid": "OffsiteParametersThroughSsm", "Effect": "Allow", "Principal": account_root,
         "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*",
         "Condition": {"StringEquals": {**through,
                                        "kms:ViaService": f"ssm.{region}.amazonaws.com"},
                       "StringLike": {"kms:EncryptionContext:PARAMETER_ARN":
                                      f"arn:{partition}:ssm:{region}:{account}:parameter/"
                                      "offsite/*"}}},
    ]


def region_mismatch(key_arn: str, region: str | None) -> str | None:
    """Why the key cannot serve a stack in `region`, or None. EBS and Parameter Store use a key
    of their own region only (a KMS key is regional; "Requirements for Amazon EBS encryption")."""
    key_region, _ = key_region_and_account(key_arn)
    if region and key_region != region:
        return (f"the KMS key is in {key_region} and the stack in {region}: give a key of "
                f"{region} (a multi-Region key's replica there, or a key made there)")
    return None
