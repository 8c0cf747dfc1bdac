"""The session contract: answers parsed strictly, Retry-After honoured within a bound, and the
report's shape."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from nacl.signing import SigningKey
from offsite_host.api import Answer, ApiClient, Prepared, UnreachableError
from offsite_host.exitcodes import ConfigError, NoWindowError, ServerError
from offsite_host.report import Report, send_report
from offsite_host.session import (
    Retry,
    Session,
    open_session,
    parse_session,
    parse_session_answer,
    parse_time,
    retry_after,
)

NOW = 1_900_000_000.0
CERT = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29t"
GOOD: dict[str, Any] = {
    "window_id": "w-2030-01-01", "address": "203.0.113.7", "port": 22, "user": "web-1",
    "certificate": CERT + " web-1/w-2030-01-01",
    "known_hosts": "203.0.113.7 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOhB",
    "remote_path": "current/", "not_after": "2030-03-17T18:46:40Z",
    "deadline": "2030-03-17T18:50:00+00:00"}


def answer(status: int, body: object = None, **headers: str) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status, headers, raw)


def test_a_201_is_a_session() -> None:
    session = parse_session_answer(answer(201, GOOD), NOW)
    assert isinstance(session, Session)
    assert session.certificate == CERT  # the comment is dropped
    assert session.port == 22 and session.remote_path == "current/"
    assert session.not_after == NOW + 3600  # 1_900_000_000 is 2030-03-17T17:46:40Z
    assert session.deadline == NOW + 3600 + 200
    assert session.stop_at == session.not_after


@pytest.mark.parametrize(("field", "value"), [
    ("window_id", ""), ("window_id", 7), ("address", "-oProxyCommand=x"),
    ("address", "host name"), ("port", "22"), ("port", 0), ("port", 70000), ("port", True),
    ("user", "Root"), ("user", "a;b"), ("certificate", "ssh-ed25519 AAAA"),
    ("certificate", ""), ("known_hosts", "host ssh-ed25519 AAAA\nevil ssh-rsa BBBB"),
    ("known_hosts", "just-one-field"), ("remote_path", "/srv/other"),
    ("remote_path", "../other"), ("remote_path", "-e sh"), ("remote_path", ""),
    ("not_after", "tomorrow"), ("not_after", "2030-03-17T18:46:40"), ("deadline", None),
    ("deadline", True),
])
def test_a_field_outside_the_contract_is_the_servers_fault(field: str, value: object) -> None:
    with pytest.raises(ServerError, match=f"malformed session answer: {field}"):
        parse_session({**GOOD, field: value})


@pytest.mark.parametrize("body", [b"<html>", b"[]", b"null", b""])
def test_a_body_that_is_not_an_object_is_malformed(body: bytes) -> None:
    with pytest.raises(ServerError, match="malformed session answer"):
        parse_session_answer(answer(201, body), NOW)


def test_times_are_iso_8601_with_an_offset_or_epoch_seconds() -> None:
    assert parse_time("2030-03-17T18:46:40Z", "t") == parse_time("2030-03-17T19:46:40+01:00",
                                                                  "t")
    assert parse_time(1_900_000_000, "t") == 1_900_000_000.0
    assert parse_time("1970-01-01T00:00:10+00:00", "t") == 10.0


def test_known_hosts_may_be_a_cert_authority_line() -> None:
    line = "@cert-authority *.archive ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOhB"
    assert parse_session({**GOOD, "known_hosts": line}).known_hosts == line


@pytest.mark.parametrize(("header", "expected"), [
    ("7", 7.0), ("0", 1.0), ("100000", 300.0), (None, 15.0), ("soon", 15.0),
    ("Sun, 17 Mar 2030 18:47:00 GMT", 20.0),
])
def test_retry_after_is_seconds_or_a_date_and_bounded(header: str | None,
                                                      expected: float) -> None:
    assert retry_after(header, parse_time("2030-03-17T18:46:40Z", "now")) == expected


def test_503_and_gateway_errors_mean_retry() -> None:
    for status in (502, 503, 504):
        outcome = parse_session_answer(answer(status, {"error": "opening"}, **{
            "Retry-After": "5"}), NOW)
        assert outcome == Retry(5.0, f"HTTP {status} (opening)")


def test_409_no_open_window_is_its_own_outcome() -> None:
    with pytest.raises(NoWindowError, match="next window 2030-01-02T02:00:00Z"):
        parse_session_answer(answer(409, {"error": "no_open_window",
                                          "next_window": "2030-01-02T02:00:00Z"}), NOW)


@pytest.mark.parametrize("status", [400, 401, 403])
def test_refusals_are_configuration_errors_with_the_servers_message(status: int) -> None:
    with pytest.raises(ConfigError, match=f"HTTP {status}, revoked: host web-1 is revoked"):
        parse_session_answer(answer(status, {"error": "revoked",
                                             "message": "host web-1 is revoked"}), NOW)


@pytest.mark.parametrize("status", [200, 404, 409, 500])
def test_anything_else_is_a_server_error(status: int) -> None:
    with pytest.raises(ServerError, match=f"HTTP {status}"):
        parse_session_answer(answer(status, b"oops"), NOW)


class FakeServer:
    """A scripted transport plus a fake clock that `sleep` advances."""

    def __init__(self, *answers: Answer | Exception) -> None:
        self.answers = list(answers)
        self.sent: list[Prepared] = []
        self.now = NOW
        self.slept: list[float] = []

    def __call__(self, request: Prepared, timeout: float) -> Answer:
        self.sent.append(request)
        item = self.answers.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def client(self) -> ApiClient:
        return ApiClient("https://api.example.com/prod", "web-1", SigningKey.generate(), self,
                         clock=lambda: self.now)


def test_open_session_waits_while_the_window_opens() -> None:
    server = FakeServer(answer(503, {"error": "opening"}, **{"Retry-After": "30"}),
                        UnreachableError("cannot reach the Offsite API"), answer(201, GOOD))
    session = open_session(server.client(), "ssh-ed25519 AAAA x", 600, lambda _: None,
                           lambda: server.now, server.sleep)
    assert session.window_id == "w-2030-01-01"
    assert server.slept == [30.0, 15.0]
    bodies = [json.loads(r.body) for r in server.sent]
    assert bodies[0] == {"host": "web-1", "ssh_public_key": "ssh-ed25519 AAAA x",
                         "purpose": "backup"}
    assert len({r.headers["Signature"] for r in server.sent}) == 3  # a fresh nonce each time


def test_open_session_gives_up_after_max_wait() -> None:
    server = FakeServer(*[answer(503, {"error": "opening"}, **{"Retry-After": "40"})] * 5)
    with pytest.raises(ServerError, match="no session after waiting 100 s"):
        open_session(server.client(), "k", 100, lambda _: None, lambda: server.now,
                     server.sleep)
    assert sum(server.slept) == 100


def test_report_payload_matches_the_contract() -> None:
    report = Report("w-1", "failed", 10, 2, 12.345, "x" * 5000)
    payload = report.payload("web-1")
    assert set(payload) == {"host", "window_id", "status", "bytes_sent", "files",
                            "duration_s", "detail"}
    assert payload["duration_s"] == 12.3 and len(payload["detail"]) == 2000


def test_a_report_about_a_name_that_is_not_utf8_is_unicode_text() -> None:
    """A path holding a Latin-1 byte reaches Python as a lone surrogate; the control plane
    refuses a body holding one (400), so the restore window would never hear how it ended."""
    name = os.fsdecode(b"/data/caf\xe9 \xff.txt")
    detail = Report("w-1", "succeeded", 0, 0, 1.0, f"restored {name}").payload("h")["detail"]
    assert detail == "restored /data/caf\\xe9 \\xff.txt"
    assert Report("w-1", "failed", 0, 0, 1.0, "a \ud800 b").payload("h")["detail"] == \
        "a \\ud800 b"
    assert Report("w-1", "failed", 0, 0, 1.0, "caf\u00e9").payload("h")["detail"] == "caf\u00e9"


def test_send_report_retries_server_errors_but_not_refusals() -> None:
    server = FakeServer(answer(502, b""), answer(200, {}))
    send_report(server.client(), Report("w-1", "succeeded", 1, 1, 1.0, ""), sleep=server.sleep)
    assert len(server.sent) == 2
    server = FakeServer(answer(400, {"error": "bad", "message": "no"}))
    with pytest.raises(ServerError, match="the report was refused: HTTP 400"):
        send_report(server.client(), Report("w-1", "succeeded", 1, 1, 1.0, ""),
                    sleep=server.sleep)
    assert len(server.sent) == 1
