"""`make demo`: whole backup windows on the embedded local stack, with four sample hosts.

The scheduled window opens and launches its archive fleet: the four hosts are two shards of
two, each shard an archive instance of its own (a real sshd on its own loopback address) whose
volumes are made from each host's newest snapshot. The four hosts run the real `offsite-host
run` at once; each archive stops when its own two hosts have reported, its volumes are
snapshotted, it is terminated and its volumes deleted; retention runs; and a report says what
happened and what a month of it would cost. Then the sample data
changes and the next window runs incrementally. At the end, host `o` is restored as it was
after window 1 (before the changes that deleted some of its files) with the real
`offsite-host restore`, and compared with a copy of its data taken right after window 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from chalicelib.admin.usage import observe
from chalicelib.cost import load_prices
from chalicelib.cost_report import compare, seed_scenario
from local.hosts import SAMPLES, SampleHost, change_sample_data, make_sample_data
from local.stack import TERMINAL, LocalStack, StackSettings, output_to_log
from local.trees import differences, inventory

RUN_DIR = Path(__file__).with_name(".run")
KEEP_RUNS = 3  # local/.run keeps the work files of this many demos (the newest); `make clean`
MAX_WINDOWS = 10
PRODUCTION_WINDOW_HOURS = 3.6
VOLUME_GIB = 20
EC2_MINIMUM_S = 60  # EC2 bills per second, with a minimum of 60 s per start
RESTORED_HOST = "o"  # its later windows delete files: the restore brings them back
HOSTS_PER_ARCHIVE = 2  # the four sample hosts are two shards of two


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # bad options end here, before anything is made
    if os.geteuid() != 0:
        print("make demo needs root: it creates the instance's accounts, runs sshd and mounts "
              "FUSE (run it as root, e.g. in a throwaway VM)", file=sys.stderr)
        return 2
    for old in prune_runs(RUN_DIR, KEEP_RUNS - 1):
        print(f"removed an earlier demo's work files: {old}", flush=True)
    root = run_dir(RUN_DIR, datetime.now())
    with output_to_log(root / "stack.log") as (out, log):
        return _demo(root, args, out, log)


def prune_runs(parent: Path, keep: int, kind: str = "demo") -> list[Path]:
    """Removes all but the newest `keep` work directories of `parent` made by `run_dir` for
    `kind` (names begin with their start time, so the name orders them); returns what it
    removed."""
    if not parent.is_dir():
        return []
    runs = sorted(p for p in parent.glob(f"{kind}-*") if p.is_dir() and not p.is_symlink())
    old = runs[:max(0, len(runs) - keep)]
    for path in old:
        shutil.rmtree(path)
    return old


def run_dir(parent: Path, started: datetime, kind: str = "demo") -> Path:
    """This run's own work directory, named by its start time: two runs started in the same
    second still get one each (mkdtemp adds a part of its own)."""
    parent.mkdir(parents=True, exist_ok=True)
    made = Path(tempfile.mkdtemp(prefix=started.strftime(f"{kind}-%Y%m%dT%H%M%S-"),
                                 dir=parent))
    made.chmod(0o755)
    return made


def _demo(root: Path, args: argparse.Namespace, out: TextIO, log: TextIO) -> int:
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    began = time.monotonic()
    settings = StackSettings(window_hours=args.window_minutes / 60,
                             hosts_per_archive=HOSTS_PER_ARCHIVE)
    say(f"Offsite demo: starting the local stack (AWS on a moto server, the API, the event "
        f"bus); work files and logs in {root}")
    with LocalStack(root / "stack", settings, log=lambda line: print(line, file=log)) as stack:
        assert stack.fleet is not None
        changes = machine_changes(stack)
        say(f"  local stack up: API {stack.api_url}. Until it ends it changes this machine: "
            + "; ".join(changes) + ". All of it is removed at the end.")
        worst = _demo_windows(stack, root, args, say)
    left = stack.leftovers()
    if left:
        say("\nThe stack left things behind on this machine: " + "; ".join(left))
        worst = max(worst, 1)
    else:
        say("\nThe stack removed everything it made on this machine (accounts, group, "
            "instance files, processes).")
    _summary(time.monotonic() - began, args, worst, root, say)
    return worst


def machine_changes(stack: LocalStack) -> list[str]:
    """What a running stack has made outside its work directory, in words."""
    assert stack.fleet is not None and stack.deployment is not None
    accounts = stack.fleet.accounts
    return [f"the group {accounts.group} and one Unix account {accounts.prefix}<host> per host",
            f"the archive instances' files in {stack.instance_root}",
            f"one sshd per archive on port {stack.ssh_port} of a 127.77.x.x loopback address",
            f"AWS (a moto server) on {stack.deployment.endpoint}"]


def _summary(took: float, args: argparse.Namespace, worst: int, root: Path, say: Any) -> None:
    outcome = "everything checked out" if worst == 0 else "something failed (see above)"
    say(f"\nDemo done in {took:.0f} s: {outcome}. It showed {args.windows} backup "
        f"window{'s' if args.windows != 1 else ''} of four hosts on two archive instances, "
        "each ending in snapshots only, a restore checked file by file against a copy of the "
        "data, and what a month costs.")
    say(f"  Logs: {root / 'stack.log'} (the control plane's JSON log), each archive's sshd log "
        f"beside it.")
    say("  Next: `make serve` keeps a local stack up to try the commands yourself (README.md, "
        "'Try it on make serve'); `make test` runs the test suite; README.md's 'Deploying to a "
        "real AWS account' and 'Enrolling a host' take it to your own hosts; "
        "`make demo DEMO_ARGS=\"--windows 3 --window-minutes 10\"` runs it longer.")


def _demo_windows(stack: LocalStack, root: Path, args: argparse.Namespace, say: Any) -> int:
    hosts = [SampleHost(name, root / "hosts" / name, stack.api_url) for name in SAMPLES]
    for host in hosts:
        host.write_config()
        make_sample_data(host)
        stack.enrol(host.name, host.keygen_and_init())
        say(f"  enrolled {host.name}: {SAMPLES[host.name][0]}")
    worst = 0
    restored = next(h for h in hosts if h.name == RESTORED_HOST)
    after_first = root / f"{RESTORED_HOST}-after-window-1"
    for round_no in range(1, args.windows + 1):
        if round_no > 1:
            say("\nA day of changes:")
            for host in hosts:
                say(f"  {host.name}: {change_sample_data(host, round_no)}")
        worst = max(worst, _window(stack, hosts, round_no, say))
        if round_no == 1:
            shutil.copytree(restored.data, after_first, symlinks=True)
    worst = max(worst, _restore_first_window(stack, restored, args.windows, after_first,
                                             root, say))
    _seed_cost(say)
    errors = stack.bus.errors if stack.bus else []
    if errors:
        say(f"\nthe event bus met {len(errors)} error(s); see {root / 'stack.log'}")
        return 1
    return worst


def _window(stack: LocalStack, hosts: list[SampleHost], round_no: int,
            say: Any) -> int:
    opened = stack.fire_open_schedule()
    window_id = opened["window_id"]
    say(f"\nWindow {round_no}: {window_id} opened by the schedule: {len(hosts)} hosts in "
        f"{len(opened['shards'])} archives of {HOSTS_PER_ARCHIVE}; the hosts start their cron run")
    started = time.monotonic()
    runs = {host.name: host.start("run") for host in hosts}
    codes: dict[str, int] = {}
    for name, run in runs.items():
        _, stderr = run.communicate(timeout=900)
        codes[name] = run.returncode
        if run.returncode != 0:
            say(f"  {name}: offsite-host exited {run.returncode}:\n    "
                + "\n    ".join(stderr.strip().splitlines()[-5:]))
    window = stack.wait_for(window_id, timeout=600)
    say(f"  all hosts done in {time.monotonic() - started:.1f} s; window {window['state']}: "
        f"{window['reason']}")
    _report(stack, window, codes, say)
    return 0 if window["state"] == "CLOSED" and not any(codes.values()) else 1


def _report(stack: LocalStack, window: dict[str, Any], codes: dict[str, int], say: Any) -> None:
    snapshots = _snapshots_of(stack, window["window_id"])
    reports = {r["host"]: r for r in window["host_reports"]}
    say(f"  {'archive':8} {'host':5} {'outcome':10} {'exit':>4} {'sent':>10} {'took':>7}  "
        "snapshot")
    for shard in window["shards"]:
        for host in shard["hosts"]:
            report = reports.get(host, {})
            snap = snapshots.get(host, {})
            say(f"  {shard['shard_id']:8} {host:5} {report.get('status', 'missing'):10} "
                f"{codes.get(host, '-'):>4} {_size(report.get('bytes_sent', 0)):>10} "
                f"{report.get('duration_s', 0):6.1f}s  {snap.get('id', 'none')} "
                f"complete={snap.get('complete', '-')}")
    length = (datetime.fromisoformat(window["deadline"])
              - datetime.fromisoformat(window["opened_at"])).total_seconds()
    for shard in window["shards"]:
        entered = shard["entered"]
        ran = (datetime.fromisoformat(entered.get("SNAPSHOTTING", entered["OPENING"]))
               - datetime.fromisoformat(entered["OPENING"])).total_seconds()
        say(f"  archive {shard['shard_id']} ({shard['instance_id']}, {shard['state']}): "
            f"{_instance_time(ran, length)}")
    say(f"  (boot is emulated in {stack.settings.boot_seconds:.0f} s here, a real one adds "
        "about a minute; between windows no instance and no volume is left, only snapshots)")
    prices = load_prices()
    observed = observe([window], volume_gib=VOLUME_GIB, retention_days=20,
                       instance_type="t4g.small")
    usage = replace(observed.usage, window_s=PRODUCTION_WINDOW_HOURS * 3600)
    say(f"  a month of such windows: the fleet, beside today's persistent design and the "
        f"archives kept up for the whole {PRODUCTION_WINDOW_HOURS} h window:")
    table = compare(usage, prices).split("\n\n")[0]  # the line-by-line part: the seed's
    for line in table.splitlines():
        say(f"    {line}")


def _seed_cost(say: Any) -> None:
    say("\nThe seed scenario (4 hosts, 5 GiB each, 0.5 GiB sent a night, 20 days kept), "
        "priced line by line:")
    for line in compare(seed_scenario().usage(), load_prices()).splitlines():
        say(f"    {line}")


def _instance_time(ran: float, window: float) -> str:
    """What the instance ran and what EC2 bills for it: per second, at least 60 s a start."""
    billed = ("billed 60 s, EC2's minimum per start" if ran < EC2_MINIMUM_S
              else "billed per second")
    return f"instance ran {ran:.0f} s ({billed}) of a {window:.0f} s window"


def _restore_first_window(stack: LocalStack, host: SampleHost, windows: int, expected: Path,
                          root: Path, say: Any) -> int:
    """The real `offsite-host restore` of `host` as it was after window 1: the newest point
    holds the whole rdiff-backup history (windows of one day share one retained point), so
    window 1 is `--at (windows - 1)B` inside it."""
    newest = stack.snapshots(host.name)[0]
    at = f"{windows - 1}B" if windows > 1 else "now"
    target = root / f"{host.name}-restored-window-1"
    say(f"\nRestore: {host.name} as of window 1 (offsite-host restore --snapshot "
        f"{newest['snapshot_id']} --at {at} --path {host.data} --to {target})")
    started = time.monotonic()
    done = host.command("restore", "--snapshot", newest["snapshot_id"], "--at", at,
                        "--path", str(host.data), "--to", str(target))
    _wait_windows_closed(stack)
    if done.returncode != 0:
        say(f"  offsite-host restore exited {done.returncode}:\n    "
            + "\n    ".join(done.stderr.strip().splitlines()[-5:]))
        return 1
    wanted = inventory(expected)
    found = differences(wanted, inventory(target))
    files = sum(1 for kind, _, _ in wanted.values() if kind != "dir")
    took = time.monotonic() - started
    if found:
        say(f"  restored {host.name} as of window 1 in {took:.1f} s: {len(found)} "
            "differences from the copy taken after window 1:")
        for line in found[:10]:
            say(f"    {line}")
        return 1
    say(f"  restored {host.name} as of window 1: {files} files, identical (content, names, "
        f"symlinks, modes; {took:.1f} s, through a restore window and a read-only certificate)")
    return 0


def _wait_windows_closed(stack: LocalStack) -> None:
    _, listed = stack.admin("GET", "/v1/windows")
    for window in listed["windows"]:
        if window["state"] not in TERMINAL:
            stack.wait_for(window["window_id"], timeout=120)


def _snapshots_of(stack: LocalStack, window_id: str) -> dict[str, dict[str, str]]:
    assert stack.deployment is not None
    from local.aws import aws_client

    found = aws_client("ec2", stack.deployment.endpoint).describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:offsite:window", "Values": [window_id]}])
    result = {}
    for snap in found["Snapshots"]:
        tags = {t["Key"]: t["Value"] for t in snap["Tags"]}
        result[tags["offsite:host"]] = {"id": snap["SnapshotId"],
                                        "complete": tags["offsite:complete"]}
    return result


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def _windows(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= count <= MAX_WINDOWS:
        raise argparse.ArgumentTypeError(f"{count} windows: give 1 to {MAX_WINDOWS}")
    return count


def _window_minutes(text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not 1 <= minutes <= PRODUCTION_WINDOW_HOURS * 60:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"{text} minutes: give 1 to {PRODUCTION_WINDOW_HOURS * 60:.0f} (a window must "
            "last long enough for the hosts to send; production's is 216)")
    return minutes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--windows", type=_windows, default=2, metavar="N",
                        help="windows to run, with a day of changes between them, 1 to "
                             f"{MAX_WINDOWS} (default 2)")
    parser.add_argument("--window-minutes", type=_window_minutes, default=5.0, metavar="M",
                        help="each window's length in minutes, 1 to 216 (default 5; "
                             "production: 216)")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
