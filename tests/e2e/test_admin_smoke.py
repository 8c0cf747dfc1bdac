"""`offsite-admin smoke` against the local stack, run as an admin runs it (the installed command,
in a subprocess, the real `offsite-host`): it passes on a working deployment, fails where a
step fails, and in every case removes all it made and nothing else (a bystander host and its
snapshot stay)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from chalicelib.sshcert import ca_public_key_line
from local.aws import aws_client
from local.stack import LocalStack, StackSettings
from tests.e2e.test_local_stack import wait_archives_up

pytestmark = pytest.mark.e2e

ADMIN = Path(sys.executable).with_name("offsite-admin")
OFFSITE_HOST = Path(sys.executable).with_name("offsite-host")
STEPS = ("reach the API", "make the host", "enrol", "open a window", "archive ready",
         "backup run", "snapshot", "restore", "compare")

# A stand-in for offsite-host that breaks one step, as a broken deployment would: the run
# fails (as on a refused connection), or the restore hands back other bytes than were sent.
WRAPPER = """#!{python}
import pathlib, subprocess, sys
args = sys.argv[1:]
if {mode!r} == "run-fails" and "run" in args:
    print("offsite-host: rsync: connection refused (stand-in)", file=sys.stderr)
    sys.exit(5)
done = subprocess.run([{real!r}, *args])
if {mode!r} == "restore-differs" and "restore" in args and done.returncode == 0:
    with (pathlib.Path(args[args.index("--to") + 1]) / "data.bin").open("ab") as restored:
        restored.write(b"one byte more")
sys.exit(done.returncode)
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    assert ADMIN.exists() and OFFSITE_HOST.exists(), "make venv installs both commands"
    root = tmp_path_factory.mktemp("smoke")
    with LocalStack(root / "stack", StackSettings(window_hours=0.05, boot_seconds=1),
                    log=lambda line: None) as running:
        yield running


@pytest.fixture(scope="module")
def bystander(stack: LocalStack) -> dict[str, Any]:
    """Another host, enrolled with a snapshot of its own: no smoke may touch either."""
    stack.enrol("c", ca_public_key_line(SigningKey.generate(), "c@offsite"))
    status, window = stack.admin("POST", "/v1/windows", {"hosts": ["c"]})
    assert status == 202, window
    wait_archives_up(stack, stack.wait_for(window["window_id"], ("OPEN",), timeout=60))
    stack.admin("POST", f"/v1/windows/{window['window_id']}/close")
    stack.wait_for(window["window_id"], timeout=120)
    [snapshot] = stack.snapshots("c")
    return {"snapshot_id": snapshot["snapshot_id"], "host": host_record(stack, "c")}


def host_record(stack: LocalStack, name: str) -> dict[str, Any] | None:
    _, listed = stack.admin("GET", "/v1/hosts")
    return next((h for h in listed["hosts"] if h["name"] == name), None)


def smoke(stack: LocalStack, work: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                                str]:
    """Runs the smoke; its output and the throwaway host's name."""
    assert stack.deployment is not None
    env = {**os.environ, "OFFSITE_STAGE": "local", "OFFSITE_API_URL": stack.api_url,
           "AWS_ENDPOINT_URL": stack.deployment.endpoint}
    done = subprocess.run([str(ADMIN), "smoke", "--window-hours", "0.05", "--wait-minutes",
                           "3", "--work-dir", str(work), *args], capture_output=True,
                          text=True, env=env, stdin=subprocess.DEVNULL, timeout=900,
                          check=False)
    print(done.stdout)  # shown by pytest -rP
    assert "Traceback" not in done.stderr + done.stdout, done.stderr + done.stdout
    found = re.search(r"throwaway host (smoke-[0-9a-f]+)", done.stdout)
    assert found, done.stdout
    return done, found.group(1)


def tagged(stack: LocalStack, kind: str, host: str) -> list[dict[str, Any]]:
    assert stack.deployment is not None
    ec2 = aws_client("ec2", stack.deployment.endpoint)
    tag = [{"Name": "tag:offsite:host", "Values": [host]}]
    if kind == "snapshots":
        return list(ec2.describe_snapshots(OwnerIds=["self"], Filters=tag)["Snapshots"])
    return list(ec2.describe_volumes(Filters=tag)["Volumes"])


def steps_printed(output: str) -> dict[str, str]:
    """Step name -> its line (a step line: two spaces, "ok  " or "FAIL", a space, the name)."""
    return {name: line for line in output.splitlines() for name in STEPS
            if line[2:6] in ("ok  ", "FAIL") and line[7:].startswith(name + " ")}


def step_line(output: str, name: str) -> str:
    return steps_printed(output)[name]


def assert_cleaned(stack: LocalStack, host: str, work: Path, output: str,
                   bystander: dict[str, Any]) -> None:
    """Nothing the smoke made is left; what it did not make is as it was."""
    assert host_record(stack, host) is None  # not merely revoked: its record is gone
    assert tagged(stack, "snapshots", host) == []
    limit = time.monotonic() + 30  # the local fleet deletes a volume's directory on its step
    while tagged(stack, "volumes", host) and time.monotonic() < limit:
        time.sleep(0.5)
    assert tagged(stack, "volumes", host) == []
    assert list(work.iterdir()) == []  # keys, data, repository, restored copy
    assert "COULD NOT REMOVE" not in output
    assert f"removed host {host}" in output
    assert host_record(stack, "c") == bystander["host"]
    assert [s["snapshot_id"] for s in stack.snapshots("c")] == [bystander["snapshot_id"]]
    _, listed = stack.admin("GET", "/v1/windows")
    assert all(w["state"] in ("CLOSED", "FAILED") for w in listed["windows"])


def test_smoke_passes_and_leaves_nothing(stack: LocalStack, bystander: dict[str, Any],
                                         tmp_path: Path) -> None:
    done, host = smoke(stack, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in STEPS:
        assert step_line(done.stdout, name).startswith("  ok  "), done.stdout
    assert "entries identical" in step_line(done.stdout, "compare")
    assert re.search(r"\$0\.\d{4}  snap-", step_line(done.stdout, "restore"))  # its window
    assert re.search(r"snap-[0-9a-f]+ complete", step_line(done.stdout, "snapshot"))
    assert re.search(r"EC2 t\d\w?\.small +\d", done.stdout)  # the archive, priced
    assert "EBS snapshot" in done.stdout and re.search(r"total +\$0\.\d+", done.stdout)
    assert "smoke passed" in done.stdout
    assert re.search(rf"removed snapshot snap-[0-9a-f]+ of {host}", done.stdout)
    assert_cleaned(stack, host, tmp_path, done.stdout, bystander)


@pytest.mark.parametrize(("mode", "failed", "says"), [
    ("run-fails", "backup run", "offsite-host run exited 5"),
    ("restore-differs", "compare", "content: data.bin"),
], ids=["run-fails", "restore-differs"])
def test_smoke_fails_at_the_broken_step_and_still_cleans_up(
        stack: LocalStack, bystander: dict[str, Any], tmp_path: Path, mode: str, failed: str,
        says: str) -> None:
    wrapper = tmp_path / "offsite-host-stand-in"
    wrapper.write_text(WRAPPER.format(python=sys.executable, mode=mode, real=str(OFFSITE_HOST)))
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    done, host = smoke(stack, work, "--host-command", str(wrapper))
    assert done.returncode == 1, done.stdout + done.stderr
    line = step_line(done.stdout, failed)
    assert line.startswith("  FAIL") and says in done.stdout, done.stdout
    assert "look at:" in done.stdout
    assert list(steps_printed(done.stdout)) == list(STEPS[:STEPS.index(failed) + 1])
    assert f"smoke FAILED at: {failed}" in done.stdout
    # the window it opened is ended, and the snapshot its close made is deleted
    assert re.search(rf"removed snapshot snap-[0-9a-f]+ of {host}", done.stdout)
    assert_cleaned(stack, host, work, done.stdout, bystander)
