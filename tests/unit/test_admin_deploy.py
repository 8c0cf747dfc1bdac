"""The deploy's pieces: parameters (first deploy and update), the code's S3 location, the
change set's order."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from chalicelib.admin.deploy import (
    PACKAGE_SCRIPT,
    Deployer,
    DeployError,
    StackInputs,
    package_command,
    stack_parameters,
    with_code_at,
)

INPUTS = StackInputs(vpc_id="vpc-1", subnet_ids=("subnet-a", "subnet-b"),
                     ssh_cidrs=("10.0.0.0/8", "192.0.2.1/32"))
DECLARED = json.loads((Path(__file__).parents[2] / "deploy" / "resources.json").read_text())[
    "Parameters"]


def values(parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {p["ParameterKey"]: p.get("ParameterValue", "previous") for p in parameters}


def test_a_first_deploy_needs_only_the_host_networks() -> None:
    with pytest.raises(DeployError, match="needs --ssh-cidr"):
        stack_parameters(StackInputs(vpc_id="vpc-1", subnet_ids=("subnet-a",)), None)
    assert values(stack_parameters(StackInputs(ssh_cidrs=("10.0.0.0/8",)), None)) == {
        "SshCidrs": "10.0.0.0/8"}  # the default VPC's subnets, the default instance types
    assert values(stack_parameters(INPUTS, None)) == {
        "VpcId": "vpc-1", "SubnetIds": "subnet-a,subnet-b",
        "SshCidrs": "10.0.0.0/8,192.0.2.1/32"}


@pytest.mark.parametrize("inputs", [
    StackInputs(vpc_id="vpc-1", ssh_cidrs=("10.0.0.0/8",)),
    StackInputs(subnet_ids=("subnet-a",), ssh_cidrs=("10.0.0.0/8",))])
def test_a_vpc_comes_with_its_subnets(inputs: StackInputs) -> None:
    """The security group is made in the VPC and the archives go into the subnets: one VPC."""
    with pytest.raises(DeployError, match="--vpc-id and its --subnet-id together"):
        stack_parameters(inputs, None)


def test_every_fleet_setting_given_is_a_template_parameter() -> None:
    inputs = StackInputs(instance_types=("t4g.small", "t3.small"), ssh_address="private",
                         kms_key_arn="arn:aws:kms:eu-west-1:123456789012:key/k",
                         hosts_per_archive=10, alert_email="ops@example.com")
    given = values(stack_parameters(inputs, ["SshCidrs"], DECLARED))
    assert given == {"InstanceTypes": "t4g.small,t3.small", "SshAddress": "private",
                     "EbsKmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:key/k",
                     "HostsPerArchive": "10", "AlertEmail": "ops@example.com",
                     "SshCidrs": "previous"}
    assert set(given) <= set(DECLARED)


@pytest.mark.parametrize(("dashboard", "given"), [(False, {"Dashboard": "no"}),
                                                   (True, {"Dashboard": "yes"}), (None, {})])
def test_the_dashboard_is_given_only_when_asked(dashboard: bool | None,
                                                given: dict[str, str]) -> None:
    inputs = StackInputs(ssh_cidrs=("203.0.113.0/24",), dashboard=dashboard)
    assert values(stack_parameters(inputs, None, DECLARED)) == {
        "SshCidrs": "203.0.113.0/24", **given}
    assert "Dashboard" in DECLARED


def test_an_update_keeps_every_value_not_given_that_the_template_still_declares() -> None:
    # A parameter left out of an update would take the template's default: the subnets and
    # instance types chosen at the first deploy would be lost by the next one.
    previous = ["Stage", "VpcId", "SubnetIds", "SshCidrs", "InstanceTypes", "ImageId"]
    parameters = stack_parameters(StackInputs(alert_email="ops@example.com"), previous,
                                  DECLARED)
    assert {"ParameterKey": "AlertEmail", "ParameterValue": "ops@example.com"} in parameters
    assert values(parameters) == {"AlertEmail": "ops@example.com", "VpcId": "previous",
                                  "SubnetIds": "previous", "SshCidrs": "previous",
                                  "InstanceTypes": "previous"}
    # Stage is the packaged template's own; ImageId is no parameter any more.


def test_an_update_reads_the_declared_parameters_from_the_merge_template() -> None:
    assert values(stack_parameters(StackInputs(), ["SubnetIds", "Gone"])) == {
        "SubnetIds": "previous"}


def test_functions_take_their_code_from_s3_and_nothing_else_changes() -> None:
    template = {"Resources": {
        "APIHandler": {"Type": "AWS::Serverless::Function",
                       "Properties": {"CodeUri": "./deployment.zip", "Handler": "app.app"}},
        "WindowTable": {"Type": "AWS::DynamoDB::Table", "Properties": {}}}}
    located = with_code_at(template, "bucket", "offsite/dev/abc.zip")
    assert located["Resources"]["APIHandler"]["Properties"] == {
        "CodeUri": "s3://bucket/offsite/dev/abc.zip", "Handler": "app.app"}
    assert located["Resources"]["WindowTable"] == template["Resources"]["WindowTable"]
    assert template["Resources"]["APIHandler"]["Properties"]["CodeUri"] == "./deployment.zip"


def test_packaging_runs_deploy_package_py() -> None:
    assert PACKAGE_SCRIPT.is_file()
    assert package_command("dev", Path("/o"))[1:] == [str(PACKAGE_SCRIPT), "--stage", "dev",
                                                      "/o"]


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes) -> None:
        self.objects[f"{Bucket}/{Key}"] = Body


class FakeWaiter:
    def __init__(self, calls: list[str], name: str) -> None:
        self.calls, self.name = calls, name

    def wait(self, **kwargs: Any) -> None:
        self.calls.append(f"wait {self.name}")


class FakeCloudFormation:
    class meta:  # as boto3 clients have it
        region_name = "eu-west-1"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.change_set: dict[str, Any] = {}

    def describe_stacks(self, StackName: str) -> dict[str, Any]:
        if not self.calls or self.calls[-1] != "wait stack_create_complete":
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "ValidationError", "Message":
                                         f"Stack with id {StackName} does not exist"}},
                              "DescribeStacks")
        return {"Stacks": [{"Parameters": [{"ParameterKey": "SshCidrs"}], "Outputs": [
            {"OutputKey": "EndpointURL", "OutputValue": "https://x/api/"},
            {"OutputKey": "ArchiveLaunchTemplateId", "OutputValue": "lt-0123456789abcdef0"}]}]}

    def create_change_set(self, **kwargs: Any) -> dict[str, str]:
        self.change_set = kwargs
        self.calls.append(f"create_change_set {kwargs['ChangeSetType']}")
        return {"Id": "cs-1"}

    def execute_change_set(self, ChangeSetName: str) -> None:
        self.calls.append(f"execute {ChangeSetName}")

    def get_waiter(self, name: str) -> FakeWaiter:
        return FakeWaiter(self.calls, name)


def test_a_first_deploy_uploads_then_creates_the_stack() -> None:
    cfn, s3, logged = FakeCloudFormation(), FakeS3(), []

    def package(argv: Sequence[str]) -> int:  # what deploy/package.py writes
        outdir = Path(argv[-1])
        outdir.mkdir(parents=True)
        (outdir / "deployment.zip").write_bytes(b"zip")
        (outdir / "sam.json").write_text(json.dumps({"Resources": {"F": {
            "Type": "AWS::Serverless::Function", "Properties": {"CodeUri": "./d.zip"}}}}))
        return 0

    deployer = Deployer(cfn, s3, "dev", "offsite-dev", "bucket", INPUTS, logged.append,
                        run=package)
    assert deployer.check().startswith("create: chalice package --stage dev")
    deployer()
    assert cfn.calls == ["create_change_set CREATE", "wait change_set_create_complete",
                         "execute cs-1", "wait stack_create_complete"]
    assert set(cfn.change_set["Capabilities"]) >= {"CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"}
    (zip_key,) = [k for k in s3.objects if k.endswith(".zip")]
    (template_key,) = [k for k in s3.objects if k.endswith(".json")]
    assert cfn.change_set["TemplateURL"] == (
        f"https://bucket.s3.eu-west-1.amazonaws.com/{template_key.split('/', 1)[1]}")
    template = json.loads(s3.objects[template_key])
    assert template["Resources"]["F"]["Properties"]["CodeUri"] == f"s3://{zip_key}"
    assert logged[-1] == "deployed offsite-dev; API https://x/api/"
    assert {p["ParameterKey"] for p in cfn.change_set["Parameters"]} == {
        "VpcId", "SubnetIds", "SshCidrs"}


def test_a_stage_without_chalice_config_is_not_deployed() -> None:
    deployer = Deployer(FakeCloudFormation(), FakeS3(), "local", "offsite-local", "b", INPUTS,
                        print)
    with pytest.raises(DeployError, match=r"not in \.chalice/config\.json"):
        deployer.check()
