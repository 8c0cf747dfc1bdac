"""What `offsite-admin smoke` prints (pure): each step's outcome and time, where to look when
one failed, and what the smoke's own windows cost in the cost model (chalicelib/cost.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chalicelib.admin.usage import DEFAULT_INSTANCE_TYPE
from chalicelib.cost import (
    EC2_MINIMUM_S,
    GIB,
    ROOT_GIB,
    SECONDS_PER_MONTH,
    CostLine,
    Prices,
    ShardRun,
)

# What to look at when a step failed: the first thing an admin would open.
LOOK_AT: dict[str, str] = {
    "reach the API": "the API URL (--api-url, else the stack's EndpointURL output), your AWS "
                     "credentials (the admin routes are IAM-authorised), `offsite-admin window "
                     "status`: smoke needs no window active",
    "make the host": "the offsite-host message above: gocryptfs, rdiff-backup and rsync "
                     "installed on this workstation (README, host requirements)",
    "enrol": "the API's answer above; `offsite-admin host list`",
    "open a window": "the API's answer above; `offsite-admin window status` (one backup window "
                     "at a time)",
    "archive ready": "`offsite-admin window status WINDOW` (its reason); the launch_shard "
                     "function's log (CloudWatch /aws/lambda/offsite-STAGE-launch_shard); EC2 "
                     "capacity and quotas for the instance types",
    "backup run": "offsite-host's exit code and last lines above (`offsite-host --help` lists "
                  "the codes); the archive's console output (EC2 > instance > Get system log); "
                  "the stack's SshCidrs must include this workstation",
    "snapshot": "`offsite-admin window status WINDOW`: its shard's state and reason; the "
                "snapshot_state and reconciler functions' logs; EBS snapshots tagged "
                "offsite:window=WINDOW",
    "restore": "offsite-host's exit code and last lines above; `offsite-admin window history` "
               "(the restore window and its reason)",
    "compare": "the differences above: the restore gave back other bytes than were backed up, "
               "and said it succeeded; keep the output and report it",
}


class StepFailedError(Exception):
    """A step's failure, in words for the admin (the step adds where to look)."""


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str
    cost: tuple[CostLine, ...] = ()

    @property
    def usd(self) -> float:
        return sum(line.usd for line in self.cost)


@dataclass
class Leftovers:
    """What the cleanup removed, and what it could not (each with why)."""

    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)  # windows: they end, their records stay


def step_line(step: StepResult) -> str:
    mark = "ok  " if step.ok else "FAIL"
    cost = f"  ${step.usd:.4f}" if step.cost else ""
    text = f"  {mark} {step.name:14} {step.seconds:7.1f} s{cost}  {step.detail}"
    if not step.ok and step.name in LOOK_AT:
        text += f"\n       look at: {LOOK_AT[step.name]}"
    return text


def window_cost(window: Mapping[str, Any], prices: Prices, volume_gib: float) -> list[CostLine]:
    """One window as the cost model prices it (the fleet's lines for one window): each archive
    billed from launch to stop (at least EC2's 60 s), its root volume, public IPv4 address and
    data volumes until its snapshots completed. A window that never launched costs nothing."""
    lines: list[CostLine] = []
    for run in billed_shards(window):
        hours = max(EC2_MINIMUM_S, run.stopped_s) / 3600
        lines += [
            CostLine(f"EC2 {run.instance_type}", hours, "h",
                     prices.instance_hourly(run.instance_type)),
            CostLine(f"EBS root volume ({ROOT_GIB:g} GiB gp3)",
                     ROOT_GIB * run.closed_s / SECONDS_PER_MONTH, "GiB-month",
                     prices["ebs_gp3_gib_month"]),
            CostLine("public IPv4 address", run.stopped_s / 3600, "h",
                     prices["public_ipv4_hourly"]),
            CostLine("EBS data volume (gp3)",
                     volume_gib * run.hosts * run.closed_s / SECONDS_PER_MONTH, "GiB-month",
                     prices["ebs_gp3_gib_month"]),
        ]
    return lines


def billed_shards(window: Mapping[str, Any]) -> list[ShardRun]:
    """Each launched shard timed as usage.shard_runs times a backup's (launch to stop, launch
    to snapshots complete), and a restore's too: it stops when its host has reported and is
    CLOSED with no snapshot, so its stop is its CLOSED (or FAILED)."""
    runs = []
    for shard in window.get("shards") or []:
        entered = {k: datetime.fromisoformat(v) for k, v in (shard.get("entered") or {}).items()}
        ended = entered.get("CLOSED") or entered.get("FAILED")
        stopped = entered.get("SNAPSHOTTING") or ended
        if "OPENING" not in entered or stopped is None or not shard.get("instance_id"):
            continue  # never launched, or not stopped yet
        start = entered["OPENING"]
        runs.append(ShardRun(str(window["window_id"]),
                             shard.get("instance_type") or DEFAULT_INSTANCE_TYPE,
                             len(shard.get("hosts") or []), (stopped - start).total_seconds(),
                             ((ended or stopped) - start).total_seconds()))
    return runs


def snapshot_cost(stored_bytes: int, seconds: float, prices: Prices) -> CostLine:
    """A snapshot kept `seconds` (until the cleanup deleted it), holding what the host sent."""
    return CostLine("EBS snapshot", stored_bytes / GIB * seconds / SECONDS_PER_MONTH,
                    "GiB-month", prices["snapshot_gib_month"])


def render(steps: Sequence[StepResult], leftovers: Leftovers, prices: Prices) -> str:
    lines = ["", "cleanup:"]
    lines += [f"  ended   {what}" for what in leftovers.ended]
    lines += [f"  removed {what}" for what in leftovers.removed]
    lines += [f"  COULD NOT REMOVE {what}" for what in leftovers.kept]
    costs = [line for step in steps for line in step.cost]
    if costs:
        lines += ["", f"what this smoke cost (prices of {prices.region}, read {prices.read_on}; "
                      "plus a few dozen Lambda, API Gateway and DynamoDB requests, well under "
                      "a cent):"]
        lines += [f"  {c.item:34} {c.quantity:12.6f} {c.unit:9} ${c.usd:.5f}" for c in costs]
        lines.append(f"  {'total':34} {'':12} {'':9} ${sum(c.usd for c in costs):.5f}")
    failed = [s.name for s in steps if not s.ok]
    verdict = (f"smoke FAILED at: {', '.join(failed)}" if failed
               else "smoke passed: backed up, snapshotted, restored and compared byte for byte")
    if leftovers.kept:
        verdict += f"; {len(leftovers.kept)} thing(s) left behind (above)"
    lines += ["", verdict]
    return "\n".join(lines)


def summary_data(steps: Sequence[StepResult], leftovers: Leftovers) -> dict[str, Any]:
    return {"ok": all(s.ok for s in steps) and not leftovers.kept,
            "steps": [{"name": s.name, "ok": s.ok, "seconds": round(s.seconds, 3),
                       "detail": s.detail, "usd": round(s.usd, 6)} for s in steps],
            "ended": leftovers.ended, "removed": leftovers.removed,
            "left_behind": leftovers.kept,
            "total_usd": round(sum(s.usd for s in steps), 6)}
