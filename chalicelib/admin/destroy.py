"""`offsite-admin destroy`: remove a stage: its CloudFormation stack, its table (the stack
retains it), its key parameters in SSM and, only when asked twice, its snapshots.

`find_stage` reads what the stage has; `plan_destroy` (pure) says what will go and what stays,
and refuses while a window is active (its archive would outlive the stack that could end it);
`apply_destroy` does exactly the plan. Snapshots are the stage's by the stage's own table (its
hosts and its windows, or a host's enrolment), never by tag alone: another stage in the same
account tags its snapshots the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from chalicelib.adapters.compute import TAG_HOST, TAG_WINDOW
from chalicelib.admin.deploy import describe_stack
from chalicelib.admin.initialise import Log, Target, existing_parameters, table_exists

ENROL_WINDOW_SUFFIX = "-enrol"  # hosts.HostService._adopt: an adopted volume's snapshot
# Host names per DescribeSnapshots filter: a bound of our own (the EC2 API Reference, "Filter",
# sets none on Values), so that a stage of many hosts is asked in requests of a modest size.
FILTER_VALUES = 200


class DestroyError(Exception):
    pass


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    host: str
    gib: float  # the volume's size: what a full restore of it holds at most


@dataclass(frozen=True)
class Stage:
    target: Target
    stack: bool
    table: bool
    parameters: tuple[str, ...]
    snapshots: tuple[Snapshot, ...]
    active_windows: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    lines: tuple[str, ...]
    snapshots_deleted: bool

    def text(self) -> str:
        return "\n".join(self.lines)


def find_stage(target: Target, cloudformation: Any, dynamodb: Any, ssm: Any,
               ec2: Any) -> Stage:
    has_table = table_exists(dynamodb, target.table)
    hosts, windows, active = _table_index(dynamodb, target.table) if has_table else ([], [], [])
    stack = target.local is False and describe_stack(cloudformation, target.stack_name)
    return Stage(target, bool(stack), has_table,
                 tuple(sorted(existing_parameters(ssm, target.keys))),
                 tuple(_snapshots(ec2, hosts, set(windows))), tuple(active))


def _table_index(dynamodb: Any, table: str) -> tuple[list[str], list[str], list[str]]:
    """The stage's hosts, its windows, and the active windows' ids (their guards)."""
    def keys(pk: str, attribute: str) -> list[str]:
        found: list[str] = []
        pages = dynamodb.get_paginator("query").paginate(
            TableName=table, KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": pk}}, ConsistentRead=True)
        for page in pages:
            found += [item[attribute]["S"] for item in page["Items"] if attribute in item]
        return found

    return keys("HOST", "sk"), keys("WINDOWS", "sk"), keys("ACTIVE", "window_id")


def _snapshots(ec2: Any, hosts: list[str], windows: set[str]) -> list[Snapshot]:
    found: list[Snapshot] = []
    for start in range(0, len(hosts), FILTER_VALUES):
        batch = hosts[start:start + FILTER_VALUES]
        pages = ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"], Filters=[{"Name": f"tag:{TAG_HOST}", "Values": batch}])
        for page in pages:
            for snapshot in page["Snapshots"]:
                tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
                window = tags.get(TAG_WINDOW, "")
                if window in windows or window.endswith(ENROL_WINDOW_SUFFIX):
                    found.append(Snapshot(snapshot["SnapshotId"], tags[TAG_HOST],
                                          float(snapshot.get("VolumeSize", 0))))
    return sorted(found, key=lambda s: (s.host, s.snapshot_id))


def plan_destroy(stage: Stage, keep_snapshots: bool) -> Plan:
    if stage.active_windows:
        raise DestroyError(
            f"window {', '.join(stage.active_windows)} is active: close it (offsite-admin "
            "window close ID) and let it finish, then destroy; its archive would outlive the "
            "stack that ends it")
    target = stage.target
    lines = [f"offsite-admin destroy: stage {target.stage}"]
    if stage.stack:
        lines.append(f"  delete   CloudFormation stack {target.stack_name} (functions, API, "
                     "schedules, roles, launch template, security group, topic, logs)")
    lines.append(f"  delete   DynamoDB table {target.table}" if stage.table
                 else f"  absent   DynamoDB table {target.table}")
    lines += [f"  delete   SSM parameter {name}" for name in stage.parameters]
    count, gib = len(stage.snapshots), sum(s.gib for s in stage.snapshots)
    hosts = len({s.host for s in stage.snapshots})
    what = f"{count} snapshot(s) of {hosts} host(s), volumes of {gib:g} GiB in all"
    if keep_snapshots:
        lines.append(f"  keep     {what}: the last good copies, still billed; a stage "
                     "deployed again finds them by their hosts' names (offsite-admin snapshots "
                     "--host NAME); --no-keep-snapshots deletes them")
    else:
        lines.append(f"  DELETE   {what}: every recovery point of this stage, for good")
    if not stage.stack and not stage.table and not stage.parameters and (
            keep_snapshots or not stage.snapshots):
        lines.append("  nothing to remove")
    return Plan(tuple(lines), not keep_snapshots and bool(stage.snapshots))


def apply_destroy(stage: Stage, plan: Plan, cloudformation: Any, dynamodb: Any, ssm: Any,
                  ec2: Any, log: Log) -> list[str]:
    """Does the plan; returns what could not be removed (empty: all of it)."""
    target, failed = stage.target, []
    if stage.stack:
        log(f"deleting stack {target.stack_name} (takes minutes)")
        cloudformation.delete_stack(StackName=target.stack_name)
        try:
            cloudformation.get_waiter("stack_delete_complete").wait(
                StackName=target.stack_name, WaiterConfig={"Delay": 10, "MaxAttempts": 180})
        except WaiterError as exc:  # DELETE_FAILED: the table and keys stay with the stack
            raise DestroyError(f"the stack {target.stack_name} was not deleted ({exc}); its "
                               "events in the CloudFormation console say why; the table and "
                               "keys are left as they were") from exc
    if stage.table:
        # WindowTable has "DeletionPolicy": "Retain" (deploy/resources.json): deleting the
        # stack keeps it ("resources that are retained continue to exist and continue to incur
        # applicable charges", CloudFormation User Guide, DeletionPolicy attribute).
        dynamodb.delete_table(TableName=target.table)
        dynamodb.get_waiter("table_not_exists").wait(TableName=target.table)
        log(f"deleted table {target.table}")
    if stage.parameters:
        # At most 10 names a call (SSM API Reference, DeleteParameters): the stage has 4.
        # "After deleting a parameter, wait for at least 30 seconds to create a parameter
        # with the same name" (ibid.): an init of the same stage right after may be refused.
        ssm.delete_parameters(Names=list(stage.parameters))
        log(f"deleted {len(stage.parameters)} SSM parameter(s) under {target.keys.prefix}")
    if plan.snapshots_deleted:
        for snapshot in stage.snapshots:
            try:
                ec2.delete_snapshot(SnapshotId=snapshot.snapshot_id)
            # "You cannot delete a snapshot of the root device of an EBS volume used by a
            # registered AMI" (EC2 API Reference, DeleteSnapshot): reported, the rest go on.
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                failed.append(f"snapshot {snapshot.snapshot_id} of {snapshot.host} ({code})")
        log(f"deleted {len(stage.snapshots) - len(failed)} snapshot(s)")
    return failed
