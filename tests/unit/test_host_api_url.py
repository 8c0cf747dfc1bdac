"""A wrong `api_url` fails at once with exit 9 and "check api_url": a name that does not
resolve, a port nothing listens on, an answer that is not the Offsite API's (a web server's
page, API Gateway's "Missing Authentication Token" for a path it has no route for). Only what
may pass is retried: a timeout, a reset, a gateway's 429/502/503/504, Offsite's own 503."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from nacl.signing import SigningKey
from offsite_host.api import (
    Answer,
    ApiClient,
    Prepared,
    UnreachableError,
    WrongApiError,
    check_offsite,
)
from offsite_host.cli import main
from offsite_host.exitcodes import ExitCode
from offsite_host.session import Retry, open_session, parse_session_answer


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A port bound and held but never listening: a connection to it is refused, and no other
    process can take it meanwhile."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}/api"


class _Page(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, tuple[int, str, bytes]]] = {
        "/html": (404, "text/html", b"<html><body>Not Found</body></html>"),
        "/gateway": (403, "application/json", b'{"message":"Missing Authentication Token"}'),
        "/throttled": (429, "application/json", b'{"message":"Too Many Requests"}'),
    }

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.do_GET()

    def do_GET(self) -> None:
        prefix = "/" + self.path.strip("/").split("/")[0]
        status, kind, body = self.answers[prefix]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[str]:
    """Some web server that is not Offsite."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def session_at(url: str, clock: Clock) -> None:
    client = ApiClient(url, "web-1", SigningKey.generate(), clock=lambda: clock.now)
    open_session(client, "ssh-ed25519 AAAA x", 1800, lambda _: None, lambda: clock.now,
                 clock.sleep)


def test_a_refused_connection_fails_at_once(refusing_url: str) -> None:
    clock = Clock()
    with pytest.raises(WrongApiError, match=r"connection was refused.*check api_url") as failed:
        session_at(refusing_url, clock)
    assert failed.value.exit_code == ExitCode.SERVER == 9
    assert clock.slept == []  # not one retry


def test_a_name_that_does_not_resolve_fails_at_once() -> None:
    clock = Clock()
    with pytest.raises(WrongApiError, match=r"name does not resolve.*check api_url"):
        session_at("https://offsite-api.invalid/api", clock)  # RFC 6761: never resolves
    assert clock.slept == []


@pytest.mark.parametrize("path, says", [
    ("/html", r"is not the Offsite API: it answered HTTP 404 with '<html>"),
    ("/gateway", r"the URL is wrong: .*/gateway/v1/sessions has no such path"),
])
def test_an_answer_that_is_not_offsites_fails_at_once(web_server: str, path: str,
                                                      says: str) -> None:
    clock = Clock()
    with pytest.raises(WrongApiError, match=says):
        session_at(web_server + path, clock)
    assert clock.slept == []


def test_a_gateways_throttling_is_retried_until_max_wait(web_server: str) -> None:
    clock = Clock()
    with pytest.raises(Exception, match="no session after waiting 1800 s") as failed:
        session_at(web_server + "/throttled", clock)
    assert not isinstance(failed.value, WrongApiError)
    assert len(clock.slept) > 1 and sum(clock.slept) == 1800


def test_what_may_pass_is_still_retried() -> None:
    answers: list[Answer | Exception] = [
        UnreachableError("timed out"),
        Answer(502, {}, b'{"message": "Internal server error"}'),
        Answer(503, {"Retry-After": "2"}, b'{"error": "window_opening"}'),
        Answer(201, {}, b'{"window_id": "w"}')]  # outside the contract: ends the test

    def transport(request: Prepared, timeout: float) -> Answer:
        item = answers.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    clock = Clock()
    client = ApiClient("https://api.example.com/prod", "web-1", SigningKey.generate(),
                       transport, clock=lambda: clock.now)
    with pytest.raises(Exception, match="malformed session answer"):
        open_session(client, "k", 600, lambda _: None, lambda: clock.now, clock.sleep)
    assert clock.slept == [15.0, 15.0, 2.0]


@pytest.mark.parametrize("answer", [
    Answer(200, {}, b"<html>ok</html>"),
    Answer(201, {}, b""),
    Answer(403, {}, b"Forbidden"),
    Answer(409, {}, b'{"message": "conflict"}'),
    Answer(500, {}, b'{"error": 5}'),
])
def test_only_offsites_own_shape_is_taken_for_an_answer(answer: Answer) -> None:
    with pytest.raises(WrongApiError, match="check api_url"):
        check_offsite(answer)


def test_offsites_answers_pass() -> None:
    for answer in (Answer(201, {}, json.dumps({"window_id": "w"}).encode()),
                   Answer(409, {}, b'{"error": "no_open_window"}'),
                   Answer(503, {}, b"<html>Service Unavailable</html>")):
        assert check_offsite(answer) is answer
    assert parse_session_answer(Answer(504, {}, b'{"message": "Endpoint request timed out"}'),
                                0.0) == Retry(15.0, "HTTP 504 (HTTP 504 without a JSON error)")


def test_the_command_exits_9_and_says_check_api_url(
        refusing_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "host.toml"
    config.write_text(f'api_url = "{refusing_url}"\nhost = "web-1"\npaths = ["{tmp_path}"]\n'
                      'state_dir = "state"\n')
    assert main(["--config", str(config), "keygen"]) == 0
    (tmp_path / "password").write_text("a password that is long enough for this test\n")
    (tmp_path / "password").chmod(0o600)
    config.write_text(config.read_text() + 'password_file = "password"\n')
    capsys.readouterr()
    assert main(["--config", str(config), "snapshots"]) == 9
    err = capsys.readouterr().err
    assert "connection was refused" in err and "check api_url" in err
