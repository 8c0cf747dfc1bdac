"""`make serve`: the embedded local stack, up until Ctrl-C (SIGINT) or SIGTERM.

It prints the `export` lines that point `offsite-admin` and `offsite-host` at it, then the
commands to try, in the order a newcomer uses them: enrol a host, open a window, run the
host's backup, follow the window, list the snapshots, restore, see the cost (README.md, "Try
it on `make serve`", is the same walk-through, and tests/e2e/test_serve.py runs it). Nothing
opens windows by itself here: the admin opens each with `offsite-admin window open`, as the
daily schedule would on AWS. At the end everything the stack made on this machine is removed,
and it says so (or names what was left).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TextIO

from local.aws import REGION
from local.demo import RUN_DIR, machine_changes, prune_runs, run_dir
from local.stack import LocalStack, StackSettings, output_to_log

KEEP_RUNS = 3  # local/.run keeps the logs of this many serve runs (the newest); `make clean`
READY = "The local stack is up until Ctrl-C."
# An admin's windows: as long as on AWS, so that a newcomer has time to look around (a window
# closes as soon as its hosts have reported anyway).
SETTINGS = StackSettings(window_hours=1.0, restore_hours=1.0, boot_seconds=2.0)

# Run in a directory of your own, after the export lines; the host's files go in ./web-1.
WALKTHROUGH = """\
offsite-admin init                    # nothing to do: make serve made the keys and the table
mkdir -p web-1/data && cp -r /usr/share/doc/rsync web-1/data/      # something to back up
cat > web-1/host.toml <<TOML
api_url = "$OFFSITE_API_URL"
host = "web-1"
paths = ["$PWD/web-1/data"]
key_file = "host.key"
password_file = "gocryptfs.pass"
repository = "repository"
state_dir = "state"
TOML
offsite-host --config web-1/host.toml keygen > web-1/host.pub   # "ssh-ed25519 AAAA… web-1@offsite"
offsite-host --config web-1/host.toml init     # local repository + encryption key
offsite-admin host add web-1 --public-key-file web-1/host.pub
offsite-admin host list
offsite-admin window open --hours 1 --host web-1      # an ad-hoc window
offsite-admin window status                           # the current window, host by host
offsite-host --config web-1/host.toml run      # waits while the archive boots, sends, reports
offsite-host --config web-1/host.toml status
until offsite-admin window status | grep -q "no window open"; do sleep 2; done  # snapshotted
offsite-admin window history --limit 10
offsite-admin snapshots --host web-1                  # recovery points
offsite-host --config web-1/host.toml snapshots
offsite-admin restore --host web-1 --date "$(date -u +%F)"   # its restore archive
offsite-host --config web-1/host.toml restore --date "$(date -u +%F)" \\
    --path "$PWD/web-1/data" --to "$PWD/web-1/restored"
diff -r web-1/data web-1/restored && echo "restored: identical"
offsite-admin cost                                    # a month at the recent usage, 3 designs
offsite-admin host revoke web-1                       # refused from its next request
"""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("make serve needs root: it creates the archives' accounts, runs sshd and mounts "
              "FUSE (run it as root, e.g. in a throwaway VM)", file=sys.stderr)
        return 2
    _stop_on(signal.SIGINT, signal.SIGTERM)
    root = args.work_dir or _new_run_dir()
    root.mkdir(parents=True, exist_ok=True)
    with output_to_log(root / "stack.log") as (out, log):
        return _serve(root, out, log)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, metavar="DIR",
                        help="the stack's work files and logs (default: a new "
                             "local/.run/serve-<start time>-<random>, the newest three kept)")
    return parser


def _new_run_dir() -> Path:
    for old in prune_runs(RUN_DIR, KEEP_RUNS - 1, kind="serve"):
        print(f"removed an earlier serve's work files: {old}", flush=True)
    return run_dir(RUN_DIR, datetime.now(), kind="serve")


def _serve(root: Path, out: TextIO, log: TextIO) -> int:
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say(f"Offsite local stack: starting (AWS on a moto server, the API, the event bus); work "
        f"files and logs in {root}")
    stack = LocalStack(root / "stack", SETTINGS,
                       log=lambda line: print(line, file=log, flush=True))
    try:
        with stack:
            try:
                _announce(stack, root, say)
                while True:
                    signal.pause()
            except KeyboardInterrupt:  # the first Ctrl-C or SIGTERM (_Stopper)
                say("\nStopping: ending the archives, removing the accounts, the group and "
                    "the instance files.")
    except KeyboardInterrupt:  # while it was starting
        say("\nInterrupted while starting.")
    return _check_left(stack, root, say)


def _announce(stack: LocalStack, root: Path, say: Callable[[str], None]) -> None:
    say("  it changes this machine until it ends: " + "; ".join(machine_changes(stack))
        + ". All of it is removed at the end.")
    say("\nIn another terminal, point offsite-admin and offsite-host at it:\n")
    say("\n".join(export_lines(stack)))
    say("\nthen try, in a directory of your own (README.md: 'Try it on `make serve`'). "
        "No schedule opens windows here: you open each with `offsite-admin window open`, "
        "as the daily schedule would on AWS.\n")
    say(WALKTHROUGH)
    say(f"The control plane's log: {root / 'stack.log'}.")
    say(READY)


def export_lines(stack: LocalStack) -> list[str]:
    """What `offsite-admin` (stage, API, AWS endpoint, credentials) and `offsite-host` (on
    PATH; its host.toml names the API) need to use this stack. The credentials are moto's
    placeholders: a shell with these set never reaches a real AWS account."""
    assert stack.deployment is not None
    values = {"OFFSITE_STAGE": "local", "OFFSITE_API_URL": stack.api_url,
              "AWS_ENDPOINT_URL": stack.deployment.endpoint, "AWS_REGION": REGION,
              "AWS_DEFAULT_REGION": REGION,  # what boto3 reads
              "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
    lines = [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    lines.append("unset AWS_SESSION_TOKEN AWS_PROFILE")
    bin_dir = Path(sys.executable).parent  # the virtualenv's, not resolved: its commands
    lines.append(f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"')
    return lines


def _check_left(stack: LocalStack, root: Path, say: Callable[[str], None]) -> int:
    left = stack.leftovers()
    errors = stack.bus.errors if stack.bus else []
    if errors:
        say(f"the event bus met {len(errors)} error(s) meanwhile; see the log")
    if left:
        say("The stack left things behind on this machine: " + "; ".join(left))
        return 1
    say("Stopped: the stack removed everything it made on this machine (processes, ports, "
        f"accounts, group, instance files); its logs stay in {root}.")
    return 1 if errors else 0


class _Stopper:
    """Ctrl-C and SIGTERM end the stack the same way (also when started with SIGINT ignored,
    as a background job of a non-interactive shell is). Only the first signal interrupts:
    a second one, or one pending beside it, must not cut the cleanup short."""

    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        raise KeyboardInterrupt


def _stop_on(*signals: signal.Signals) -> None:
    stopper = _Stopper()
    for number in signals:
        signal.signal(number, stopper)


if __name__ == "__main__":
    raise SystemExit(main())
