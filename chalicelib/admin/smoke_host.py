"""The smoke's throwaway host on this workstation: its data set, its host.toml, and the real
`offsite-host` run on it as cron would run it on a host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chalicelib.admin.smoke_report import StepFailedError

TAIL_LINES = 6


def default_host_command() -> tuple[str, ...]:
    """The offsite-host installed beside this offsite-admin (the same virtualenv), else the
    one on PATH, else the module run by this Python."""
    beside = Path(sys.executable).with_name("offsite-host")
    found = str(beside) if beside.exists() else shutil.which("offsite-host")
    return (found,) if found else (sys.executable, "-m", "offsite_host")


def run_host(command: Sequence[str], config: Path, args: Sequence[str],
             timeout: float) -> subprocess.CompletedProcess[str]:
    """`offsite-host --config CONFIG ARGS...`; fails the step unless it exits 0, with its exit
    code and the last lines it wrote."""
    done = subprocess.run([*command, "--config", str(config), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        tail = "\n         ".join((done.stderr or done.stdout).strip().splitlines()
                                  [-TAIL_LINES:])
        raise StepFailedError(f"offsite-host {args[0]} exited {done.returncode}:\n"
                              f"         {tail}")
    return done


def make_data(root: Path, size: int) -> int:
    """A small data set with what a restore must bring back: text, random bytes, a non-ASCII
    name, a private file, a symlink and an empty directory. The number of files."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("offsite smoke test\n")
    (root / "data.bin").write_bytes(os.urandom(size))
    (root / "Ünïcødé-名前.txt").write_text("non-ASCII names survive\n", "utf-8")
    secret = root / "etc" / "private.conf"
    secret.write_text("mode 0600\n")
    secret.chmod(0o600)
    (root / "motd").symlink_to("etc/motd")
    (root / "empty").mkdir()
    return 4


def write_config(work: Path, api_url: str, host: str, window_hours: float) -> Path:
    """The throwaway host's host.toml; its key, password, repository and state beside it."""
    settings: dict[str, Any] = {
        "api_url": api_url, "host": host, "paths": [str(work / "data")],
        "key_file": "host.key", "password_file": "gocryptfs.pass",
        "repository": "repository", "state_dir": "state", "max_wait_s": 600,
        "deadline_margin_s": max(5, min(60, round(window_hours * 3600 / 20)))}
    config = work / "host.toml"
    config.write_text("".join(f"{key} = {json.dumps(value)}\n"
                              for key, value in settings.items()), "utf-8")
    return config


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
