"""Settings of the control plane, read once per container from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from chalicelib.accounts import check_account_prefix
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
    instance_id: str
    topic_arn: str
    deadline_target_arn: str
    scheduler_role_arn: str
    schedule_group: str = "default"
    instance_types: tuple[str, ...] = ()
    window_hours: float = 3.6
    retention_days: int = 20
    timing: Timing = field(default_factory=Timing)
    key_prefix: str = "/offsite"
    ssh_port: int = 22
    ssh_endpoint: str | None = None
    mount_root: str = "/srv/offsite"
    rrsync: str = "/usr/bin/rrsync"
    retry_after: int = 30
    source_address: str | None = None
    open_schedule: str = DEFAULT_OPEN_SCHEDULE
    restore_hours: float = 2.0
    restore_root: str = "/srv/offsite-restore"
    account_prefix: str = ""  # a host's account on the instance: chalicelib/accounts.py

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def need(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise MissingSettingError(f"environment variable {name} is not set")
            return value

        types = tuple(t.strip() for t in env.get("INSTANCE_TYPES", "").split(",") if t.strip())
        return cls(
            table_name=need("TABLE_NAME"),
            instance_id=need("INSTANCE_ID"),
            topic_arn=need("TOPIC_ARN"),
            deadline_target_arn=need("DEADLINE_TARGET_ARN"),
            scheduler_role_arn=need("SCHEDULER_ROLE_ARN"),
            schedule_group=env.get("SCHEDULE_GROUP", "default"),
            instance_types=types,
            window_hours=float(env.get("WINDOW_HOURS", "3.6")),
            retention_days=int(env.get("RETENTION_DAYS", "20")),
            key_prefix=env.get("KEY_PARAMETER_PREFIX", "/offsite").rstrip("/"),
            ssh_port=int(env.get("SSH_PORT", "22")),
            ssh_endpoint=env.get("SSH_ENDPOINT") or None,
            mount_root=env.get("MOUNT_ROOT", "/srv/offsite").rstrip("/"),
            rrsync=env.get("RRSYNC") or "/usr/bin/rrsync",
            retry_after=int(env.get("SESSION_RETRY_AFTER", "30")),
            source_address=env.get("CERT_SOURCE_ADDRESS") or None,
            open_schedule=open_schedule_expression(env),
            restore_hours=float(env.get("RESTORE_HOURS", "2")),
            restore_root=env.get("RESTORE_ROOT", "/srv/offsite-restore").rstrip("/"),
            account_prefix=_account_prefix(env),
            timing=Timing(
                boot_timeout=timedelta(minutes=float(env.get("BOOT_TIMEOUT_MINUTES", "15"))),
                stop_grace=timedelta(minutes=float(env.get("STOP_GRACE_MINUTES", "10"))),
            ),
        )


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
