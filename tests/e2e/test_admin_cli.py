"""`offsite-admin` end to end against the local stack, run as the admin runs it (the installed
command, in a subprocess): init against the stack's fresh AWS (moto), then the stack starts
on what init made; enrol two hosts, open and close a window, list snapshots, the cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from chalicelib.sshcert import ca_public_key_line
from local.aws import KEY_PREFIX, aws_client
from local.stack import LocalStack, StackSettings
from tests.e2e.test_local_stack import wait_archives_up

ADMIN = Path(sys.executable).with_name("offsite-admin")


class Admin:
    """Runs offsite-admin as the admin would against the local stack: the API URL, the AWS
    endpoint and the stage from the environment, the usual (here: fake) AWS credentials."""

    def __init__(self) -> None:
        self.env = {**os.environ, "OFFSITE_STAGE": "local"}
        self.outputs: list[str] = []

    def __call__(self, *args: str, ok: bool = True, stdin: int | None = subprocess.DEVNULL
                 ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(ADMIN), *args], capture_output=True, text=True,
                              env=self.env, stdin=stdin, timeout=120, check=False)
        self.outputs += [done.stdout, done.stderr]
        assert "Traceback" not in done.stderr, done.stderr
        if ok:
            assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stderr}"
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


def words(text: str) -> str:
    return " ".join(text.split())


def host_key(name: str) -> str:
    return ca_public_key_line(SigningKey.generate(), f"{name}@offsite")


def parameters(endpoint: str) -> dict[str, str]:
    found = aws_client("ssm", endpoint).get_parameters_by_path(
        Path=KEY_PREFIX, WithDecryption=True)["Parameters"]
    return {p["Name"]: p["Value"] for p in found}


@pytest.fixture
def admin() -> Admin:
    assert ADMIN.exists(), "make venv installs offsite-admin (pip install -e .)"
    return Admin()


@pytest.fixture
def stack(tmp_path: Path, admin: Admin) -> Iterator[LocalStack]:
    def init(endpoint: str) -> None:
        admin.env["AWS_ENDPOINT_URL"] = endpoint
        asked = admin("init", ok=False)  # no terminal to ask on, and no --yes
        assert asked.returncode == 1 and "--yes" in asked.stderr
        assert parameters(endpoint) == {}
        made = admin("init", "--yes")
        plan, _, done = words(made.stderr).partition("created ")
        assert f"create SSM SecureString {KEY_PREFIX}/ca-key the user CA" in plan
        assert "create DynamoDB table offsite-local" in plan
        assert "skip CloudFormation stack offsite-local the local stack serves" in plan
        assert "DynamoDB table offsite-local" in done
        assert sorted(parameters(endpoint)) == [f"{KEY_PREFIX}/{name}" for name in (
            "ca-key", "ca-key.pub", "host-key", "host-key.pub")]

    with LocalStack(tmp_path / "stack", StackSettings(window_hours=0.05, boot_seconds=1),
                    log=lambda line: None, initialise=init) as running:
        admin.env["OFFSITE_API_URL"] = running.api_url
        yield running


def wait_state(admin: Admin, window_id: str, states: tuple[str, ...],
               timeout: float = 60) -> dict[str, Any]:
    limit = time.monotonic() + timeout
    while True:
        window = admin.json("window", "status", window_id)
        if window["state"] in states or time.monotonic() > limit:
            assert window["state"] in states, window
            return dict(window)
        time.sleep(0.5)


def test_init_enrol_open_close_snapshots_cost(stack: LocalStack, admin: Admin,
                                              tmp_path: Path) -> None:
    assert stack.deployment is not None and stack.fleet is not None
    endpoint = stack.deployment.endpoint
    made = parameters(endpoint)
    assert stack.deployment.keys.ca_public_line == made[f"{KEY_PREFIX}/ca-key.pub"]

    again = admin("init", "--yes")  # keys are kept, never replaced
    assert "nothing to do" in again.stderr and "create " not in words(again.stderr)
    assert f"keep SSM SecureString {KEY_PREFIX}/ca-key exists; never overwritten" in words(
        again.stderr)
    assert parameters(endpoint) == made

    key_file = tmp_path / "o.pub"
    key_file.write_text(host_key("o") + "\n")
    added = admin("host", "add", "c", "--public-key", host_key("c"))
    assert added.stdout.startswith("host c (enabled): size 20 GiB, key SHA256:")
    admin("host", "add", "o", "--public-key-file", str(key_file))
    listed = admin.json("host", "list")["hosts"]
    assert {(h["name"], h["enabled"]) for h in listed} == {("c", True), ("o", True)}
    table = admin("host", "list").stdout.splitlines()
    assert table[0].split() == ["HOST", "STATE", "GIB", "ENROLLED", "(UTC)", "KEY"]
    assert [line.split()[:2] for line in table[1:]] == [["c", "enabled"], ["o", "enabled"]]

    opened = admin.json("window", "open", "--hours", "0.05")
    window_id = opened["window_id"]
    assert opened["expected"] == ["c", "o"]
    current = admin("window", "status")
    assert f"window:   {window_id}" in current.stdout
    [serving] = wait_state(admin, window_id, ("OPEN",))["shards"]
    wait_archives_up(stack, {"shards": [serving]})  # one archive, one sshd, for both hosts
    closed = admin("window", "close", window_id)
    assert closed.stdout.startswith(f"{window_id}: CLOSING")
    window = wait_state(admin, window_id, ("CLOSED",))
    assert window["snapshots"] == {"c": "completed", "o": "completed"}
    [shard] = window["shards"]  # its archive served both hosts, and is gone
    assert shard["hosts"] == ["c", "o"] and shard["state"] == "CLOSED"
    limit = time.monotonic() + 30  # the termination follows the snapshots' completion
    while stack.fleet.archive(shard["instance_id"]) is not None and time.monotonic() < limit:
        time.sleep(0.2)
    assert stack.fleet.archive(shard["instance_id"]) is None
    assert "no window open; the last was " + window_id in admin("window", "status").stdout
    history = admin("window", "history", "--limit", "5").stdout
    assert window_id in history and "CLOSED" in history

    again = admin("window", "close", window_id, ok=False)
    assert again.returncode == 1 and "the API refused (409): not_closable" in again.stderr

    snapshots = admin.json("snapshots", "--host", "c")
    assert snapshots["host"] == "c"
    (snapshot,) = snapshots["snapshots"]
    assert snapshot["window_id"] == window_id and snapshot["complete"] is False
    assert snapshot["snapshot_id"] in admin("snapshots", "--host", "c").stdout

    refused = admin("restore", "--host", "c", "--snapshot", snapshot["snapshot_id"], ok=False)
    assert refused.returncode == 1 and "incomplete_snapshot" in refused.stderr
    opened = admin.json("restore", "--host", "c", "--snapshot", snapshot["snapshot_id"],
                        "--allow-incomplete")
    assert opened["snapshot_id"] == snapshot["snapshot_id"] and opened["complete"] is False
    restore = stack.window(opened["window_id"])
    assert restore["purpose"] == "restore" and restore["expected"] == ["c"]

    cost = admin.json("cost")
    assert cost["windows"] == [window_id]
    assert cost["usage"]["hosts"] == 2 and cost["usage"]["volume_gib"] == 40
    assert 0 < cost["total_usd"] < cost["kept_up_total_usd"]
    text = admin("cost", "--window-hours", "3.6").stdout
    assert "total per month (USD)" in text and "kept up" in text

    admin("host", "revoke", "o")
    assert [h["enabled"] for h in admin.json("host", "list")["hosts"]] == [True, False]
    missing = admin("host", "revoke", "nobody", ok=False)
    assert missing.returncode == 1 and "(404): unknown_host" in missing.stderr

    printed = "".join(admin.outputs)
    for name in ("ca-key", "host-key"):  # the private halves never show
        secret = made[f"{KEY_PREFIX}/{name}"]
        assert secret.strip().splitlines()[len(secret.strip().splitlines()) // 2] not in printed
