"""Bad input on every route: a 4xx with a JSON error, no stack trace, state unchanged."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import pytest
from nacl.signing import SigningKey
from offsite_host import httpsig

import app as app_module
from chalicelib.names import RESERVED_NAMES_FILE, parse_name_list
from chalicelib.sshcert import ca_public_key_line

from .app_rig import AppRig, app_rig, offsite_snapshots

__all__ = ["app_rig"]

OVERSIZED = b'{"detail": "' + b"x" * 70_000 + b'"}'
BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("malformed", b'{"duration_hours": ', "bad_request"),
    ("not an object", b"[1, 2]", "bad_request"),
    ("oversized", OVERSIZED, "bad_request"),
]


def assert_clean_error(answer: Any, status: int, code: str) -> None:
    assert answer.status_code == status, answer.body
    body = json.loads(answer.body)
    assert set(body) == {"error", "message"} and body["error"] == code
    assert "Traceback" not in answer.body.decode() and "File \"" not in answer.body.decode()


def state(rig: AppRig) -> tuple[Any, ...]:
    windows = rig.client.http.get("/v1/windows").json_body["windows"]
    return tuple((w["window_id"], w["state"], tuple(w["reports"])) for w in windows), len(
        offsite_snapshots())


@pytest.mark.parametrize("path", ["/v1/windows", "/v1/reports", "/v1/sessions",
                                  "/v1/hosts/c"])
@pytest.mark.parametrize(("name", "raw", "code"), BAD_BODIES)
def test_bad_bodies(app_rig: AppRig, path: str, name: str, raw: bytes, code: str) -> None:
    before = state(app_rig)
    if path == "/v1/hosts/c":
        answer = app_rig.client.http.put(path, body=raw,
                                         headers={"Content-Type": "application/json"})
    elif path == "/v1/windows":
        answer = app_rig.post(path, None, raw=raw)
    else:  # a host's route: signed, so it is the body that is refused
        answer = app_rig.signed("POST", path, None, "c", raw=raw)
    assert_clean_error(answer, 400, code)
    assert state(app_rig) == before


BODY_ROUTES = [("POST", "/v1/windows", None), ("PUT", "/v1/hosts/c", None),
               ("POST", "/v1/restores", None), ("POST", "/v1/sessions", "c"),
               ("POST", "/v1/reports", "c"), ("POST", "/v1/hosts/c/restores", "c")]
DEEP_BODIES = [
    ("18 kB of [", b"[" * 18_000),
    ("18 kB of [ then ]", b"[" * 9_000 + b"]" * 9_000),
    ("an object 18 kB deep", b'{"hosts": ' + b"[" * 18_000 + b"]" * 18_000 + b"}"),
    ("valid JSON, deep but under the parser's limit", b'{"hosts": ' + b"[" * 500
     + b"]" * 500 + b"}"),
]


@pytest.mark.parametrize(("method", "path", "signer"), BODY_ROUTES)
@pytest.mark.parametrize(("name", "raw"), DEEP_BODIES)
def test_deeply_nested_json_is_a_400_without_a_traceback(
        app_rig: AppRig, capfd: pytest.CaptureFixture[str], method: str, path: str,
        signer: str | None, name: str, raw: bytes) -> None:
    before = state(app_rig)
    capfd.readouterr()
    if signer is None:
        answer = app_rig.client.http.request(method, path, body=raw,
                                             headers={"Content-Type": "application/json"})
    else:  # signed as its host signs, so it is the body that is refused
        answer = app_rig.signed(method, path, None, signer, raw=raw)
    assert_clean_error(answer, 400, "bad_request")
    assert "nests deeper" in json.loads(answer.body)["message"]
    logged = "".join(capfd.readouterr())
    assert "Traceback" not in logged and "RecursionError" not in logged
    assert state(app_rig) == before


@pytest.mark.parametrize(("body", "code"), [
    ({"duration_hours": "two"}, "bad_request"),
    ({"duration_hours": 100}, "bad_request"),
    ({"hosts": "c"}, "bad_request"),
    ({"hosts": ["Bad Name"]}, "bad_request"),
    ({"hosts": ["zz"]}, "unknown_host"),
    ({"surprise": True}, "bad_request"),
])
def test_bad_open_requests(app_rig: AppRig, body: dict[str, Any], code: str) -> None:
    before = state(app_rig)
    assert_clean_error(app_rig.post("/v1/windows", body), 400, code)
    assert state(app_rig) == before


def test_second_open_is_refused(app_rig: AppRig) -> None:
    assert app_rig.post("/v1/windows", {}).status_code == 202
    before = state(app_rig)
    assert_clean_error(app_rig.post("/v1/windows", {}), 409, "window_active")
    assert state(app_rig) == before


def test_unknown_window(app_rig: AppRig) -> None:
    assert_clean_error(app_rig.client.http.get("/v1/windows/w-nope"), 404, "unknown_window")
    assert_clean_error(app_rig.post("/v1/windows/w-nope/close", {}), 404, "unknown_window")


@pytest.mark.parametrize(("change", "status", "code"), [
    ({"status": "maybe"}, 400, "bad_request"),
    ({"bytes_sent": "lots"}, 400, "bad_request"),
    ({"host": "../../etc"}, 400, "bad_request"),
    ({"host": "h"}, 403, "wrong_host"),  # signed by c
    ({"window_id": "w-nope"}, 404, "unknown_window"),
    # what DynamoDB cannot store was a 500: a number of more than 38 digits, a lone surrogate
    ({"bytes_sent": 10**40}, 400, "bad_request"),
    ({"files": 2**63}, 400, "bad_request"),
    ({"detail": "restored /data/caf\udce9.txt"}, 400, "bad_request"),
    ({"detail": "\ud800"}, 400, "bad_request"),
])
def test_bad_reports(app_rig: AppRig, change: dict[str, Any], status: int, code: str) -> None:
    wid = app_rig.post("/v1/windows", {}).json_body["window_id"]
    app_rig.boot(wid)
    before = state(app_rig)
    body = {"host": "c", "window_id": wid, "status": "succeeded", "bytes_sent": 1,
            "files": 1, "duration_s": 1.0, "detail": "", **change}
    assert_clean_error(app_rig.signed("POST", "/v1/reports", body, "c"), status, code)
    assert state(app_rig) == before


def test_the_largest_count_is_recorded(app_rig: AppRig) -> None:
    wid = app_rig.post("/v1/windows", {}).json_body["window_id"]
    app_rig.boot(wid)
    body = {"host": "c", "window_id": wid, "status": "succeeded", "bytes_sent": 2**63 - 1,
            "files": 2**63 - 1, "duration_s": 1.0, "detail": "caf\u00e9 \U0001f600"}
    assert app_rig.signed("POST", "/v1/reports", body, "c").status_code == 200
    report = app_rig.client.http.get(f"/v1/windows/{wid}").json_body["host_reports"][0]
    assert report["bytes_sent"] == 2**63 - 1 and report["detail"] == "caf\u00e9 \U0001f600"


@pytest.mark.parametrize(("method", "path", "signer"), BODY_ROUTES)
def test_a_lone_surrogate_in_any_body_is_a_400(app_rig: AppRig, method: str, path: str,
                                               signer: str | None) -> None:
    raw = b'{"host": "c", "public_key": "ssh-ed25519 AAAA \\udcff", "detail": "\\udcff"}'
    if signer is None:
        answer = app_rig.client.http.request(method, path, body=raw,
                                             headers={"Content-Type": "application/json"})
    else:
        answer = app_rig.signed(method, path, None, signer, raw=raw)
    assert_clean_error(answer, 400, "bad_request")
    assert "not Unicode text" in json.loads(answer.body)["message"]


def test_report_from_a_host_not_expected(app_rig: AppRig) -> None:
    wid = app_rig.post("/v1/windows", {"hosts": ["c"]}).json_body["window_id"]
    app_rig.boot(wid)
    assert_clean_error(app_rig.report(wid, "h"), 409, "host_not_expected")


@pytest.mark.parametrize(("name", "body", "code"), [
    ("c", {"public_key": "ssh-rsa AAAAB3NzaC1yc2E="}, "bad_request"),
    ("c", {"public_key": 5}, "bad_request"),
    ("c", {}, "bad_request"),
    ("Root", {"public_key": "ssh-ed25519 AAAA"}, "bad_request"),
    ("root", {"public_key": "ssh-ed25519 AAAA"}, "bad_request"),
    ("c", {"public_key": "ssh-ed25519 AAAA", "volume_id": "disk-1"}, "bad_request"),
    ("c", {"public_key": "ssh-ed25519 AAAA", "size_gib": 0}, "bad_request"),
    ("c", {"public_key": "ssh-ed25519 AAAA", "start_grace_minutes": 0}, "bad_request"),
    ("c", {"public_key": "ssh-ed25519 AAAA", "start_grace_minutes": 1441}, "bad_request"),
    ("c", {"public_key": "ssh-ed25519 AAAA", "start_grace_minutes": "30"}, "bad_request"),
    ("c", {"public_key": "ssh-ed25519 AAAA", "start_grace_minutes": True}, "bad_request"),
])
def test_bad_enrolments(app_rig: AppRig, name: str, body: dict[str, Any], code: str) -> None:
    hosts = app_rig.client.http.get("/v1/hosts").json_body
    answer = app_rig.client.http.put(f"/v1/hosts/{name}", body=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    assert_clean_error(answer, 400, code)
    assert app_rig.client.http.get("/v1/hosts").json_body == hosts


def _two_key_lines() -> list[str]:
    """Public key texts that hold one good key and something after it."""
    first, second = (ca_public_key_line(SigningKey.generate(), "h@x") for _ in range(2))
    return [f"{first}\n", f"{first}\r\n", f"{first}\n{second}", f"{first}\r{second}",
            f"{first}\x00{second}", f"{first} {second}", f"{first} {second.split()[1]}"]


@pytest.mark.parametrize("index", range(len(_two_key_lines())))
def test_enrolment_refuses_anything_but_one_key_line(app_rig: AppRig, index: int) -> None:
    hosts = app_rig.client.http.get("/v1/hosts").json_body
    for name in ("c", "newhost"):  # a re-enrolment (key change) and a new host
        answer = app_rig.client.http.put(
            f"/v1/hosts/{name}", body=json.dumps({"public_key": _two_key_lines()[index]}).encode(),
            headers={"Content-Type": "application/json"})
        assert_clean_error(answer, 400, "bad_request")
    assert app_rig.client.http.get("/v1/hosts").json_body == hosts


@pytest.mark.parametrize("index", range(len(_two_key_lines())))
def test_a_session_key_must_be_one_key_line(app_rig: AppRig, index: int) -> None:
    app_rig.boot(app_rig.post("/v1/windows", {}).json_body["window_id"])
    answer = app_rig.session("c", ssh_public_key=_two_key_lines()[index])
    assert_clean_error(answer, 400, "bad_request")
    assert app_rig.session("c").status_code == 201


def test_a_key_whose_comment_is_not_ascii_is_enrolled(app_rig: AppRig) -> None:
    """ssh-keygen's default comment is user@host, which may well be josé@portátil (a 500)."""
    key = SigningKey.generate()
    line = ca_public_key_line(key, "jos\u00e9@port\u00e1til")
    answer = app_rig.enrol("newhost", key, public_key=line)
    assert answer.status_code == 201, answer.body
    answer = app_rig.enrol("newhost2", key,
                           public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA\u00e9")
    assert_clean_error(answer, 400, "bad_request")


def test_a_key_of_another_type_is_refused_with_a_clear_message(app_rig: AppRig) -> None:
    rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7"
    answer = app_rig.client.http.put("/v1/hosts/c", body=json.dumps({"public_key": rsa}).encode(),
                                     headers={"Content-Type": "application/json"})
    assert_clean_error(answer, 400, "bad_request")
    assert "only ssh-ed25519 keys are accepted" in json.loads(answer.body)["message"]


def _enrol(rig: AppRig, name: str, **body: Any) -> Any:
    body = {"public_key": ca_public_key_line(SigningKey.generate()), **body}
    return rig.client.http.put(f"/v1/hosts/{name}", body=json.dumps(body).encode(),
                               headers={"Content-Type": "application/json"})


# Read from the data file itself, plus names that must stay in it whatever it is edited to.
RESERVED = sorted(parse_name_list(RESERVED_NAMES_FILE.read_text()) | {
    "root", "nobody", "sshd", "ec2-user", "admin", "adm", "halt", "shutdown", "operator", "ftp",
    "dbus", "rpc", "rpcuser", "ec2-instance-connect", "chrony", "systemd-network", "tss",
    "libstoragemgmt", "wheel", "users", "offsite"})


def test_every_reserved_name_is_refused_at_enrolment(app_rig: AppRig) -> None:
    hosts = app_rig.client.http.get("/v1/hosts").json_body
    assert len(RESERVED) > 60  # the file was read, not an empty list
    for name in RESERVED:
        answer = _enrol(app_rig, name)
        assert_clean_error(answer, 400, "bad_request")
        assert "reserved" in json.loads(answer.body)["message"], name
    assert app_rig.client.http.get("/v1/hosts").json_body == hosts


@pytest.mark.parametrize("volume_id", [
    "vol-zz", "vol-0123456789", "vol-0123456789abcdef", "vol-0123456789abcdef01",
    "vol-0123456789ABCDEF0", "vol-1234567", "vol-", "vol-0123456789abcdef0 ",
    "snap-0123456789abcdef0", 17])
def test_a_volume_id_ec2_never_writes_is_refused_at_enrolment(app_rig: AppRig,
                                                               volume_id: Any) -> None:
    hosts = app_rig.client.http.get("/v1/hosts").json_body
    assert_clean_error(_enrol(app_rig, "newhost", volume_id=volume_id), 400, "bad_request")
    assert app_rig.client.http.get("/v1/hosts").json_body == hosts


@pytest.mark.parametrize("volume_id", ["vol-0123abcd", "vol-0123456789abcdef0"])
def test_both_lengths_of_volume_id_are_sent_and_an_unknown_one_is_refused(
        app_rig: AppRig, volume_id: str) -> None:
    """Either length passes the check and reaches EC2, which knows no such volume: a 400
    that says so, and no host."""
    asked: list[str] = []
    compute = app_module.host_service()._compute
    compute._ec2.meta.events.register(  # type: ignore[attr-defined]
        "before-parameter-build.ec2.CreateSnapshot",
        lambda params, **_: asked.append(params["VolumeId"]))
    hosts = app_rig.client.http.get("/v1/hosts").json_body
    answer = _enrol(app_rig, "newhost", volume_id=volume_id)
    assert_clean_error(answer, 400, "bad_request")
    assert f"no volume {volume_id}" in json.loads(answer.body)["message"]
    assert asked == [volume_id]
    assert app_rig.client.http.get("/v1/hosts").json_body == hosts


def test_re_enrolment_cannot_adopt_a_volume(app_rig: AppRig) -> None:
    hosts = app_rig.client.http.get("/v1/hosts").json_body
    volume = app_rig.ec2.create_volume(Size=5, AvailabilityZone="us-east-1a")["VolumeId"]
    answer = _enrol(app_rig, "c", volume_id=volume)
    assert_clean_error(answer, 400, "bad_request")
    assert "adopted only at the first enrolment" in json.loads(answer.body)["message"]
    assert app_rig.client.http.get("/v1/hosts").json_body == hosts
    assert offsite_snapshots() == []


def test_revoking_an_unknown_host(app_rig: AppRig) -> None:
    assert_clean_error(app_rig.client.http.delete("/v1/hosts/zz"), 404, "unknown_host")


def test_wrong_content_type_and_method(app_rig: AppRig) -> None:
    answer = app_rig.client.http.post("/v1/windows", body=b"{}",
                                      headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415 and set(json.loads(answer.body)) == {"error", "message"}
    answer = app_rig.client.http.delete("/v1/windows")
    assert answer.status_code == 405 and set(json.loads(answer.body)) == {"error", "message"}


def _signed_without(rig: AppRig, left_out: str, path: str, body: bytes) -> Any:
    """A host's request whose signature verifies but covers one component fewer than
    offsite-host signs."""
    covered = tuple(c for c in httpsig.COVERED_COMPONENTS if c != left_out)
    values = {"@method": "POST", "@authority": "api.offsite.test", "@path": path, "@query": "?",
              "content-type": "application/json",
              "content-digest": httpsig.content_digest(body)}
    params = httpsig.signature_params(covered, created=int(time.time()),
                                      nonce=secrets.token_urlsafe(16), keyid="c")
    base = httpsig.signature_base({name: values[name] for name in covered}, params)
    signature = base64.b64encode(rig.keys["c"].sign(base).signature).decode()
    headers = {"Host": "api.offsite.test", "Content-Type": "application/json",
               "Content-Digest": values["content-digest"],
               "Signature-Input": f"offsite={params}", "Signature": f"offsite=:{signature}:"}
    return rig.client.http.request("POST", path, body=body, headers=headers)


@pytest.mark.parametrize("left_out", httpsig.COVERED_COMPONENTS)
def test_a_signature_that_covers_less_than_the_readme_says_is_401(app_rig: AppRig,
                                                                  left_out: str) -> None:
    wid = app_rig.post("/v1/windows", {}).json_body["window_id"]
    app_rig.boot(wid)
    before = state(app_rig)
    body = json.dumps({"host": "c", "window_id": wid, "status": "succeeded"}).encode()
    assert_clean_error(_signed_without(app_rig, left_out, "/v1/reports", body), 401,
                       "unauthorized")
    assert state(app_rig) == before
    assert _signed_without(app_rig, "", "/v1/reports", body).status_code == 200
