"""offsite-admin's argument parsing, public-key reading, request signing and error exits."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from botocore.credentials import Credentials
from nacl.signing import SigningKey

from chalicelib.admin import cli, commands
from chalicelib.admin.api import AdminApi, ApiError, api_error, region_of
from chalicelib.keys import openssh_private_key

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVxM3pq9/naXXOSa0ruvXu69ftn5sxYgOo7VuDvGo5B o@x"


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def test_common_options_go_before_or_after_the_command() -> None:
    before = parse("--api-url", "http://a", "--json", "host", "list")
    after = parse("host", "list", "--api-url", "http://a", "--json")
    for args in (before, after):
        assert (args.command, args.action, args.api_url, args.json) == (
            "host", "list", "http://a", True)


def test_stage_and_urls_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFSITE_STAGE", "prod")
    monkeypatch.setenv("OFFSITE_API_URL", "https://x.execute-api.eu-west-1.amazonaws.com/api/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    args = parse("window", "history")
    assert args.stage == "prod" and args.api_url.startswith("https://x.")
    assert args.endpoint_url == "http://127.0.0.1:5000" and args.limit == 10
    assert parse("--stage", "dev", "cost").stage == "dev"


def test_window_and_host_arguments() -> None:
    opened = parse("window", "open", "--hours", "1.5", "--host", "c", "--host", "o")
    assert (opened.hours, opened.hosts) == (1.5, ["c", "o"])
    assert parse("window", "status").window_id is None
    assert parse("window", "close", "w-1").window_id == "w-1"
    assert parse("snapshots", "--host", "c").host == "c"
    init = parse("init", "--yes", "--ssh-cidr", "10.0.0.0/8", "--ssh-cidr", "1.2.3.4/32")
    assert init.yes and init.ssh_cidr == ["10.0.0.0/8", "1.2.3.4/32"] and not init.no_deploy


@pytest.mark.parametrize("argv", [["host", "add", "c"],  # no key
                                  ["host", "add", "c", "--public-key", "k",
                                   "--public-key-file", "f"],
                                  ["snapshots"], ["window"], ["nothing"]])
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_the_public_key_comes_from_the_option_or_a_file(tmp_path: Path) -> None:
    assert commands.public_key_from(parse("host", "add", "o", "--public-key", KEY)) == KEY
    path = tmp_path / "o.pub"
    path.write_text(f"\n{KEY}\n")
    assert commands.public_key_from(parse("host", "add", "o", "--public-key-file",
                                          str(path))) == KEY


def test_a_private_key_is_refused_and_never_sent(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    path.write_text(openssh_private_key(SigningKey.generate(), "o@offsite"))  # made here
    with pytest.raises(commands.AdminError, match="private key"):
        commands.public_key_from(parse("host", "add", "o", "--public-key-file", str(path)))
    with pytest.raises(commands.AdminError, match="cannot read"):
        commands.public_key_from(parse("host", "add", "o", "--public-key-file",
                                       str(tmp_path / "missing")))


def test_requests_are_signed_with_sigv4_for_execute_api() -> None:
    url = "https://abc123.execute-api.eu-west-1.amazonaws.com/api/"
    api = AdminApi(url, Credentials("AKIDEXAMPLE", "secret", "token"),
                   region_of(url, "us-east-1"))
    request = api.request("PUT", "/v1/hosts/c", {"public_key": KEY})
    assert request.full_url == "https://abc123.execute-api.eu-west-1.amazonaws.com/api/v1/hosts/c"
    headers = {k.lower(): v for k, v in request.header_items()}
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/execute-api/aws4_request" in headers["authorization"]
    assert headers["x-amz-security-token"] == "token"
    assert request.data == b'{"public_key": "' + KEY.encode() + b'"}'
    assert "secret" not in str(headers)


def test_without_credentials_a_local_request_goes_unsigned() -> None:
    api = AdminApi("http://127.0.0.1:8000", None, "us-east-1")
    request = api.request("GET", "/v1/snapshots", query={"host": "c"})
    assert request.full_url == "http://127.0.0.1:8000/v1/snapshots?host=c"
    assert "Authorization" not in dict(request.header_items())
    assert region_of("http://127.0.0.1:8000", "eu-west-2") == "eu-west-2"


def test_api_errors_are_read_from_the_json_body() -> None:
    ours = api_error(409, b'{"error": "window_active", "message": "w-1 is open"}')
    assert (ours.status, ours.code, ours.message) == (409, "window_active", "w-1 is open")
    gateway = api_error(403, b'{"message": "Missing Authentication Token"}')
    assert (gateway.code, gateway.message) == ("http_403", "Missing Authentication Token")
    assert api_error(502, b"<html>bad gateway</html>").code == "http_502"


def test_an_api_refusal_exits_1_with_a_clear_line(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    def refused(args: argparse.Namespace) -> int:
        raise ApiError(404, "unknown_host", "no host x")

    monkeypatch.setattr(commands, "run", refused)
    assert cli.main(["host", "revoke", "x", "--api-url", "http://127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err == "offsite-admin: the API refused (404): unknown_host: no host x\n"


def test_an_unreachable_api_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["host", "list", "--api-url", "http://127.0.0.1:9"]) == 3
    assert "cannot reach the API at http://127.0.0.1:9" in capsys.readouterr().err
