"""`python -m local.serve` as a newcomer uses it: started in its own process, its `export`
lines and then its walk-through (README.md, "Try it on `make serve`") run in a shell with the
real `offsite-admin` and `offsite-host`: enrol, open a window, run, status, snapshots,
restore, cost. Then Ctrl-C (SIGINT) ends it, and nothing it made is left on the machine."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.serve import READY, WALKTHROUGH
from local.stack import leftovers

STARTUP_S = 180
WALKTHROUGH_S = 900


class Served:
    """The serve process, its output read line by line as it comes."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "local.serve", "--work-dir", str(work)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=Path(__file__).parents[2])
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(READY):
                self.ready.set()
        self.ready.set()  # ended: whoever waits looks at the output

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self) -> None:
        self.ready.wait(STARTUP_S)
        assert READY in self.output, f"serve did not come up:\n{self.output}"

    def wait_for(self, text: str) -> None:
        limit = time.monotonic() + STARTUP_S
        while text not in self.output and self.process.poll() is None:
            assert time.monotonic() < limit, f"{text!r} not said:\n{self.output}"
            time.sleep(0.05)
        assert text in self.output, self.output

    def interrupt(self) -> int:
        """Ctrl-C, then its exit status once it has removed what it made."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=STARTUP_S)
        self._reader.join(timeout=10)
        return code

    def found(self, pattern: str) -> re.Match[str]:
        match = re.search(pattern, self.output)
        assert match, f"{pattern!r} not in:\n{self.output}"
        return match


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    running = Served(tmp_path / "serve")
    try:
        yield running
    finally:
        if running.process.poll() is None:  # the test failed before its Ctrl-C
            running.process.send_signal(signal.SIGINT)
            try:
                running.process.wait(timeout=STARTUP_S)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()


def exports(output: str) -> str:
    return "\n".join(line for line in output.splitlines()
                     if line.startswith(("export ", "unset ")))


def test_serve_walkthrough_end_to_end_then_nothing_left(served: Served, tmp_path: Path) -> None:
    served.wait_ready()
    assert WALKTHROUGH in served.output  # what it printed is what runs here
    api_port = int(served.found(r"export OFFSITE_API_URL=http://127\.0\.0\.1:(\d+)")[1])
    moto_port = int(served.found(r"export AWS_ENDPOINT_URL=http://127\.0\.0\.1:(\d+)")[1])
    ssh_port = int(served.found(r"one sshd per archive on port (\d+)")[1])
    group, prefix = served.found(
        r"the group (offsite-\S+) and one Unix account (\S+)<host>").groups()
    instance = Path(served.found(r"the archive instances' files in (\S+);")[1])
    assert instance.is_dir()

    shell = exports(served.output)
    home = tmp_path / "newcomer"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    walked = subprocess.run(["bash", "-e", "-c", f"{shell}\n{WALKTHROUGH}"], cwd=home, env=env,
                            capture_output=True, text=True, timeout=WALKTHROUGH_S, check=False)
    said = walked.stdout + walked.stderr
    assert walked.returncode == 0, said
    assert "Traceback" not in said
    assert "nothing to do: already initialised" in said  # init: serve made keys and table
    assert re.search(r"^host web-1 \(enabled\)", walked.stdout, re.M), said
    assert "offsite-host: report: succeeded" in walked.stderr
    assert "offsite-host: verify: the archive copy matches" in walked.stderr
    assert re.search(r"^last run: +run .* -> succeeded \(exit 0\)", walked.stdout, re.M), said
    assert re.search(r"^snap-\S+ +\d{4}-\d\d-\d\d +w-\S+ +yes ", walked.stdout, re.M), said
    assert "restored: identical" in walked.stdout
    assert (home / "web-1" / "restored" / "rsync" / "copyright").is_file()
    assert "total per month (USD)" in walked.stdout
    assert "revoked web-1" in walked.stdout

    # the newcomer's shell after the export lines
    pasted = subprocess.run(["bash", "-e", "-c", f"{shell}\nenv -0"], env=env,
                            capture_output=True, text=True, timeout=60, check=True).stdout
    newcomer = dict(item.split("=", 1) for item in pasted.split("\0") if "=" in item)

    def admin_json(*args: str) -> Any:
        done = subprocess.run(["offsite-admin", "--json", *args], env=newcomer,
                              capture_output=True, text=True, timeout=120, check=True)
        return json.loads(done.stdout)

    [point] = admin_json("snapshots", "--host", "web-1")["snapshots"]
    assert point["complete"] is True
    [host] = admin_json("host", "list")["hosts"]
    assert (host["name"], host["enabled"]) == ("web-1", False)

    assert served.interrupt() == 0, served.output
    assert "Stopped: the stack removed everything it made on this machine" in served.output
    accounts = [entry.pw_name for entry in pwd.getpwall() if entry.pw_name.startswith(prefix)]
    assert accounts == []
    assert leftovers(served.work / "stack", [api_port, moto_port, ssh_port], instance,
                     [f"{prefix}web-1"], group) == []
    assert not (home / "web-1" / "state" / "view").is_mount()


def test_sigterm_ends_it_and_a_second_signal_does_not_cut_the_cleanup(served: Served) -> None:
    served.wait_ready()
    group, prefix = served.found(
        r"the group (offsite-\S+) and one Unix account (\S+)<host>").groups()
    instance = Path(served.found(r"the archive instances' files in (\S+);")[1])
    served.process.send_signal(signal.SIGTERM)
    served.wait_for("Stopping:")
    served.process.send_signal(signal.SIGINT)  # while it removes what it made
    assert served.process.wait(timeout=STARTUP_S) == 0, served.output
    assert "Stopped: the stack removed everything it made on this machine" in served.output
    assert leftovers(served.work / "stack", [], instance, [], group) == []
    assert not [e for e in pwd.getpwall() if e.pw_name.startswith(prefix)]
