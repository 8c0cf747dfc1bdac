"""Offsite's entry points: routes, schedules, event handlers and console functions.

Each handler parses its input, calls a service in chalicelib, and maps domain errors to JSON
answers. AWS clients are built once per container, on first use, in the cached getters below.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from aws_lambda_powertools import Logger
from chalice.app import Chalice, CloudWatchEvent, IAMAuthorizer, Request, Response

from chalicelib.composition import (
    authenticator,
    boot_signal_service,
    host_service,
    reset,
    restore_service,
    session_service,
    settings,
    watch,
    window_service,
)
from chalicelib.events import SNAPSHOT_COMPLETIONS, instance_state_change, snapshot_results
from chalicelib.host_auth import requested_path
from chalicelib.hosts import host_view, parse_enrolment
from chalicelib.http_errors import describe_error, from_chalice_error
from chalicelib.httpsig import SignedRequest
from chalicelib.names import InvalidHostNameError, check_host_name
from chalicelib.payloads import (
    MAX_WINDOW_ID,
    InvalidPayloadError,
    parse_json_object,
    parse_open_request,
    parse_report,
)
from chalicelib.recovery import parse_restore_request, point_view
from chalicelib.sessions import WrongHostError, parse_session_request
from chalicelib.settings import open_schedule_expression, reconcile_rate_expression
from chalicelib.windows import UnknownWindowError, window_view

app = Chalice(app_name="offsite", configure_logs=False)  # powertools owns the "offsite" logger
logger = Logger(service="offsite")
iam = IAMAuthorizer()


def reset_caches() -> None:
    """Drops the cached settings, clients and services, as a new Lambda container would
    start (chalicelib/composition.py)."""
    reset()


def api(path: str, method: str, admin: bool = True) -> Callable[[Callable[..., Any]], Any]:
    """A route whose domain errors become JSON answers; admin routes are IAM-authorised."""

    def register(view: Callable[..., Any]) -> Any:
        @functools.wraps(view)
        def guarded(**kwargs: Any) -> Any:
            try:
                return view(**kwargs)
            except Exception as exc:  # mapped, and logged when unexpected
                status, body, headers = describe_error(exc)
                return Response(body=body, status_code=status, headers=dict(headers.items()))

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


def _signer() -> str:
    """The host that signed this request (RFC 9421), or NotAuthenticated/HostNotAllowed."""
    request = _request()
    query = urlencode(request.query_params) if request.query_params else ""
    body = request.raw_body or b""
    return authenticator().authenticate(SignedRequest(
        method=request.method, authority=request.headers.get("host", ""),
        path=requested_path(request.context), query=query, headers=dict(request.headers),
        body=body.encode() if isinstance(body, str) else body))


def _request_id() -> str:
    context = _request().context or {}
    return str(context.get("requestId") or uuid.uuid4())


def _admin() -> str:
    identity = (_request().context or {}).get("identity") or {}
    return str(identity.get("userArn") or identity.get("caller") or "admin")


# windows ---------------------------------------------------------------------------------
@app.schedule(open_schedule_expression(), name="scheduled_open")
def scheduled_open(event: Any) -> None:
    window_service().open_scheduled()


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
    """Accepted: the shards' archives launch in invocations of their own (launch_shard)."""
    window = window_service().open_window("api", parse_open_request(_body()))
    return Response(body=window_view(window), status_code=202)


@api("/v1/windows", "GET")
def list_windows() -> dict[str, Any]:
    return {"windows": [window_view(w) for w in window_service().list_windows()]}


@api("/v1/windows/{window_id}", "GET")
def get_window(window_id: str) -> dict[str, Any]:
    service = window_service()
    view = window_view(service.get_window(_window_id(window_id)))
    view["host_reports"] = [vars(r) | {"received_at": r.received_at.isoformat()}
                            for r in service.reports(window_id)]
    return view


@api("/v1/windows/{window_id}/close", "POST")
def close_window(window_id: str) -> dict[str, Any]:
    decisions = window_service().close_window(_window_id(window_id), by=_admin())
    window = window_service().get_window(window_id)
    return {"window_id": window_id, "state": window.state.value,
            "reasons": [d.reason for d in decisions]}


def _window_id(text: str) -> str:
    """A window id from a path, bounded before it reaches the table (DynamoDB refuses a
    partition key over 2048 bytes with a ValidationException: a 500, not a 404)."""
    if not 0 < len(text) <= MAX_WINDOW_ID:
        raise UnknownWindowError(f"no window {text[:MAX_WINDOW_ID]}…")
    return text


@app.lambda_function(name="window_deadline")
def window_deadline(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Invoked by the window's one-time Scheduler schedule with {"window_id": ...}."""
    decisions = window_service().on_deadline(str(event["window_id"]))
    return {"reasons": [d.reason for d in decisions]}


@app.lambda_function(name="launch_shard")
def launch_shard(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Invoked asynchronously, once per shard, by the window's opening:
    {"window_id": ..., "shard_id": ...}."""
    outcome = window_service().launch_shard(str(event["window_id"]), str(event["shard_id"]))
    logger.info("launch", extra={"window_id": event["window_id"],
                                 "shard_id": event["shard_id"], "outcome": outcome})
    return {"outcome": outcome}


@app.schedule(reconcile_rate_expression(), name="reconciler")
def reconciler(event: Any) -> None:
    decisions = window_service().reconcile()
    if decisions:
        logger.info("reconciled", extra={"reasons": [d.reason for d in decisions]})
    window_service().sweep()
    watch().evaluate_if_due()  # a fleet whose windows stopped concluding is noticed too


# archive instances: their own word on their boot ----------------------------------------------
@api("/v1/archives/{instance_id}/ready", "POST", admin=False)
def archive_ready(instance_id: str) -> dict[str, Any]:
    """Signed with the stage's SSH host key (chalicelib/boot_signal.py), not by a host."""
    return _boot_signal(instance_id, "ready")


@api("/v1/archives/{instance_id}/failed", "POST", admin=False)
def archive_failed(instance_id: str) -> dict[str, Any]:
    return _boot_signal(instance_id, "failed")


def _boot_signal(instance_id: str, status: str) -> dict[str, Any]:
    decision = boot_signal_service().receive(instance_id, status, _body())
    return {"instance_id": instance_id, "status": status, "reason": decision.reason}


# AWS events ------------------------------------------------------------------------------
@app.on_cw_event({"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
                 name="instance_state")
def instance_state(event: CloudWatchEvent) -> None:
    instance_id, state = instance_state_change(event.to_dict())
    window_service().on_instance_state(instance_id, state)


@app.on_cw_event(SNAPSHOT_COMPLETIONS, name="snapshot_state")
def snapshot_state(event: CloudWatchEvent) -> None:
    window_service().on_snapshots_settled(snapshot_results(event.to_dict()))


# hosts: enrolment (admin) ----------------------------------------------------------------
@api("/v1/hosts/{name}", "PUT")
def enrol_host(name: str) -> Response:
    host, new = host_service().enrol(parse_enrolment(name, _body()))
    return Response(body=host_view(host), status_code=201 if new else 200)


@api("/v1/hosts/{name}", "DELETE")
def revoke_host(name: str) -> dict[str, Any]:
    return host_view(host_service().revoke(name))


@api("/v1/hosts", "GET")
def list_hosts() -> dict[str, Any]:
    return {"hosts": [host_view(h) for h in host_service().list()]}


@api("/v1/status", "GET")
def fleet_status() -> dict[str, Any]:
    """Each host's newest complete point, its age, its last window, stale or not."""
    return watch().fleet()


# restores ----------------------------------------------------------------------------------
@api("/v1/snapshots", "GET")
def list_snapshots() -> dict[str, Any]:
    host = dict(_request().query_params or {}).get("host")
    if not host:
        raise InvalidPayloadError("say whose snapshots: ?host=NAME")
    try:
        return _snapshots(check_host_name(host))
    except InvalidHostNameError as exc:
        raise InvalidPayloadError(str(exc)) from exc


@api("/v1/restores", "POST")
def open_restore() -> Response:
    answer = restore_service().open(parse_restore_request(_body()), trigger="api")
    return Response(body=answer, status_code=202)


@api("/v1/hosts/{name}/snapshots", "GET", admin=False)
def host_snapshots(name: str) -> dict[str, Any]:
    _signed_by(name)
    return _snapshots(name)


@api("/v1/hosts/{name}/restores", "POST", admin=False)
def host_restore(name: str) -> Response:
    _signed_by(name)
    answer = restore_service().open(parse_restore_request(_body(), host=name), trigger="host")
    return Response(body=answer, status_code=202)


def _snapshots(host: str) -> dict[str, Any]:
    points = restore_service().recovery_points(host)
    return {"host": host, "snapshots": [point_view(p) for p in points],
            "stale_after_hours": settings().stale_after_hours}


def _signed_by(name: str) -> None:
    signer = _signer()
    if signer != name:
        raise WrongHostError(f"{signer} may not act for {name}")


# hosts: signed requests --------------------------------------------------------------------
@api("/v1/sessions", "POST", admin=False)
def open_session() -> Response:
    signer = _signer()
    grant = session_service().issue(signer, parse_session_request(_body()), _request_id())
    return Response(body=grant, status_code=201, headers={"Cache-Control": "no-store"})


@api("/v1/windows/current", "GET", admin=False)
def current_window() -> dict[str, Any]:
    return session_service().current(_signer())


@api("/v1/reports", "POST", admin=False)
def post_report() -> dict[str, Any]:
    signer = _signer()
    report = parse_report(_body())
    if report.host != signer:
        raise WrongHostError(f"{signer} may not report for {report.host}")
    accepted = window_service().record_report(report)
    return {"window_id": report.window_id, "host": report.host, "accepted": accepted}

