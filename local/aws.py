"""The embedded AWS: a moto server on loopback, provisioned with what a deploy makes."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import boto3
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from chalicelib.adapters.dynamo_store import create_table
from chalicelib.keys import KeyMaterial, KeyParameters, generate_key_material

REGION = "us-east-1"
TABLE = "offsite-local"
SCHEDULE_GROUP = "offsite-local"
KEY_PREFIX = "/offsite/local"
ACCOUNT = "123456789012"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ReservedPort:
    """A loopback port held for as long as this is open, so that no one else is given it.

    A port probed free and bound later (by sshd when the instance starts, minutes on) may be
    taken meanwhile by another stack on this machine. Held bound, never listening, with
    SO_REUSEADDR: an ephemeral bind (free_port, another stack's ReservedPort) skips it and a
    bind of this very port without SO_REUSEADDR is refused, while our own servers, which all
    set SO_REUSEADDR (sshd, http.server, werkzeug), may still bind and listen on it. (A process
    that probed the port free before it was held, and binds it with SO_REUSEADDR, could still
    take it: then our sshd fails to start, and says so in its log.)"""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])

    def close(self) -> None:
        self._socket.close()


# The archives' network: loopback addresses, so that each shard's sshd can listen on its own
# private address with no change to this machine's network (Linux routes all of 127.0.0.0/8 to
# the loopback interface). Two subnets in two Availability Zones, as a deploy makes them.
VPC_CIDR = "127.77.0.0/16"
SUBNETS = (("127.77.1.0/24", f"{REGION}a"), ("127.77.2.0/24", f"{REGION}b"))
ARCHITECTURES = ("x86_64", "arm64")


@dataclass(frozen=True)
class Deployment:
    """What `provision` made: the ids the app's settings name."""

    endpoint: str
    topic_arn: str
    keys: KeyMaterial
    launch_template_id: str = ""
    subnet_ids: tuple[str, ...] = ()
    security_group_id: str = ""
    image_ids: dict[str, str] = field(default_factory=dict)  # architecture -> AMI id

    def app_environment(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
            "TABLE_NAME": TABLE, "SCHEDULE_GROUP": SCHEDULE_GROUP,
            "INSTANCE_TYPES": "t4g.small,t3.small", "TOPIC_ARN": self.topic_arn,
            "KEY_PARAMETER_PREFIX": KEY_PREFIX,
            "DEADLINE_TARGET_ARN":
                f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:offsite-local-window_deadline",
            "SCHEDULER_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/offsite-local-scheduler",
            "POWERTOOLS_SERVICE_NAME": "offsite", "POWERTOOLS_METRICS_NAMESPACE": "Offsite",
            "LAUNCH_TEMPLATE": self.launch_template_id,
            "SUBNET_IDS": ",".join(self.subnet_ids),
            "IMAGE_ID_X86_64": self.image_ids.get("x86_64", ""),
            "IMAGE_ID_ARM64": self.image_ids.get("arm64", ""),
            # the local archives listen on their private (loopback) addresses
            "SSH_ADDRESS": "private",
        }


class _OneRequestAtATime:
    """moto's WSGI app with one request served at a time. DynamoDB evaluates a condition
    expression and writes in one atomic step; moto checks, then writes, with nothing between,
    so two Lambdas racing one conditional transition could both win against a threaded moto
    (seen on a loaded machine: two stops for four concurrent reports). Serialising requests
    gives the atomicity the control plane relies on, as DynamoDB does."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with self._lock:
            return list(self._app(environ, start_response))


class MotoServer:
    """moto's server in a thread of this process, on a loopback port held for it; connections
    are taken in parallel, requests served one at a time (`_OneRequestAtATime`)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        app = _OneRequestAtATime(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", self.port, app, threaded=True,
                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.reset()  # moto keeps its accounts per process: start from an empty one

    def stop(self) -> None:
        if self._server is None:
            return
        self.reset()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None

    def reset(self) -> None:
        request = urllib.request.Request(  # noqa: S310 (our own loopback server)
            f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30):  # noqa: S310
            pass


def aws_client(name: str, endpoint: str) -> Any:
    """A client of the embedded AWS (its credentials are moto's placeholders)."""
    session = boto3.session.Session(aws_access_key_id="local",
                                    aws_secret_access_key="local",  # noqa: S106
                                    region_name=REGION)
    return session.client(name, endpoint_url=endpoint)  # type: ignore[call-overload]


def provision(endpoint: str, initialised: bool = False) -> Deployment:
    """The table, the topic, the scheduler group, the keys in SSM and the fleet's templates
    (no instance: the control plane launches its fleet per window).
    `initialised`: `offsite-admin init --stage local` made the table and the keys already;
    the keys are read back from SSM, not made."""

    def client(name: str) -> Any:
        return aws_client(name, endpoint)

    names, ssm = KeyParameters(KEY_PREFIX), client("ssm")
    if initialised:
        keys = read_key_material(ssm, names)
    else:
        create_table(client("dynamodb"), TABLE)
        keys = generate_key_material("offsite-local")
        for name, value, kind in keys.parameters(names):
            ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)
    topic = client("sns").create_topic(Name="offsite-local")["TopicArn"]
    client("scheduler").create_schedule_group(Name=SCHEDULE_GROUP)
    network = provision_network(client("ec2"))
    return Deployment(endpoint, topic, keys, **network)


def provision_network(ec2: Any) -> dict[str, Any]:
    """The archive fleet's templates: a VPC and a subnet per Availability Zone in 127.0.0.0/8,
    a security group, a launch template, an AMI per architecture (moto keeps no
    architecture on a registered image; the ids are told apart by name and setting)."""
    vpc_id = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
    subnet_ids = tuple(
        ec2.create_subnet(VpcId=vpc_id, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"][
            "SubnetId"] for cidr, zone in SUBNETS)
    group_id = ec2.create_security_group(
        GroupName="offsite-local-archive", VpcId=vpc_id,
        Description="Offsite archives: ssh from the hosts")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    template_id = ec2.create_launch_template(
        LaunchTemplateName="offsite-local-archive", LaunchTemplateData={
            "SecurityGroupIds": [group_id],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        })["LaunchTemplate"]["LaunchTemplateId"]
    image_ids = {architecture: ec2.register_image(
        Name=f"offsite-local-archive-{architecture}", Architecture=architecture,
        RootDeviceName="/dev/xvda", VirtualizationType="hvm", EnaSupport=True,
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda",
                              "Ebs": {"VolumeSize": 8, "VolumeType": "gp3"}}])["ImageId"]
        for architecture in ARCHITECTURES}
    return {"launch_template_id": template_id, "subnet_ids": subnet_ids,
            "security_group_id": group_id, "image_ids": image_ids}


def read_key_material(ssm: Any, names: KeyParameters) -> KeyMaterial:
    def read(name: str) -> str:
        return str(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])

    return KeyMaterial(ca_seed_b64=read(names.ca_private), ca_public_line=read(names.ca_public),
                       host_private_pem=read(names.host_private),
                       host_public_line=read(names.host_public))
