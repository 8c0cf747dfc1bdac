"""The stack's deploy from the admin's workstation: `deploy/package.py` (chalice package merged
with deploy/resources.json), the bundle and the template uploaded to an S3 bucket (what
`aws cloudformation package` does), then a CloudFormation change set, executed and waited for.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[2]
PACKAGE_SCRIPT = PROJECT_DIR / "deploy" / "package.py"
MERGE_TEMPLATE = PROJECT_DIR / "deploy" / "resources.json"
STAGES = ("dev", "prod")
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
REQUIRED_ON_CREATE = ("SshCidrs",)
Log = Callable[[str], None]


class DeployError(Exception):
    pass


@dataclass(frozen=True)
class StackInputs:
    """The template's parameters given on the command line (None or empty: the template's
    default on a first deploy, the stack's current value on an update)."""

    vpc_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    ssh_cidrs: tuple[str, ...] = ()
    alert_email: str | None = None
    instance_types: tuple[str, ...] = ()
    ssh_address: str | None = None
    kms_key_arn: str | None = None
    hosts_per_archive: int | None = None
    dashboard: bool | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def given(self) -> dict[str, str]:
        values = {"VpcId": self.vpc_id, "SubnetIds": ",".join(self.subnet_ids) or None,
                  "SshCidrs": ",".join(self.ssh_cidrs) or None,
                  "AlertEmail": self.alert_email,
                  "InstanceTypes": ",".join(self.instance_types) or None,
                  "SshAddress": self.ssh_address, "EbsKmsKeyArn": self.kms_key_arn,
                  "HostsPerArchive": None if self.hosts_per_archive is None
                  else str(self.hosts_per_archive),
                  "Dashboard": None if self.dashboard is None
                  else ("yes" if self.dashboard else "no"), **self.extra}
        return {k: v for k, v in values.items() if v is not None}


def template_parameters(path: Path = MERGE_TEMPLATE) -> frozenset[str]:
    """The parameters the packaged template declares (chalice adds none of its own)."""
    return frozenset(json.loads(path.read_text()).get("Parameters", {}))


def stack_parameters(inputs: StackInputs, previous: Collection[str] | None,
                     declared: Collection[str] | None = None) -> list[dict[str, Any]]:
    """The change set's parameters. `previous`: the parameter names of the stack being
    updated (None: a first deploy). A parameter left out of an update would take the template's
    default, not its current value, so every one the stack has and the template still declares
    is kept with UsePreviousValue (CreateChangeSet, "Parameter": UsePreviousValue, CloudFormation
    API Reference); Stage is the packaged template's own (deploy/package.py pins it)."""
    given = inputs.given()
    if previous is None:
        missing = [name for name in REQUIRED_ON_CREATE if name not in given]
        if missing:
            flags = ", ".join("--" + _flag(name) for name in missing)
            raise DeployError(f"the first deploy needs {flags}")
        if ("VpcId" in given) != ("SubnetIds" in given):
            # The security group is made in VpcId and every archive goes into one of the
            # subnets with it: both name one VPC, or neither (the default VPC's subnets).
            raise DeployError("give --vpc-id and its --subnet-id together, or neither (the "
                              "default VPC)")
    parameters: list[dict[str, Any]] = [{"ParameterKey": k, "ParameterValue": v}
                                        for k, v in sorted(given.items())]
    if previous is not None:
        known = template_parameters() if declared is None else frozenset(declared)
        parameters += [{"ParameterKey": k, "UsePreviousValue": True}
                       for k in sorted((set(previous) & known) - set(given) - {"Stage"})]
    return parameters


def _flag(parameter: str) -> str:
    return {"VpcId": "vpc-id", "SubnetIds": "subnet-id", "SshCidrs": "ssh-cidr"}[parameter]


def with_code_at(template: Mapping[str, Any], bucket: str, key: str) -> dict[str, Any]:
    """The template with every function's CodeUri (chalice's ./deployment.zip) in S3."""
    located = copy.deepcopy(dict(template))
    for resource in located.get("Resources", {}).values():
        if isinstance(resource, dict) and resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = f"s3://{bucket}/{key}"
    return located


def package_command(stage: str, outdir: Path) -> list[str]:
    return [sys.executable, str(PACKAGE_SCRIPT), "--stage", stage, str(outdir)]


@dataclass
class Deployer:
    cloudformation: Any
    s3: Any
    stage: str
    stack_name: str
    bucket: str
    inputs: StackInputs
    log: Log
    run: Callable[[Sequence[str]], int] = field(
        default=lambda argv: subprocess.run(list(argv), check=False).returncode)

    def previous_parameters(self) -> list[str] | None:
        """The parameter names of the stack, or None when there is no stack yet."""
        stack = describe_stack(self.cloudformation, self.stack_name)
        if stack is None:
            return None
        return [str(p["ParameterKey"]) for p in stack.get("Parameters", [])]

    def check(self) -> str:
        """What the plan says about the deploy; raises DeployError if it cannot work."""
        if self.stage not in STAGES:
            raise DeployError(f"stage {self.stage} is not in .chalice/config.json "
                              f"({', '.join(STAGES)}); use --no-deploy or a known stage")
        if not PACKAGE_SCRIPT.is_file():
            raise DeployError(f"{PACKAGE_SCRIPT} is missing: deploy from a checkout of Offsite")
        previous = self.previous_parameters()
        stack_parameters(self.inputs, previous)
        verb = "update" if previous is not None else "create"
        return f"{verb}: chalice package --stage {self.stage}, via s3://{self.bucket}"

    def __call__(self) -> None:
        previous = self.previous_parameters()
        exists = previous is not None
        parameters = stack_parameters(self.inputs, previous)
        with tempfile.TemporaryDirectory(prefix="offsite-package-") as scratch:
            outdir = Path(scratch) / self.stage
            self.log(f"packaging stage {self.stage} (chalice package)")
            if self.run(package_command(self.stage, outdir)) != 0:
                raise DeployError("chalice package failed (its output is above)")
            bundle = (outdir / "deployment.zip").read_bytes()
            key = f"offsite/{self.stage}/{hashlib.sha256(bundle).hexdigest()}.zip"
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=bundle)
            template = with_code_at(json.loads((outdir / "sam.json").read_text()),
                                    self.bucket, key)
        template_key = f"offsite/{self.stage}/template-{key.rsplit('/', 1)[1][:-4]}.json"
        self.s3.put_object(Bucket=self.bucket, Key=template_key,
                           Body=json.dumps(template).encode())
        self._change_set(exists, parameters, template_key)

    def _change_set(self, exists: bool, parameters: list[dict[str, Any]],
                    template_key: str) -> None:
        cfn, name = self.cloudformation, f"offsite-admin-{self.stage}"
        region = cfn.meta.region_name
        url = f"https://{self.bucket}.s3.{region}.amazonaws.com/{template_key}"
        created = cfn.create_change_set(
            StackName=self.stack_name, ChangeSetName=name, TemplateURL=url,
            Parameters=parameters, Capabilities=CAPABILITIES,
            ChangeSetType="UPDATE" if exists else "CREATE")
        self.log(f"change set {name} for stack {self.stack_name}: waiting")
        cfn.get_waiter("change_set_create_complete").wait(
            ChangeSetName=created["Id"], WaiterConfig={"Delay": 5, "MaxAttempts": 120})
        cfn.execute_change_set(ChangeSetName=created["Id"])
        waiter = "stack_update_complete" if exists else "stack_create_complete"
        self.log(f"executing; waiting for {self.stack_name} (a first deploy takes minutes)")
        cfn.get_waiter(waiter).wait(StackName=self.stack_name,
                                    WaiterConfig={"Delay": 10, "MaxAttempts": 180})
        # Nothing runs between windows: the stack makes the launch template, security group and
        # roles, and each window launches its archives from them (chalicelib/windows.py).
        outputs = stack_outputs(cfn, self.stack_name)
        self.log(f"deployed {self.stack_name}; API {outputs.get('EndpointURL', '?')}")


def describe_stack(cloudformation: Any, stack_name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return dict(stacks[0]) if stacks else None


def stack_outputs(cloudformation: Any, stack_name: str) -> dict[str, str]:
    stack = describe_stack(cloudformation, stack_name)
    if stack is None:
        raise DeployError(f"no CloudFormation stack {stack_name}: run offsite-admin init, or "
                          "give --api-url")
    return {str(o["OutputKey"]): str(o["OutputValue"]) for o in stack.get("Outputs", [])}
