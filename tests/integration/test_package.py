"""deploy/package.py: `chalice package --merge-template deploy/resources.json`, for each stage.

The template passes cfn-lint (informational checks included); every Lambda function runs under
the role chalice made from its own policies/ file, has a fixed name and its own log group, and
finds in its environment every setting `Settings.from_env` needs; the names the template gives
(table, topic, schedule group, Scheduler role, window_deadline) are those the stage's config and
the policies expect.

The template does not depend on the bundle's wheels, so this packages a copy of the project
whose requirements.txt is empty: chalice then needs no package index, and the template is the
one `deploy/package.py` writes from the real tree (only deployment.zip differs).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file

from chalicelib.settings import Settings
from deploy.package import package

from .test_policies import FUNCTIONS, arn_matches, grants, policy

ROOT = Path(__file__).parents[2]
STAGES = ("dev", "prod")
ACCOUNT, REGION = "123456789012", "eu-west-1"
PSEUDO = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": "aws"}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    project = tmp_path_factory.mktemp("project")
    for part in ("app.py", "chalicelib", "policies", ".chalice/config.json"):
        source, target = ROOT / part, project / part
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    (project / "requirements.txt").write_text("")
    out = tmp_path_factory.mktemp("out")
    return {stage: package(stage, out / stage, project_dir=project) for stage in STAGES}


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
            return parameters[argument].get("Default", f"<{argument}>")
        return PSEUDO.get(argument, f"<{argument}>")
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
        assert env["INSTANCE_ID"] == "<ArchiveInstance>"
        assert env["TOPIC_ARN"] == "<AlertTopic>"
        assert env["SCHEDULER_ROLE_ARN"] == "<SchedulerRole.Arn>"
        assert settings.deadline_target_arn == (
            f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:"
            + resolve(resources[deadline_function]["Properties"]["FunctionName"],
                      template, stage))
        assert settings.key_prefix == f"/offsite/{stage}"
        assert settings.instance_types == ("t3.small", "t3a.small", "t2.small")


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
    invoke = resources["SchedulerRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    (statement,) = invoke["Statement"]
    assert statement["Action"] == "lambda:InvokeFunction"
    assert resolve(statement["Resource"], template, stage) == Settings.from_env(
        environment(template, "WindowDeadline", stage)).deadline_target_arn


@pytest.mark.parametrize("stage", STAGES)
def test_the_archive_instance_carries_what_the_policies_check_and_only_ssh_is_open(
        packaged: dict[str, Path], stage: str) -> None:
    template = load(packaged[stage])
    resources = template["Resources"]
    instance = resources["ArchiveInstance"]["Properties"]
    assert {"Key": "offsite:role", "Value": "archive"} in instance["Tags"]
    role = resources["ArchiveInstanceRole"]["Properties"]
    assert [p["PolicyDocument"] for p in role["Policies"]] == [policy("instance-role")]
    data = resources["ArchiveLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert "UserData" not in data  # written by the admin tooling once keys and hosts exist
    assert "SecurityGroupIngress" not in resources["ArchiveSecurityGroup"]["Properties"]
    (_, cidrs, body), = [v for k, v in resources.items() if k.startswith("Fn::ForEach::")]
    assert cidrs == {"Ref": "SshCidrs"}
    (ingress,) = body.values()
    assert ingress["Type"] == "AWS::EC2::SecurityGroupIngress"
    assert {k: ingress["Properties"][k] for k in ("IpProtocol", "FromPort", "ToPort", "CidrIp")
            } == {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": {"Ref": "Cidr"}}


@pytest.mark.parametrize("stage", STAGES)
def test_only_the_archive_instances_state_changes_reach_instance_state(
        packaged: dict[str, Path], stage: str) -> None:
    template = load(packaged[stage])
    (logical_id,) = [k for k in functions(template)
                     if name_of(template, k, stage) == "instance_state"]
    events = functions(template)[logical_id]["Properties"]["Events"]
    (event,) = events.values()
    assert event["Properties"]["Pattern"]["detail"] == {
        "instance-id": [{"Ref": "ArchiveInstance"}]}
