"""Restores through app.py on moto: recovery points, and restores on archives of their own (a
volume made from the chosen snapshot, read-only sessions) beside the backup windows."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.serialization import SSHCertificate, load_ssh_public_identity
from nacl.signing import SigningKey

import app as app_module
from chalicelib.instance.userdata import CONFIG_PATH, stable_uids
from chalicelib.windows import new_window_id
from tests.unit.test_instance_userdata import embedded

from .app_rig import (
    EVENTS,
    HOSTS,
    AppRig,
    app_rig,
    clear_caches,
    offsite_snapshots,
    open_window,
)
from .test_app_sessions import held_launches, launch

__all__ = ["app_rig"]


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def backup_window(rig: AppRig, succeeded: tuple[str, ...] = HOSTS,
                  ebs_fails: tuple[str, ...] = ()) -> str:
    """A whole window; the snapshots of `ebs_fails` end in EBS state `error`."""
    wid = open_window(rig)
    for host in succeeded:
        assert rig.report(wid, host).status_code == 200
    if set(succeeded) != set(HOSTS):
        assert rig.post(f"/v1/windows/{wid}/close", {}).status_code == 200
    rig.stopped(wid)
    rig.settle_snapshots(window_id=wid, ebs_fails=ebs_fails)
    assert window(rig, wid)["state"] == "CLOSED"
    time.sleep(1.1)  # window ids carry the second they opened
    return wid


def yesterday_and_today(rig: AppRig) -> tuple[str, str]:
    """Two whole backup windows, yesterday's (its id carries its day) and today's."""
    service = app_module.window_service()
    service._new_id = lambda now: new_window_id(now - timedelta(days=1))  # type: ignore[method-assign]
    first = backup_window(rig)
    service._new_id = new_window_id  # type: ignore[method-assign]
    return first, backup_window(rig)


def window(rig: AppRig, window_id: str) -> dict[str, Any]:
    return dict(rig.client.http.get(f"/v1/windows/{window_id}").json_body)


def restore(rig: AppRig, host: str = "c", **body: Any) -> Any:
    return rig.signed("POST", f"/v1/hosts/{host}/restores", body, host)


def restore_volumes() -> list[dict[str, Any]]:
    """Every volume made for a restore that still exists."""
    return list(boto3.client("ec2").describe_volumes(Filters=[
        {"Name": "tag:offsite:purpose", "Values": ["restore"]}])["Volumes"])


def archive(rig: AppRig, window_id: str) -> dict[str, Any]:
    """The one archive instance of a restore (or of a one-archive window), as EC2 has it."""
    (instance_id,) = rig.instances(window_id).values()
    return dict(rig.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
        "Instances"][0])


def boot_config(rig: AppRig, instance_id: str) -> list[str]:
    user_data = base64.b64decode(rig.ec2.describe_instance_attribute(
        InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]).decode()
    return embedded(user_data)[CONFIG_PATH].decode().splitlines()


def snapshot_of(host: str, window_id: str) -> str:
    return next(s["SnapshotId"] for s in offsite_snapshots()
                if {"Key": "offsite:host", "Value": host} in s["Tags"]
                and {"Key": "offsite:window", "Value": window_id} in s["Tags"])


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


def test_a_restore_of_a_day_runs_its_own_archive_read_only_then_leaves_nothing(
        app_rig: AppRig, monkeypatch: pytest.MonkeyPatch) -> None:
    wid = backup_window(app_rig)
    before = {s["SnapshotId"] for s in offsite_snapshots()}
    held = held_launches(monkeypatch)  # the launch runs when this test says
    answer = restore(app_rig, day=today())
    assert answer.status_code == 202, answer.json_body
    opened = answer.json_body
    assert set(opened) == {"window_id", "snapshot_id", "day", "complete", "deadline"}
    assert opened["snapshot_id"] == snapshot_of("c", wid) and opened["complete"] is True
    rid = opened["window_id"]
    view = window(app_rig, rid)
    assert (view["purpose"], view["state"], view["expected"]) == ("restore", "OPENING", ["c"])
    assert [(s["shard_id"], s["hosts"]) for s in view["shards"]] == [("s01", ["c"])]
    opening = app_rig.session("c", purpose="restore")
    assert opening.status_code == 503 and "Retry-After" in opening.headers
    assert held == [(rid, "s01")]
    launch(app_rig, rid, "s01")

    # Its own archive: one volume, made from the chosen snapshot, and a boot config that
    # mounts it read-only for c and makes no backup volume.
    instance = archive(app_rig, rid)
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert (tags["offsite:window"], tags["offsite:shard"], tags["offsite:purpose"]) == (
        rid, "s01", "restore")
    [volume] = restore_volumes()
    assert volume["SnapshotId"] == opened["snapshot_id"]
    assert volume["Attachments"][0]["InstanceId"] == instance["InstanceId"]
    assert volume["Attachments"][0]["Device"] == "/dev/sdf"
    config = boot_config(app_rig, instance["InstanceId"])
    assert [line for line in config if line.split()[0] in ("host", "restore")] == [
        f"restore c /dev/sdf {stable_uids(['c'])['c']}"]
    assert app_rig.boot(rid)["state"] == "OPEN"

    grant = app_rig.session("c", purpose="restore")
    assert grant.status_code == 201, grant.json_body
    body = grant.json_body
    assert (body["window_id"], body["user"], body["remote_path"]) == (rid, "c", "archive/")
    assert body["address"] == instance["PublicIpAddress"]
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
    view = app_rig.stopped(rid)
    assert view["state"] == "CLOSED", view
    assert view["snapshots"] == {}
    assert {s["SnapshotId"] for s in offsite_snapshots()} == before  # none taken
    assert restore_volumes() == []
    assert archive(app_rig, rid)["State"]["Name"] == "terminated"


def test_a_restore_during_a_backup_window_runs_beside_it(app_rig: AppRig) -> None:
    first = backup_window(app_rig)
    backup = open_window(app_rig)
    (backup_instance,) = app_rig.instances(backup).values()
    answer = restore(app_rig, day=today())
    assert answer.status_code == 202, answer.json_body
    rid = answer.json_body["window_id"]
    assert answer.json_body["snapshot_id"] == snapshot_of("c", first)
    assert app_rig.boot(rid)["state"] == "OPEN"
    instance = archive(app_rig, rid)
    assert instance["InstanceId"] != backup_instance
    [volume] = restore_volumes()
    assert volume["SnapshotId"] == snapshot_of("c", first)
    assert [line for line in boot_config(app_rig, instance["InstanceId"])
            if line.split()[0] in ("host", "restore")] == [
        f"restore c /dev/sdf {stable_uids(['c'])['c']}"]

    # The backup window is as it was: open, its archive running with its four volumes.
    view = window(app_rig, backup)
    assert view["state"] == "OPEN" and view["expected"] == sorted(HOSTS)
    assert [s["instance_id"] for s in view["shards"]] == [backup_instance]
    backup_volumes = app_rig.ec2.describe_volumes(Filters=[
        {"Name": "tag:offsite:window", "Values": [backup]}])["Volumes"]
    assert sorted(v["Attachments"][0]["InstanceId"] for v in backup_volumes) == \
        [backup_instance] * 4

    # c has both sessions at once, each on its own archive.
    backing_up = app_rig.session("c").json_body
    restoring = app_rig.session("c", purpose="restore").json_body
    assert (backing_up["window_id"], restoring["window_id"]) == (backup, rid)
    assert backing_up["address"] == view["shards"][0]["address"]
    assert restoring["address"] == instance["PublicIpAddress"] != backing_up["address"]

    assert app_rig.report(rid, "c").status_code == 200
    assert app_rig.stopped(rid)["state"] == "CLOSED"
    assert window(app_rig, backup)["state"] == "OPEN"  # the restore's end is not the backup's
    for host in HOSTS:
        assert app_rig.report(backup, host).status_code == 200
    app_rig.stopped(backup)
    app_rig.settle_snapshots(window_id=backup)
    assert window(app_rig, backup)["state"] == "CLOSED"
    assert len([s for s in offsite_snapshots()
                if {"Key": "offsite:window", "Value": backup} in s["Tags"]]) == 4
    assert not [s for s in offsite_snapshots()
                if {"Key": "offsite:window", "Value": rid} in s["Tags"]]


def test_a_backup_window_opens_while_a_restore_is_active(app_rig: AppRig) -> None:
    backup_window(app_rig)
    rid = restore(app_rig, day=today()).json_body["window_id"]
    assert app_rig.boot(rid)["state"] == "OPEN"
    backup = open_window(app_rig)
    assert "c" in window(app_rig, backup)["expected"]
    assert window(app_rig, rid)["state"] == "OPEN"
    assert app_rig.session("c").json_body["window_id"] == backup
    assert app_rig.session("c", purpose="restore").json_body["window_id"] == rid
    history = app_rig.client.http.get("/v1/windows").json_body["windows"]
    assert {(w["window_id"], w["purpose"]) for w in history if w["state"] == "OPEN"} == {
        (backup, "backup"), (rid, "restore")}


def test_retention_spares_the_point_an_active_restore_serves(
        app_rig: AppRig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_DAYS", "1")
    clear_caches()
    _, second = yesterday_and_today(app_rig)
    served = snapshot_of("c", second)
    answer = app_rig.post("/v1/restores", {"host": "c", "snapshot_id": served})
    assert answer.status_code == 202, answer.json_body
    time.sleep(1.1)
    service = app_module.window_service()
    service._new_id = lambda now: new_window_id(now + timedelta(days=1))  # type: ignore[method-assign]
    third = backup_window(app_rig)  # tomorrow's: keeps one day, but c's served point stays
    kept = {s["SnapshotId"] for s in offsite_snapshots()}
    assert served in kept and snapshot_of("c", third) in kept
    assert snapshot_of("h", third) in kept
    assert not any({"Key": "offsite:window", "Value": second} in s["Tags"]
                   and {"Key": "offsite:host", "Value": "h"} in s["Tags"]
                   for s in offsite_snapshots())  # h's point of that day went


def test_an_adopted_volume_is_the_hosts_first_recovery_point(app_rig: AppRig) -> None:
    """`volume_id` at the first enrolment: the volume's data is snapshotted once; that
    snapshot is listed, restorable, and the host's first window's volume is made from it."""
    ec2 = app_rig.ec2
    volume = ec2.create_volume(Size=7, AvailabilityZone="us-east-1a")["VolumeId"]
    app_rig.keys["moved"] = SigningKey.generate()
    answer = app_rig.enrol("moved", app_rig.keys["moved"], volume_id=volume)
    assert answer.status_code == 201, answer.json_body
    assert "volume_id" not in answer.json_body
    [snapshot] = offsite_snapshots()
    tags = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
    assert snapshot["VolumeId"] == volume
    assert (tags["offsite:host"], tags["offsite:reported"]) == ("moved", "succeeded")
    assert tags["offsite:window"].endswith("-enrol")
    listed = app_rig.signed("GET", "/v1/hosts/moved/snapshots", None, "moved").json_body
    assert [(p["snapshot_id"], p["complete"], p["size_gib"], p["day"])
            for p in listed["snapshots"]] == [(snapshot["SnapshotId"], True, 7, today())]
    assert ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available"

    wid = app_rig.post("/v1/windows", {"hosts": ["moved"]}).json_body["window_id"]
    assert app_rig.boot(wid)["state"] == "OPEN"
    [made] = ec2.describe_volumes(Filters=[
        {"Name": "tag:offsite:window", "Values": [wid]}])["Volumes"]
    assert (made["SnapshotId"], made["Size"]) == (snapshot["SnapshotId"], 20)
    opened = restore(app_rig, "moved", day=today())
    assert opened.status_code == 202 and opened.json_body["snapshot_id"] == \
        snapshot["SnapshotId"]


def test_the_host_joins_the_restore_its_admin_opened(app_rig: AppRig) -> None:
    backup_window(app_rig)
    opened = app_rig.post("/v1/restores", {"host": "o", "day": today()})
    assert opened.status_code == 202
    again = restore(app_rig, "o", day=today())  # what `offsite-host restore` asks
    assert again.status_code == 202, again.json_body
    assert again.json_body["window_id"] == opened.json_body["window_id"]
    assert len(restore_volumes()) == 1
    assert len(app_rig.instances(opened.json_body["window_id"])) == 1
    other = app_rig.post("/v1/restores", {"host": "c", "day": today()})  # another host's
    assert other.status_code == 202, other.json_body
    assert other.json_body["window_id"] != opened.json_body["window_id"]
    assert len(restore_volumes()) == 2


def test_another_point_for_a_host_with_a_restore_active_is_409(app_rig: AppRig) -> None:
    first, second = yesterday_and_today(app_rig)
    opened = restore(app_rig, snapshot_id=snapshot_of("c", second))
    assert opened.status_code == 202, opened.json_body
    busy = restore(app_rig, snapshot_id=snapshot_of("c", first))
    assert busy.status_code == 409 and busy.json_body["error"] == "window_active"
    assert opened.json_body["window_id"] in busy.json_body["message"]
    assert [v["SnapshotId"] for v in restore_volumes()] == [snapshot_of("c", second)]
    # Once it ends, the other point may be restored.
    rid = opened.json_body["window_id"]
    app_rig.boot(rid)
    app_rig.report(rid, "c")
    app_rig.stopped(rid)
    assert window(app_rig, rid)["state"] == "CLOSED"
    assert restore(app_rig, snapshot_id=snapshot_of("c", first)).status_code == 202


def test_sessions_of_the_wrong_purpose_find_no_window(app_rig: AppRig) -> None:
    backup_window(app_rig)
    rid = restore(app_rig, day=today()).json_body["window_id"]
    app_rig.boot(rid)
    backing_up = app_rig.session("c", purpose="backup")  # no backup window is open
    assert backing_up.status_code == 409 and backing_up.json_body["error"] == "no_open_window"
    other = app_rig.session("h", purpose="restore")  # no restore of h's
    assert other.status_code == 409 and other.json_body["error"] == "no_open_window"
    assert "no restore is open for h" in other.json_body["message"]


def test_a_restore_session_during_a_backup_window_needs_a_restore(app_rig: AppRig) -> None:
    assert app_rig.session("c", purpose="restore").json_body["error"] == "no_open_window"
    open_window(app_rig)
    refused = app_rig.session("c", purpose="restore")
    assert refused.status_code == 409 and refused.json_body["error"] == "no_open_window"
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
    assert answer.json_body["snapshot_id"] == snapshot_of("c", complete)


def test_a_restore_by_snapshot_id(app_rig: AppRig) -> None:
    backup_window(app_rig)
    snapshot_id = app_rig.client.http.get("/v1/snapshots?host=o").json_body[
        "snapshots"][0]["snapshot_id"]
    answer = app_rig.post("/v1/restores", {"host": "o", "snapshot_id": snapshot_id})
    assert answer.status_code == 202 and answer.json_body["snapshot_id"] == snapshot_id
    [volume] = restore_volumes()
    assert volume["SnapshotId"] == snapshot_id
    theirs = restore(app_rig, "c", snapshot_id=snapshot_id)  # o's snapshot is not c's
    assert theirs.status_code == 404 and theirs.json_body["error"] == "no_recovery_point"


def test_unknown_day_or_snapshot_is_404_with_the_days_there_are(app_rig: AppRig) -> None:
    backup_window(app_rig)
    for body in ({"day": "2001-01-01"}, {"snapshot_id": "snap-0123456789abcdef0"}):
        answer = restore(app_rig, **body)
        assert answer.status_code == 404, answer.json_body
        assert answer.json_body["error"] == "no_recovery_point"
        assert answer.json_body["days"] == [today()]


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
    rid = opened["window_id"]
    app_rig.boot(rid)
    time.sleep(max(0.0, (datetime.fromisoformat(opened["deadline"])
                         - datetime.now(timezone.utc)).total_seconds()) + 0.05)
    assert app_rig.session("c", purpose="restore").json_body["error"] == "no_open_window"
    answer = app_rig.client.lambda_.invoke("window_deadline", {"window_id": rid})
    assert "deadline reached" in " ".join(answer.payload["reasons"])
    app_rig.stopped(rid)
    assert window(app_rig, rid)["state"] == "CLOSED"
    assert restore_volumes() == []
    assert archive(app_rig, rid)["State"]["Name"] == "terminated"


def test_the_reconciler_finishes_a_restore_whose_stop_event_was_lost(app_rig: AppRig) -> None:
    backup_window(app_rig)
    rid = restore(app_rig, day=today()).json_body["window_id"]
    app_rig.boot(rid)
    app_rig.report(rid, "c", status="failed")  # stops its archive; the event never comes
    assert window(app_rig, rid)["state"] == "CLOSING"
    assert archive(app_rig, rid)["State"]["Name"] == "stopped"
    scheduled = json.loads((EVENTS / "scheduled-event.json").read_text())
    app_rig.client.lambda_.invoke("reconciler", scheduled)
    assert window(app_rig, rid)["state"] == "CLOSED"
    assert restore_volumes() == []
    assert archive(app_rig, rid)["State"]["Name"] == "terminated"
