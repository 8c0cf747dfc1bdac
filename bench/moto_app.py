"""app.py's handlers against a moto server on loopback.

Provisions what the deploy would (the table, the archive instance, one volume per host, the SNS
topic, the schedule group), enrols the hosts, then drives whole windows through chalice's test
client with events in the shapes AWS sends (tests/events/). boto3 finds the server through
AWS_ENDPOINT_URL, with fake credentials; every client is checked to point at the server before
the first call, and the environment is restored afterwards.
"""

from __future__ import annotations

import copy
import http.client
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import boto3
from chalice.test import Client
from moto.server import ThreadedMotoServer

import app as app_module
from bench.handler_throughput import BenchError, Timings, expect_state, run_windows, succeeded
from chalicelib.adapters.dynamo_store import create_table
from chalicelib.keys import KeyParameters, generate_key_material
from chalicelib.records import Host
from chalicelib.windows import WindowService, utc_now

REPO = Path(__file__).resolve().parents[1]
EVENTS = REPO / "tests" / "events"
# The dev stage's names: chalice's test client sets the stage's variables on every invocation.
STAGE, TABLE, SCHEDULE_GROUP = "dev", "offsite-dev", "offsite-dev"
KEYS = "/offsite/dev"
MAX_DEADLINE_WAIT_S = 5.0


@contextmanager
def scoped_env(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables; put the old values back after."""
    saved = {name: os.environ.get(name) for name in values}
    _set_env(values)
    try:
        yield
    finally:
        _set_env(saved)


def _set_env(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def fake_aws_env(endpoint: str) -> dict[str, str | None]:
    """Every AWS call to `endpoint`, with credentials that are not anybody's."""
    per_service = {name: None for name in os.environ if name.startswith("AWS_ENDPOINT_URL_")}
    return {**per_service, "AWS_ENDPOINT_URL": endpoint, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS":
            None, "AWS_PROFILE": None, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
            "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server in a thread on a free loopback port; its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        yield endpoint
    finally:
        try:
            _reset(host, port)
        finally:
            server.stop()


def _reset(host: str, port: int) -> None:
    """The threaded server keeps its state in this process's moto backends: empty them."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("POST", "/moto-api/reset")
        connection.getresponse().read()
    finally:
        connection.close()


def check_endpoints(endpoint: str) -> None:
    found = {boto3.client("dynamodb").meta.endpoint_url, boto3.client("ec2").meta.endpoint_url,
             boto3.client("scheduler").meta.endpoint_url, boto3.client("sns").meta.endpoint_url}
    if found != {endpoint}:
        raise BenchError(f"boto3 would not call the moto server only: {sorted(found)}")


@dataclass(frozen=True)
class MotoRig:
    env: dict[str, str]  # the settings app.py reads
    volumes: dict[str, str]  # host -> volume id


def provision(hosts: Sequence[str]) -> MotoRig:
    ec2 = boto3.client("ec2")
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                                 InstanceType="t3.small")["Instances"][0]
    instance_id = instance["InstanceId"]
    ec2.stop_instances(InstanceIds=[instance_id])
    zone = instance["Placement"]["AvailabilityZone"]
    volumes = {h: ec2.create_volume(AvailabilityZone=zone, Size=10)["VolumeId"] for h in hosts}
    topic = boto3.client("sns").create_topic(Name="offsite")["TopicArn"]
    boto3.client("scheduler").create_schedule_group(Name=SCHEDULE_GROUP)
    create_table(boto3.client("dynamodb"), TABLE)
    ssm = boto3.client("ssm")  # the boot config of each open reads the CA's public key
    for name, value, kind in generate_key_material("bench").parameters(KeyParameters(KEYS)):
        ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)
    env = {"TABLE_NAME": TABLE, "KEY_PARAMETER_PREFIX": KEYS, "SCHEDULE_GROUP": SCHEDULE_GROUP,
           "INSTANCE_ID": instance_id,
           "INSTANCE_TYPES": "t3.small,t3a.small", "TOPIC_ARN": topic, "WINDOW_HOURS": "3.6",
           "DEADLINE_TARGET_ARN":
               "arn:aws:lambda:us-east-1:123456789012:function:offsite-dev-window_deadline",
           "SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/offsite-scheduler"}
    return MotoRig(env, volumes)


def aws_event(name: str, **detail: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    event["detail"].update(detail)
    return event


def snapshot_event(snapshot_id: str, volume_id: str) -> dict[str, Any]:
    arn = f"arn:aws:ec2::us-east-1:snapshot/{snapshot_id}"
    event = aws_event("ebs-snapshot-notification.json", snapshot_id=arn, result="succeeded",
                      source=f"arn:aws:ec2::us-east-1:volume/{volume_id}")
    event["resources"] = [arn]
    return event


class AppDriver:
    """Windows through app.py's handlers; reports through the service the handlers use."""

    def __init__(self, client: Any, service: WindowService, instance_id: str) -> None:
        self._client, self._service = client, service
        self._states = {s: aws_event(f"ec2-state-{s}.json", **{"instance-id": instance_id})
                        for s in ("running", "stopped")}

    def open(self, duration_hours: float | None) -> str:
        body = {} if duration_hours is None else {"duration_hours": duration_hours}
        answer = self._client.http.post("/v1/windows", body=json.dumps(body).encode(),
                                        headers={"Content-Type": "application/json"})
        if answer.status_code != 201:
            raise BenchError(f"POST /v1/windows answered {answer.status_code}: "
                             f"{answer.json_body}")
        return str(answer.json_body["window_id"])

    def instance_state(self, state: str) -> None:
        self._client.lambda_.invoke("instance_state", copy.deepcopy(self._states[state]))

    def report(self, window_id: str, host: str) -> None:
        self._service.record_report(succeeded(window_id, host))

    def wait_for_deadline(self, window_id: str) -> None:
        left = (self._service.get_window(window_id).deadline - utc_now()).total_seconds()
        time.sleep(min(max(0.0, left) + 0.01, MAX_DEADLINE_WAIT_S))

    def deadline(self, window_id: str) -> None:
        self._client.lambda_.invoke("window_deadline", {"window_id": window_id})

    def snapshot_deliveries(self, window_id: str) -> list[Callable[[], None]]:
        records = self._service.ports.store.snapshot_records(window_id)
        return [partial(self._client.lambda_.invoke, "snapshot_state",
                        snapshot_event(r.snapshot_id, r.volume_id))
                for r in records if r.snapshot_id]

    def expect(self, window_id: str, state: str) -> None:
        expect_state(self._service, window_id, state)


@contextmanager
def _fresh_app() -> Iterator[None]:
    """app.py's cached settings and clients, built anew here and dropped after."""
    app_module.reset_caches()
    try:
        yield
    finally:
        app_module.reset_caches()


@contextmanager
def counting_session() -> Iterator[Callable[[], int]]:
    """A new default boto3 session, so that no credentials cached before are used, whose
    clients count the API calls they make; the previous default session is put back after."""
    previous, calls = boto3.DEFAULT_SESSION, [0]

    def count(**_: Any) -> None:
        calls[0] += 1

    boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None
    boto3.DEFAULT_SESSION.events.register("before-call", count)
    try:
        yield lambda: calls[0]
    finally:
        boto3.DEFAULT_SESSION = previous


def measure_on_moto(hosts: Sequence[str], plan: Sequence[bool]) -> Timings:
    with moto_server() as endpoint, scoped_env(fake_aws_env(endpoint)), \
            counting_session() as aws_calls:
        check_endpoints(endpoint)
        rig = provision(hosts)
        with scoped_env(rig.env), _fresh_app(), warnings.catch_warnings(), \
                Client(app_module.app, stage_name=STAGE, project_dir=str(REPO)) as client:
            warnings.filterwarnings("ignore", "IAMAuthorizer is not a supported in local mode")
            service = app_module.window_service()
            for name, volume in rig.volumes.items():
                service.ports.store.put_host(Host(name, "ssh-ed25519 BENCH", True, volume,
                                                  utc_now()))
            driver = AppDriver(client, service, rig.env["INSTANCE_ID"])
            return run_windows(driver, hosts, plan, "app.py handlers on moto server", aws_calls)


@contextmanager
def quiet_output() -> Iterator[None]:
    """The service's JSON log lines and EMF metrics and moto's request log go nowhere meanwhile.
    They are still formatted, so what they cost stays in the figures."""
    offsite = [h for h in logging.getLogger("offsite").handlers
               if isinstance(h, logging.StreamHandler)]
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    with open(os.devnull, "w") as sink, redirect_stdout(sink):
        streams = [h.setStream(sink) for h in offsite]
        werkzeug.setLevel(logging.WARNING)
        try:
            yield
        finally:
            werkzeug.setLevel(level)
            for handler, stream in zip(offsite, streams, strict=True):
                if stream is not None:
                    handler.setStream(stream)
