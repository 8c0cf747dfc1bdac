"""Host sessions through app.py on moto: the short-lived certificate for the host's own
archive, and every refusal."""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    load_ssh_public_identity,
)
from nacl.signing import SigningKey
from offsite_host.httpsig import sign_request

from chalicelib import composition
from chalicelib.instance.userdata import CONFIG_PATH
from chalicelib.launcher import InlineLauncher, launch_event
from tests.unit.test_instance_userdata import embedded

from .app_rig import API, AppRig, app_rig, clear_caches, open_window

__all__ = ["app_rig"]


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record with all its structured fields, as a log reader would see them."""
    return "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)


def held_launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """From now on a window's launch_shard invocations are held here, as if Lambda had not
    run them yet; `launch` runs one."""
    held: list[tuple[str, str]] = []
    monkeypatch.setattr(composition, "_launcher", lambda settings: InlineLauncher(
        lambda window_id, shard_id: held.append((window_id, shard_id))))
    clear_caches()
    return held


def launch(rig: AppRig, window_id: str, shard_id: str) -> None:
    rig.client.lambda_.invoke("launch_shard", launch_event(window_id, shard_id))


def instance(rig: AppRig, instance_id: str) -> dict[str, Any]:
    return dict(rig.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
        "Instances"][0])


def test_session_grants_a_certificate_for_the_window(app_rig: AppRig,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    wid = open_window(app_rig)
    answer = app_rig.session("c")
    assert answer.status_code == 201, answer.body
    grant = answer.json_body
    assert set(grant) == {"window_id", "address", "port", "user", "certificate", "known_hosts",
                          "remote_path", "not_after", "deadline"}
    assert (grant["window_id"], grant["user"], grant["port"]) == (wid, "c", 22)
    (instance_id,) = app_rig.instances(wid).values()
    assert grant["address"] == instance(app_rig, instance_id)["PublicIpAddress"]
    assert grant["known_hosts"] == f"{grant['address']} {app_rig.material.host_public_line}"
    cert = load_ssh_public_identity(grant["certificate"].encode())
    assert isinstance(cert, SSHCertificate)
    cert.verify_cert_signature()
    assert cert.valid_principals == [b"c"]
    assert cert.critical_options == {b"force-command": b"/usr/bin/rrsync -wo /srv/offsite/c"}
    assert cert.extensions == {}
    deadline = datetime.fromisoformat(grant["deadline"])
    assert cert.valid_before == int(deadline.timestamp())
    assert int(time.time()) - 600 < cert.valid_after < int(time.time())
    assert cert.key_id.decode().startswith(f"host=c window={wid} archive=s01 req=")
    logged = everything_logged(caplog)
    assert "certificate issued" in logged and str(cert.serial) in logged
    assert grant["certificate"].split()[1] not in logged
    assert app_rig.material.ca_seed_b64 not in logged


def test_with_an_account_prefix_the_certificate_names_the_prefixed_account(
        app_rig: AppRig, monkeypatch: pytest.MonkeyPatch) -> None:
    """One account per host and stage prefix (chalicelib/accounts.py): the principal, the
    session's `user` and the boot config's accounts agree; the volume path stays the host's."""
    monkeypatch.setenv("ACCOUNT_PREFIX", "ostack1-")
    clear_caches()
    wid = open_window(app_rig)
    grant = app_rig.session("c").json_body
    assert grant["user"] == "ostack1-c"
    cert = load_ssh_public_identity(grant["certificate"].encode())
    assert isinstance(cert, SSHCertificate)
    assert cert.valid_principals == [b"ostack1-c"]
    assert cert.critical_options == {b"force-command": b"/usr/bin/rrsync -wo /srv/offsite/c"}
    (instance_id,) = app_rig.instances(wid).values()
    user_data = base64.b64decode(app_rig.ec2.describe_instance_attribute(
        InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]).decode()
    assert "account_prefix ostack1-" in embedded(user_data)[CONFIG_PATH].decode().splitlines()


def test_a_host_name_too_long_for_the_account_prefix_is_refused_and_left_out(
        app_rig: AppRig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCOUNT_PREFIX", "ostack1-")
    clear_caches()
    name = "h" * 30  # a valid host name; with the prefix, 38 characters: no Unix account
    app_rig.keys[name] = SigningKey.generate()
    refused = app_rig.enrol(name, app_rig.keys[name])
    assert refused.status_code == 400, refused.json_body
    assert "too long for the account prefix" in refused.json_body["message"]
    # One enrolled before the prefix was set is left out of the window, not fatal to it.
    monkeypatch.setenv("ACCOUNT_PREFIX", "")
    clear_caches()
    assert app_rig.enrol(name, app_rig.keys[name]).status_code == 201
    monkeypatch.setenv("ACCOUNT_PREFIX", "ostack1-")
    clear_caches()
    answer = app_rig.post("/v1/windows", {})
    assert answer.status_code == 202, answer.json_body
    assert name not in answer.json_body["expected"] and "c" in answer.json_body["expected"]
    assert all(name not in shard["hosts"] for shard in answer.json_body["shards"])


def test_each_session_gets_its_own_serial(app_rig: AppRig) -> None:
    open_window(app_rig)
    serials = {load_ssh_public_identity(
        app_rig.session("c").json_body["certificate"].encode()).serial for _ in range(3)}
    assert len(serials) == 3


def test_while_opening_the_host_is_told_to_retry(app_rig: AppRig,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    held = held_launches(monkeypatch)
    answer = app_rig.post("/v1/windows", {})
    assert answer.status_code == 202 and answer.json_body["state"] == "OPENING"
    wid = answer.json_body["window_id"]
    assert held == [(wid, "s01")]  # its archive is not launched yet
    answer = app_rig.session("c")
    assert answer.status_code == 503
    assert answer.json_body["error"] == "window_opening"
    assert int(answer.headers["Retry-After"]) > 0
    launch(app_rig, wid, "s01")
    assert app_rig.boot(wid)["state"] == "OPEN"
    assert app_rig.session("c").status_code == 201


def test_each_host_is_sent_to_its_own_archive(app_rig: AppRig,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTS_PER_ARCHIVE", "2")
    clear_caches()
    wid = open_window(app_rig)
    shards = {s["shard_id"]: s for s in app_rig.window(wid)["shards"]}
    assert {k: s["hosts"] for k, s in shards.items()} == {"s01": ["c", "h"], "s02": ["l", "o"]}
    addresses = {shard_id: instance(app_rig, s["instance_id"])["PublicIpAddress"]
                 for shard_id, s in shards.items()}
    assert addresses["s01"] != addresses["s02"]
    for host, shard_id in (("c", "s01"), ("h", "s01"), ("l", "s02"), ("o", "s02")):
        grant = app_rig.session(host).json_body
        assert grant["address"] == addresses[shard_id] == shards[shard_id]["address"], host
        assert grant["known_hosts"] == \
            f"{addresses[shard_id]} {app_rig.material.host_public_line}"
        cert = load_ssh_public_identity(grant["certificate"].encode())
        assert isinstance(cert, SSHCertificate)
        assert f"window={wid} archive={shard_id} " in cert.key_id.decode()


def test_a_host_waits_for_its_own_archive_while_another_is_open(
        app_rig: AppRig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTS_PER_ARCHIVE", "2")
    held = held_launches(monkeypatch)
    wid = app_rig.post("/v1/windows", {}).json_body["window_id"]
    assert held == [(wid, "s01"), (wid, "s02")]
    launch(app_rig, wid, "s01")
    states = {s["shard_id"]: s["state"] for s in app_rig.boot(wid)["shards"]}
    assert states == {"s01": "OPEN", "s02": "OPENING"}
    assert app_rig.session("c").status_code == 201  # s01
    waiting = app_rig.session("l")  # s02
    assert waiting.status_code == 503, waiting.json_body
    assert waiting.json_body["error"] == "window_opening"
    assert int(waiting.headers["Retry-After"]) > 0
    current = app_rig.signed("GET", "/v1/windows/current", None, "l").json_body
    assert (current["state"], current["window_state"]) == ("OPENING", "OPENING")
    launch(app_rig, wid, "s02")
    app_rig.boot(wid)
    grant = app_rig.session("l").json_body
    (s02,) = [s for s in app_rig.window(wid)["shards"] if s["shard_id"] == "s02"]
    assert grant["address"] == instance(app_rig, s02["instance_id"])["PublicIpAddress"]


def test_no_open_window_says_when_the_next_one_is(app_rig: AppRig) -> None:
    answer = app_rig.session("c")
    assert answer.status_code == 409
    assert answer.json_body["error"] == "no_open_window"
    assert datetime.fromisoformat(answer.json_body["next_window"]) > datetime.now(timezone.utc)


def test_current_window(app_rig: AppRig) -> None:
    assert app_rig.signed("GET", "/v1/windows/current", None, "c").json_body["state"] == "NONE"
    wid = open_window(app_rig, hosts=["c"])
    mine = app_rig.signed("GET", "/v1/windows/current", None, "c").json_body
    theirs = app_rig.signed("GET", "/v1/windows/current", None, "h").json_body
    assert (mine["window_id"], mine["state"], mine["expected"]) == (wid, "OPEN", True)
    assert theirs["expected"] is False


def refused(answer: Any, status: int, code: str) -> None:
    assert answer.status_code == status, answer.body
    assert answer.json_body == {"error": code, "message": answer.json_body["message"]}
    assert "certificate" not in answer.json_body


def signed_session(rig: AppRig, host: str = "c", key: SigningKey | None = None,
                   created: int | None = None, path: str = "/v1/sessions") -> tuple[bytes,
                                                                                   dict[str, str]]:
    body = json.dumps({"host": host, "ssh_public_key": _ephemeral(),
                       "purpose": "backup"}).encode()
    headers = sign_request("POST", API + path, body, key or rig.keys[host], keyid=host,
                           created=created or int(time.time()),
                           nonce=secrets.token_urlsafe(16))
    return body, {"Host": "api.offsite.test", **headers}


def _ephemeral() -> str:
    from chalicelib.sshcert import ca_public_key_line

    return ca_public_key_line(SigningKey.generate())


def send(rig: AppRig, body: bytes, headers: dict[str, str], path: str = "/v1/sessions") -> Any:
    return rig.client.http.post(path, body=body, headers=headers)


def test_replay_is_refused(app_rig: AppRig, caplog: pytest.LogCaptureFixture) -> None:
    open_window(app_rig)
    body, headers = signed_session(app_rig)
    assert send(app_rig, body, headers).status_code == 201
    caplog.clear()
    refused(send(app_rig, body, headers), 401, "unauthorized")
    logged = everything_logged(caplog)
    assert "certificate issued" not in logged
    assert headers["Signature"].split(":")[1] not in logged


@pytest.mark.parametrize("tamper", ["body", "path", "stale", "future", "no_signature",
                                    "garbled_input", "garbled_signature", "other_key"])
def test_tampered_requests_are_refused(app_rig: AppRig, tamper: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    open_window(app_rig)
    created = {"stale": int(time.time()) - 3600, "future": int(time.time()) + 3600}.get(tamper)
    key = SigningKey.generate() if tamper == "other_key" else None
    signed_path = "/v1/windows/current" if tamper == "path" else "/v1/sessions"
    body, headers = signed_session(app_rig, created=created, key=key, path=signed_path)
    if tamper == "body":
        body = body.replace(b'"backup"', b'"restore"')
    elif tamper == "no_signature":
        headers.pop("Signature")
    elif tamper == "garbled_input":
        headers["Signature-Input"] = "offsite=(@method"
    elif tamper == "garbled_signature":
        headers["Signature"] = "offsite=:not base64!:"
    refused(send(app_rig, body, headers), 401, "unauthorized")
    assert "certificate issued" not in everything_logged(caplog)


def test_unknown_and_revoked_hosts_are_forbidden(app_rig: AppRig) -> None:
    open_window(app_rig)
    stranger = SigningKey.generate()
    body, headers = signed_session(app_rig, host="c", key=stranger)
    headers = {**headers}
    refused(send(app_rig, body, headers), 401, "unauthorized")  # c's name, another key
    unknown = app_rig.signed("POST", "/v1/sessions", {"host": "zz", "ssh_public_key": _ephemeral(),
                                                      "purpose": "backup"}, "zz", key=stranger)
    refused(unknown, 403, "forbidden")
    assert app_rig.client.http.delete("/v1/hosts/h").status_code == 200
    refused(app_rig.session("h"), 403, "forbidden")
    assert app_rig.session("c").status_code == 201  # the others go on


def test_a_host_cannot_ask_for_another_hosts_session(app_rig: AppRig) -> None:
    open_window(app_rig)
    answer = app_rig.signed("POST", "/v1/sessions", {"host": "h", "ssh_public_key": _ephemeral(),
                                                     "purpose": "backup"}, "c")
    refused(answer, 403, "wrong_host")


def test_a_host_not_expected_gets_no_session(app_rig: AppRig) -> None:
    open_window(app_rig, hosts=["c"])
    refused(app_rig.session("h"), 409, "not_expected")


@pytest.mark.parametrize("change", [{"purpose": "shell"}, {"ssh_public_key": "ssh-rsa AAAA"},
                                    {"ssh_public_key": 7}, {"extra": 1}])
def test_malformed_session_requests(app_rig: AppRig, change: dict[str, Any]) -> None:
    open_window(app_rig)
    refused(app_rig.session("c", **change), 400, "bad_request")


def test_reenrolment_replaces_the_key(app_rig: AppRig) -> None:
    open_window(app_rig)
    new_key = SigningKey.generate()
    answer = app_rig.enrol("c", new_key)
    assert answer.status_code == 200 and answer.json_body["size_gib"] == 20
    assert "volume_id" not in answer.json_body
    refused(app_rig.session("c"), 401, "unauthorized")  # the old key no longer works
    app_rig.keys["c"] = new_key
    assert app_rig.session("c").status_code == 201


def test_host_listing(app_rig: AppRig) -> None:
    hosts = app_rig.client.http.get("/v1/hosts").json_body["hosts"]
    assert [h["name"] for h in hosts] == ["c", "h", "l", "o"]
    assert all(h["enabled"] and h["key_fingerprint"].startswith("SHA256:") for h in hosts)
    assert all(h["size_gib"] == 20 and "volume_id" not in h for h in hosts)


def test_the_private_address_and_a_port(app_rig: AppRig,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """SSH_ADDRESS=private: hosts reach the archives inside the VPC (or a VPN)."""
    monkeypatch.setenv("SSH_ADDRESS", "private")
    monkeypatch.setenv("SSH_PORT", "2222")
    clear_caches()
    wid = open_window(app_rig)
    (instance_id,) = app_rig.instances(wid).values()
    private = instance(app_rig, instance_id)["PrivateIpAddress"]
    assert private.startswith("10.7.") and private != instance(app_rig, instance_id).get(
        "PublicIpAddress")
    grant = app_rig.session("c").json_body
    assert (grant["address"], grant["port"]) == (private, 2222)
    assert grant["known_hosts"] == f"[{private}]:2222 {app_rig.material.host_public_line}"


def test_a_hosts_own_start_grace_is_kept_and_rides_with_its_windows(app_rig: AppRig) -> None:
    key = app_rig.keys["c"]
    answer = app_rig.enrol("c", key, start_grace_minutes=90)
    assert answer.status_code == 200 and answer.json_body["start_grace_minutes"] == 90
    again = app_rig.enrol("c", key)  # re-enrolled without it: kept
    assert again.json_body["start_grace_minutes"] == 90
    listed = {h["name"]: h for h in app_rig.client.http.get("/v1/hosts").json_body["hosts"]}
    assert listed["c"]["start_grace_minutes"] == 90 and listed["o"]["start_grace_minutes"] is None
    wid = open_window(app_rig)
    assert composition.window_service().get_window(wid).start_grace == {"c": 90}
