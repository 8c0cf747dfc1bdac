"""Two local stacks on one machine at once (a demo beside a test run): each enrols hosts of
the same names, each runs five whole windows with the real `offsite-host run` (an archive per
host: two sshd per window), and both succeed; nothing one stack names (accounts, groups,
ports, directories) is the other's, and nothing of either is left afterwards.

Each stack runs in a process of its own (tests/e2e/stack_windows.py): a stack sets the app's
environment and caches, which a process has one of."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from local.demo import run_dir
from local.stack import LocalStack, leftovers
from tests.e2e.stack_windows import RESULT

REPOSITORY = Path(__file__).resolve().parents[2]
WINDOWS = 5
HOSTS = ("h", "o")  # the same names in both stacks: that is the point
STACKS = ("a", "b")


def run_side_by_side(work: Path) -> dict[str, dict[str, Any]]:
    runs = {}
    for name in STACKS:
        (work / name).mkdir(parents=True)
        with (work / name / "output.log").open("w") as output:
            runs[name] = subprocess.Popen(
                [sys.executable, "-m", "tests.e2e.stack_windows", str(work / name),
                 "--windows", str(WINDOWS), "--hosts", *HOSTS],
                cwd=REPOSITORY, stdout=output, stderr=subprocess.STDOUT)
    results = {}
    for name, run in runs.items():
        code = run.wait(timeout=1800)
        found = work / name / RESULT
        results[name] = json.loads(found.read_text()) if found.exists() else {}
        results[name]["exit"] = code
        results[name]["output"] = (work / name / "output.log").read_text()[-3000:]
    return results


def test_two_stacks_side_by_side_each_run_five_windows(tmp_path: Path) -> None:
    results = run_side_by_side(tmp_path)
    for name, result in results.items():
        assert result["exit"] == 0, f"stack {name} failed:\n{result['output']}"
        windows = result["windows"]
        assert len(windows) == WINDOWS, f"stack {name}: {windows}\n{result['output']}"
        for window in windows:
            assert window["state"] == "CLOSED", (name, window)
            assert window["codes"] == dict.fromkeys(HOSTS, 0), (name, window)
            assert window["reports"] == dict.fromkeys(HOSTS, "succeeded"), (name, window)
            assert len(set(window["addresses"])) == len(HOSTS), (name, window)  # an archive each
        assert result["bus_errors"] == [], name
        assert len(result["accounts"]) == len(HOSTS), (name, result["accounts"])
    first, second = (results[name] for name in STACKS)
    for held in ("accounts", "groups", "ports"):
        assert not set(first[held]) & set(second[held]), (held, first[held], second[held])
    assert first["instance_root"] != second["instance_root"]
    for name, result in results.items():
        assert leftovers(tmp_path / name, result["ports"], Path(result["instance_root"]),
                          result["accounts"], None) == [], name
        for group in result["groups"]:
            assert subprocess.run(["getent", "group", group], capture_output=True,
                                  check=False).returncode != 0, f"group {group} is left"


def test_the_archive_port_is_held_while_no_sshd_listens_on_it(tmp_path: Path) -> None:
    """sshd binds its port only when a window starts the instance, minutes after the stack
    chose it: meanwhile no one else on this machine may take it."""
    with LocalStack(tmp_path / "stack", log=lambda line: None) as stack:
        with socket.socket() as other, pytest.raises(OSError) as refused:
            other.bind(("127.0.0.1", stack.ssh_port))
        assert refused.value.errno == errno.EADDRINUSE
        port = stack.ssh_port
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))  # released with the stack


def test_two_demos_started_in_one_second_get_a_directory_each(tmp_path: Path) -> None:
    started = datetime(2026, 12, 2, 18, 30, 5)
    first, second = run_dir(tmp_path, started), run_dir(tmp_path, started)
    assert first != second and first.is_dir() and second.is_dir()
    assert first.name.startswith("demo-20261202T183005")
