"""The deployment rehearsal: the packaged template, as `offsite-admin init` uploads it (code in
S3), translated as CloudFormation's transforms would (AWS::LanguageExtensions' Fn::ForEach,
then aws-sam-translator, the library behind the AWS::Serverless-2016-10-31 transform), into
the plain CloudFormation that would be deployed; and that checked against the app:

- each Lambda function runs under a role holding exactly its policies/ file (and, only when a
  KMS key is given, the key's statements), on the pinned runtime and architecture;
- each event source app.py declares (read from app.py as the stage's environment packages it)
  is an EventBridge rule with that schedule or that pattern, targeting that function, which
  EventBridge may invoke; each route app.py declares is in the REST API;
- the Scheduler role may invoke window_deadline alone, and every function is told its ARN;
- every output names something the template makes; cfn-lint finds nothing.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file
from chalice.app import Chalice, CloudWatchEventConfig, ScheduledEventConfig
from samtranslator.translator.transform import transform

from chalicelib.admin.deploy import with_code_at
from deploy.package import RUNTIME, architecture

from .test_policies import FUNCTIONS, listed, policy

ROOT = Path(__file__).parents[2]
STAGES = ("dev", "prod")
ACCOUNT, REGION = "123456789012", "eu-west-1"
PARAMETERS = {"SshCidrs": ["203.0.113.0/24", "198.51.100.7/32"]}
TRANSFORMS = ["AWS::LanguageExtensions", "AWS::Serverless-2016-10-31"]


class NoManagedPolicies:
    """The templates name no managed policy; translating one would need IAM's list."""

    def load(self) -> dict[str, str]:
        return {}


def for_each(resources: Mapping[str, Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """AWS::LanguageExtensions' Fn::ForEach over a list (a parameter or written out), as the
    template uses it: `&{Id}` in a logical id is the value without its non-alphanumeric
    characters, `{"Ref": Id}` and `${Id}` in a Fn::Sub string the value ("Fn::ForEach",
    CloudFormation User Guide, Intrinsic function reference)."""
    expanded: dict[str, Any] = {}
    for key, value in resources.items():
        if not key.startswith("Fn::ForEach::"):
            expanded[key] = value
            continue
        identifier, collection, body = value
        items = parameters[collection["Ref"]] if isinstance(collection, dict) else collection
        for item in items:
            for name, resource in body.items():
                logical_id = name.replace(f"&{{{identifier}}}", re.sub("[^A-Za-z0-9]", "", item))
                text = json.dumps(resource).replace(json.dumps({"Ref": identifier}),
                                                    json.dumps(item))
                text = text.replace(f"${{{identifier}}}", item)  # inside Fn::Sub strings
                expanded[logical_id] = json.loads(text)
    return expanded


def translated_template(sam: Mapping[str, Any], stage: str) -> dict[str, Any]:
    assert sam["Transform"] == TRANSFORMS
    template = with_code_at(sam, "offsite-artefacts", f"offsite/{stage}/bundle.zip")
    template["Resources"] = for_each(template["Resources"], PARAMETERS)
    template["Transform"] = TRANSFORMS[1]
    values = {"Stage": stage, **PARAMETERS, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
              "AWS::Partition": "aws"}
    return dict(transform(copy.deepcopy(template), values, NoManagedPolicies()))


@pytest.fixture(scope="module")
def cloudformation(packaged: dict[str, Path]) -> dict[str, dict[str, Any]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        return {stage: translated_template(json.loads(path.read_text()), stage)
                for stage, path in packaged.items()}


def declared_app(stage: str) -> Chalice:
    """app.py's `app`, imported afresh under the stage's environment, as chalice package
    imports it (a schedule comes from the stage's OPEN_SCHEDULE)."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    env = {**config["environment_variables"], **config["stages"][stage]["environment_variables"]}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        spec = importlib.util.spec_from_file_location(f"app_as_packaged_{stage}", ROOT / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    app = module.app
    assert isinstance(app, Chalice)
    return app


def of_type(template: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def lambda_functions(template: Mapping[str, Any]) -> dict[str, str]:
    """chalice name -> logical id of each AWS::Lambda::Function."""
    found = {}
    for logical_id, function in of_type(template, "AWS::Lambda::Function").items():
        sub = function["Properties"]["FunctionName"]["Fn::Sub"]
        assert sub.startswith("offsite-${Stage}-"), sub
        found[sub.removeprefix("offsite-${Stage}-")] = logical_id
    return found


def merge_template_events() -> dict[str, Any]:
    """The event patterns deploy/resources.json narrows, per function logical id."""
    merge = json.loads((ROOT / "deploy" / "resources.json").read_text())["Resources"]
    return {k: v["Properties"]["Events"] for k, v in merge.items()
            if isinstance(v, dict) and "Events" in v.get("Properties", {})}


def merged(base: Any, narrowing: Any) -> Any:
    if isinstance(base, dict) and isinstance(narrowing, dict):
        return {k: merged(base.get(k), narrowing[k]) if k in narrowing else base[k]
                for k in {**base, **narrowing}}
    return narrowing


def references(value: Any) -> Iterator[str]:
    """The names a value's Ref, Fn::GetAtt and Fn::Sub use."""
    if isinstance(value, dict):
        for function, argument in value.items():
            if function == "Ref":
                yield argument
            elif function == "Fn::GetAtt":
                yield argument[0]
            elif function == "Fn::Sub":
                text = argument if isinstance(argument, str) else argument[0]
                yield from (m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text))
            else:
                yield from references(argument)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def rules_targeting(template: Mapping[str, Any], logical_id: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in of_type(template, "AWS::Events::Rule").items()
            if any(t["Arn"] == {"Fn::GetAtt": [logical_id, "Arn"]}
                   for t in v["Properties"]["Targets"])}


@pytest.mark.parametrize("stage", STAGES)
def test_each_function_runs_under_exactly_its_policies_file(
        cloudformation: dict[str, dict[str, Any]], stage: str) -> None:
    template = cloudformation[stage]
    functions = lambda_functions(template)
    assert set(functions) == set(FUNCTIONS)
    extra = of_type(template, "AWS::IAM::Policy")
    for name, logical_id in functions.items():
        properties = template["Resources"][logical_id]["Properties"]
        assert (properties["Runtime"], properties["Architectures"]) == (
            RUNTIME, [architecture()]), name
        role_id = properties["Role"]["Fn::GetAtt"][0]
        role = template["Resources"][role_id]["Properties"]
        assert [p["PolicyDocument"] for p in role["Policies"]] == [policy(name)], name
        assert "ManagedPolicyArns" not in role and "PermissionsBoundary" not in role, name
        trust = [{k: v for k, v in s.items() if (k, v) != ("Sid", "")}
                 for s in role["AssumeRolePolicyDocument"]["Statement"]]
        assert trust == [{
            "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole"}], name
        # Only a customer managed key's statements are added beside it, and only with one.
        for attached in extra.values():
            if {"Ref": role_id} in attached["Properties"]["Roles"]:
                assert attached["Condition"] == "HasKmsKey", name
                assert all(a.startswith("kms:")
                           for s in attached["Properties"]["PolicyDocument"]["Statement"]
                           for a in listed(s["Action"])), name


@pytest.mark.parametrize("stage", STAGES)
def test_each_event_source_is_the_rule_app_py_declares(
        cloudformation: dict[str, dict[str, Any]], stage: str) -> None:
    template = cloudformation[stage]
    functions = lambda_functions(template)
    narrowed = merge_template_events()
    app = declared_app(stage)
    assert {s.name for s in app.event_sources} >= {"scheduled_open", "reconciler",
                                                   "instance_state", "snapshot_state"}
    for source in app.event_sources:
        logical_id = functions[source.name]
        ((rule_id, rule),) = rules_targeting(template, logical_id).items()
        if isinstance(source, ScheduledEventConfig):
            assert rule["Properties"]["ScheduleExpression"] == source.schedule_expression
            assert "EventPattern" not in rule["Properties"]
        else:
            assert isinstance(source, CloudWatchEventConfig), source
            expected = source.event_pattern
            for event in narrowed.get(logical_id, {}).values():
                expected = merged(expected, event["Properties"]["Pattern"])
            assert rule["Properties"]["EventPattern"] == expected, source.name
            assert "ScheduleExpression" not in rule["Properties"]
        permissions = [p["Properties"] for p in of_type(template,
                                                        "AWS::Lambda::Permission").values()
                       if p["Properties"].get("SourceArn") == {"Fn::GetAtt": [rule_id, "Arn"]}]
        assert permissions == [{"Action": "lambda:InvokeFunction",
                                "FunctionName": {"Ref": logical_id},
                                "Principal": "events.amazonaws.com",
                                "SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]}}], source.name
    sourced = {functions[s.name] for s in app.event_sources}
    assert not [k for k in functions.values() if k not in sourced and rules_targeting(template, k)]


@pytest.mark.parametrize("stage", STAGES)
def test_every_route_app_py_declares_is_in_the_rest_api(
        cloudformation: dict[str, dict[str, Any]], stage: str) -> None:
    template = cloudformation[stage]
    (api,) = of_type(template, "AWS::ApiGateway::RestApi").values()
    paths = api["Properties"]["Body"]["paths"]
    app = declared_app(stage)
    for path, methods in app.routes.items():
        assert path in paths, path
        assert {m.lower() for m in methods} <= set(paths[path]), path
    (permission,) = [p["Properties"] for p in of_type(template, "AWS::Lambda::Permission").values()
                     if p["Properties"]["Principal"] == "apigateway.amazonaws.com"]
    assert permission["FunctionName"] == {"Ref": lambda_functions(template)["api_handler"]}


@pytest.mark.parametrize("stage", STAGES)
def test_the_scheduler_role_invokes_window_deadline_alone(
        cloudformation: dict[str, dict[str, Any]], stage: str) -> None:
    template = cloudformation[stage]
    functions = lambda_functions(template)
    role = template["Resources"]["SchedulerRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    (invoke,) = role["Policies"]
    (statement,) = invoke["PolicyDocument"]["Statement"]
    deadline = template["Resources"][functions["window_deadline"]]["Properties"]["FunctionName"]
    target = ("arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:"
              + deadline["Fn::Sub"])
    assert statement == {"Effect": "Allow", "Action": "lambda:InvokeFunction",
                         "Resource": {"Fn::Sub": target}}
    for name, logical_id in functions.items():  # SAM's Globals reached every function
        variables = template["Resources"][logical_id]["Properties"]["Environment"]["Variables"]
        assert variables["SCHEDULER_ROLE_ARN"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}, name
        assert variables["DEADLINE_TARGET_ARN"] == {"Fn::Sub": target}, name


@pytest.mark.parametrize("stage", STAGES)
def test_every_output_names_what_the_template_makes(
        cloudformation: dict[str, dict[str, Any]], stage: str) -> None:
    template = cloudformation[stage]
    outputs = template["Outputs"]
    known = set(template["Resources"]) | set(template["Parameters"]) | {
        "AWS::Region", "AWS::AccountId", "AWS::Partition", "AWS::URLSuffix", "AWS::StackName"}
    for name, output in outputs.items():
        assert set(references(output["Value"])) <= known, name
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    api_stage = config["stages"][stage]["api_gateway_stage"]
    (api_id,) = of_type(template, "AWS::ApiGateway::RestApi")
    assert outputs["EndpointURL"]["Value"] == {
        "Fn::Sub": f"https://${{{api_id}}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/"
                   f"{api_stage}/"}
    assert {"EndpointURL", "TableName", "TopicArn", "SchedulerRoleArn"} <= set(outputs)


def test_the_translated_templates_pass_cfn_lint(cloudformation: dict[str, dict[str, Any]],
                                                tmp_path: Path) -> None:
    # W2001 (unused parameter): the expanded Fn::ForEach leaves SshCidrs unused, as
    # CloudFormation's own expansion does; the packaged template's lint has no such exception.
    config = ManualArgs(include_checks=["I"], ignore_checks=["W2001"],
                        regions=["us-east-1", REGION])
    for stage, template in cloudformation.items():
        path = tmp_path / f"{stage}.json"
        path.write_text(json.dumps(template, indent=1))
        assert [str(m) for m in lint_file(path, config)] == [], stage


@pytest.mark.parametrize("stage", STAGES)
def test_the_archives_are_told_the_api_they_signal_ready_to(
        cloudformation: dict[str, dict[str, Any]], stage: str) -> None:
    """launch_shard renders API_URL into each archive's user-data (its ready/failed signal,
    chalicelib/boot_signal.py): the stack's own endpoint, without a dependency cycle (only
    launch_shard has it; the API's own function would depend on the API that calls it)."""
    template = cloudformation[stage]
    functions = lambda_functions(template)
    endpoint = template["Outputs"]["EndpointURL"]["Value"]["Fn::Sub"].rstrip("/")
    for name, logical_id in functions.items():
        variables = template["Resources"][logical_id]["Properties"]["Environment"]["Variables"]
        if name == "launch_shard":
            assert variables["API_URL"] == {"Fn::Sub": endpoint}
        else:
            assert "API_URL" not in variables, name
