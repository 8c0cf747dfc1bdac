"""deploy/package.py: `chalice package --merge-template deploy/resources.json`, for each stage.

The template passes cfn-lint (informational checks included); every Lambda function runs under
the role chalice made from its own policies/ file, has a fixed name and its own log group, and
finds in its environment every setting `Settings.from_env` needs; the names the template gives
(table, topic, schedule group, Scheduler role, window_deadline) are those the stage's config and
the policies expect. Nothing runs between windows: the template makes no instance and no
volume, only the launch template, security group and roles each window's archives launch with.

The template does not depend on the bundle's wheels, so the `packaged` fixture (conftest.py)
packages a copy of the project whose requirements.txt is empty: chalice then needs no package
index, and the template is the one `deploy/package.py` writes from the real tree (only
deployment.zip differs). One test
packages the real tree, wheels from the package index included, and reads the bundle's native
libraries back as Lambda would load them: arm64 ELF objects for the pinned runtime.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file

from chalicelib.fleet import DEFAULT_HOSTS_PER_ARCHIVE, DEFAULT_IMAGES, DEFAULT_INSTANCE_TYPES
from chalicelib.settings import Settings
from deploy.package import RUNTIME, package, requirements

from .test_policies import (
    ARCHIVE_ROLE,
    FUNCTIONS,
    LAUNCH_TEMPLATE,
    NOT_THE_STAGES,
    SECURITY_GROUP,
    arn_matches,
    findings_of,
    grants,
    listed,
    policy,
    statements,
)

ROOT = Path(__file__).parents[2]
STAGES = ("dev", "prod")
ACCOUNT, REGION = "123456789012", "eu-west-1"
PSEUDO = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": "aws"}


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def functions(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items()
            if isinstance(v, dict) and v.get("Type") == "AWS::Serverless::Function"}


def resolve(value: Any, template: Mapping[str, Any], stage: str) -> Any:
    """Ref, Fn::Sub and Fn::GetAtt as CloudFormation would resolve them, resources' own
    values standing in as <LogicalId> and <LogicalId.Attribute>."""
    if not isinstance(value, dict) or len(value) != 1:
        return value
    ((function, argument),) = value.items()
    parameters = template["Parameters"]
    if function == "Ref":
        if argument == "Stage":
            return stage
        if argument in parameters:
            default = parameters[argument].get("Default", f"<{argument}>")
            if parameters[argument]["Type"] == "CommaDelimitedList":
                return str(default).split(",")
            return default
        return PSEUDO.get(argument, f"<{argument}>")
    if function == "Fn::Join":
        separator, items = argument
        items = resolve(items, template, stage)
        return separator.join(str(resolve(i, template, stage)) for i in items)
    if function == "Fn::Sub":
        return re.sub(r"\$\{([^}]+)\}",
                      lambda m: str(resolve({"Ref": m[1]}, template, stage)), argument)
    if function == "Fn::GetAtt":
        return f"<{argument[0]}.{argument[1]}>"
    raise AssertionError(f"unexpected intrinsic {function}")


def environment(template: Mapping[str, Any], logical_id: str, stage: str) -> dict[str, str]:
    """A function's environment: SAM's Globals, then the function's own."""
    variables = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    variables.update(functions(template)[logical_id]["Properties"]["Environment"]["Variables"])
    return {k: str(resolve(v, template, stage)) for k, v in variables.items()}


def name_of(template: Mapping[str, Any], logical_id: str, stage: str) -> str:
    """The chalice name of a function, from the FunctionName the merge template gives it."""
    properties = functions(template)[logical_id]["Properties"]
    full = str(resolve(properties["FunctionName"], template, stage))
    assert full.startswith(f"offsite-{stage}-"), full
    return full.removeprefix(f"offsite-{stage}-")


def test_the_packaged_templates_pass_cfn_lint(packaged: dict[str, Path]) -> None:
    config = ManualArgs(include_checks=["I"], regions=["us-east-1", REGION])
    for stage, path in packaged.items():
        assert [str(m) for m in lint_file(path, config)] == [], stage


@pytest.mark.parametrize("stage", STAGES)
def test_the_template_is_pinned_to_its_stage(packaged: dict[str, Path], stage: str) -> None:
    parameter = load(packaged[stage])["Parameters"]["Stage"]
    assert (parameter["AllowedValues"], parameter["Default"]) == ([stage], stage)


@pytest.mark.parametrize("stage", STAGES)
def test_every_function_runs_the_pinned_runtime_on_graviton(packaged: dict[str, Path],
                                                             stage: str) -> None:
    """Not the workstation's Python: the runtime the bundle's wheels were chosen for."""
    template = load(packaged[stage])
    assert RUNTIME == "python3.12"
    for logical_id, function in functions(template).items():
        properties = function["Properties"]
        assert (properties["Runtime"], properties["Architectures"]) == (RUNTIME, ["arm64"]), (
            logical_id)


def test_the_bundle_carries_pynacl_built_for_the_runtime_and_arm64(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The real requirements, from the package index: nacl's libsodium binding and cffi's
    backend are aarch64 ELF objects (e_machine 183), cffi's for the pinned CPython."""
    out = tmp_path_factory.mktemp("bundle") / "dev"
    package("dev", out)
    with zipfile.ZipFile(out / "deployment.zip") as bundle:
        names = bundle.namelist()
        heads = {n: bundle.open(n).read(20) for n in names if n.endswith(".so")}
    version = RUNTIME.removeprefix("python").replace(".", "")
    sodium = [n for n in heads if n.startswith("nacl/_sodium")]
    backend = [n for n in heads if n.startswith("_cffi_backend.")]
    assert sodium == ["nacl/_sodium.abi3.so"]
    assert backend == [f"_cffi_backend.cpython-{version}-aarch64-linux-gnu.so"]
    for name in sodium + backend:
        head = heads[name]
        assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183, name
    pynacl = dict(requirements(ROOT / "requirements.txt"))["pynacl"]
    assert f"pynacl-{pynacl}.dist-info/METADATA" in names
    assert "app.py" in names and "chalicelib/sshcert.py" in names


@pytest.mark.parametrize("stage", STAGES)
def test_each_function_runs_under_its_own_policy_with_its_own_name_and_log_group(
        packaged: dict[str, Path], stage: str) -> None:
    template = load(packaged[stage])
    resources, seen = template["Resources"], set()
    for logical_id, function in functions(template).items():
        name = name_of(template, logical_id, stage)
        seen.add(name)
        role = resources[function["Properties"]["Role"]["Fn::GetAtt"][0]]["Properties"]
        assert [p["PolicyDocument"] for p in role["Policies"]] == [policy(name)], name
        assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
            "Service": "lambda.amazonaws.com"}
        (log_group,) = function["DependsOn"]
        group = resolve(resources[log_group]["Properties"]["LogGroupName"], template, stage)
        assert group == f"/aws/lambda/offsite-{stage}-{name}"
    assert seen == set(FUNCTIONS)


@pytest.mark.parametrize("stage", STAGES)
def test_each_function_finds_every_setting_it_needs(packaged: dict[str, Path],
                                                    stage: str) -> None:
    template = load(packaged[stage])
    resources = template["Resources"]
    deadline_function = next(k for k in functions(template)
                             if name_of(template, k, stage) == "window_deadline")
    for logical_id in functions(template):
        env = environment(template, logical_id, stage)
        settings = Settings.from_env(env)
        assert settings.table_name == resolve(
            resources["WindowTable"]["Properties"]["TableName"], template, stage)
        assert settings.schedule_group == resolve(
            resources["DeadlineScheduleGroup"]["Properties"]["Name"], template, stage)
        assert env["TOPIC_ARN"] == "<AlertTopic>"
        assert env["SCHEDULER_ROLE_ARN"] == "<SchedulerRole.Arn>"
        assert settings.deadline_target_arn == (
            f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:"
            + resolve(resources[deadline_function]["Properties"]["FunctionName"],
                      template, stage))
        assert settings.key_prefix == f"/offsite/{stage}"
        # the archive fleet, by default: Graviton first, AL2023 resolved at launch, the default
        # VPC's subnets, the account's EBS key
        assert settings.instance_types == DEFAULT_INSTANCE_TYPES
        assert dict(settings.images) == DEFAULT_IMAGES
        assert settings.subnet_ids == ()
        assert settings.kms_key_id is None
        assert settings.hosts_per_archive == DEFAULT_HOSTS_PER_ARCHIVE
        assert settings.ssh_address == "public"
        assert settings.launch_template == "<ArchiveLaunchTemplate>"
        assert settings.launch_function == f"offsite-{stage}-launch_shard"


def test_the_subnets_given_reach_the_settings_in_order() -> None:
    template = json.loads((ROOT / "deploy" / "resources.json").read_text())
    template["Parameters"]["SubnetIds"]["Default"] = "subnet-a,subnet-b"
    value = resolve(template["Globals"]["Function"]["Environment"]["Variables"]["SUBNET_IDS"],
                    template, "dev")
    assert Settings.from_env({"TABLE_NAME": "t", "TOPIC_ARN": "a", "DEADLINE_TARGET_ARN": "d",
                              "SCHEDULER_ROLE_ARN": "r", "SUBNET_IDS": value}
                             ).subnet_ids == ("subnet-a", "subnet-b")


@pytest.mark.parametrize("stage", STAGES)
def test_the_names_the_template_gives_are_those_the_policies_expect(
        packaged: dict[str, Path], stage: str) -> None:
    template = load(packaged[stage])
    resources = template["Resources"]

    def named(logical_id: str, key: str) -> str:
        return str(resolve(resources[logical_id]["Properties"][key], template, stage))

    def admitted(function: str, action: str, arn: str) -> bool:
        return any(a == action and arn_matches(r, arn) for a, r, _ in grants(function))

    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{named('WindowTable', 'TableName')}"
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:{named('AlertTopic', 'TopicName')}"
    role = f"arn:aws:iam::{ACCOUNT}:role/{named('SchedulerRole', 'RoleName')}"
    schedule = (f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/"
                f"{named('DeadlineScheduleGroup', 'Name')}/offsite-deadline-w-1")
    parameter = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/offsite/{stage}/ca-key"
    assert admitted("snapshot_state", "dynamodb:UpdateItem", table)
    assert admitted("window_deadline", "sns:Publish", topic)
    assert admitted("scheduled_open", "iam:PassRole", role)
    assert admitted("scheduled_open", "scheduler:CreateSchedule", schedule)
    assert admitted("api_handler", "ssm:GetParameter", parameter)
    archive_role = f"arn:aws:iam::{ACCOUNT}:role/{named('ArchiveInstanceRole', 'RoleName')}"
    assert arn_matches(ARCHIVE_ROLE, archive_role)
    assert admitted("launch_shard", "iam:PassRole", archive_role)
    launch = Settings.from_env(environment(template, "APIHandler", stage)).launch_function
    launcher = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{launch}"
    assert launch == named("LaunchShard", "FunctionName")
    for opener in ("api_handler", "scheduled_open", "console_open", "reconciler"):
        assert admitted(opener, "lambda:InvokeFunction", launcher), opener
    invoke = resources["SchedulerRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    (statement,) = invoke["Statement"]
    assert statement["Action"] == "lambda:InvokeFunction"
    assert resolve(statement["Resource"], template, stage) == Settings.from_env(
        environment(template, "WindowDeadline", stage)).deadline_target_arn


@pytest.mark.parametrize("stage", STAGES)
def test_archives_launch_from_a_template_that_carries_what_the_policies_check(
        packaged: dict[str, Path], stage: str) -> None:
    template = load(packaged[stage])
    resources = template["Resources"]
    assert not [k for k, v in resources.items() if isinstance(v, dict) and v.get("Type") in (
        "AWS::EC2::Instance", "AWS::EC2::Volume", "AWS::EC2::VolumeAttachment")]
    role = resources["ArchiveInstanceRole"]["Properties"]
    assert [p["PolicyDocument"] for p in role["Policies"]] == [policy("instance-role")]
    launch_template = resources["ArchiveLaunchTemplate"]["Properties"]
    data = launch_template["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2 only
    assert data["IamInstanceProfile"] == {"Arn": {"Fn::GetAtt": ["ArchiveInstanceProfile",
                                                                 "Arn"]}}
    assert data["SecurityGroupIds"] == [{"Fn::GetAtt": ["ArchiveSecurityGroup", "GroupId"]}]
    # RunInstances gives the subnet, AMI, user-data, volumes and tags of each archive. A
    # network interface in the template would make every launch into a subnet an
    # InvalidParameterCombination ("If you specify a network interface, you must specify any
    # subnets as part of the network interface", RunInstances, EC2 API Reference); the public
    # IPv4 address (billed by the hour) is the subnet's to give, so private subnets give none.
    assert not {"NetworkInterfaces", "SubnetId", "UserData", "TagSpecifications"} & set(data)
    assert data["BlockDeviceMappings"] == [{"DeviceName": "/dev/xvda", "Ebs": {
        "VolumeType": "gp3", "VolumeSize": 8, "Encrypted": True, "DeleteOnTermination": True}}]
    # launch_shard may launch only into this security group, from this template: both carry
    # the tag its policy's fences look for.
    fenced = {r: s["Condition"] for s in statements(policy("launch_shard"))
              if s["Effect"] == "Deny" for r in [s["Resource"]]}
    assert fenced[SECURITY_GROUP] == fenced[LAUNCH_TEMPLATE] == NOT_THE_STAGES
    stage_tag = {"Key": "offsite:stage", "Value": {"Ref": "Stage"}}
    assert stage_tag in resources["ArchiveSecurityGroup"]["Properties"]["Tags"]
    assert launch_template["TagSpecifications"] == [
        {"ResourceType": "launch-template", "Tags": [stage_tag]}]
    assert "SecurityGroupIngress" not in resources["ArchiveSecurityGroup"]["Properties"]
    _, cidrs, body = resources["Fn::ForEach::SshIngress"]
    assert cidrs == {"Ref": "SshCidrs"}
    (ingress,) = body.values()
    assert ingress["Type"] == "AWS::EC2::SecurityGroupIngress"
    assert {k: ingress["Properties"][k] for k in ("IpProtocol", "FromPort", "ToPort", "CidrIp")
            } == {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": {"Ref": "Cidr"}}


@pytest.mark.parametrize("stage", STAGES)
def test_a_kms_key_given_is_usable_by_launch_shard_for_ebs_only(
        packaged: dict[str, Path], stage: str) -> None:
    template = load(packaged[stage])
    resources = template["Resources"]
    key_policy = resources["LaunchShardEbsKeyPolicy"]
    assert key_policy["Condition"] == "HasKmsKey"
    (role,) = key_policy["Properties"]["Roles"]
    assert resources["LaunchShard"]["Properties"]["Role"] == {
        "Fn::GetAtt": [role["Ref"], "Arn"]}
    document = key_policy["Properties"]["PolicyDocument"]
    actions = {a for s in document["Statement"] for a in listed(s["Action"])}
    # What EBS encryption needs of the caller ("Requirements for Amazon EBS encryption",
    # Permissions for users), CreateGrant only for an AWS resource (kms:GrantIsForAWSResource).
    assert actions == {"kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey",
                       "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom",
                       "kms:ReEncryptTo"}
    via_ec2 = {"kms:ViaService": {"Fn::Sub": "ec2.${AWS::Region}.amazonaws.com"}}
    for statement in document["Statement"]:
        assert statement["Resource"] == {"Ref": "EbsKmsKeyArn"}
        assert statement["Condition"]["StringEquals"] == via_ec2
        if statement["Action"] == "kms:CreateGrant":
            assert statement["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}
    key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    concrete = json.loads(json.dumps(document).replace(
        json.dumps({"Ref": "EbsKmsKeyArn"}), json.dumps(key)).replace(
        json.dumps({"Fn::Sub": "ec2.${AWS::Region}.amazonaws.com"}),
        json.dumps(f"ec2.{REGION}.amazonaws.com")))
    assert findings_of(json.dumps(concrete)) == []


@pytest.mark.parametrize("stage", STAGES)
def test_every_instance_state_change_that_matters_reaches_instance_state(
        packaged: dict[str, Path], stage: str) -> None:
    """Any instance of the account: the handler ignores one not in the table after one read.
    Only the states it acts on are delivered (pending, stopping, shutting-down are not)."""
    template = load(packaged[stage])
    (logical_id,) = [k for k in functions(template)
                     if name_of(template, k, stage) == "instance_state"]
    events = functions(template)[logical_id]["Properties"]["Events"]
    (event,) = events.values()
    assert event["Properties"]["Pattern"]["detail"] == {
        "state": ["running", "stopped", "terminated"]}
