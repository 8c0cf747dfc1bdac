"""Offsite's entry points: routes, schedules, event handlers and console functions.

Each handler parses its input, calls a service in chalicelib, and maps domain errors to JSON
answers. AWS clients are built once per container, on first use, in the cached getters below.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from botocore.config import Config
from chalice.app import Chalice, CloudWatchEvent, IAMAuthorizer, Request, Response

from chalicelib.adapters.compute import Ec2Compute
from chalicelib.adapters.dynamo_store import DynamoStore
from chalicelib.adapters.metrics import EmfMetrics
from chalicelib.adapters.notifier import SnsNotifier
from chalicelib.adapters.scheduler import EventBridgeScheduler
from chalicelib.events import instance_state_change, snapshot_results
from chalicelib.http_errors import describe_error, from_chalice_error
from chalicelib.payloads import parse_json_object, parse_open_request, parse_report
from chalicelib.settings import Settings, open_schedule_expression, reconcile_rate_expression
from chalicelib.windows import Ports, WindowService, window_view

app = Chalice(app_name="offsite")
logger = Logger(service="offsite")
iam = IAMAuthorizer()
_AWS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 6})


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def window_service() -> WindowService:
    s = settings()
    ports = Ports(
        store=DynamoStore(boto3.client("dynamodb", config=_AWS_CONFIG), s.table_name),
        compute=Ec2Compute(boto3.client("ec2", config=_AWS_CONFIG)),
        scheduler=EventBridgeScheduler(boto3.client("scheduler", config=_AWS_CONFIG),
                                       s.deadline_target_arn, s.scheduler_role_arn,
                                       s.schedule_group),
        notifier=SnsNotifier(boto3.client("sns", config=_AWS_CONFIG), s.topic_arn),
        metrics=EmfMetrics(namespace="Offsite", service="offsite"),
    )
    return WindowService(s, ports)


def api(path: str, method: str, admin: bool = True) -> Callable[[Callable[..., Any]], Any]:
    """A route whose domain errors become JSON answers; admin routes are IAM-authorised."""

    def register(view: Callable[..., Any]) -> Any:
        @functools.wraps(view)
        def guarded(**kwargs: Any) -> Any:
            try:
                return view(**kwargs)
            except Exception as exc:  # mapped, and logged when unexpected
                status, body = describe_error(exc)
                return Response(body=body, status_code=status)

        return app.route(path, methods=[method], authorizer=iam if admin else None,
                         content_types=["application/json"])(guarded)

    return register


@app.middleware("http")
def json_errors(event: Any, get_response: Callable[[Any], Response]) -> Response:
    """Chalice's own refusals (405, 415, 500) in our error shape."""
    response = get_response(event)
    body = response.body
    if response.status_code >= 400 and isinstance(body, dict) and "Code" in body:
        response.body = from_chalice_error(body, response.status_code)
    return response


def _request() -> Request:
    request = app.current_request
    assert request is not None, "only called while handling a request"
    return request


def _body() -> dict[str, Any]:
    return parse_json_object(_request().raw_body)


def _admin() -> str:
    identity = (_request().context or {}).get("identity") or {}
    return str(identity.get("userArn") or identity.get("caller") or "admin")


# windows ---------------------------------------------------------------------------------
@app.schedule(open_schedule_expression(), name="scheduled_open")
def scheduled_open(event: Any) -> None:
    window_service().open_window("schedule")


@app.lambda_function(name="console_open")
def console_open(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Open a window from the Lambda console: {"duration_hours": 1, "hosts": ["c"]}."""
    try:
        window = window_service().open_window("console", parse_open_request(event or {}))
    except Exception as exc:
        return describe_error(exc)[1]
    return window_view(window)


@api("/v1/windows", "POST")
def open_window() -> Response:
    window = window_service().open_window("api", parse_open_request(_body()))
    return Response(body=window_view(window), status_code=201)


@api("/v1/windows", "GET")
def list_windows() -> dict[str, Any]:
    return {"windows": [window_view(w) for w in window_service().list_windows()]}


@api("/v1/windows/{window_id}", "GET")
def get_window(window_id: str) -> dict[str, Any]:
    service = window_service()
    view = window_view(service.get_window(window_id))
    view["host_reports"] = [vars(r) | {"received_at": r.received_at.isoformat()}
                            for r in service.reports(window_id)]
    return view


@api("/v1/windows/{window_id}/close", "POST")
def close_window(window_id: str) -> dict[str, Any]:
    decision = window_service().close_window(window_id, by=_admin())
    return {"window_id": window_id, "state": decision.target, "reason": decision.reason}


@app.lambda_function(name="window_deadline")
def window_deadline(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Invoked by the window's one-time Scheduler schedule with {"window_id": ...}."""
    decision = window_service().on_deadline(str(event["window_id"]))
    return {"reason": decision.reason}


@app.schedule(reconcile_rate_expression(), name="reconciler")
def reconciler(event: Any) -> None:
    decision = window_service().reconcile()
    if decision is not None:
        logger.info("reconciled", extra={"reason": decision.reason})


# AWS events ------------------------------------------------------------------------------
@app.on_cw_event({"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
                 name="instance_state")
def instance_state(event: CloudWatchEvent) -> None:
    instance_id, state = instance_state_change(event.to_dict())
    window_service().on_instance_state(instance_id, state)


@app.on_cw_event({"source": ["aws.ec2"], "detail-type": [
    "EBS Snapshot Notification", "EBS Multi-Volume Snapshots Completion Status"]},
    name="snapshot_state")
def snapshot_state(event: CloudWatchEvent) -> None:
    window_service().on_snapshots_settled(snapshot_results(event.to_dict()))


# hosts -----------------------------------------------------------------------------------
@api("/v1/reports", "POST", admin=False)
def post_report() -> dict[str, Any]:
    report = parse_report(_body())
    accepted = window_service().record_report(report)
    return {"window_id": report.window_id, "host": report.host, "accepted": accepted}

