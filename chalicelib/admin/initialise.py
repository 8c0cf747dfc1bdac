"""`offsite-admin init`: the key parameters in SSM, the table, the first deploy.

`plan_init` is pure: from what already exists it says what init will do, and refuses what it
must not do (replace a key, half a key pair). `apply_init` does exactly the planned steps.
A key that exists is kept, never overwritten: the CA key is what every host certificate is
checked against, the host key what every host pinned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.adapters.dynamo_store import create_table
from chalicelib.keys import KeyMaterial, KeyParameters, generate_key_material

Log = Callable[[str], None]


class InitError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    """Where init works: names for one stage, and whether AWS is the local stack's."""

    stage: str
    local: bool
    kms_key: str | None = None  # a customer managed key's ARN; None: the account's aws/ssm

    @property
    def table(self) -> str:
        return f"offsite-{self.stage}"  # as .chalice/config.json and the template name it

    @property
    def keys(self) -> KeyParameters:
        return KeyParameters(f"/offsite/{self.stage}")

    @property
    def stack_name(self) -> str:
        return f"offsite-{self.stage}"


@dataclass(frozen=True)
class Step:
    action: str  # create | keep | deploy | skip | by-stack
    kind: str
    name: str
    note: str = ""

    @property
    def does_something(self) -> bool:
        return self.action in ("create", "deploy")


def key_pairs(keys: KeyParameters) -> list[tuple[str, str, str]]:
    """(private parameter, public parameter, what the pair is)."""
    return [(keys.ca_private, keys.ca_public, "user CA that signs host certificates"),
            (keys.host_private, keys.host_public, "archive instances' SSH host key")]


def plan_init(target: Target, existing: set[str], table_exists: bool,
              deploy: str | None) -> list[Step]:
    """`existing`: the key parameters already there; `deploy`: the stack step's note, or None
    when the stack is not deployed now."""
    steps: list[Step] = []
    for private, public, what in key_pairs(target.keys):
        present = {private, public} & existing
        if len(present) == 1:
            (there,) = present
            raise InitError(f"{there} exists without its other half; init will not replace "
                            "half a key pair: delete it or restore the other half by hand")
        action = "keep" if present else "create"
        encrypted = f", encrypted with {target.kms_key}" if target.kms_key else ""
        note = "exists; never overwritten" if present else f"the {what}{encrypted}"
        steps += [Step(action, "SSM SecureString", private, note),
                  Step(action, "SSM String", public, note if present else "its public half")]
    if target.local:
        steps.append(Step("keep" if table_exists else "create", "DynamoDB table", target.table,
                          "exists" if table_exists else "pk/sk, on-demand, TTL on expires_at"))
        steps.append(Step("skip", "CloudFormation stack", target.stack_name,
                          "the local stack serves app.py itself: start it to use this"))
    else:
        steps.append(Step("by-stack", "DynamoDB table", target.table,
                          "exists" if table_exists else "made by the stack (WindowTable)"))
        steps.append(Step("deploy", "CloudFormation stack", target.stack_name, deploy)
                     if deploy else Step("skip", "CloudFormation stack", target.stack_name,
                                         "--no-deploy: deploy it later with init again"))
    return steps


def render_plan(target: Target, steps: Sequence[Step], where: str) -> str:
    width = max(len(s.name) for s in steps)
    lines = [f"offsite-admin init: stage {target.stage}, {where}"]
    lines += [f"  {s.action:8} {s.kind:20} {s.name:{width}}  {s.note}".rstrip() for s in steps]
    return "\n".join(lines)


# applying ------------------------------------------------------------------------------------
def existing_parameters(ssm: Any, keys: KeyParameters) -> set[str]:
    names = [n for private, public, _ in key_pairs(keys) for n in (private, public)]
    found = ssm.get_parameters(Names=names, WithDecryption=False)  # names only are read
    return {str(p["Name"]) for p in found.get("Parameters", [])}


def table_exists(dynamodb: Any, table: str) -> bool:
    try:
        dynamodb.describe_table(TableName=table)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return False
        raise
    return True


def put_keys(ssm: Any, target: Target, steps: Sequence[Step],
             make: Callable[[str], KeyMaterial] = generate_key_material) -> None:
    """Creates the planned parameters; Overwrite=False, so a key made meanwhile by someone
    else is not replaced (ParameterAlreadyExists stops init)."""
    created = {s.name for s in steps if s.action == "create" and s.kind.startswith("SSM")}
    if not created:
        return
    keys, material = target.keys, make(f"offsite-{target.stage}")
    for name, value, kind in material.parameters(keys):
        if name in created:
            # A SecureString without KeyId is encrypted with the account's aws/ssm key
            # (PutParameter, KeyId, Systems Manager API Reference).
            key = {"KeyId": target.kms_key} if kind == "SecureString" and target.kms_key else {}
            ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=False,
                              Description=f"offsite {target.stage}: made by offsite-admin init",
                              **key)


def apply_init(target: Target, steps: Sequence[Step], ssm: Any, dynamodb: Any,
               deploy: Callable[[], None], log: Log) -> None:
    put_keys(ssm, target, steps)
    for step in steps:
        if step.action == "create":
            if step.kind == "DynamoDB table":
                create_table(dynamodb, target.table)
            log(f"created {step.kind} {step.name}")
    if any(s.action == "deploy" for s in steps):
        deploy()
