"""Restores through app.py on moto: recovery points, restore windows, read-only sessions."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.serialization import SSHCertificate, load_ssh_public_identity

import app as app_module
from chalicelib.windows import new_window_id

from .app_rig import EVENTS, HOSTS, AppRig, app_rig, clear_caches, offsite_snapshots

__all__ = ["app_rig"]


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def backup_window(rig: AppRig, succeeded: tuple[str, ...] = HOSTS,
                  ebs_fails: tuple[str, ...] = ()) -> str:
    """A whole window; the snapshots of `ebs_fails` end in EBS state `error`."""
    answer = rig.post("/v1/windows", {})
    assert answer.status_code == 201, answer.json_body
    wid = str(answer.json_body["window_id"])
    rig.state_event("running")
    for host in succeeded:
        assert rig.report(wid, host).status_code == 200
    if set(succeeded) != set(HOSTS):
        assert rig.post(f"/v1/windows/{wid}/close", {}).status_code == 200
    rig.state_event("stopped")
    rig.settle_snapshots(window_id=wid, ebs_fails=ebs_fails)
    assert window(rig, wid)["state"] == "CLOSED"
    time.sleep(1.1)  # window ids carry the second they opened
    return wid


def window(rig: AppRig, window_id: str) -> dict[str, Any]:
    return dict(rig.client.http.get(f"/v1/windows/{window_id}").json_body)


def restore(rig: AppRig, host: str = "c", **body: Any) -> Any:
    return rig.signed("POST", f"/v1/hosts/{host}/restores", body, host)


def restore_volumes() -> list[dict[str, Any]]:
    return list(boto3.client("ec2").describe_volumes(Filters=[
        {"Name": "tag-key", "Values": ["offsite:restore-window"]}])["Volumes"])


def instance_tags(rig: AppRig) -> dict[str, str]:
    instance = rig.ec2.describe_instances(InstanceIds=[rig.instance_id])[
        "Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def test_a_host_lists_its_recovery_points_newest_first(app_rig: AppRig) -> None:
    # Yesterday's window (its id carries its day), then today's: one point a day is kept.
    service = app_module.window_service()
    service._new_id = lambda now: new_window_id(now - timedelta(days=1))  # type: ignore[method-assign]
    first = backup_window(app_rig)
    service._new_id = new_window_id  # type: ignore[method-assign]
    second = backup_window(app_rig, succeeded=("h", "o", "l"))
    answer = app_rig.signed("GET", "/v1/hosts/c/snapshots", None, "c")
    assert answer.status_code == 200, answer.json_body
    body = answer.json_body
    assert body["host"] == "c"
    listed = body["snapshots"]
    assert [(s["window_id"], s["complete"]) for s in listed] == [(second, False), (first, True)]
    assert set(listed[0]) == {"snapshot_id", "window_id", "day", "started_at", "complete",
                              "size_gib"}
    assert listed[0]["day"] == today() and listed[0]["size_gib"] == 20
    assert listed[0]["snapshot_id"].startswith("snap-")
    admin = app_rig.client.http.get("/v1/snapshots?host=c")
    assert admin.status_code == 200 and admin.json_body == body


def test_listing_is_the_hosts_own_and_needs_a_host(app_rig: AppRig) -> None:
    other = app_rig.signed("GET", "/v1/hosts/h/snapshots", None, "c")
    assert other.status_code == 403 and other.json_body["error"] == "wrong_host"
    assert app_rig.client.http.get("/v1/snapshots").status_code == 400
    unknown = app_rig.client.http.get("/v1/snapshots?host=zz")
    assert unknown.status_code == 404 and unknown.json_body["error"] == "unknown_host"


def test_a_restore_of_a_day_serves_a_read_only_session_then_closes(app_rig: AppRig) -> None:
    backup_window(app_rig)
    before = {s["SnapshotId"] for s in offsite_snapshots()}
    answer = restore(app_rig, day=today())
    assert answer.status_code == 202, answer.json_body
    opened = answer.json_body
    assert set(opened) == {"window_id", "snapshot_id", "day", "complete", "deadline"}
    assert opened["snapshot_id"] in before and opened["complete"] is True
    rid = opened["window_id"]
    view = window(app_rig, rid)
    assert (view["purpose"], view["state"], view["expected"]) == ("restore", "OPENING", ["c"])
    [volume] = restore_volumes()
    assert volume["SnapshotId"] == opened["snapshot_id"]
    assert volume["Attachments"][0]["InstanceId"] == app_rig.instance_id
    assert instance_tags(app_rig)["offsite-restore"] == f"c {volume['VolumeId']}"
    opening = app_rig.session("c", purpose="restore")
    assert opening.status_code == 503 and "Retry-After" in opening.headers
    app_rig.state_event("running")

    grant = app_rig.session("c", purpose="restore")
    assert grant.status_code == 201, grant.json_body
    body = grant.json_body
    assert (body["window_id"], body["user"], body["remote_path"]) == (rid, "c", "archive/")
    cert = load_ssh_public_identity(body["certificate"].encode())
    assert isinstance(cert, SSHCertificate)
    assert cert.critical_options == {
        b"force-command": b"/usr/bin/rrsync -ro /srv/offsite-restore/c"}
    deadline = datetime.fromisoformat(opened["deadline"])
    assert cert.valid_before == int(deadline.timestamp()) == \
        int(datetime.fromisoformat(body["deadline"]).timestamp())
    assert timedelta(hours=1.9) < deadline - datetime.now(timezone.utc) <= timedelta(hours=2)

    assert app_rig.report(rid, "c").status_code == 200
    assert window(app_rig, rid)["state"] == "CLOSING"
    app_rig.state_event("stopped")
    view = window(app_rig, rid)
    assert view["state"] == "CLOSED", view
    assert view["snapshots"] == {}
    assert {s["SnapshotId"] for s in offsite_snapshots()} == before  # none taken
    assert restore_volumes() == []
    assert "offsite-restore" not in instance_tags(app_rig)
    assert app_rig.stops == ["stop", "stop"]


def test_sessions_of_the_wrong_purpose_are_refused(app_rig: AppRig) -> None:
    backup_window(app_rig)
    assert restore(app_rig, day=today()).status_code == 202
    app_rig.state_event("running")
    refused = app_rig.session("c", purpose="backup")
    assert refused.status_code == 409 and refused.json_body["error"] == "wrong_purpose"
    other = app_rig.session("h", purpose="restore")
    assert other.status_code == 409 and other.json_body["error"] == "no_open_window"


def test_a_restore_session_during_a_backup_window_is_refused(app_rig: AppRig) -> None:
    assert app_rig.session("c", purpose="restore").json_body["error"] == "no_open_window"
    app_rig.post("/v1/windows", {})
    app_rig.state_event("running")
    refused = app_rig.session("c", purpose="restore")
    assert refused.status_code == 409 and refused.json_body["error"] == "wrong_purpose"
    assert app_rig.session("c", purpose="backup").status_code == 201


def test_an_incomplete_day_is_refused_unless_asked_for(app_rig: AppRig) -> None:
    backup_window(app_rig, succeeded=("h",))
    refused = restore(app_rig, day=today())
    assert refused.status_code == 409, refused.json_body
    assert refused.json_body["error"] == "incomplete_snapshot"
    assert refused.json_body["days"] == [today()]
    assert restore_volumes() == []
    allowed = restore(app_rig, day=today(), allow_incomplete=True)
    assert allowed.status_code == 202 and allowed.json_body["complete"] is False


def test_the_newest_complete_snapshot_of_the_day_is_chosen(app_rig: AppRig) -> None:
    complete = backup_window(app_rig)
    backup_window(app_rig, succeeded=("h",))
    answer = app_rig.post("/v1/restores", {"host": "c", "day": today()})
    assert answer.status_code == 202, answer.json_body
    chosen = answer.json_body["snapshot_id"]
    by_window = {t["Value"]: s["SnapshotId"] for s in offsite_snapshots() for t in s["Tags"]
                 if t["Key"] == "offsite:window" and
                 {"Key": "offsite:host", "Value": "c"} in s["Tags"]}
    assert chosen == by_window[complete]


def test_a_restore_by_snapshot_id(app_rig: AppRig) -> None:
    backup_window(app_rig)
    snapshot_id = app_rig.client.http.get("/v1/snapshots?host=o").json_body[
        "snapshots"][0]["snapshot_id"]
    answer = app_rig.post("/v1/restores", {"host": "o", "snapshot_id": snapshot_id})
    assert answer.status_code == 202 and answer.json_body["snapshot_id"] == snapshot_id
    theirs = restore(app_rig, "c", snapshot_id=snapshot_id)  # o's snapshot is not c's
    assert theirs.status_code == 404 and theirs.json_body["error"] == "no_recovery_point"
    busy = restore(app_rig, "c", day=today())
    assert busy.status_code == 409 and busy.json_body["error"] == "window_active"


def test_the_host_joins_the_restore_its_admin_opened(app_rig: AppRig) -> None:
    backup_window(app_rig)
    opened = app_rig.post("/v1/restores", {"host": "o", "day": today()})
    assert opened.status_code == 202
    again = restore(app_rig, "o", day=today())  # what `offsite-host restore` asks
    assert again.status_code == 202, again.json_body
    assert again.json_body["window_id"] == opened.json_body["window_id"]
    assert len(restore_volumes()) == 1
    other = app_rig.post("/v1/restores", {"host": "c", "day": today()})
    assert other.status_code == 409 and other.json_body["error"] == "window_active"


def test_unknown_day_or_snapshot_is_404_with_the_days_there_are(app_rig: AppRig) -> None:
    backup_window(app_rig)
    for body in ({"day": "2001-01-01"}, {"snapshot_id": "snap-0123456789abcdef0"}):
        answer = restore(app_rig, **body)
        assert answer.status_code == 404, answer.json_body
        assert answer.json_body["error"] == "no_recovery_point"
        assert answer.json_body["days"] == [today()]


def test_a_restore_while_a_window_is_active_is_409(app_rig: AppRig) -> None:
    backup_window(app_rig)
    app_rig.post("/v1/windows", {})
    answer = restore(app_rig, day=today())
    assert answer.status_code == 409 and answer.json_body["error"] == "window_active"
    assert restore_volumes() == []


@pytest.mark.parametrize("body", [{}, {"day": "2026-13-01"}, {"day": "yesterday"},
                                  {"day": today(), "snapshot_id": "snap-0123456789abcdef0"},
                                  {"snapshot_id": "vol-0123456789abcdef0"},
                                  {"day": today(), "allow_incomplete": "yes"},
                                  {"day": today(), "host": "c"}])
def test_malformed_restore_requests(app_rig: AppRig, body: dict[str, Any]) -> None:
    answer = app_rig.signed("POST", "/v1/hosts/c/restores", body, "c")
    assert answer.status_code == 400 and answer.json_body["error"] == "bad_request"


def test_a_host_cannot_restore_another_hosts_data(app_rig: AppRig) -> None:
    backup_window(app_rig)
    answer = app_rig.signed("POST", "/v1/hosts/h/restores", {"day": today()}, "c")
    assert answer.status_code == 403 and answer.json_body["error"] == "wrong_host"


def test_the_restore_deadline_closes_it(app_rig: AppRig, monkeypatch: pytest.MonkeyPatch) -> None:
    backup_window(app_rig)
    monkeypatch.setenv("RESTORE_HOURS", "0.0002")  # 0.72 s
    clear_caches()
    opened = restore(app_rig, day=today()).json_body
    app_rig.state_event("running")
    time.sleep(max(0.0, (datetime.fromisoformat(opened["deadline"])
                         - datetime.now(timezone.utc)).total_seconds()) + 0.05)
    assert app_rig.session("c", purpose="restore").json_body["error"] == "no_open_window"
    answer = app_rig.client.lambda_.invoke("window_deadline", {"window_id": opened["window_id"]})
    assert "deadline reached" in answer.payload["reason"]
    app_rig.state_event("stopped")
    assert window(app_rig, opened["window_id"])["state"] == "CLOSED"
    assert restore_volumes() == []


def test_the_reconciler_finishes_a_restore_whose_stop_event_was_lost(app_rig: AppRig) -> None:
    backup_window(app_rig)
    rid = restore(app_rig, day=today()).json_body["window_id"]
    app_rig.state_event("running")
    app_rig.report(rid, "c", status="failed")
    app_rig.ec2.stop_instances(InstanceIds=[app_rig.instance_id])  # its event never comes
    scheduled = json.loads((EVENTS / "scheduled-event.json").read_text())
    app_rig.client.lambda_.invoke("reconciler", scheduled)
    assert window(app_rig, rid)["state"] == "CLOSED"
    assert restore_volumes() == []
