"""The launchd job that runs `offsite-host run` nightly on a macOS host.

`python3 -m offsite_host.macos [--program PATH] [--at HH:MM]` prints the property list
that `packaging/macos/org.offsite.host.plist` ships with the defaults, for the
`offsite-host` this Python installed. launchd.plist(5):

- `StartCalendarInterval` runs the job at that time; a night the Mac slept through runs once
  when it wakes (launchd coalesces the missed runs);
- launchd's own `PATH` is `/usr/bin:/bin:/usr/sbin:/sbin`, where `rsync` is Apple's (2.6.9,
  or openrsync on macOS 15), so the job puts Homebrew's directories first;
- a LaunchDaemon runs as root; its stdout and stderr go to the log file (launchd does not
  create the directory).
"""

from __future__ import annotations

import argparse
import plistlib
import re
import shutil
import sys
from typing import Any

LABEL = "org.offsite.host"
CONFIG = "/Library/Application Support/Offsite/host.toml"
LOG = "/Library/Logs/Offsite/offsite-host.log"
PROGRAM = "/opt/offsite/bin/offsite-host"
PATH = "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
DAEMON_PLIST = f"/Library/LaunchDaemons/{LABEL}.plist"


def launchd_job(program: str = PROGRAM, hour: int = 1, minute: int = 30,
                config: str = CONFIG, log: str = LOG) -> dict[str, Any]:
    return {
        "Label": LABEL,
        "ProgramArguments": [program, "--config", config, "run"],
        "StartCalendarInterval": {"Hour": hour, "Minute": minute},
        "EnvironmentVariables": {"PATH": PATH},
        "StandardOutPath": log,
        "StandardErrorPath": log,
        "ProcessType": "Background",
        "RunAtLoad": False,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m offsite_host.macos",
                                     description="Print the launchd job for offsite-host run.")
    parser.add_argument("--program", default=shutil.which("offsite-host") or PROGRAM,
                        help="the offsite-host to run (default: the one on PATH, else "
                        f"{PROGRAM})")
    parser.add_argument("--at", default="01:30", metavar="HH:MM",
                        help="when to run each night, local time (default: 01:30)")
    args = parser.parse_args(argv)
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", args.at)
    if not match:
        parser.error(f"--at must be HH:MM (24 h), not {args.at!r}")
    job = launchd_job(args.program, int(match.group(1)), int(match.group(2)))
    sys.stdout.write(plistlib.dumps(job).decode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
