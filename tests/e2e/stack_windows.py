"""One local stack running whole windows (one archive per host), in a process of its own:
the side-by-side test (test_local_stacks_side_by_side.py) starts two at once, as a demo and a
test run would be on one machine. It writes what happened, and every name the stack held, as
JSON (after each window, so a failure still tells).

    python -m tests.e2e.stack_windows WORK_DIR --windows 5 --hosts h o
"""

from __future__ import annotations

import argparse
import grp
import json
import pwd
from pathlib import Path
from typing import Any

from local.hosts import change_sample_data
from local.stack import LocalStack, StackSettings
from tests.e2e.test_local_stack import run_window, start_hosts

RESULT = "result.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack_windows")
    parser.add_argument("work", type=Path)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--hosts", nargs="+", default=["h", "o"])
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"windows": []}
    with (args.work / "stack.log").open("a") as log, \
            LocalStack(args.work / "stack",
                       StackSettings(window_hours=0.05, hosts_per_archive=1),
                       log=lambda line: print(line, file=log, flush=True)) as stack:
        assert stack.fleet is not None and stack.deployment is not None
        hosts = start_hosts(stack, args.work, tuple(args.hosts))
        result.update(held_names(stack))
        _write(args.work, result)
        for number in range(1, args.windows + 1):
            if number > 1:
                for host in hosts.values():
                    change_sample_data(host, number)
            window, codes = run_window(stack, hosts)
            result["windows"].append({
                "window_id": window["window_id"], "state": window["state"],
                "reason": window["reason"], "codes": codes,
                "reports": {r["host"]: r["status"] for r in window["host_reports"]},
                "addresses": [s["address"] for s in window["shards"]]})
            result.update(held_names(stack))  # the accounts are made as archives boot
            _write(args.work, result)
        result["bus_errors"] = list(stack.bus.errors) if stack.bus else ["no bus"]
    _write(args.work, result)
    return 0


def held_names(stack: LocalStack) -> dict[str, Any]:
    """What this stack holds on the machine, as the machine says: the accounts whose home is
    under its fleet's MOUNT_ROOT, their groups and the stack's own, its ports and its fleet's
    directory."""
    assert stack.fleet is not None and stack.deployment is not None
    homes = f"{stack.fleet.settings.mount_root}/"
    accounts = [p for p in pwd.getpwall() if p.pw_dir.startswith(homes)]
    groups = {grp.getgrgid(p.pw_gid).gr_name for p in accounts}
    groups |= {g.gr_name for g in grp.getgrall() if g.gr_name == stack.fleet.accounts.group}
    return {
        "accounts": sorted(p.pw_name for p in accounts),
        "groups": sorted(groups),
        "ports": [stack.api_port, stack.ssh_port,
                  int(stack.deployment.endpoint.rsplit(":", 1)[1])],
        "instance_root": str(stack.instance_root),
    }


def _write(work: Path, result: dict[str, Any]) -> None:
    partial = work / f".{RESULT}.partial"
    partial.write_text(json.dumps(result, indent=1))
    partial.replace(work / RESULT)


if __name__ == "__main__":
    raise SystemExit(main())
