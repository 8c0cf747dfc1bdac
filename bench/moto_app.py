"""A whole backup window of many hosts through app.py on a moto server:
`python -m bench.moto_app`.

Provisions what a deploy makes (two subnets in two zones, the launch template, the table, the
SNS topic, the schedule group, the key material), enrols the hosts through `PUT /v1/hosts`,
then drives one window through chalice's test client, phase by phase: `POST /v1/windows` (202),
each shard's `launch_shard` invocation (Lambda would run them asynchronously; here one after
the other), each archive's "running" notification, every host's signed `POST /v1/sessions` and
`POST /v1/reports`, each archive's "stopped" notification, one EBS notification per snapshot,
until the window is CLOSED. Events are in the shapes AWS sends (tests/events/). boto3 finds
the server (local.aws.MotoServer: one request at a time, as DynamoDB's conditional writes are
atomic) through AWS_ENDPOINT_URL, with fake credentials; every client is checked to point at it
before the first call, and the environment is restored afterwards.

Only the handler calls are timed and their AWS calls counted (a botocore `before-call` hook on
a fresh default session); building events, signing requests and the bench's own checks are not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import boto3
from chalice.test import Client
from nacl.signing import SigningKey

from bench.quiet import quiet_output
from chalicelib.adapters.dynamo_store import create_table
from chalicelib.boot_signal import NAMESPACE, BootSignal, signal_body, signal_message
from chalicelib.keys import KeyParameters, generate_key_material, read_openssh_private_key
from chalicelib.launcher import launch_event
from chalicelib.sshcert import ca_public_key_line
from chalicelib.sshsig import sign

__all__ = ["REPO", "BenchError", "fake_aws_env", "moto_server", "quiet_output", "scoped_env"]

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
EVENTS = REPO / "tests" / "events"
# The dev stage: chalice's test client sets the stage's variables (.chalice/config.json).
STAGE, TABLE, SCHEDULE_GROUP = "dev", "offsite-dev", "offsite-dev"
KEYS = "/offsite/bench"
API, AUTHORITY = "https://api.offsite.test", "api.offsite.test"
PHASES = ("open", "launch", "running", "ready", "sessions", "reports", "stopped", "snapshots")


class BenchError(RuntimeError):
    pass


# the moto server and the environment ---------------------------------------------------------
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
    """The local stack's moto server (one request at a time) on a free loopback port, in this
    process; its endpoint URL. Its accounts are emptied when it starts and stops."""
    from local.aws import MotoServer, free_port

    server = MotoServer(free_port())
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


def check_endpoints(endpoint: str) -> None:
    found = {boto3.client(name).meta.endpoint_url
             for name in ("dynamodb", "ec2", "scheduler", "sns", "ssm", "lambda")}
    if found != {endpoint}:
        raise BenchError(f"boto3 would not call the moto server only: {sorted(found)}")


# counting and timing -----------------------------------------------------------------------
@contextmanager
def counting_session() -> Iterator[Counter[str]]:
    """A new default boto3 session, so that no credentials cached before are used, whose
    clients count the API calls they make (service.Operation -> n); the previous default
    session is put back after."""
    previous, calls = boto3.DEFAULT_SESSION, Counter[str]()

    def count(model: Any, **_: Any) -> None:
        calls[f"{model.service_model.service_name}.{model.name}"] += 1

    boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None
    boto3.DEFAULT_SESSION.events.register("before-call", count)
    try:
        yield calls
    finally:
        boto3.DEFAULT_SESSION = previous


@dataclass
class Phase:
    name: str
    samples: list[float] = field(default_factory=list)  # seconds, one per handler call
    calls: Counter[str] = field(default_factory=Counter)  # service.Operation -> AWS calls

    @property
    def events(self) -> int:
        return len(self.samples)

    @property
    def aws_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def busy_s(self) -> float:
        return sum(self.samples)

    def percentile_ms(self, p: float) -> float | None:
        """Nearest rank (p99 of fewer than 100 calls is their maximum)."""
        ordered = sorted(self.samples)
        if not ordered:
            return None
        return 1000 * ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Stopwatch:
    def __init__(self, calls: Counter[str]) -> None:
        self._calls = calls
        self.phases = {name: Phase(name) for name in PHASES}

    def time(self, phase: str, call: Callable[[], T]) -> T:
        before = Counter(self._calls)
        start = time.perf_counter()
        try:
            return call()
        finally:
            self.phases[phase].samples.append(time.perf_counter() - start)
            self.phases[phase].calls.update(self._calls - before)


# the deploy and the window -----------------------------------------------------------------
def provision(per_archive: int) -> tuple[dict[str, str | None], SigningKey]:
    """What a deploy makes; the settings app.py reads (beside the dev stage's), and the
    archives' host key (they sign their ready signal with it)."""
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.7.{i}.0/24",
                                 AvailabilityZone=f"us-east-1{zone}")["Subnet"]["SubnetId"]
               for i, zone in enumerate("ab")]
    template = ec2.create_launch_template(
        LaunchTemplateName="offsite-dev-archive",
        LaunchTemplateData={"MetadataOptions": {"HttpTokens": "required"}})[
        "LaunchTemplate"]["LaunchTemplateId"]
    topic = boto3.client("sns").create_topic(Name="offsite")["TopicArn"]
    boto3.client("scheduler").create_schedule_group(Name=SCHEDULE_GROUP)
    create_table(boto3.client("dynamodb"), TABLE)
    ssm, material = boto3.client("ssm"), generate_key_material("bench")
    for name, value, kind in material.parameters(KeyParameters(KEYS)):
        ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)
    return {"API_URL": API, "TABLE_NAME": TABLE, "KEY_PARAMETER_PREFIX": KEYS,
            "SCHEDULE_GROUP": SCHEDULE_GROUP,
            "INSTANCE_TYPES": "t3.small,t3a.small", "IMAGE_ID_X86_64": "ami-12c6146b",
            "SUBNET_IDS": ",".join(subnets), "LAUNCH_TEMPLATE": template,
            "HOSTS_PER_ARCHIVE": str(per_archive), "SSH_ADDRESS": "private",
            "TOPIC_ARN": topic, "WINDOW_HOURS": "3.6", "LAUNCH_FUNCTION": None,
            "DEADLINE_TARGET_ARN":
                "arn:aws:lambda:us-east-1:123456789012:function:offsite-dev-window_deadline",
            "SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/offsite-scheduler"}, \
        read_openssh_private_key(material.host_private_pem)


class QueuedLauncher:
    """Lambda's asynchronous Invoke of launch_shard, one per shard: queued here, each then
    invoked by the bench as a phase of its own."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, str]] = []

    def launch(self, window_id: str, shard_ids: Sequence[str]) -> None:
        self.queued.extend((window_id, s) for s in shard_ids)


@contextmanager
def queued_launches() -> Iterator[QueuedLauncher]:
    """composition's launcher replaced by a queue, app.py's caches dropped before and after."""
    import app as app_module
    from chalicelib import composition

    launcher, original = QueuedLauncher(), composition._launcher
    composition._launcher = lambda settings: launcher  # type: ignore[assignment]
    app_module.reset_caches()
    try:
        yield launcher
    finally:
        composition._launcher = original
        app_module.reset_caches()


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


class AppWindow:
    """One window through app.py's handlers, phase by phase."""

    def __init__(self, client: Any, watch: Stopwatch, launcher: QueuedLauncher,
                 keys: Mapping[str, SigningKey], host_key: SigningKey) -> None:
        self._client, self._watch, self._launcher, self._keys = client, watch, launcher, keys
        self._host_key = host_key
        self.window_id = ""

    def _request(self, method: str, path: str, body: Any, host: str | None = None) -> Any:
        # mypy cannot follow setuptools' editable-install finder to offsite_host (see
        # bench/sessions.py).
        from offsite_host.httpsig import (  # type: ignore[import-not-found, unused-ignore]
            sign_request,
        )

        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if host is not None:
            headers = {"Host": AUTHORITY, **sign_request(
                method, API + path, data, self._keys[host], keyid=host,
                created=int(time.time()), nonce=secrets.token_urlsafe(16))}
        return self._client.http.request(method, path, body=data, headers=headers)

    def _expect(self, answer: Any, status: int, what: str) -> Any:
        if answer.status_code != status:
            raise BenchError(f"{what} answered {answer.status_code}: {answer.json_body}")
        return answer.json_body

    def enrol(self, host: str) -> None:
        body = {"public_key": ca_public_key_line(self._keys[host])}
        self._expect(self._client.http.put(f"/v1/hosts/{host}", body=json.dumps(body).encode(),
                                           headers={"Content-Type": "application/json"}),
                     201, f"PUT /v1/hosts/{host}")

    def open(self) -> None:
        answer = self._watch.time("open", lambda: self._request("POST", "/v1/windows", {}))
        self.window_id = str(self._expect(answer, 202, "POST /v1/windows")["window_id"])

    def launch(self) -> None:
        queued, self._launcher.queued = self._launcher.queued, []
        for window_id, shard_id in queued:
            self._watch.time("launch", partial(self._client.lambda_.invoke, "launch_shard",
                                               launch_event(window_id, shard_id)))

    def view(self) -> dict[str, Any]:
        return dict(self._expect(self._client.http.get(f"/v1/windows/{self.window_id}"), 200,
                                 "GET /v1/windows/{id}"))

    def instances(self) -> list[str]:
        return [s["instance_id"] for s in self.view()["shards"] if s["instance_id"]]

    def instance_states(self, state: str) -> None:
        phase = "running" if state == "running" else "stopped"
        for instance_id in self.instances():
            event = aws_event(f"ec2-state-{state}.json", **{"instance-id": instance_id})
            self._watch.time(phase, partial(self._client.lambda_.invoke, "instance_state",
                                            event))

    def ready(self) -> None:
        """Each archive's ready signal, signed with the host key as boot.sh signs it."""
        for instance_id in self.instances():
            message = signal_message(BootSignal(instance_id, "ready", int(time.time()),
                                                secrets.token_hex(16), "bench"))
            body = json.dumps(signal_body(message, sign(self._host_key, message, NAMESPACE)))
            answer = self._watch.time("ready", partial(
                self._client.http.post, f"/v1/archives/{instance_id}/ready",
                body=body.encode(), headers={"Content-Type": "application/json"}))
            self._expect(answer, 200, f"POST /v1/archives/{instance_id}/ready")

    def sessions(self) -> None:
        for host in sorted(self._keys):
            body = {"host": host, "purpose": "backup",
                    "ssh_public_key": ca_public_key_line(SigningKey.generate())}
            answer = self._watch.time("sessions", partial(self._request, "POST",
                                                          "/v1/sessions", body, host))
            self._expect(answer, 201, f"POST /v1/sessions for {host}")

    def reports(self) -> None:
        for host in sorted(self._keys):
            body = {"host": host, "window_id": self.window_id, "status": "succeeded",
                    "bytes_sent": 1234, "files": 5, "duration_s": 2.0, "detail": ""}
            answer = self._watch.time("reports", partial(self._request, "POST", "/v1/reports",
                                                         body, host))
            self._expect(answer, 200, f"POST /v1/reports for {host}")

    def snapshots(self) -> None:
        snaps = boto3.client("ec2").describe_snapshots(OwnerIds=["self"], Filters=[
            {"Name": "tag:offsite:window", "Values": [self.window_id]}])["Snapshots"]
        for snap in snaps:
            event = snapshot_event(snap["SnapshotId"], snap["VolumeId"])
            self._watch.time("snapshots", partial(self._client.lambda_.invoke, "snapshot_state",
                                                  event))

    def expect(self, state: str) -> dict[str, Any]:
        view = self.view()
        if view["state"] != state:
            raise BenchError(f"window {self.window_id} is {view['state']}, not {state}: "
                             f"{view['reason']}")
        return view


@dataclass(frozen=True)
class Result:
    hosts: int
    archives: int
    phases: tuple[Phase, ...]
    wall_s: float  # the whole window with the harness
    left: tuple[str, ...]  # instances or volumes of the window left behind (none, we hope)

    @property
    def aws_calls(self) -> int:
        return sum(p.aws_calls for p in self.phases)


def host_names(count: int) -> list[str]:
    width = max(3, len(str(count - 1)))
    return [f"host-{i:0{width}d}" for i in range(count)]


def run_window(hosts: int, per_archive: int) -> Result:
    """Provision a moto server, enrol the hosts, drive one window to CLOSED."""
    # chalice's test client sets AWS_EXECUTION_ENV, as Lambda does, and leaves it set.
    kept = {"AWS_EXECUTION_ENV": os.environ.get("AWS_EXECUTION_ENV")}
    with scoped_env(kept), moto_server() as endpoint, scoped_env(fake_aws_env(endpoint)), \
            counting_session() as calls:
        check_endpoints(endpoint)
        env, host_key = provision(per_archive)
        with scoped_env(env), queued_launches() as launcher, warnings.catch_warnings(), \
                Client(_app(), stage_name=STAGE, project_dir=str(REPO)) as client:
            warnings.filterwarnings("ignore", "IAMAuthorizer is not a supported in local mode")
            watch = Stopwatch(calls)
            keys = {name: SigningKey.generate() for name in host_names(hosts)}
            window = AppWindow(client, watch, launcher, keys, host_key)
            for host in keys:
                window.enrol(host)
            start = time.perf_counter()
            _drive(window)
            wall = time.perf_counter() - start
            view = window.expect("CLOSED")
            return Result(hosts, len(view["shards"]), tuple(watch.phases.values()), wall,
                          _left_behind(window.window_id))


def _app() -> Any:
    import app as app_module

    return app_module.app


def _drive(window: AppWindow) -> None:
    window.open()
    window.expect("OPENING")
    window.launch()
    window.instance_states("running")
    window.expect("BOOTING")
    window.ready()
    window.expect("OPEN")
    window.sessions()
    window.reports()
    window.expect("CLOSING")
    window.instance_states("stopped")
    window.expect("SNAPSHOTTING")
    window.snapshots()


def _left_behind(window_id: str) -> tuple[str, ...]:
    ec2 = boto3.client("ec2")
    tag: Any = [{"Name": "tag:offsite:window", "Values": [window_id]}]
    instances = [i["InstanceId"] for r in ec2.describe_instances(Filters=tag)["Reservations"]
                 for i in r["Instances"] if i["State"]["Name"] != "terminated"]
    volumes = [v["VolumeId"] for v in ec2.describe_volumes(Filters=tag)["Volumes"]]
    return tuple(instances + volumes)


# the report ----------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(result: Result, top: int = 3) -> str:
    from bench.window_overhead import table

    header = ["phase", "events", "wall s", "p50 ms", "p99 ms", "AWS calls", "calls/event",
              "calls/host", "most called"]
    rows = []
    for p in result.phases:
        most = ", ".join(f"{op} {n}" for op, n in p.calls.most_common(top))
        rows.append([p.name, f"{p.events:,}", f"{p.busy_s:.2f}", _ms(p.percentile_ms(50)),
                     _ms(p.percentile_ms(99)), f"{p.aws_calls:,}",
                     f"{p.aws_calls / p.events:.2f}" if p.events else "-",
                     f"{p.aws_calls / result.hosts:.2f}", most])
    events = sum(p.events for p in result.phases)
    busy = sum(p.busy_s for p in result.phases)
    left = ", ".join(result.left) or "nothing"
    return "\n".join([
        f"One window of {result.hosts:,} hosts in {result.archives} archives through app.py on "
        f"a moto server, from POST /v1/windows to CLOSED", "",
        table(header, rows), "",
        f"{events:,} handler calls, {result.aws_calls:,} AWS calls in {busy:.1f} s "
        f"(wall {result.wall_s:.1f} s with the harness): "
        f"{result.aws_calls / result.hosts:.2f} AWS calls per host, "
        f"{result.aws_calls / events:.2f} per handler call, {1000 * busy / events:.1f} ms per "
        "handler call",
        f"left behind after CLOSED (instances not terminated, volumes): {left}"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.moto_app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=200, metavar="N", help="hosts (default 200)")
    p.add_argument("--hosts-per-archive", type=int, default=20, metavar="N",
                   help="HOSTS_PER_ARCHIVE (default 20)")
    p.add_argument("--quick", action="store_true", help="40 hosts in 2 archives")
    args = p.parse_args(argv)
    if args.quick:
        args.hosts = 40
    if args.hosts < 1:
        p.error("--hosts: want 1 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"Offsite app on moto, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs\n")
    try:
        with quiet_output():
            result = run_window(args.hosts, args.hosts_per_archive)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    return 0 if not result.left else 1


if __name__ == "__main__":
    sys.exit(main())
