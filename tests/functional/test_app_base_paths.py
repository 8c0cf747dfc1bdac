"""Signed requests as API Gateway hands them to the Lambda, on both ways to reach the API: the
default endpoint with its stage (`https://<api>.execute-api.<region>.amazonaws.com/api/...`) and
a custom domain whose base path mapping puts the API under `/offsite` (and whose Lambda event
then carries the base path in `path` as well as in `requestContext.path`). The host signs the
path it requests; the server checks that same path, and chalice routes on the resource path."""

from __future__ import annotations

import copy
import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from chalice.test import LambdaContext
from nacl.signing import SigningKey
from offsite_host.api import prepare

import app as app_module
from chalicelib.sshcert import ca_public_key_line

from .app_rig import EVENTS, AppRig, app_rig, open_window

__all__ = ["app_rig"]
DEFAULT = "https://abc123defg.execute-api.us-east-1.amazonaws.com/api"
CUSTOM = "https://backup.example.com/offsite"


def proxy_event(base: str, route: str, body: bytes, headers: dict[str, str],
                signed_for: str | None = None) -> dict[str, Any]:
    """The Lambda proxy event of `POST base + route` (tests/events/apigateway-rest-proxy.json),
    signed for the URL `signed_for` (the one requested unless given)."""
    url = urlsplit(base + route)
    event = copy.deepcopy(json.loads((EVENTS / "apigateway-rest-proxy.json").read_text()))
    context = event["requestContext"]
    custom = not url.netloc.endswith(".amazonaws.com")
    # The top-level path: the resource path on the default endpoint, the whole path on a
    # custom domain; requestContext.path: the whole path requested, on both.
    event["path"] = url.path if custom else route
    event["resource"] = context["resourcePath"] = route
    context["path"] = url.path
    context["domainName"] = url.netloc
    context["domainPrefix"] = url.netloc.split(".")[0]
    context["requestId"] = secrets.token_hex(8)
    sent = {**event["headers"], **headers, "Host": url.netloc}
    event["headers"] = sent
    event["multiValueHeaders"] = {name: [value] for name, value in sent.items()}
    event["body"] = body.decode()
    return dict(event)


def signed_session(rig: AppRig, api_url: str, route: str = "/v1/sessions",
                   host: str = "c") -> tuple[bytes, dict[str, str]]:
    """The session request offsite-host makes with `api_url` in its host.toml."""
    payload = {"host": host, "ssh_public_key": ca_public_key_line(SigningKey.generate()),
               "purpose": "backup"}
    prepared = prepare(api_url, route, payload, rig.keys[host], host, int(time.time()),
                       secrets.token_urlsafe(16))
    return prepared.body, prepared.headers


def invoke(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    answer = app_module.app(event, LambdaContext("api_handler", 256))
    return int(answer["statusCode"]), dict(json.loads(answer["body"]))


@pytest.mark.parametrize("base", [DEFAULT, CUSTOM], ids=["stage", "custom-domain-base-path"])
def test_a_signed_session_is_accepted_on_either_mapping(app_rig: AppRig, base: str) -> None:
    window_id = open_window(app_rig)
    body, headers = signed_session(app_rig, base)
    status, grant = invoke(proxy_event(base, "/v1/sessions", body, headers))
    assert status == 201, grant
    assert grant["window_id"] == window_id and grant["certificate"].startswith("ssh-ed25519-cert")


@pytest.mark.parametrize(("base", "signed_base", "signed_route"), [
    (DEFAULT, DEFAULT, "/v1/reports"),
    (DEFAULT, "https://abc123defg.execute-api.us-east-1.amazonaws.com", "/v1/sessions"),
    (CUSTOM, "https://backup.example.com", "/v1/sessions"),
    (CUSTOM, "https://backup.example.com/other", "/v1/sessions"),
], ids=["stage-other-route", "stage-left-out", "base-path-left-out", "other-base-path"])
def test_a_signature_over_another_path_is_refused(app_rig: AppRig, base: str,
                                                  signed_base: str, signed_route: str) -> None:
    """Signed for another route, or for the right route without the stage or base path (what
    a client signing the routed path would send): 401, and no certificate."""
    open_window(app_rig)
    body, headers = signed_session(app_rig, signed_base, signed_route)
    status, answer = invoke(proxy_event(base, "/v1/sessions", body, headers))
    assert status == 401, answer
    assert "certificate" not in answer
