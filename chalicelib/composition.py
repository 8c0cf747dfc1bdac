"""The one composition root: the services app.py's entry points call, each built once per
Lambda container (on first use, never at import) with its settings, AWS clients and stores.

`reset()` drops them all, as a new container would start: for the local stack, tests and
benches, which change the environment between runs in one process.
"""

from __future__ import annotations

import functools
import os
import time

import boto3
from aws_lambda_powertools.utilities.parameters import SSMProvider
from botocore.config import Config

from chalicelib.adapters.compute import Ec2Compute
from chalicelib.adapters.dynamo_store import (
    DynamoHostStore,
    DynamoNonceStore,
    DynamoStaleMarkStore,
    DynamoWindowStore,
)
from chalicelib.adapters.metrics import CloudWatchHostMetrics, EmfMetrics
from chalicelib.adapters.notifier import SnsNotifier
from chalicelib.adapters.scheduler import EventBridgeScheduler
from chalicelib.boot_signal import BootSignalService
from chalicelib.host_auth import HostAuthenticator
from chalicelib.hosts import HostService
from chalicelib.instance.userdata import BootRenderer
from chalicelib.keys import CACHE_SECONDS, CertificateAuthority, KeyParameters
from chalicelib.launcher import LambdaLauncher, ThreadLauncher
from chalicelib.restores import RestoreService
from chalicelib.schedule import next_open
from chalicelib.sessions import CertificatePolicy, SessionService
from chalicelib.settings import MissingSettingError, Settings
from chalicelib.watch import StalenessWatch
from chalicelib.windows import Launcher, Ports, WindowService, new_window_id, utc_now

AWS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 6})


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def _client(name: str):  # type: ignore[no-untyped-def]
    return boto3.client(name, config=AWS_CONFIG)  # type: ignore[call-overload]


@functools.cache
def ports() -> Ports:
    s = settings()
    names = KeyParameters(s.key_prefix)
    return Ports(
        store=DynamoWindowStore(_client("dynamodb"), s.table_name),
        hosts=DynamoHostStore(_client("dynamodb"), s.table_name),
        compute=Ec2Compute(_client("ec2"), s.ssh_address),
        scheduler=EventBridgeScheduler(_client("scheduler"), s.deadline_target_arn,
                                       s.scheduler_role_arn, s.schedule_group),
        notifier=SnsNotifier(_client("sns"), s.topic_arn),
        metrics=EmfMetrics(namespace="Offsite", service="offsite"),
        boot=BootRenderer(lambda: read_parameter(names.ca_public), names.host_private,
                          os.environ.get("AWS_REGION") or os.environ["AWS_DEFAULT_REGION"],
                          s.account_prefix, s.api_url),
        launcher=_launcher(s),
    )


def _launcher(s: Settings) -> Launcher:
    """Lambda's asynchronous invocations of launch_shard; without a function named (the local
    stack: no Lambda service), a thread per launch in this process."""
    if s.launch_function:
        return LambdaLauncher(_client("lambda"), s.launch_function)
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # in Lambda, a thread may never finish
        raise MissingSettingError("environment variable LAUNCH_FUNCTION is not set")
    return ThreadLauncher(lambda window_id, shard_id: window_service().launch_shard(
        window_id, shard_id))


@functools.cache
def window_service() -> WindowService:
    return WindowService(settings(), ports(), after_window=lambda: watch().after_window())


@functools.cache
def watch() -> StalenessWatch:
    s, p = settings(), ports()
    return StalenessWatch(p.hosts, p.compute, p.store,
                          DynamoStaleMarkStore(_client("dynamodb"), s.table_name), p.notifier,
                          CloudWatchHostMetrics(_client("cloudwatch"), "Offsite"),
                          s.stale_after_hours, utc_now)


@functools.cache
def restore_service() -> RestoreService:
    return RestoreService(window_service(), utc_now, new_window_id)


@functools.cache
def host_service() -> HostService:
    return HostService(ports().hosts, ports().compute, utc_now, settings().account_prefix)


@functools.cache
def session_service() -> SessionService:
    s = settings()
    return SessionService(
        store=ports().store,
        ca=CertificateAuthority(read_parameter, KeyParameters(s.key_prefix)),
        metrics=ports().metrics, clock=utc_now,
        next_window=lambda now: next_open(s.open_schedule, now),
        policy=CertificatePolicy(
            rrsync=s.rrsync, mount_root=s.mount_root, restore_root=s.restore_root,
            port=s.ssh_port, source_address=s.source_address, retry_after=s.retry_after,
            account_prefix=s.account_prefix))


@functools.cache
def authenticator() -> HostAuthenticator:
    s = settings()
    return HostAuthenticator(ports().hosts, DynamoNonceStore(_client("dynamodb"), s.table_name),
                             lambda: int(time.time()))


@functools.cache
def boot_signal_service() -> BootSignalService:
    s = settings()
    names = KeyParameters(s.key_prefix)
    return BootSignalService(window_service(), lambda: read_parameter(names.host_public),
                             DynamoNonceStore(_client("dynamodb"), s.table_name),
                             lambda: int(time.time()))


def read_parameter(name: str) -> str:
    """An SSM parameter, decrypted, through powertools' cache."""
    return str(_ssm().get(name, decrypt=True, max_age=CACHE_SECONDS))


@functools.cache
def _ssm() -> SSMProvider:
    return SSMProvider(boto3_client=_client("ssm"))


def reset() -> None:
    for getter in (settings, ports, window_service, watch, restore_service, host_service,
                   session_service, authenticator, boot_signal_service, _ssm, _client):
        getter.cache_clear()
