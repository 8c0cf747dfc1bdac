"""The policies are enough: whole windows of the archive fleet on a moto server that enforces
IAM, each handler's AWS calls signed with its own function's role, and a call outside a
function's policy refused.

What moto enforces of a policy is its set of allowed actions: it matches a statement's Resource
against "*" and does not evaluate Condition (moto/iam/access_control.py says so), so each role
here gets its policies/ file's Allow actions on "*" (`moto_view`). Which resources and tags
those actions reach is checked without AWS in tests/integration/test_policies.py.

As in Lambda, a function's credentials come from its environment: before each invocation the
test puts that function's role session there and drops the cached clients, as a new container
would start. A window's opening invokes launch_shard asynchronously, once per shard, with the
opener's credentials (moto checks lambda:InvokeFunction; its Lambda runs nothing); the test then
runs each launch as launch_shard's own role, as Lambda would.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from chalice.test import Client
from moto.iam.access_control import IAMRequestBase
from nacl.signing import SigningKey

import app as app_module
from chalicelib import composition
from chalicelib.adapters.dynamo_store import create_table
from chalicelib.keys import KeyParameters, generate_key_material
from chalicelib.launcher import LambdaLauncher, launch_event

from .app_rig import (
    EVENTS,
    HOSTS,
    KEY_PREFIX,
    AppRig,
    aws_event,
    clear_caches,
    put_key_material,
    snapshot_event,
)

POLICIES = Path(__file__).parents[2] / "policies"
FUNCTIONS = ("api_handler", "scheduled_open", "console_open", "window_deadline", "launch_shard",
             "reconciler", "instance_state", "snapshot_state")
LAUNCH_FUNCTION = "offsite-dev-launch_shard"
LAMBDA_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
    "Action": "sts:AssumeRole"}]}
DYNAMODB_WRITES = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}
ACCOUNT = "123456789012"


def moto_view(policy: dict[str, Any]) -> dict[str, Any]:
    """The part of a policy moto can enforce: the actions it allows. A DynamoDB transaction is
    authorised item by item as PutItem/UpdateItem/DeleteItem by IAM, as the one action
    dynamodb:TransactWriteItems by moto; Lambda's Invoke is lambda:InvokeFunction to IAM,
    lambda:Invoke to moto; cloudwatch:PutMetricData is monitoring:PutMetricData to moto. Deny
    statements only fence resources (by tag), which moto cannot see; left in, moto would deny
    their actions everywhere."""
    statements = policy["Statement"]
    actions: set[str] = set()
    for statement in [statements] if isinstance(statements, dict) else statements:
        if statement["Effect"] == "Allow":
            action = statement["Action"]
            actions.update([action] if isinstance(action, str) else action)
    if actions & DYNAMODB_WRITES:
        actions.add("dynamodb:TransactWriteItems")
    if "lambda:InvokeFunction" in actions:  # moto names Lambda's Invoke operation's action
        actions.add("lambda:Invoke")  # after the operation, not as IAM does
    if "cloudwatch:PutMetricData" in actions:  # and CloudWatch's by its endpoint, monitoring
        actions.add("monitoring:PutMetricData")

    return {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": sorted(actions), "Resource": "*"}]}


def signed_as_sent(self: IAMRequestBase) -> Any:
    """moto checks the signature of a bodiless request (Scheduler's DELETE /schedules/x?
    groupName=...) as if its parsed query were the payload, so it never matches what botocore
    signed; checked with the empty payload that was sent, it does."""
    if self._method in ("GET", "HEAD", "DELETE") and not self._body:
        self._data = b""  # type: ignore[assignment]
    return ORIGINAL_CREATE_AWS_REQUEST(self)


ORIGINAL_CREATE_AWS_REQUEST = IAMRequestBase._create_aws_request


@dataclass(frozen=True)
class Keys:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def client(self, service: str) -> Any:
        return boto3.session.Session(
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
            aws_session_token=self.session_token, region_name="us-east-1").client(service)


@dataclass(frozen=True)
class Account:
    """A moto server enforcing IAM: an unrestricted "world" user (the test, and AWS itself),
    one role session per function, and what a deploy makes."""

    url: str
    world: Keys
    roles: dict[str, Keys]
    deployed: Deployed
    material: Any

    def enforce(self, count: float) -> None:
        self._moto_api("reset-auth", str(count).encode(), "text/plain")

    def run_no_lambda_code(self) -> None:
        """moto's Lambda without docker: an invocation is accepted (after the IAM check) and
        runs nothing."""
        self._moto_api("config", json.dumps({"lambda": {"use_docker": False}}).encode(),
                       "application/json")

    def _moto_api(self, path: str, data: bytes, kind: str) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/{path}",  # noqa: S310
                                         data=data, method="POST",
                                         headers={"Content-Type": kind})
        with urllib.request.urlopen(request) as answer:  # noqa: S310 (our loopback server)
            assert answer.status in (200, 201)


@dataclass(frozen=True)
class Deployed:
    """What the deploy template makes (deploy/resources.json), and one instance of the account
    that is not an archive (a neighbour's)."""

    subnets: list[str]
    launch_template: str
    stranger: str


@pytest.fixture(scope="module")
def account() -> Iterator[Account]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(IAMRequestBase, "_create_aws_request", signed_as_sent)
        patch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        world = bootstrap()
        ready = Account(f"http://127.0.0.1:{port}", world, roles(), *provision(world))
        ready.run_no_lambda_code()
        ready.enforce(0)
        try:
            yield ready
        finally:
            ready.enforce(float("inf"))
            server.stop()


def bootstrap() -> Keys:
    """Before enforcement: the world user, with the env's fake credentials."""
    iam = boto3.client("iam")
    iam.create_user(UserName="world")
    iam.put_user_policy(UserName="world", PolicyName="everything", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="world")["AccessKey"]
    return Keys(key["AccessKeyId"], key["SecretAccessKey"])


def roles() -> dict[str, Keys]:
    iam, sts = boto3.client("iam"), boto3.client("sts")
    sessions = {}
    for name in (*FUNCTIONS, "instance-role"):
        role = iam.create_role(RoleName=f"offsite-dev-{name}",
                               AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST))["Role"]
        document = moto_view(json.loads((POLICIES / f"{name}.json").read_text()))
        iam.put_role_policy(RoleName=role["RoleName"], PolicyName=name,
                            PolicyDocument=json.dumps(document))
        credentials = sts.assume_role(RoleArn=role["Arn"], RoleSessionName=name)["Credentials"]
        sessions[name] = Keys(credentials["AccessKeyId"], credentials["SecretAccessKey"],
                              credentials["SessionToken"])
    return sessions


def provision(world: Keys) -> tuple[Deployed, Any]:
    """What the deploy template makes, made by the world user: subnets in two zones, the
    launch template and security group (tagged as the template tags them), table, topic,
    schedule group and keys."""
    ec2 = world.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24",
                                 AvailabilityZone=f"us-east-1{zone}")["Subnet"]["SubnetId"]
               for i, zone in enumerate("ab")]
    for subnet in subnets:  # public subnets: each archive gets the public address hosts use
        ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
    stage = [{"ResourceType": kind, "Tags": [{"Key": "offsite:stage", "Value": "dev"}]}
             for kind in ("security-group", "launch-template")]
    group = ec2.create_security_group(GroupName="offsite-dev-archive", VpcId=vpc,
                                      Description="archives", TagSpecifications=stage[:1])
    template = ec2.create_launch_template(
        LaunchTemplateName="offsite-dev-archive", TagSpecifications=stage[1:],
        LaunchTemplateData={"MetadataOptions": {"HttpTokens": "required"},
                            "SecurityGroupIds": [group["GroupId"]]})[
        "LaunchTemplate"]["LaunchTemplateId"]
    stranger = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                                 InstanceType="t3.small")["Instances"][0]["InstanceId"]
    world.client("sns").create_topic(Name="offsite-dev")
    world.client("scheduler").create_schedule_group(Name="offsite-dev")
    create_table(world.client("dynamodb"), "offsite-dev")
    material = generate_key_material()
    put_key_material(material)
    return Deployed(subnets, template, stranger), material


class RecordingLauncher:
    """LambdaLauncher, signed with the opener's credentials, remembering the launches it asked
    for so that the test runs them next as launch_shard."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, str]] = []

    def launch(self, window_id: str, shard_ids: Any) -> None:
        LambdaLauncher(boto3.client("lambda"), LAUNCH_FUNCTION).launch(window_id, shard_ids)
        self.pending += [(window_id, shard_id) for shard_id in shard_ids]


class Lambdas:
    """The app's functions, each run as its own role, as Lambda runs them."""

    def __init__(self, account: Account, monkeypatch: pytest.MonkeyPatch) -> None:
        self.account = account
        self._monkeypatch = monkeypatch
        self.rig: AppRig | None = None
        self.launcher = RecordingLauncher()
        monkeypatch.setattr(composition, "_launcher", lambda settings: self.launcher)

    def run_as(self, function: str) -> None:
        keys = self.account.roles[function]
        self._monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys.access_key_id)
        self._monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys.secret_access_key)
        self._monkeypatch.setenv("AWS_SESSION_TOKEN", keys.session_token or "")
        self._monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
        clear_caches()

    def invoke(self, function: str, event: dict[str, Any]) -> Any:
        assert self.rig is not None
        self.run_as(function)
        return self.rig.client.lambda_.invoke(function, event).payload

    def api(self) -> AppRig:
        """The rig whose requests (admin and signed host requests) reach the API handler."""
        assert self.rig is not None
        self.run_as("api_handler")
        return self.rig

    def launch_all(self) -> list[str]:
        """Lambda runs the launches asked for, each as launch_shard; their outcomes."""
        outcomes = []
        while self.launcher.pending:
            window_id, shard_id = self.launcher.pending.pop(0)
            outcomes.append(self.invoke("launch_shard", launch_event(window_id, shard_id))[
                "outcome"])
        return outcomes


@pytest.fixture
def lambdas(account: Account, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambdas]:
    for name, value in {
        "KEY_PARAMETER_PREFIX": KEY_PREFIX, "TABLE_NAME": "offsite-dev",
        "SCHEDULE_GROUP": "offsite-dev", "INSTANCE_TYPES": "t3.small,t3a.small",
        "IMAGE_ID_X86_64": "ami-12c6146b", "SUBNET_IDS": ",".join(account.deployed.subnets),
        "LAUNCH_TEMPLATE": account.deployed.launch_template, "HOSTS_PER_ARCHIVE": "2",
        "LAUNCH_FUNCTION": LAUNCH_FUNCTION, "API_URL": "https://api.offsite.test",
        "TOPIC_ARN": f"arn:aws:sns:us-east-1:{ACCOUNT}:offsite-dev",
        "DEADLINE_TARGET_ARN":
            f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:offsite-dev-window_deadline",
        "SCHEDULER_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/offsite-dev-scheduler",
    }.items():
        monkeypatch.setenv(name, value)
    runner = Lambdas(account, monkeypatch)
    with Client(app_module.app, stage_name="dev") as client:
        runner.rig = AppRig(client, [], {}, account.material, account.deployed.subnets)
        yield runner
    clear_caches()


def scheduled_event() -> dict[str, Any]:
    return dict(json.loads((EVENTS / "scheduled-event.json").read_text()))


def state_event(instance_id: str, state: str) -> dict[str, Any]:
    return aws_event(f"ec2-state-{state}.json", **{"instance-id": instance_id})


def window(lambdas: Lambdas, window_id: str) -> dict[str, Any]:
    answer = lambdas.api().client.http.get(f"/v1/windows/{window_id}")
    assert answer.status_code == 200, answer.json_body
    return dict(answer.json_body)


def instances(lambdas: Lambdas, window_id: str) -> list[str]:
    return [s["instance_id"] for s in window(lambdas, window_id)["shards"] if s["instance_id"]]


def tell(lambdas: Lambdas, window_id: str, state: str) -> None:
    """EC2's state-change notifications for the window's archives now in `state`; a running
    one then says it is ready (to the API handler, as boot.sh does)."""
    ec2 = lambdas.account.world.client("ec2")
    for instance_id in instances(lambdas, window_id):
        found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
        if found["Instances"][0]["State"]["Name"] == state:
            lambdas.invoke("instance_state", state_event(instance_id, state))
            if state == "running":
                answer = lambdas.api().boot_signal(instance_id, "ready", "volumes mounted")
                assert answer.status_code == 200, answer.json_body


def snapshots(account: Account, host: str | None = None) -> dict[str, dict[str, str]]:
    """Our snapshots, by id, with their tags, as the world sees them."""
    found = account.world.client("ec2").describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag-key", "Values": ["offsite:host"]}])["Snapshots"]
    tagged = {s["SnapshotId"]: {t["Key"]: t["Value"] for t in s["Tags"]} | {
        "volume": s["VolumeId"]} for s in found}
    return {i: t for i, t in tagged.items() if host is None or t["offsite:host"] == host}


def settle(lambdas: Lambdas, window_id: str) -> None:
    for snapshot_id, tags in snapshots(lambdas.account).items():
        if tags["offsite:window"] == window_id:
            lambdas.invoke("snapshot_state", snapshot_event(snapshot_id, tags["volume"]))


def back_up(lambdas: Lambdas, window_id: str, host: str) -> None:
    rig = lambdas.api()
    answer = rig.session(host)
    assert answer.status_code == 201, answer.json_body
    assert rig.report(window_id, host).status_code == 200


def left_over(account: Account) -> tuple[list[str], list[str]]:
    """Archive instances not terminated, and window volumes, as the world sees them."""
    ec2 = account.world.client("ec2")
    ours = [{"Name": "tag-key", "Values": ["offsite:window"]}]
    running = [i["InstanceId"] for r in ec2.describe_instances(Filters=ours)["Reservations"]
               for i in r["Instances"] if i["State"]["Name"] != "terminated"]
    return running, [v["VolumeId"] for v in ec2.describe_volumes(Filters=ours)["Volumes"]]


def test_windows_run_with_each_function_under_its_own_policy(lambdas: Lambdas) -> None:
    account, rig = lambdas.account, lambdas.api()
    adopted = account.world.client("ec2").create_volume(
        AvailabilityZone="us-east-1a", Size=2, Encrypted=True)["VolumeId"]
    for host in HOSTS:  # api_handler; l's data comes on a volume of its own, snapshotted once
        rig.keys[host] = SigningKey.generate()
        extra = {"volume_id": adopted} if host == "l" else {}
        answer = rig.enrol(host, rig.keys[host], **extra)
        assert answer.status_code == 201, answer.json_body
    assert list(snapshots(account, "l")) != []

    # 1: the nightly schedule opens two archives of two; launch_shard launches each (l's volume
    # from its adopted snapshot); every host reports; EC2 and EBS events close it.
    lambdas.invoke("scheduled_open", scheduled_event())
    first = lambdas.api().client.http.get("/v1/windows").json_body["windows"][0]["window_id"]
    assert [o.split()[0] for o in lambdas.launch_all()] == ["launched", "launched"]
    tell(lambdas, first, "running")
    lambdas.invoke("instance_state", state_event(account.deployed.stranger, "running"))
    lambdas.invoke("reconciler", scheduled_event())
    assert window(lambdas, first)["state"] == "OPEN"
    for host in HOSTS:
        back_up(lambdas, first, host)
    assert window(lambdas, first)["state"] == "CLOSING"
    tell(lambdas, first, "stopped")
    settle(lambdas, first)
    assert window(lambdas, first)["state"] == "CLOSED"
    lambdas.invoke("reconciler", scheduled_event())  # the sweep: volumes still attached
    assert left_over(account) == ([], [])

    # 2: an admin restores h's copy: its own archive, beside backups, closed when it stops.
    answer = lambdas.api().post("/v1/restores", {"host": "h", "day": first[2:6] + "-"
                                                 + first[6:8] + "-" + first[8:10]})
    assert answer.status_code == 202, answer.json_body
    restore = answer.json_body["window_id"]
    assert lambdas.launch_all()[0].startswith("launched")
    tell(lambdas, restore, "running")
    assert window(lambdas, restore)["state"] == "OPEN"
    account.world.client("ec2").stop_instances(InstanceIds=instances(lambdas, restore))
    tell(lambdas, restore, "stopped")
    assert window(lambdas, restore)["state"] == "CLOSED"

    # 3: opened from the console for c, which never reports; the deadline closes it and the
    # reconciler, finding the instance stopped, takes and settles the snapshot.
    second = lambdas.invoke("console_open", {"duration_hours": 0.0002, "hosts": ["c"]})
    lambdas.launch_all()
    tell(lambdas, second["window_id"], "running")
    deadline = datetime.fromisoformat(second["deadline"])
    time.sleep(max(0.0, (deadline - datetime.now(timezone.utc)).total_seconds()) + 0.05)
    answer = lambdas.invoke("window_deadline", {"window_id": second["window_id"]})
    assert any("missing: c" in reason for reason in answer["reasons"]), answer
    lambdas.invoke("reconciler", scheduled_event())
    assert window(lambdas, second["window_id"])["state"] == "SNAPSHOTTING"
    lambdas.invoke("reconciler", scheduled_event())
    assert window(lambdas, second["window_id"])["state"] == "CLOSED"

    # 4: an admin opens one for c, c reports; retention then deletes c's older snapshots.
    answer = lambdas.api().post("/v1/windows", {"hosts": ["c"]})
    assert answer.status_code == 202, answer.json_body
    third = answer.json_body["window_id"]
    lambdas.launch_all()
    tell(lambdas, third, "running")
    back_up(lambdas, third, "c")
    tell(lambdas, third, "stopped")
    settle(lambdas, third)
    assert window(lambdas, third)["state"] == "CLOSED"
    assert [t["offsite:window"] for t in snapshots(account, "c").values()] == [third]
    assert {t["offsite:window"] for h in ("h", "o", "l")
            for t in snapshots(account, h).values()} == {first}
    lambdas.invoke("reconciler", scheduled_event())
    assert left_over(account) == ([], [])


def refused(call: Any) -> bool:
    try:
        call()
    except ClientError as exc:
        return (exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403
                and "AccessDenied" in str(exc))
    return False


CA_KEY = KeyParameters(KEY_PREFIX).ca_private
HOST_KEY = KeyParameters(KEY_PREFIX).host_private
CA_PUBLIC_KEY = KeyParameters(KEY_PREFIX).ca_public


@pytest.mark.parametrize(("function", "service", "denied", "allowed"), [
    ("snapshot_state", "ec2", "stop_instances", "describe_snapshots"),
    ("window_deadline", "ec2", "run_instances", "stop_instances"),
    ("instance_state", "ec2", "delete_snapshot", "describe_instances"),
    ("scheduled_open", "ec2", "run_instances", None),
    ("scheduled_open", "ec2", "describe_instances", None),
    ("reconciler", "ec2", "run_instances", "describe_snapshots"),
    ("api_handler", "ec2", "run_instances", "describe_snapshots"),
    ("api_handler", "ec2", "delete_snapshot", None),
    ("launch_shard", "ec2", "delete_snapshot", "describe_instances"),
    ("launch_shard", "ec2", "stop_instances", "describe_snapshots"),
    ("launch_shard", "ssm", "write_host_key", "read_ca_public_key"),
    ("instance_state", "ssm", "read_ca_key", None),
    ("instance-role", "ssm", "write_host_key", "read_host_key"),
    ("instance-role", "ec2", "stop_instances", None),
    ("snapshot_state", "dynamodb", "put_item", "get_item"),
    ("console_open", "sns", "create_topic", "publish"),
    ("instance_state", "lambda", "invoke_launch_shard", None),
    ("launch_shard", "lambda", "invoke_launch_shard", None),
    ("reconciler", "lambda", "create_function", "invoke_launch_shard"),
])
def test_a_call_outside_the_functions_policy_is_refused(
        account: Account, function: str, service: str, denied: str,
        allowed: str | None) -> None:
    client = account.roles[function].client(service)
    assert refused(lambda: call(client, account, denied))
    if allowed is not None:  # the same credentials do get through: the refusal is the policy's
        call(client, account, allowed)


def call(client: Any, account: Account, what: str) -> Any:
    instance = {"InstanceIds": [account.deployed.stranger]}
    table, key = "offsite-dev", {"pk": {"S": "x"}, "sk": {"S": "x"}}
    calls: dict[str, tuple[str, dict[str, Any]]] = {
        "stop_instances": ("stop_instances", instance),
        "run_instances": ("run_instances", {"ImageId": "ami-12c6146b", "MinCount": 1,
                                            "MaxCount": 1, "InstanceType": "t3.small"}),
        "describe_instances": ("describe_instances", instance),
        "describe_snapshots": ("describe_snapshots", {"OwnerIds": ["self"]}),
        "describe_volumes": ("describe_volumes", {}),
        "delete_snapshot": ("delete_snapshot", {"SnapshotId": "snap-0123456789abcdef0"}),
        "create_snapshot": ("create_snapshot", {"VolumeId": "vol-0123456789abcdef0"}),
        "read_ca_key": ("get_parameter", {"Name": CA_KEY, "WithDecryption": True}),
        "read_ca_public_key": ("get_parameter", {"Name": CA_PUBLIC_KEY}),
        "read_host_key": ("get_parameter", {"Name": HOST_KEY, "WithDecryption": True}),
        "write_host_key": ("put_parameter", {"Name": HOST_KEY, "Value": "x", "Overwrite": True,
                                             "Type": "SecureString"}),
        "put_item": ("put_item", {"TableName": table, "Item": key}),
        "get_item": ("get_item", {"TableName": table, "Key": key}),
        "create_topic": ("create_topic", {"Name": "elsewhere"}),
        "publish": ("publish", {"TopicArn": f"arn:aws:sns:us-east-1:{ACCOUNT}:offsite-dev",
                                "Message": "test"}),
        "invoke_launch_shard": ("invoke", {"FunctionName": LAUNCH_FUNCTION,
                                           "InvocationType": "Event", "Payload": b"{}"}),
        "create_function": ("create_function", {
            "FunctionName": "elsewhere", "Runtime": "python3.11", "Handler": "x.y",
            "Role": f"arn:aws:iam::{ACCOUNT}:role/offsite-dev-reconciler",
            "Code": {"ZipFile": b"PK"}}),
    }
    operation, arguments = calls[what]
    return getattr(client, operation)(**arguments)
