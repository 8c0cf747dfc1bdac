"""A restore on the embedded local stack: a backup window writes through a real sshd, then a
restore window serves that day's snapshot read-only, checked with real ssh and rsync under the
certificates `POST /v1/sessions` grants."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from offsite_host.httpsig import sign_request

from chalicelib.sshcert import ca_public_key_line
from local.aws import aws_client
from local.stack import LocalStack, StackSettings

HOST = "c"


class Host:
    """What a host does, by hand: signed API calls, then ssh/rsync under a certificate."""

    def __init__(self, stack: LocalStack, root: Path) -> None:
        self.stack, self.root, self.key = stack, root, SigningKey.generate()
        root.mkdir(parents=True)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        url = self.stack.api_url + path
        headers = sign_request(method, url, data, self.key, keyid=HOST, created=int(time.time()),
                               nonce=secrets.token_urlsafe(16))
        request = urllib.request.Request(url, data=data or None, method=method,  # noqa: S310
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def session(self, purpose: str) -> list[str]:
        """The ssh command line of a fresh session (waits out Retry-After)."""
        key = self.root / f"{purpose}-key"
        key.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        body = {"host": HOST, "purpose": purpose,
                "ssh_public_key": key.with_suffix(".pub").read_text().strip()}
        for _ in range(60):
            status, grant = self.call("POST", "/v1/sessions", body)
            if status != 503:
                break
            time.sleep(1)
        assert status == 201, grant
        self.grant = grant
        Path(f"{key}-cert.pub").write_text(grant["certificate"] + "\n")
        known_hosts = self.root / f"{purpose}-known_hosts"
        known_hosts.write_text(grant["known_hosts"] + "\n")
        return ["ssh", "-F", "none", "-p", str(grant["port"]), "-l", grant["user"], "-i", str(key),
                "-o", f"CertificateFile={key}-cert.pub", "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes"]

    def rsync(self, ssh: list[str], source: str, target: str) -> subprocess.CompletedProcess[str]:
        for _ in range(30):  # EC2 says "running" a little before sshd listens, as on AWS
            done = subprocess.run(["rsync", "-rt", "-e", " ".join(ssh), source, target],
                                  capture_output=True, text=True, timeout=120, check=False)
            if "Connection refused" not in done.stderr:
                break
            time.sleep(0.5)
        return done

    def report(self, window_id: str) -> None:
        status, body = self.call("POST", "/v1/reports", {
            "host": HOST, "window_id": window_id, "status": "succeeded"})
        assert status == 200, body


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def restore_volumes(stack: LocalStack) -> list[dict[str, Any]]:
    assert stack.deployment is not None
    return list(aws_client("ec2", stack.deployment.endpoint).describe_volumes(Filters=[
        {"Name": "tag-key", "Values": ["offsite:restore-window"]}])["Volumes"])


@pytest.fixture
def stack(tmp_path: Path) -> Any:
    with LocalStack(tmp_path / "stack", StackSettings(window_hours=0.05, restore_hours=0.05),
                    log=lambda line: None) as running:
        yield running


def test_a_restore_reads_the_days_snapshot_and_cannot_write(stack: LocalStack,
                                                            tmp_path: Path) -> None:
    host = Host(stack, tmp_path / "host")
    stack.enrol(HOST, ca_public_key_line(host.key))
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.bin").write_bytes(secrets.token_bytes(50_000))
    (data / "sub" / "b.txt").write_text("second file\n")

    # a backup window: the host writes its archive, reports, the window snapshots its volume
    status, opened = stack.admin("POST", "/v1/windows", {"hosts": [HOST]})
    assert status == 201, opened
    stack.wait_for(opened["window_id"], ("OPEN",), timeout=60)
    ssh = host.session("backup")
    sent = host.rsync(ssh, f"{data}/", f"{HOST}@127.0.0.1:archive/")
    assert sent.returncode == 0, sent.stderr
    host.report(opened["window_id"])
    backup = stack.wait_for(opened["window_id"], timeout=120)
    assert backup["state"] == "CLOSED", backup["reason"]
    (data / "a.bin").write_bytes(b"changed after the backup")  # the restore must not see it

    status, listed = host.call("GET", f"/v1/hosts/{HOST}/snapshots")
    assert status == 200, listed
    [point] = listed["snapshots"]
    day = datetime.now(timezone.utc).date().isoformat()
    assert (point["day"], point["complete"], point["window_id"]) == (
        day, True, opened["window_id"])
    assert stack.snapshots(HOST) == listed["snapshots"]

    # the restore: a volume from that snapshot, read-only, for this host
    status, restore = host.call("POST", f"/v1/hosts/{HOST}/restores", {"day": day})
    assert status == 202, restore
    assert restore["snapshot_id"] == point["snapshot_id"]
    assert stack.wait_for(restore["window_id"], ("OPEN",), timeout=60)["purpose"] == "restore"
    ssh = host.session("restore")
    assert host.grant["remote_path"] == "archive/"
    restored = tmp_path / "restored"
    got = host.rsync(ssh, f"{HOST}@127.0.0.1:archive/", f"{restored}/")
    assert got.returncode == 0, (got.stderr, stack.bus.errors if stack.bus else None)
    assert tree(restored) == {"a.bin": tree(stack.instance.volumes / HOST / "archive")["a.bin"]
                              if stack.instance else b"", "sub/b.txt": b"second file\n"}
    assert tree(restored)["a.bin"] != b"changed after the backup"

    written = host.rsync(ssh, f"{data}/", f"{HOST}@127.0.0.1:archive/")
    assert written.returncode != 0, "a restore certificate must not write"
    assert tree(restored) == tree(restored)  # nothing new arrived locally either
    again = tmp_path / "again"
    host.rsync(ssh, f"{HOST}@127.0.0.1:archive/", f"{again}/")
    assert tree(again) == tree(restored)  # the restore copy is unchanged

    host.report(restore["window_id"])
    ended = stack.wait_for(restore["window_id"], timeout=120)
    assert ended["state"] == "CLOSED", ended["reason"]
    assert ended["snapshots"] == {}
    assert [p["snapshot_id"] for p in stack.snapshots(HOST)] == [point["snapshot_id"]]
    deadline = time.monotonic() + 10
    while restore_volumes(stack) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert restore_volumes(stack) == []
    assert stack.instance is not None
    while (stack.instance.restores / HOST).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (stack.instance.restores / HOST).exists()
    assert stack.bus is not None and stack.bus.errors == []
