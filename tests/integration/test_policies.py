"""policies/: one IAM policy per Lambda function and one for the archive instance.

parliament finds nothing above LOW in any of them; no action is a wildcard, nothing of `iam:*`
but PassRole, and that only of the Scheduler role (to the Scheduler) and of the archive
instance's role (to EC2, by launch_shard); `Resource: "*"` only for actions that take no
narrower resource (checked against parliament's copy of AWS's Service Authorization Reference);
each resource pattern admits what its function uses and not its neighbours' things; every EC2
write reaches only resources tagged as a window's (or, at launch, tags them so).
Whether the granted actions are enough is tests/functional/test_iam_enforced.py's question.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import parliament
import pytest
from parliament import analyze_policy_string, enhance_finding, override_config

import app as app_module

ROOT = Path(__file__).parents[2]
POLICIES = ROOT / "policies"
FUNCTIONS = ("api_handler", "scheduled_open", "console_open", "window_deadline", "launch_shard",
             "reconciler", "instance_state", "snapshot_state")
POLICY_NAMES = (*FUNCTIONS, "instance-role")

# The only actions granted on "*": AWS lists no resource type for them, so "*" is the only
# Resource they accept (test_no_resource_level_list_is_what_aws_says keeps this list honest).
# PutMetricData is fenced by its cloudwatch:namespace condition instead ("Using condition keys
# to limit access to CloudWatch namespaces", CloudWatch User Guide).
NO_RESOURCE_LEVEL = frozenset({"ec2:DescribeInstances", "ec2:DescribeSnapshots",
                               "ec2:DescribeVolumes", "cloudwatch:PutMetricData"})
SCHEDULER_ROLE = "arn:aws:iam::*:role/offsite-*-scheduler"
ARCHIVE_ROLE = "arn:aws:iam::*:role/offsite-*-archive"
# The only roles passed, each to its one service.
PASSABLE = {SCHEDULER_ROLE: "scheduler.amazonaws.com", ARCHIVE_ROLE: "ec2.amazonaws.com"}
SEVERITIES = ("MUTE", "INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL")
PASSES_ROLE = {"MEDIUM": "PERMISSIONS_MANAGEMENT_ACTIONS"}
# parliament's community auditors rate any iam:PassRole MEDIUM; the Scheduler needs its role
# passed to CreateSchedule (the issue allows exactly that), so the three openers carry it.
# launch_shard passes the archive instance's role to RunInstances (its launch template names the
# instance profile; "Grant permissions to attach an IAM role to an instance", EC2 User Guide:
# launching with a role takes iam:PassRole, best scoped to that role's ARN), which
# the auditors rate HIGH (PassRole + RunInstances can hand a role to an instance one controls).
# That role is pinned: offsite-<stage>-archive, whose policy reads only the instance's own SSH
# host key (test_resources_admit_what_the_function_uses_and_no_more).
COMMUNITY_FINDINGS = {
    "api_handler": [("MEDIUM", "PERMISSIONS_MANAGEMENT_ACTIONS", "")],
    "scheduled_open": [("MEDIUM", "PERMISSIONS_MANAGEMENT_ACTIONS", "")],
    "console_open": [("MEDIUM", "PERMISSIONS_MANAGEMENT_ACTIONS", "")],
    "launch_shard": [("MEDIUM", "PERMISSIONS_MANAGEMENT_ACTIONS", ""),
                     ("HIGH", "PRIVILEGE_ESCALATION", "")],
}


def policy(name: str) -> dict[str, Any]:
    return dict(json.loads((POLICIES / f"{name}.json").read_text()))


def listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = document["Statement"]
    return [found] if isinstance(found, dict) else list(found)


def grants(name: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(action, resource, statement) for every Allow of a policy in policies/."""
    yield from allows(policy(name))


def allows(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for statement in statements(document):
        if statement["Effect"] == "Allow":
            for action in listed(statement.get("Action", [])):
                for resource in listed(statement.get("Resource", [])):
                    yield action, resource, statement


def problems(document: dict[str, Any]) -> list[str]:
    """What this test suite refuses in any policy, each with the reason."""
    found = []
    for statement in statements(document):
        found += [f"{key} is not allowed" for key in ("NotAction", "NotResource", "NotPrincipal")
                  if key in statement]
        found += [f"wildcard action {a}" for a in listed(statement.get("Action", []))
                  if not re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", a)]
    types = aws_resource_types()
    for action, resource, statement in allows(document):
        if action.lower() not in types:
            found.append(f"{action} is no AWS action")
        if action.startswith("iam:") and (action != "iam:PassRole" or resource not in PASSABLE):
            found.append(f"{action} on {resource}: of IAM, only passing the Scheduler role or "
                         "the archive role")
        if action == "iam:PassRole" and resource in PASSABLE and statement.get("Condition") != {
                "StringEquals": {"iam:PassedToService": PASSABLE[resource]}}:
            found.append(f"PassRole of {resource} without iam:PassedToService = "
                         f"{PASSABLE[resource]}")
        if resource == "*" and action not in NO_RESOURCE_LEVEL:
            found.append(f"{action} on * where a narrower resource exists")
        if resource != "*" and resource.split(":")[2:3] == ["*"]:
            found.append(f"{action} on any service's {resource}")
    return found


def findings(name: str, community: bool = False) -> list[tuple[str, str, Any]]:
    return findings_of((POLICIES / f"{name}.json").read_text(), f"{name}.json", community)


def findings_of(text: str, name: str = "policy.json",
                community: bool = False) -> list[tuple[str, str, Any]]:
    """parliament's findings above LOW for a policy document's text."""
    analysed = analyze_policy_string(text, name, include_community_auditors=community)
    found = [enhance_finding(f) for f in analysed.findings]
    return [(f.severity, f.issue, f.detail) for f in found
            if SEVERITIES.index(f.severity) > SEVERITIES.index("LOW")]


@cache
def aws_resource_types() -> dict[str, set[str]]:
    """Action -> the resource types AWS lists for it (empty: no resource-level permissions)."""
    definition = json.loads((Path(parliament.__file__).parent / "iam_definition.json")
                            .read_text())
    types: dict[str, set[str]] = {}
    for service in definition:
        for privilege in service["privileges"]:
            action = f"{service['prefix']}:{privilege['privilege']}".lower()
            types.setdefault(action, set()).update(
                r["resource_type"].rstrip("*") for r in privilege["resource_types"]
                if r["resource_type"])
    return types


def arn_matches(pattern: str, arn: str) -> bool:
    """IAM's match of a Resource pattern: field by field, `*` and `?` within a field."""
    pattern_fields, arn_fields = pattern.split(":", 5), arn.split(":", 5)
    if len(pattern_fields) != len(arn_fields):
        return pattern == "*"
    return all(re.fullmatch(re.escape(p).replace(r"\*", ".*").replace(r"\?", "."), a)
               for p, a in zip(pattern_fields, arn_fields, strict=True))


def may(name: str, action: str, arn: str) -> bool:
    """Whether some Allow of the policy names this action on this resource. Conditions are left
    out, and they only narrow: a False here is a refusal in AWS as well."""
    return any(a.lower() == action.lower() and arn_matches(r, arn) for a, r, _ in grants(name))


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_parliament_finds_nothing_above_low(name: str) -> None:
    assert findings(name) == []


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_community_auditors_find_only_the_roles_being_passed(name: str) -> None:
    override_config(Path(parliament.__file__).parent / "community_auditors"
                    / "config_override.yaml")
    assert sorted(findings(name, community=True)) == sorted(COMMUNITY_FINDINGS.get(name, []))


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policy_has_no_wildcard_action_no_iam_and_no_needless_star(name: str) -> None:
    assert problems(policy(name)) == []


def allow(action: str | list[str], resource: str | list[str],
          **extra: Any) -> dict[str, Any]:
    return {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": action, "Resource": resource, **extra}]}


PASSED_TO_SCHEDULER = {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}}


@pytest.mark.parametrize(("document", "problem"), [
    (allow("ec2:*", "*"), "wildcard action ec2:*"),
    (allow("*", "*"), "wildcard action *"),
    (allow("ec2:Describe*", "*"), "wildcard action ec2:Describe*"),
    (allow("iam:*", "*"), "wildcard action iam:*"),
    (allow("iam:CreateRole", "arn:aws:iam::*:role/offsite-*"),
     "iam:CreateRole on arn:aws:iam::*:role/offsite-*: of IAM, only passing the Scheduler role "
     "or the archive role"),
    (allow("iam:PassRole", "arn:aws:iam::*:role/*", Condition=PASSED_TO_SCHEDULER),
     "iam:PassRole on arn:aws:iam::*:role/*: of IAM, only passing the Scheduler role or the "
     "archive role"),
    (allow("iam:PassRole", SCHEDULER_ROLE),
     f"PassRole of {SCHEDULER_ROLE} without iam:PassedToService = scheduler.amazonaws.com"),
    (allow("iam:PassRole", ARCHIVE_ROLE, Condition=PASSED_TO_SCHEDULER),
     f"PassRole of {ARCHIVE_ROLE} without iam:PassedToService = ec2.amazonaws.com"),
    (allow("ec2:StopInstances", "*"), "ec2:StopInstances on * where a narrower resource exists"),
    (allow("dynamodb:GetItem", "*"), "dynamodb:GetItem on * where a narrower resource exists"),
    (allow("ec2:StopInstances", "arn:aws:*:*:*:instance/*"),
     "ec2:StopInstances on any service's arn:aws:*:*:*:instance/*"),
    (allow("ec2:TerminateEverything", "*"), "ec2:TerminateEverything is no AWS action"),
    ({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "NotAction": "iam:*",
                                             "Resource": "*"}}, "NotAction is not allowed"),
])
def test_the_check_refuses(document: dict[str, Any], problem: str) -> None:
    assert problem in problems(document)


def test_the_check_takes_what_the_issue_allows() -> None:
    assert problems(allow(["ec2:DescribeInstances", "ec2:DescribeSnapshots"], "*")) == []
    assert problems(allow("iam:PassRole", SCHEDULER_ROLE, Condition=PASSED_TO_SCHEDULER)) == []
    assert problems(allow("iam:PassRole", ARCHIVE_ROLE, Condition={
        "StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}})) == []


def test_no_resource_level_list_is_what_aws_says() -> None:
    types = aws_resource_types()
    for action in NO_RESOURCE_LEVEL:
        assert action.lower() in types and types[action.lower()] == set(), action


def test_every_lambda_function_has_its_own_policy_wired_in_the_chalice_config() -> None:
    app = app_module.app
    functions = {f.name for f in app.pure_lambda_functions} | {
        e.name for e in app.event_sources} | ({"api_handler"} if app.routes else set())
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    assert config["autogen_policy"] is False
    wired = {name: settings["iam_policy_file"]
             for name, settings in config["lambda_functions"].items()}
    assert wired == {name: f"../policies/{name}.json" for name in functions}
    assert set(FUNCTIONS) == functions
    assert "iam_policy_file" not in config and all(
        "iam_policy_file" not in stage and "lambda_functions" not in stage
        for stage in config["stages"].values())


ACCOUNT, REGION = "123456789012", "eu-west-1"


def arn(service: str, resource: str, region: str = REGION, account: str = ACCOUNT) -> str:
    return f"arn:aws:{service}:{region}:{account}:{resource}"


TABLE = arn("dynamodb", "table/offsite-prod")


@pytest.mark.parametrize(("name", "action", "resource", "allowed"), [
    # the CA key is the API's alone; the instance reads only its own host key
    ("api_handler", "ssm:GetParameter", arn("ssm", "parameter/offsite/prod/ca-key"), True),
    ("api_handler", "ssm:GetParameter", arn("ssm", "parameter/offsite/prod/host-key.pub"), True),
    ("api_handler", "ssm:GetParameter", arn("ssm", "parameter/offsite/prod/host-key"), False),
    ("api_handler", "ssm:GetParameter", arn("ssm", "parameter/other/ca-key"), False),
    ("instance-role", "ssm:GetParameter", arn("ssm", "parameter/offsite/prod/host-key"), True),
    ("instance-role", "ssm:GetParameter", arn("ssm", "parameter/offsite/prod/ca-key"), False),
    ("instance_state", "ssm:GetParameter", arn("ssm", "parameter/offsite/prod/ca-key"), False),
    # the stage's table, and no other
    ("snapshot_state", "dynamodb:UpdateItem", TABLE, True),
    ("snapshot_state", "dynamodb:PutItem", TABLE, False),
    ("window_deadline", "dynamodb:Query", TABLE, True),
    ("window_deadline", "dynamodb:PutItem", TABLE, False),
    ("reconciler", "dynamodb:PutItem", arn("dynamodb", "table/billing"), False),
    # deadline schedules in the stage's group; the Scheduler role and no other role
    ("scheduled_open", "scheduler:CreateSchedule",
     arn("scheduler", "schedule/offsite-prod/offsite-deadline-w-20261129T020000Z-abc123"), True),
    ("scheduled_open", "scheduler:CreateSchedule",
     arn("scheduler", "schedule/default/offsite-deadline-w-1"), False),
    ("reconciler", "scheduler:CreateSchedule",
     arn("scheduler", "schedule/offsite-prod/offsite-deadline-w-1"), False),
    ("window_deadline", "scheduler:DeleteSchedule",
     arn("scheduler", "schedule/offsite-prod/nightly-report"), False),
    ("api_handler", "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/offsite-prod-scheduler", True),
    ("api_handler", "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/Administrator", False),
    ("console_open", "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/offsite-prod-ApiRole", False),
    # the admins' topic
    ("snapshot_state", "sns:Publish", arn("sns", "offsite-prod"), True),
    ("snapshot_state", "sns:Publish", arn("sns", "billing-alerts"), False),
    # snapshots only by the functions that take them or apply retention
    ("instance_state", "ec2:CreateSnapshot", f"arn:aws:ec2:{REGION}::snapshot/snap-1", True),
    ("instance_state", "ec2:DeleteSnapshot", f"arn:aws:ec2:{REGION}::snapshot/snap-1", False),
    ("api_handler", "ec2:DeleteSnapshot", f"arn:aws:ec2:{REGION}::snapshot/snap-1", False),
    ("window_deadline", "ec2:StartInstances", arn("ec2", "instance/i-0123456789abcdef0"), False),
    # archives are launched by launch_shard alone, which deletes nothing of EBS
    ("launch_shard", "ec2:RunInstances", arn("ec2", "instance/*"), True),
    ("scheduled_open", "ec2:RunInstances", arn("ec2", "instance/*"), False),
    ("api_handler", "ec2:RunInstances", arn("ec2", "instance/*"), False),
    ("reconciler", "ec2:RunInstances", arn("ec2", "instance/*"), False),
    ("launch_shard", "ec2:DeleteSnapshot", f"arn:aws:ec2:{REGION}::snapshot/snap-1", False),
    ("launch_shard", "ec2:DeleteVolume", arn("ec2", "volume/vol-1"), False),
    # the instance profile's role and no other; AL2023's public AMI parameters and no other
    # (RunInstances resolves ImageId "resolve:ssm:..." with the caller's ssm:GetParameters:
    # "Native parameter support for Amazon Machine Image IDs", Systems Manager User Guide)
    ("launch_shard", "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/offsite-prod-archive", True),
    ("launch_shard", "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/offsite-prod-scheduler",
     False),
    ("launch_shard", "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/Administrator", False),
    ("reconciler", "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/offsite-prod-archive", False),
    ("launch_shard", "ssm:GetParameters", arn(
        "ssm", "parameter/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
        account=""), True),
    ("launch_shard", "ssm:GetParameters", arn("ssm", "parameter/offsite/prod/host-key"), False),
    ("launch_shard", "ssm:GetParameter", arn("ssm", "parameter/offsite/prod/ca-key"), False),
    # the launches fanned out go to launch_shard, of any stage, and nowhere else
    ("api_handler", "lambda:InvokeFunction", arn("lambda", "function:offsite-prod-launch_shard"),
     True),
    ("reconciler", "lambda:InvokeFunction", arn("lambda", "function:offsite-dev-launch_shard"),
     True),
    ("scheduled_open", "lambda:InvokeFunction",
     arn("lambda", "function:offsite-prod-window_deadline"), False),
    ("launch_shard", "lambda:InvokeFunction",
     arn("lambda", "function:offsite-prod-launch_shard"), False),
    ("instance_state", "lambda:InvokeFunction",
     arn("lambda", "function:offsite-prod-launch_shard"), False),
])
def test_resources_admit_what_the_function_uses_and_no_more(
        name: str, action: str, resource: str, allowed: bool) -> None:
    assert may(name, action, resource) is allowed


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_writes_its_own_log_group_only(name: str) -> None:
    def stream(function: str) -> str:
        return arn("logs", f"log-group:/aws/lambda/offsite-prod-{function}:log-stream:2026/x")

    assert may(name, "logs:PutLogEvents", stream(name))
    assert may(name, "logs:CreateLogStream", stream(name))
    assert not any(may(name, "logs:PutLogEvents", stream(other))
                   for other in FUNCTIONS if other != name)


@pytest.mark.parametrize(("name", "secret"), [("api_handler", "ca-key"),
                                              ("instance-role", "host-key")])
def test_kms_decrypts_only_through_ssm_and_only_the_parameter_read(name: str,
                                                                     secret: str) -> None:
    decrypts = [s for a, _, s in grants(name) if a.startswith("kms:")]
    assert decrypts, name
    for statement in decrypts:
        assert listed(statement["Action"]) == ["kms:Decrypt"]
        assert statement["Condition"] == {"StringLike": {
            "kms:ViaService": "ssm.*.amazonaws.com",
            "kms:EncryptionContext:PARAMETER_ARN":
                f"arn:aws:ssm:*:*:parameter/offsite/*/{secret}"}}
    assert not any(a.startswith("kms:") for n in FUNCTIONS if n != "api_handler"
                   for a, _, _ in grants(n))


INSTANCE, VOLUME, SNAPSHOT = ("arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*",
                              "arn:aws:ec2:*::snapshot/*")
SECURITY_GROUP, LAUNCH_TEMPLATE = ("arn:aws:ec2:*:*:security-group/*",
                                   "arn:aws:ec2:*:*:launch-template/*")
A_WINDOWS = {"Null": {"aws:ResourceTag/offsite:window": "false"}}
NOT_A_WINDOWS = {"Null": {"aws:ResourceTag/offsite:window": "true"}}
UNTAGGED_REQUEST = {"Null": {"aws:RequestTag/offsite:window": "true"}}
NOT_THE_STAGES = {"Null": {"aws:ResourceTag/offsite:stage": "true"}}
# An action that needs several resources is allowed on all of them in one statement (parliament,
# rightly, wants every required resource type in it), then fenced, per resource, by Denies.
# RunInstances: the instance and every volume it makes carry the window's tag (RunInstances
# checks aws:RequestTag per resource it creates: "Grant permission to tag Amazon EC2 resources
# during creation", EC2 User Guide), every volume is encrypted, and the instance goes only into
# the stage's security group from the stage's launch template (both tagged offsite:stage).
FENCES = {
    "ec2:RunInstances": {
        INSTANCE: [UNTAGGED_REQUEST],
        VOLUME: [UNTAGGED_REQUEST, {"Bool": {"ec2:Encrypted": "false"}}],
        SECURITY_GROUP: [NOT_THE_STAGES],
        LAUNCH_TEMPLATE: [NOT_THE_STAGES]},
    "ec2:CreateSnapshot": {
        VOLUME: [NOT_A_WINDOWS],
        SNAPSHOT: [{"Null": {"aws:RequestTag/offsite:host": "true"}}]},
}
# api_handler snapshots, once, the volume an admin names at a host's first enrolment: a volume
# from before Offsite, so no window's. The snapshot it makes still carries the host's tag.
UNFENCED = {("api_handler", "ec2:CreateSnapshot", VOLUME)}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_ec2_writes_are_confined_to_offsite_tagged_resources(name: str) -> None:
    document = policy(name)
    denies: dict[tuple[str, str], list[Any]] = {}
    for statement in statements(document):
        if statement["Effect"] == "Deny":
            for a in listed(statement["Action"]):
                for r in listed(statement["Resource"]):
                    denies.setdefault((a, r), []).append(statement["Condition"])
    for action, resource, statement in grants(name):
        if not action.startswith("ec2:") or resource == "*":
            continue
        if action in FENCES:
            assert "Condition" not in statement
            expected = [] if (name, action, resource) in UNFENCED else FENCES[action].get(
                resource, [])
            assert denies.get((action, resource), []) == expected, (action, resource)
        elif action in ("ec2:StopInstances", "ec2:TerminateInstances"):
            assert (resource, statement["Condition"]) == (INSTANCE, A_WINDOWS), action
        elif action == "ec2:DeleteVolume":  # a window's volume, never one from elsewhere
            assert (resource, statement["Condition"]) == (VOLUME, A_WINDOWS)
        elif action == "ec2:DeleteSnapshot":
            assert (resource, statement["Condition"]) == (
                SNAPSHOT, {"Null": {"aws:ResourceTag/offsite:host": "false"}})
        else:
            assert action == "ec2:CreateTags", action
            assert tagging(resource, statement["Condition"]), (resource, statement)


def tagging(resource: str, condition: dict[str, Any]) -> bool:
    """CreateTags only as part of our own RunInstances or CreateSnapshot, or one key of our own:
    a window's volume gets its host's name, a host's snapshot its settled truth."""
    action = condition.get("StringEquals", {}).get("ec2:CreateAction")
    if action is not None:
        return condition == {"StringEquals": {"ec2:CreateAction": action}} and (
            (action, resource) in {("RunInstances", INSTANCE), ("RunInstances", VOLUME),
                                   ("CreateSnapshot", SNAPSHOT)})
    return (resource, condition) in [
        (VOLUME, {**A_WINDOWS, "ForAllValues:StringEquals": {"aws:TagKeys": ["offsite:host"]}}),
        (SNAPSHOT, {"Null": {"aws:ResourceTag/offsite:host": "false"},
                    "ForAllValues:StringEquals": {"aws:TagKeys": ["offsite:complete"]}})]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_deny_fences_an_action_the_policy_allows(name: str) -> None:
    allowed = {(a, r) for a, r, _ in grants(name)}
    for statement in statements(policy(name)):
        if statement["Effect"] == "Deny":
            assert {(a, r) for a in listed(statement["Action"])
                    for r in listed(statement["Resource"])} <= allowed, statement["Sid"]


def test_only_launch_shard_launches_and_it_launches_with_its_fences() -> None:
    launchers = {n for n in FUNCTIONS for a, _, _ in grants(n) if a == "ec2:RunInstances"}
    assert launchers == {"launch_shard"}
    denied = {r for s in statements(policy("launch_shard")) if s["Effect"] == "Deny"
              for r in listed(s["Resource"])}
    assert denied >= {INSTANCE, VOLUME, SECURITY_GROUP, LAUNCH_TEMPLATE}
