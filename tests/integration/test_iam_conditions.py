"""Every call each function makes, as IAM authorises it on AWS: the resource ARNs and condition
keys the real request carries, judged against the function's policy by a condition evaluator
(tests/integration/iam_evaluation.py), since moto ignores Condition.

The requests come from the calls' real parameters: the EC2 adapter is driven with a recording
client, and each recorded call is turned into the authorisations AWS makes for it, per
resource (RunInstances authorises the instance, every volume it makes (the launch template's
root volume too), the snapshot each is made from, the image, subnet, network interface,
security group and launch template; tags given at creation are authorised as CreateTags with
ec2:CreateAction: "Grant permission to tag Amazon EC2 resources during creation", EC2 User
Guide; a launch with an instance profile passes its role; an image "resolve:ssm:" reads the
parameter: "Native parameter support for Amazon Machine Image IDs", Systems Manager User
Guide; a SecureString read is a kms:Decrypt by SSM on the caller's behalf, with the parameter's
ARN as encryption context: "How AWS Systems Manager Parameter Store uses AWS KMS", KMS Developer
Guide). Each request is checked against the Service Authorization Reference (parliament's copy):
the action exists, the resource is of a type it authorises (RunInstances: all its required
types), and each condition key is one AWS sets for it.

Then the fences: the same calls with what the Deny statements are there to stop (an untagged
instance or volume, an unencrypted volume, a foreign security group or launch template, a
snapshot of a volume that is no window's) are refused, and writes on a neighbour's resources
match no Allow.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import parliament
import pytest

from chalicelib.adapters.compute import (
    TAG_COMPLETE,
    TAG_HOST,
    TAG_PURPOSE,
    TAG_REPORTED,
    TAG_SHARD,
    TAG_WINDOW,
    Ec2Compute,
    LaunchSpec,
    VolumeSpec,
)
from chalicelib.admin.kms import EBS_USE, key_policy_statements
from chalicelib.fleet import DEFAULT_IMAGES, Placement

from .iam_evaluation import Request, decision, glob_matches, listed
from .test_policies import FUNCTIONS, policy

ROOT = Path(__file__).parents[2]
REGION, ACCOUNT, STAGE = "eu-west-1", "123456789012", "prod"
WINDOW, SHARD = "w-20261207T020000Z-abc123", "s-1"
EC2 = f"arn:aws:ec2:{REGION}:{ACCOUNT}"
SECURITY_GROUP, LAUNCH_TEMPLATE, SUBNET = "sg-0archive", "lt-0archive", "subnet-0a"
HOST_SNAPSHOT, WINDOW_VOLUME, WINDOW_INSTANCE = "snap-0host", "vol-0window", "i-0window"
IMAGE = "ami-0al2023"
STAGE_TAGS = {"offsite:stage": STAGE}
# What the world holds: the tags of each existing resource a call names.
SNAPSHOT_TAGS = {TAG_WINDOW: "w-20261206T020000Z-def456", TAG_HOST: "web-1",
                 TAG_REPORTED: "succeeded", TAG_COMPLETE: "true"}
WINDOW_TAGS = {TAG_WINDOW: WINDOW, TAG_SHARD: SHARD, TAG_PURPOSE: "backup"}
Requests = list[Request]


class Recorder:
    """A boto3 client that records each call's operation and parameters."""

    ANSWERS: Mapping[str, Any] = {"run_instances": {"Instances": [{"InstanceId": "i-1"}]},
                                  "create_snapshot": {"SnapshotId": "snap-1"}}

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, operation: str) -> Callable[..., Any]:
        def call(**parameters: Any) -> Any:
            self.calls.append((operation, parameters))
            return self.ANSWERS.get(operation, {})
        return call


def recorded(drive: Callable[[Ec2Compute], Any]) -> tuple[str, dict[str, Any]]:
    recorder = Recorder()
    drive(Ec2Compute(recorder))  # type: ignore[arg-type]
    (call,) = recorder.calls
    return call


def tagged(prefix: str, tags: Mapping[str, str]) -> dict[str, list[str]]:
    context = {f"{prefix}/{k}": [v] for k, v in tags.items()}
    if prefix == "aws:RequestTag":
        context["aws:TagKeys"] = list(tags)
    return context


def request_tags(parameters: Mapping[str, Any], kind: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for spec in parameters.get("TagSpecifications", [])
            if spec["ResourceType"] == kind for t in spec["Tags"]}


@cache
def launch_template() -> dict[str, Any]:
    """The archives' launch template, as deploy/resources.json makes it."""
    resources = json.loads((ROOT / "deploy" / "resources.json").read_text())["Resources"]
    return dict(resources["ArchiveLaunchTemplate"]["Properties"]["LaunchTemplateData"])


# What AWS authorises for each call, from its parameters ------------------------------------
def run_instances(parameters: Mapping[str, Any], world: Mapping[str, Any]) -> Requests:
    data = launch_template()
    instance_tags, volume_tags = (request_tags(parameters, "instance"),
                                  request_tags(parameters, "volume"))
    volumes = [m["Ebs"] for m in data["BlockDeviceMappings"] + parameters["BlockDeviceMappings"]]
    requests = [Request("ec2:RunInstances", f"{EC2}:instance/*", {
        **tagged("aws:RequestTag", instance_tags),
        "ec2:InstanceType": [parameters["InstanceType"]]}, "the instance")]
    for ebs in volumes:
        requests.append(Request("ec2:RunInstances", f"{EC2}:volume/*", {
            **tagged("aws:RequestTag", volume_tags),
            "ec2:Encrypted": [str(world.get("encrypted", ebs.get("Encrypted", False))).lower()],
            "ec2:VolumeType": [ebs["VolumeType"]], "ec2:VolumeSize": [str(ebs["VolumeSize"])],
            **({"ec2:ParentSnapshot": [f"arn:aws:ec2:{REGION}::snapshot/{ebs['SnapshotId']}"]}
               if "SnapshotId" in ebs else {})}, "a volume"))
        if "SnapshotId" in ebs:
            requests.append(Request("ec2:RunInstances",
                                    f"arn:aws:ec2:{REGION}::snapshot/{ebs['SnapshotId']}", {
                                        **tagged("aws:ResourceTag", SNAPSHOT_TAGS),
                                        "ec2:Encrypted": ["true"]}, "a volume's snapshot"))
    image = parameters["ImageId"]
    requests += [
        Request("ec2:RunInstances", f"arn:aws:ec2:{REGION}::image/{IMAGE}",
                {"ec2:Owner": ["amazon"], "ec2:Public": ["true"]}, "the image"),
        Request("ec2:RunInstances", f"{EC2}:subnet/{parameters.get('SubnetId', SUBNET)}", {},
                "the subnet"),
        Request("ec2:RunInstances", f"{EC2}:network-interface/*",
                {"ec2:Subnet": [f"{EC2}:subnet/{parameters.get('SubnetId', SUBNET)}"]},
                "the network interface"),
        Request("ec2:RunInstances", f"{EC2}:security-group/{SECURITY_GROUP}",
                tagged("aws:ResourceTag", world.get("security_group_tags", STAGE_TAGS)),
                "the launch template's security group"),
        Request("ec2:RunInstances",
                f"{EC2}:launch-template/{parameters['LaunchTemplate']['LaunchTemplateId']}",
                tagged("aws:ResourceTag", world.get("launch_template_tags", STAGE_TAGS)),
                "the launch template"),
        Request("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/offsite-{STAGE}-archive",
                {"iam:PassedToService": ["ec2.amazonaws.com"]},
                f"the launch template's instance profile {data['IamInstanceProfile']}"),
    ]
    for kind, tags in (("instance", instance_tags), ("volume", volume_tags)):
        requests.append(Request("ec2:CreateTags", f"{EC2}:{kind}/*", {
            **tagged("aws:RequestTag", tags), "ec2:CreateAction": ["RunInstances"]},
            f"the {kind}'s tags at launch"))
    if image.startswith("resolve:ssm:"):
        name = image.removeprefix("resolve:ssm:").lstrip("/")
        requests.append(Request("ssm:GetParameters", f"arn:aws:ssm:{REGION}::parameter/{name}",
                                {}, "the AMI's public parameter"))
    return requests


def create_snapshot(parameters: Mapping[str, Any], world: Mapping[str, Any]) -> Requests:
    tags = request_tags(parameters, "snapshot")
    volume = parameters["VolumeId"]
    return [Request("ec2:CreateSnapshot", f"{EC2}:volume/{volume}", {
                **tagged("aws:ResourceTag", world.get("volume_tags", WINDOW_TAGS)),
                "ec2:Encrypted": ["true"]}, "the volume"),
            Request("ec2:CreateSnapshot", f"arn:aws:ec2:{REGION}::snapshot/*", {
                **tagged("aws:RequestTag", tags),
                "ec2:ParentVolume": [f"{EC2}:volume/{volume}"]}, "the snapshot"),
            Request("ec2:CreateTags", f"arn:aws:ec2:{REGION}::snapshot/*", {
                **tagged("aws:RequestTag", tags), "ec2:CreateAction": ["CreateSnapshot"]},
                "the snapshot's tags at creation")]


def create_tags(parameters: Mapping[str, Any], world: Mapping[str, Any]) -> Requests:
    tags = {t["Key"]: t["Value"] for t in parameters["Tags"]}
    requests = []
    for resource in parameters["Resources"]:
        arn, existing = ((f"arn:aws:ec2:{REGION}::snapshot/{resource}", SNAPSHOT_TAGS)
                         if resource.startswith("snap-") else
                         (f"{EC2}:volume/{resource}", WINDOW_TAGS))
        requests.append(Request("ec2:CreateTags", arn, {
            **tagged("aws:ResourceTag", world.get("resource_tags", existing)),
            **tagged("aws:RequestTag", tags)}, "tags on an existing resource"))
    return requests


def instances(action: str) -> Callable[[Mapping[str, Any], Mapping[str, Any]], Requests]:
    def authorised(parameters: Mapping[str, Any], world: Mapping[str, Any]) -> Requests:
        return [Request(action, f"{EC2}:instance/{i}",
                        tagged("aws:ResourceTag", world.get("resource_tags", WINDOW_TAGS)),
                        "an instance") for i in parameters["InstanceIds"]]
    return authorised


def delete_snapshot(parameters: Mapping[str, Any], world: Mapping[str, Any]) -> Requests:
    return [Request("ec2:DeleteSnapshot",
                    f"arn:aws:ec2:{REGION}::snapshot/{parameters['SnapshotId']}",
                    tagged("aws:ResourceTag", world.get("resource_tags", SNAPSHOT_TAGS)),
                    "a recovery point")]


def delete_volume(parameters: Mapping[str, Any], world: Mapping[str, Any]) -> Requests:
    return [Request("ec2:DeleteVolume", f"{EC2}:volume/{parameters['VolumeId']}",
                    tagged("aws:ResourceTag", world.get("resource_tags", WINDOW_TAGS)),
                    "a window's volume")]


AUTHORISED_AS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], Requests]] = {
    "run_instances": run_instances, "create_snapshot": create_snapshot,
    "create_tags": create_tags, "stop_instances": instances("ec2:StopInstances"),
    "terminate_instances": instances("ec2:TerminateInstances"),
    "delete_snapshot": delete_snapshot, "delete_volume": delete_volume}


def spec(snapshot: str | None = HOST_SNAPSHOT) -> LaunchSpec:
    return LaunchSpec(
        window_id=WINDOW, shard_id=SHARD, purpose="backup", user_data="#!/bin/sh\n",
        volumes=(VolumeSpec("web-1", "/dev/sdf", 20, snapshot),
                 VolumeSpec("db-1", "/dev/sdg", 30, None)),
        placements=(Placement("t4g.small", SUBNET, DEFAULT_IMAGES["arm64"]),),
        launch_template=LAUNCH_TEMPLATE)


# The EC2 calls, driven through the adapter, named by what they are for.
EC2_CALLS: dict[str, Callable[[Ec2Compute], Any]] = {
    "launch an archive": lambda c: c.launch(spec()),
    "stop an archive": lambda c: c.stop([WINDOW_INSTANCE]),
    "terminate an archive": lambda c: c.terminate([WINDOW_INSTANCE]),
    "name a volume's host": lambda c: c.tag_volumes({WINDOW_VOLUME: "web-1"}),
    "snapshot a host's volume": lambda c: c.snapshot_volume(WINDOW_VOLUME, {
        TAG_WINDOW: WINDOW, TAG_HOST: "web-1", TAG_REPORTED: "succeeded",
        TAG_COMPLETE: "pending"}),
    "settle a recovery point": lambda c: c.mark_complete(HOST_SNAPSHOT, True),
    "delete a recovery point": lambda c: c.delete_snapshot(HOST_SNAPSHOT),
    "delete a window's volume": lambda c: c.delete_volume(WINDOW_VOLUME),
}
ADOPTED_VOLUME = {"volume_tags": {}}  # a volume from before Offsite: no window's tags


def ec2_call(name: str, world: Mapping[str, Any] | None = None) -> Requests:
    operation, parameters = recorded(EC2_CALLS[name])
    return AUTHORISED_AS[operation](parameters, world or {})


def parameter_arn(name: str) -> str:
    return f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/offsite/{STAGE}/{name}"


def read_parameter(name: str, secure: bool) -> Requests:
    requests = [Request("ssm:GetParameter", parameter_arn(name), {}, f"{name}")]
    if secure:  # the account's aws/ssm key or a customer managed key: either is a key ARN
        requests.append(Request(
            "kms:Decrypt", f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0a1b2c3d-aws-ssm",
            {"kms:ViaService": [f"ssm.{REGION}.amazonaws.com"],
             "kms:EncryptionContext:PARAMETER_ARN": [parameter_arn(name)]},
            f"SSM decrypts {name} for the caller"))
    return requests


def table(*actions: str) -> Requests:
    """DynamoDB on the stage's table. A TransactWriteItems is authorised item by item as
    PutItem, UpdateItem, DeleteItem ("Using IAM policy conditions for fine-grained access
    control", DynamoDB Developer Guide), and a ConditionCheck item as ConditionCheckItem
    ("Using IAM with DynamoDB transactions"), so those cover it."""
    return [Request(f"dynamodb:{a}", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/offsite-{STAGE}",
                    {}, "the window table") for a in actions]


def described(*actions: str) -> Requests:
    return [Request(f"ec2:{a}", "*", {}, "no resource-level permissions") for a in actions]


def schedules(create: bool) -> Requests:
    arn = (f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/offsite-{STAGE}/"
           f"offsite-deadline-{WINDOW}")
    requests = [Request("scheduler:DeleteSchedule", arn, {}, "the window's deadline")]
    if create:
        requests += [Request("scheduler:CreateSchedule", arn, {}, "the window's deadline"),
                     Request("iam:PassRole",
                             f"arn:aws:iam::{ACCOUNT}:role/offsite-{STAGE}-scheduler",
                             {"iam:PassedToService": ["scheduler.amazonaws.com"]},
                             "the Scheduler's role")]
    return requests


def logs(name: str) -> Requests:
    stream = (f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/offsite-{STAGE}-{name}:"
              "log-stream:2026/12/07/[$LATEST]0a1b")
    return [Request("logs:CreateLogStream", stream, {}, "Lambda's log"),
            Request("logs:PutLogEvents", stream, {}, "Lambda's log")]


NOTIFY = [Request("sns:Publish", f"arn:aws:sns:{REGION}:{ACCOUNT}:offsite-{STAGE}", {},
                  "the admins' topic")]
# Each host's recovery point age (chalicelib/watch.py, adapters/metrics.py): PutMetricData has
# no resource-level permission; the namespace is its condition key ("Amazon CloudWatch",
# Service Authorization Reference).
HOST_AGES = [Request("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": ["Offsite"]},
                     "each host's recovery point age")]
FAN_OUT = [Request("lambda:InvokeFunction",
                   f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:offsite-{STAGE}-launch_shard",
                   {}, "a shard's launch")]
ALL_ITEMS = ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query")
# A session's start, only while its archive is OPEN, and the idle close, only while the idle
# hosts have no start (dynamo_store.record_start, transition_shard): the API (sessions,
# reports) and the reconciler (its look at an OPEN archive).
CHECKED = (*ALL_ITEMS, "ConditionCheckItem")
NO_PUT = ("GetItem", "UpdateItem", "DeleteItem", "Query")


@cache
def calls() -> dict[str, Requests]:
    """Every call each function (and the archive instance) makes, as AWS authorises it."""
    ec2 = {name: ec2_call(name) for name in EC2_CALLS}
    return {
        "api_handler": [
            *table(*CHECKED), *described("DescribeSnapshots"), *ec2["stop an archive"],
            *ec2["terminate an archive"], *ec2["delete a window's volume"],
            *ec2_call("snapshot a host's volume", ADOPTED_VOLUME), *schedules(create=True),
            *FAN_OUT, *NOTIFY, *read_parameter("ca-key", secure=True),
            *read_parameter("ca-key.pub", secure=False),
            *read_parameter("host-key.pub", secure=False)],
        "scheduled_open": [*table(*ALL_ITEMS), *schedules(create=True), *FAN_OUT, *NOTIFY],
        "console_open": [*table(*ALL_ITEMS), *schedules(create=True), *FAN_OUT, *NOTIFY],
        "window_deadline": [
            *table(*NO_PUT), *ec2["stop an archive"], *ec2["terminate an archive"],
            *ec2["delete a window's volume"], *schedules(create=False), *NOTIFY],
        "launch_shard": [
            *table(*ALL_ITEMS), *described("DescribeInstances", "DescribeSnapshots"),
            *ec2["launch an archive"], *read_parameter("ca-key.pub", secure=False),
            *ec2["terminate an archive"], *ec2["name a volume's host"],
            *schedules(create=False), *NOTIFY],
        "reconciler": [
            *table(*CHECKED),
            *described("DescribeInstances", "DescribeSnapshots", "DescribeVolumes"),
            *ec2["stop an archive"], *ec2["terminate an archive"], *ec2["name a volume's host"],
            *ec2["snapshot a host's volume"], *ec2["settle a recovery point"],
            *ec2["delete a recovery point"], *ec2["delete a window's volume"],
            *schedules(create=False), *FAN_OUT, *NOTIFY, *HOST_AGES],
        "instance_state": [
            *table(*ALL_ITEMS), *described("DescribeInstances", "DescribeSnapshots"),
            *ec2["terminate an archive"], *ec2["name a volume's host"],
            *ec2["snapshot a host's volume"], *ec2["delete a window's volume"],
            *schedules(create=False), *NOTIFY],
        "snapshot_state": [
            *table(*NO_PUT), *described("DescribeSnapshots", "DescribeVolumes"),
            *ec2["settle a recovery point"], *ec2["delete a recovery point"],
            *ec2["delete a window's volume"], *schedules(create=False), *NOTIFY, *HOST_AGES],
        "instance-role": read_parameter("host-key", secure=True),
    }


def documents(name: str) -> list[dict[str, Any]]:
    return [policy(name)]


# The table ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", (*FUNCTIONS, "instance-role"))
def test_every_call_the_function_makes_is_allowed_with_the_keys_it_carries(name: str) -> None:
    requests = calls()[name] + (logs(name) if name in FUNCTIONS else [])
    refused = [str(r) for r in requests if decision(documents(name), r) != "allow"]
    assert refused == []


@pytest.mark.parametrize("name", (*FUNCTIONS, "instance-role"))
def test_the_table_covers_every_action_the_policy_grants(name: str) -> None:
    """No grant without a call in the table: a new grant needs its request described here."""
    granted = {a for s in policy(name)["Statement"] if s["Effect"] == "Allow"
               for a in listed(s["Action"])}
    made = {r.action for r in calls()[name]} | (
        {"logs:CreateLogStream", "logs:PutLogEvents"} if name in FUNCTIONS else set())
    assert granted == made


# What the fences stop ----------------------------------------------------------------------
def launch(world: Mapping[str, Any] | None = None,
           drop: Callable[[dict[str, Any]], None] | None = None) -> Requests:
    operation, parameters = recorded(EC2_CALLS["launch an archive"])
    if drop:
        drop(parameters)
    return AUTHORISED_AS[operation](parameters, world or {})


def untag(kind: str) -> Callable[[dict[str, Any]], None]:
    def drop(parameters: dict[str, Any]) -> None:
        parameters["TagSpecifications"] = [s for s in parameters["TagSpecifications"]
                                           if s["ResourceType"] != kind]
    return drop


def unencrypted(parameters: dict[str, Any]) -> None:
    parameters["BlockDeviceMappings"][1]["Ebs"]["Encrypted"] = False


@pytest.mark.parametrize(("requests", "resource", "expected"), [
    (lambda: launch(drop=untag("instance")), ":instance/*", "deny"),
    (lambda: launch(drop=untag("volume")), ":volume/*", "deny"),
    (lambda: launch(drop=unencrypted), ":volume/*", "deny"),
    (lambda: launch({"security_group_tags": {}}), ":security-group/", "deny"),
    (lambda: launch({"launch_template_tags": {"offsite:stage-not": STAGE}}),
     ":launch-template/", "deny"),
], ids=["untagged-instance", "untagged-volume", "unencrypted-volume", "foreign-security-group",
        "foreign-launch-template"])
def test_launch_shards_fences_refuse_what_they_are_for(
        requests: Callable[[], Requests], resource: str, expected: str) -> None:
    fenced = [r for r in requests() if r.action == "ec2:RunInstances" and resource in r.resource]
    assert fenced and {decision(documents("launch_shard"), r) for r in fenced} >= {expected}
    assert all(decision(documents("launch_shard"), r) == "allow"
               for r in launch() if r.action == "ec2:RunInstances" and resource in r.resource)


NEIGHBOURS = {"resource_tags": {"Name": "billing-db"}}


@pytest.mark.parametrize(("name", "call", "world", "expected"), [
    ("reconciler", "stop an archive", NEIGHBOURS, "implicit"),
    ("window_deadline", "terminate an archive", NEIGHBOURS, "implicit"),
    ("snapshot_state", "delete a window's volume", NEIGHBOURS, "implicit"),
    ("snapshot_state", "delete a recovery point", NEIGHBOURS, "implicit"),
    ("reconciler", "settle a recovery point", NEIGHBOURS, "implicit"),
    ("instance_state", "name a volume's host", NEIGHBOURS, "implicit"),
    ("instance_state", "snapshot a host's volume", ADOPTED_VOLUME, "deny"),
    ("reconciler", "snapshot a host's volume", ADOPTED_VOLUME, "deny"),
], ids=["stop-neighbour", "terminate-neighbour", "delete-neighbours-volume",
        "delete-neighbours-snapshot", "tag-neighbours-snapshot", "tag-neighbours-volume",
        "snapshot-non-window-volume-instance-state", "snapshot-non-window-volume-reconciler"])
def test_writes_on_what_is_not_offsites_are_refused(name: str, call: str,
                                                    world: Mapping[str, Any],
                                                    expected: str) -> None:
    requests = ec2_call(call, world)
    assert expected in {decision(documents(name), r) for r in requests}
    assert all(decision(documents(name), r) == "allow" for r in ec2_call(call))


def test_a_snapshot_without_its_hosts_tag_is_refused() -> None:
    requests = ec2_call("snapshot a host's volume")
    untagged = [Request(r.action, r.resource, {k: v for k, v in r.context.items()
                                               if TAG_HOST not in k and k != "aws:TagKeys"},
                        r.why) for r in requests]
    for name in ("api_handler", "instance_state", "reconciler"):
        assert "deny" in {decision(documents(name), r) for r in untagged}, name


def test_tags_other_than_the_ones_a_function_sets_are_refused() -> None:
    (request,) = ec2_call("settle a recovery point")
    renamed = Request(request.action, request.resource, {
        **{k: v for k, v in request.context.items() if not k.startswith("aws:RequestTag")},
        f"aws:RequestTag/{TAG_HOST}": ["other-host"], "aws:TagKeys": [TAG_HOST]})
    assert decision(documents("snapshot_state"), renamed) == "implicit"
    assert decision(documents("snapshot_state"), request) == "allow"


def test_roles_are_passed_to_their_service_only() -> None:
    (pass_scheduler,) = [r for r in schedules(create=True) if r.action == "iam:PassRole"]
    to_ec2 = Request(pass_scheduler.action, pass_scheduler.resource,
                     {"iam:PassedToService": ["ec2.amazonaws.com"]})
    assert decision(documents("api_handler"), pass_scheduler) == "allow"
    assert decision(documents("api_handler"), to_ec2) == "implicit"
    (passed,) = [r for r in launch() if r.action == "iam:PassRole"]
    to_lambda = Request(passed.action, passed.resource,
                        {"iam:PassedToService": ["lambda.amazonaws.com"]})
    assert decision(documents("launch_shard"), passed) == "allow"
    assert decision(documents("launch_shard"), to_lambda) == "implicit"


def test_secure_parameters_are_decrypted_only_through_ssm_for_that_parameter() -> None:
    _, decrypt = read_parameter("ca-key", secure=True)
    direct = Request(decrypt.action, decrypt.resource, {
        "kms:EncryptionContext:PARAMETER_ARN": decrypt.context[
            "kms:EncryptionContext:PARAMETER_ARN"]})
    other = Request(decrypt.action, decrypt.resource, {
        **decrypt.context, "kms:EncryptionContext:PARAMETER_ARN": [parameter_arn("host-key")]})
    assert decision(documents("api_handler"), decrypt) == "allow"
    assert decision(documents("api_handler"), direct) == "implicit"
    assert decision(documents("api_handler"), other) == "implicit"


# The requests are those AWS makes ----------------------------------------------------------
@cache
def reference() -> dict[str, Any]:
    return {service["prefix"]: service for service in parliament.iam_definition}


def as_glob(template: str) -> str:
    """A reference ARN or key template (`arn:${Partition}:ec2:${Region}::image/${ImageId}`)
    as a glob."""
    return re.sub(r"\$\{[^}]+\}", "*", template)


def _keys_match(pattern: str, key: str) -> bool:
    return glob_matches(as_glob(pattern), key, ignore_case=True)


def reference_problems(request: Request) -> list[str]:
    """What the Service Authorization Reference says against a request: no such action, a
    resource of a type the action does not authorise, a condition key AWS does not set for it.
    """
    prefix, name = request.action.split(":")
    service = reference()[prefix]
    privilege = next((p for p in service["privileges"] if p["privilege"] == name), None)
    if privilege is None:
        return [f"{request.action} is no action"]
    kinds = {r["resource"]: r for r in service["resources"]}
    action_keys = [k for t in privilege["resource_types"] if not t["resource_type"]
                   for k in t["condition_keys"]]
    if request.resource == "*":
        types: list[dict[str, Any]] = []
        allowed = action_keys
        if any(t["resource_type"] for t in privilege["resource_types"]):
            return [f"{request.action} takes a resource, not *"]
    else:
        types = [t for t in privilege["resource_types"] if t["resource_type"] and glob_matches(
            as_glob(kinds[t["resource_type"].rstrip("*")]["arn"]), request.resource)]
        if not types:
            return [f"{request.action} does not authorise {request.resource}"]
        allowed = action_keys + [k for t in types for k in t["condition_keys"]] + [
            k for t in types for k in kinds[t["resource_type"].rstrip("*")]["condition_keys"]]
    service_keys = [c["condition"] for c in service["conditions"]]
    problems = []
    for key in request.context:
        global_key = key.startswith("aws:")
        # kms:ViaService is set on every request AWS services make with a key ("AWS KMS
        # condition keys", kms:ViaService, KMS Developer Guide); parliament lists it with the
        # service's keys, not per action.
        via = key == "kms:ViaService" and key in service_keys
        if not (global_key or via or any(_keys_match(p, key) for p in allowed)):
            problems.append(f"{request.action} on {request.resource} carries no {key}")
    return problems


def test_every_request_in_the_table_is_one_aws_makes() -> None:
    requests = [r for name in calls() for r in calls()[name]] + logs("reconciler")
    assert [p for r in requests for p in reference_problems(r)] == []


def test_a_launch_authorises_every_resource_type_run_instances_requires() -> None:
    ec2 = reference()["ec2"]
    (privilege,) = [p for p in ec2["privileges"] if p["privilege"] == "RunInstances"]
    required = {t["resource_type"].rstrip("*") for t in privilege["resource_types"]
                if t["resource_type"].endswith("*")}
    arns = {k: v["arn"] for k, v in ((r["resource"], r) for r in ec2["resources"])}
    touched = {kind for r in launch() if r.action == "ec2:RunInstances"
               for kind in required if glob_matches(as_glob(arns[kind]), r.resource)}
    assert touched == required
    dependent = {a for t in privilege["resource_types"] for a in t["dependent_actions"]}
    assert dependent <= {r.action for r in launch()}


# Every call the code makes is in the table --------------------------------------------------
CLIENTS = ("ec2", "dynamodb", "ssm", "sns", "scheduler", "lambda")
# boto3 operation -> the IAM actions it is authorised as, where the name is not the action's
AUTHORISED_ACTIONS = {"lambda:Invoke": {"lambda:InvokeFunction"},
                      "dynamodb:TransactWriteItems": {"dynamodb:PutItem", "dynamodb:UpdateItem",
                                                      "dynamodb:DeleteItem",
                                                      "dynamodb:ConditionCheckItem"},
                      # powertools' SSMProvider.get is GetParameter
                      "ssm:Get": {"ssm:GetParameter"}}
# dynamo_store.create_table: `offsite-admin init` on the local stack, with the admin's own
# credentials; on AWS the stack makes the table (WindowTable), and no function does.
ADMIN_ONLY = {"dynamodb:CreateTable", "dynamodb:UpdateTimeToLive"}


def operations() -> dict[str, str]:
    """boto3 method name -> "service:Operation" for the clients the control plane builds."""
    session = botocore.session.get_session()
    found = {}
    for service in CLIENTS:
        model = session.get_service_model(service)
        prefix = model.metadata.get("signingName", service)
        for operation in model.operation_names:
            snake = re.sub(r"(?<!^)(?=[A-Z][a-z])|(?<=[a-z0-9])(?=[A-Z])", "_", operation)
            found[snake.lower()] = f"{prefix}:{operation}"
    return found


def code_calls() -> Iterator[str]:
    """The AWS operations chalicelib and app.py call (admin commands excepted: they run with
    the admin's own credentials), by method name or by paginator name."""
    known = operations()
    files = [ROOT / "app.py", *(p for p in (ROOT / "chalicelib").rglob("*.py")
                                if "admin" not in p.parts)]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method = node.func.attr
            if method == "get_paginator" and isinstance(node.args[0], ast.Constant):
                yield known[str(node.args[0].value)]
            elif (method in known and method not in ("get", "query")) or (
                    method == "query" and "dynamo" in path.name):
                yield known[method]
            elif method == "get" and isinstance(node.func.value, ast.Call) and isinstance(
                    node.func.value.func, ast.Name) and node.func.value.func.id == "_ssm":
                yield "ssm:Get"


def test_every_aws_call_in_the_code_is_in_the_table() -> None:
    found = set(code_calls())
    assert {"ec2:RunInstances", "dynamodb:TransactWriteItems", "sns:Publish",
            "lambda:Invoke", "ssm:Get"} <= found
    tabled = {r.action for name in calls() for r in calls()[name]}
    missing = {o for o in found - ADMIN_ONLY if not AUTHORISED_ACTIONS.get(o, {o}) <= tabled}
    assert missing == set()


# A customer managed key (`offsite-admin init --kms-key`) ----------------------------------
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def ebs_key_policy() -> dict[str, Any]:
    """The template's LaunchShardEbsKeyPolicy, as CloudFormation resolves it with the key."""
    resources = json.loads((ROOT / "deploy" / "resources.json").read_text())["Resources"]

    def resolved(value: Any) -> Any:
        if value == {"Ref": "EbsKmsKeyArn"}:
            return KEY
        if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
            return value["Fn::Sub"].replace("${AWS::Region}", REGION)
        if isinstance(value, dict):
            return {k: resolved(v) for k, v in value.items()}
        return [resolved(v) for v in value] if isinstance(value, list) else value

    return dict(resolved(resources["LaunchShardEbsKeyPolicy"]["Properties"]["PolicyDocument"]))


def key_policy() -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": key_policy_statements(KEY)}


def through(service: str, **context: str) -> dict[str, list[str]]:
    return {"kms:ViaService": [f"{service}.{REGION}.amazonaws.com"],
            "kms:CallerAccount": [ACCOUNT], **{k: [v] for k, v in context.items()}}


def ebs_key_requests() -> Requests:
    """What EBS asks of KMS, as the caller, when RunInstances makes a volume with the key
    ("Requirements for Amazon EBS encryption", Permissions for users)."""
    return [Request(a, KEY, through("ec2"), "EBS, for the launch") for a in EBS_USE] + [
        Request("kms:CreateGrant", KEY, through("ec2", **{"kms:GrantIsForAWSResource": "true"}),
                "EBS's grant for the volume")]


def ssm_key_request(action: str, name: str) -> Request:
    return Request(action, KEY, through(
        "ssm", **{"kms:EncryptionContext:PARAMETER_ARN": parameter_arn(name)}),
        f"SSM, for {name}")


def test_launch_shard_uses_the_key_through_ebs_under_both_policies() -> None:
    for request in ebs_key_requests():
        assert decision([policy("launch_shard"), ebs_key_policy()], request) == "allow", request
        assert decision([key_policy()], request) == "allow", request
        assert not reference_problems(request)


@pytest.mark.parametrize("name", [n for n in FUNCTIONS if n != "launch_shard"])
def test_no_other_function_may_use_the_volumes_key(name: str) -> None:
    assert {decision(documents(name), r) for r in ebs_key_requests()} == {"implicit"}


def test_the_key_is_not_usable_directly_nor_granted_for_anything_but_ebs() -> None:
    (grant,) = [r for r in ebs_key_requests() if r.action == "kms:CreateGrant"]
    for_a_person = Request(grant.action, KEY, through("ec2", **{
        "kms:GrantIsForAWSResource": "false"}))
    direct = Request("kms:Decrypt", KEY, {"kms:CallerAccount": [ACCOUNT]})
    other_account = Request("kms:Decrypt", KEY, {**through("ec2"),
                                                 "kms:CallerAccount": ["210987654321"]})
    for request in (for_a_person, direct, other_account):
        assert decision([key_policy()], request) == "implicit", request
    for request in (for_a_person, direct):
        assert decision([policy("launch_shard"), ebs_key_policy()], request) == "implicit"


@pytest.mark.parametrize(("name", "parameter"), [("api_handler", "ca-key"),
                                                 ("instance-role", "host-key")])
def test_secure_parameters_are_read_with_the_key_through_ssm(name: str, parameter: str) -> None:
    request = ssm_key_request("kms:Decrypt", parameter)
    assert decision(documents(name), request) == "allow"
    assert decision([key_policy()], request) == "allow"
    assert not reference_problems(request)


def test_init_writes_offsites_parameters_with_the_key_and_nothing_else_reads_through_it() -> None:
    assert decision([key_policy()], ssm_key_request("kms:Encrypt", "ca-key")) == "allow"
    elsewhere = Request("kms:Decrypt", KEY, through("ssm", **{
        "kms:EncryptionContext:PARAMETER_ARN":
            f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/billing/db-password"}))
    assert decision([key_policy()], elsewhere) == "implicit"


@pytest.mark.parametrize("name", ("reconciler", "snapshot_state"))
def test_metrics_go_to_offsites_namespace_only(name: str) -> None:
    other = Request("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": ["AWS/EC2"]},
                    "a metric in someone else's namespace")
    assert decision(documents(name), HOST_AGES[0]) == "allow"
    assert decision(documents(name), other) != "allow"
