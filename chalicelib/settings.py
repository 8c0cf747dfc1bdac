"""Settings of the control plane, read once per container from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from chalicelib.accounts import check_account_prefix
from chalicelib.fleet import (
    DEFAULT_HOSTS_PER_ARCHIVE,
    DEFAULT_IMAGES,
    DEFAULT_INSTANCE_TYPES,
    FleetConfigError,
    check_hosts_per_archive,
    check_instance_types,
)
from chalicelib.window import Timing

DEFAULT_OPEN_SCHEDULE = "cron(0 2 * * ? *)"
DEFAULT_RECONCILE_RATE = "rate(5 minutes)"


class MissingSettingError(RuntimeError):
    pass


class InvalidSettingError(RuntimeError):
    pass


@dataclass(frozen=True)
class Settings:
    table_name: str
    topic_arn: str
    deadline_target_arn: str
    scheduler_role_arn: str
    schedule_group: str = "default"
    instance_types: tuple[str, ...] = DEFAULT_INSTANCE_TYPES
    subnet_ids: tuple[str, ...] = ()  # one per Availability Zone to try; none: the default VPC
    images: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_IMAGES))
    launch_template: str | None = None
    kms_key_id: str | None = None  # EBS volumes' key; none: the account's default EBS key
    hosts_per_archive: int = DEFAULT_HOSTS_PER_ARCHIVE
    ssh_address: str = "public"  # public | private: which instance address hosts are given
    launch_function: str | None = None  # the launch_shard Lambda, invoked once per shard
    window_hours: float = 3.6
    retention_days: int = 20
    timing: Timing = field(default_factory=Timing)
    key_prefix: str = "/offsite"
    ssh_port: int = 22
    mount_root: str = "/srv/offsite"
    rrsync: str = "/usr/bin/rrsync"
    retry_after: int = 30
    source_address: str | None = None
    open_schedule: str = DEFAULT_OPEN_SCHEDULE
    restore_hours: float = 2.0
    restore_root: str = "/srv/offsite-restore"
    account_prefix: str = ""  # a host's account on the instance: chalicelib/accounts.py
    stale_after_hours: float = 36.0  # a host without a complete point this long is stale
    # The API's base URL, where archive instances post their ready/failed signal (the
    # launch_shard function renders it into the user-data; chalicelib/boot_signal.py).
    api_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def need(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise MissingSettingError(f"environment variable {name} is not set")
            return value

        return cls(
            table_name=need("TABLE_NAME"),
            topic_arn=need("TOPIC_ARN"),
            deadline_target_arn=need("DEADLINE_TARGET_ARN"),
            scheduler_role_arn=need("SCHEDULER_ROLE_ARN"),
            schedule_group=env.get("SCHEDULE_GROUP", "default"),
            **_fleet(env),
            window_hours=float(env.get("WINDOW_HOURS", "3.6")),
            retention_days=int(env.get("RETENTION_DAYS", "20")),
            key_prefix=env.get("KEY_PARAMETER_PREFIX", "/offsite").rstrip("/"),
            ssh_port=int(env.get("SSH_PORT", "22")),
            mount_root=env.get("MOUNT_ROOT", "/srv/offsite").rstrip("/"),
            rrsync=env.get("RRSYNC") or "/usr/bin/rrsync",
            retry_after=int(env.get("SESSION_RETRY_AFTER", "30")),
            source_address=env.get("CERT_SOURCE_ADDRESS") or None,
            open_schedule=open_schedule_expression(env),
            restore_hours=float(env.get("RESTORE_HOURS", "2")),
            restore_root=env.get("RESTORE_ROOT", "/srv/offsite-restore").rstrip("/"),
            account_prefix=_account_prefix(env),
            stale_after_hours=_positive(env, "STALE_AFTER_HOURS", 36.0),
            api_url=env.get("API_URL", "").strip().rstrip("/"),
            timing=Timing(
                boot_timeout=timedelta(minutes=float(env.get("BOOT_TIMEOUT_MINUTES", "15"))),
                stop_grace=timedelta(minutes=float(env.get("STOP_GRACE_MINUTES", "10"))),
                start_grace=timedelta(minutes=_positive(env, "START_GRACE_MINUTES", 30.0)),
            ),
        )


def _fleet(env: Mapping[str, str]) -> dict[str, Any]:
    """The archive fleet's settings, checked: a wrong one fails every window, so it fails
    here, naming the variable."""
    def listed(name: str) -> tuple[str, ...]:
        return tuple(v.strip() for v in env.get(name, "").split(",") if v.strip())

    address = env.get("SSH_ADDRESS", "public")
    if address not in ("public", "private"):
        raise InvalidSettingError(f"environment variable SSH_ADDRESS: {address!r} is not "
                                  "public or private")
    try:
        types = check_instance_types(listed("INSTANCE_TYPES") or DEFAULT_INSTANCE_TYPES)
        per_archive = check_hosts_per_archive(int(env.get("HOSTS_PER_ARCHIVE",
                                                          DEFAULT_HOSTS_PER_ARCHIVE)))
    except (FleetConfigError, ValueError) as exc:
        raise InvalidSettingError(f"INSTANCE_TYPES / HOSTS_PER_ARCHIVE: {exc}") from exc
    images = dict(DEFAULT_IMAGES)
    for arch in images:
        images[arch] = env.get(f"IMAGE_ID_{arch.upper()}") or images[arch]
    return {"instance_types": types, "subnet_ids": listed("SUBNET_IDS"), "images": images,
            "launch_template": env.get("LAUNCH_TEMPLATE") or None,
            "kms_key_id": env.get("KMS_KEY_ID") or None, "hosts_per_archive": per_archive,
            "ssh_address": address, "launch_function": env.get("LAUNCH_FUNCTION") or None}


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidSettingError(f"environment variable {name}: {text!r} is not a positive "
                                  "number")
    return value


def _account_prefix(env: Mapping[str, str]) -> str:
    try:
        return check_account_prefix(env.get("ACCOUNT_PREFIX", ""))
    except ValueError as exc:
        raise InvalidSettingError(f"environment variable ACCOUNT_PREFIX: {exc}") from exc


def open_schedule_expression(env: Mapping[str, str] | None = None) -> str:
    """The daily open's schedule: the stage's OPEN_SCHEDULE, read when app.py is packaged."""
    env = os.environ if env is None else env
    return env.get("OPEN_SCHEDULE") or DEFAULT_OPEN_SCHEDULE


def reconcile_rate_expression(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("RECONCILE_SCHEDULE") or DEFAULT_RECONCILE_RATE
