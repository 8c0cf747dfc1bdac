"""offsite-admin's argument parsing, public-key reading, request signing and error exits."""

from __future__ import annotations

import argparse
import json
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


class FakeApi:
    """The admin API's answers, canned; every call recorded."""

    def __init__(self, answers: dict[tuple[str, str], object]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, object]] = []

    def call(self, method: str, path: str, body: object = None,
             query: dict[str, str] | None = None) -> object:
        self.calls.append((method, path, body))
        return self.answers[method, path]


def run_with(monkeypatch: pytest.MonkeyPatch, api: FakeApi, *argv: str) -> list[str]:
    printed: list[str] = []
    monkeypatch.setattr(commands.Context, "api", lambda self: api)
    assert commands.run(parse(*argv), printed.append) == 0
    return printed


HOST = {"name": "o", "enabled": True, "size_gib": 50, "key_fingerprint": "SHA256:f",
        "enrolled_at": "2026-12-01T02:00:00+00:00", "public_key": KEY}


def test_host_add_sends_the_volume_to_adopt_and_prints_the_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi({("PUT", "/v1/hosts/o"): HOST})
    printed = run_with(monkeypatch, api, "host", "add", "o", "--public-key", KEY,
                       "--size-gib", "50", "--volume-id", "vol-0123456789abcdef0")
    assert api.calls == [("PUT", "/v1/hosts/o", {"public_key": KEY, "size_gib": 50,
                                                 "volume_id": "vol-0123456789abcdef0"})]
    assert printed == ["host o (enabled): size 50 GiB, key SHA256:f"]


def test_the_volume_id_help_says_it_is_adopted_at_the_first_enrolment(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["host", "add", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "at its first enrolment only: adopt the data of this existing volume" in text
    assert "snapshotted once" in text and "first recovery point" in text


def test_window_open_and_close_print_the_archives_and_the_reasons(
        monkeypatch: pytest.MonkeyPatch) -> None:
    opened = {"window_id": "w-1", "state": "OPENING", "expected": ["c", "o"],
              "deadline": "2026-12-01T05:36:00+00:00",
              "shards": [{"shard_id": "s01"}, {"shard_id": "s02"}]}
    closed = {"window_id": "w-1", "state": "CLOSING",
              "reasons": ["closed by admin (hosts missing: c)", "closed by admin (hosts "
                                                                "missing: o)"]}
    api = FakeApi({("POST", "/v1/windows"): opened, ("POST", "/v1/windows/w-1/close"): closed})
    assert run_with(monkeypatch, api, "window", "open", "--hours", "1") == [
        "opened w-1 (OPENING), expecting c, o in 2 archives; deadline "
        "2026-12-01T05:36:00+00:00"]
    assert run_with(monkeypatch, api, "window", "close", "w-1") == [
        "w-1: CLOSING (closed by admin (hosts missing: c); closed by admin (hosts missing: o))"]


def test_host_revoke_says_the_snapshots_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi({("DELETE", "/v1/hosts/o"): {**HOST, "enabled": False}})
    [line] = run_with(monkeypatch, api, "host", "revoke", "o")
    assert line == "revoked o: its next request is refused; its snapshots stay"


@pytest.mark.parametrize("line, kind", [
    ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ o@x", "ssh-rsa"),
    ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY o@x", "ecdsa-sha2-nistp256"),
    ("sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t o@x",
     "sk-ssh-ed25519@openssh.com"),
])
def test_another_kind_of_key_is_named_and_refused(line: str, kind: str) -> None:
    with pytest.raises(commands.AdminError, match=f"only ssh-ed25519 keys are accepted, and "
                                                  f"this is an {kind} key"):
        commands.public_key_from(parse("host", "add", "o", "--public-key", line))


def test_two_lines_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEY}\n{KEY}\n")
    with pytest.raises(commands.AdminError, match="line, not 2 lines"):
        commands.public_key_from(parse("host", "add", "o", "--public-key-file", str(path)))


def test_restore_opens_a_restore_window_and_says_what_the_host_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    opened = {"window_id": "r-1", "snapshot_id": "snap-0123456789abcdef0",
              "day": "2026-12-01", "complete": True, "deadline": "2026-12-01T05:36:00+00:00"}
    api = FakeApi({("POST", "/v1/restores"): opened})
    [text] = run_with(monkeypatch, api, "restore", "--host", "o", "--date", "2026-12-01")
    assert api.calls == [("POST", "/v1/restores", {"host": "o", "day": "2026-12-01"})]
    assert "restore window r-1 opening for o: recovery point snap-0123456789abcdef0" in text
    assert "offsite-host restore --date 2026-12-01 --to DIR" in text
    api = FakeApi({("POST", "/v1/restores"): {**opened, "complete": False}})
    [text] = run_with(monkeypatch, api, "restore", "--host", "o", "--snapshot",
                      "snap-0123456789abcdef0", "--allow-incomplete")
    assert api.calls == [("POST", "/v1/restores", {"host": "o", "allow_incomplete": True,
                                                   "snapshot_id": "snap-0123456789abcdef0"})]
    assert "INCOMPLETE" in text and "--snapshot snap-0123456789abcdef0" in text


@pytest.mark.parametrize("argv, says", [
    (["restore", "--host", "o"], "one of the arguments --date --snapshot is required"),
    (["restore", "--host", "o", "--date", "2026-02-30"], "'2026-02-30' is not a day"),
    (["restore", "--host", "o", "--date", "2026-12-01", "--snapshot", "snap-1"],
     "not allowed with argument"),
])
def test_restore_arguments_are_checked(argv: list[str], says: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2 and says in capsys.readouterr().err


def test_no_region_is_named_with_the_option_to_give_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "OFFSITE_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert cli.main(["host", "list"]) == cli.USAGE
    assert "no AWS region is set: pass --region REGION" in capsys.readouterr().err


def test_every_option_and_argument_has_help() -> None:
    def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        found = [parser]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += parsers(sub)
        return found

    for parser in parsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, (parser.prog, action.dest)
            if action.default not in (None, False, [], argparse.SUPPRESS) and \
                    action.option_strings and action.dest != "stage":
                assert "default" in action.help, (parser.prog, action.dest)


FLEET = {"now": "2026-12-04T02:00:00+00:00", "stale_after_hours": 36.0, "stale": ["h"],
         "revoked": ["o"], "hosts": [
             {"host": "c", "stale": False, "age_hours": 0.5, "alerted_at": None,
              "newest_point": {"snapshot_id": "snap-0c", "day": "2026-12-04"},
              "last_window": {"window_id": "w-4", "state": "CLOSED", "report": "succeeded",
                              "bytes_sent": 2048, "detail": ""}},
             {"host": "h", "stale": True, "age_hours": 72.5, "alerted_at": "x",
              "newest_point": None,
              "last_window": {"window_id": "w-4", "state": "CLOSED", "report": "failed",
                              "bytes_sent": 0, "detail": "rsync: reset"}}]}


def test_status_prints_the_fleet_and_exits_1_when_a_host_is_stale(
        monkeypatch: pytest.MonkeyPatch) -> None:
    printed: list[str] = []
    monkeypatch.setattr(commands.Context, "api", lambda self: FakeApi({
        ("GET", "/v1/status"): FLEET}))
    assert commands.run(parse("status"), printed.append) == 1
    header, c, h, _, summary, revoked = printed[0].splitlines()
    assert header.split() == ["HOST", "NEWEST", "COMPLETE", "POINT", "DAY", "AGE", "(H)", "LAST",
                              "WINDOW", "OUTCOME,", "REPORT", "SENT", "STALE"]
    assert c.split() == ["c", "snap-0c", "2026-12-04", "0.5", "w-4", "CLOSED,", "succeeded",
                         "2.0", "KiB", "ok"]
    assert h.split() == ["h", "-", "-", "72.5", "w-4", "CLOSED,", "failed", "0", "B", "STALE"]
    assert summary == "1 of 2 hosts stale (no complete recovery point for more than 36 h): h"
    assert revoked == "revoked, not watched: o"
    fine = {**FLEET, "stale": [], "hosts": FLEET["hosts"][:1]}
    monkeypatch.setattr(commands.Context, "api", lambda self: FakeApi({
        ("GET", "/v1/status"): fine}))
    assert commands.run(parse("status", "--json"), printed.append) == 0
    assert json.loads(printed[-1])["stale"] == []


def test_host_add_sends_the_hosts_own_start_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi({("PUT", "/v1/hosts/o"): HOST})
    run_with(monkeypatch, api, "host", "add", "o", "--public-key", KEY,
             "--start-grace-minutes", "90")
    assert api.calls == [("PUT", "/v1/hosts/o", {"public_key": KEY, "start_grace_minutes": 90})]
