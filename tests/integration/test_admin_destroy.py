"""`offsite-admin destroy` on moto: it removes one stage (stack, table, keys), keeps its snapshots
unless told twice, and never touches another stage's table, keys or snapshots, even where the
two stages have hosts of the same name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib.adapters.dynamo_store import create_table
from chalicelib.admin import cli, commands

KEYS = ("ca-key", "ca-key.pub", "host-key", "host-key.pub")


def make_stage(stage: str, hosts: list[str], windows: list[str]) -> None:
    dynamodb, ssm = boto3.client("dynamodb"), boto3.client("ssm")
    create_table(dynamodb, f"offsite-{stage}")
    items = [("HOST", h) for h in hosts] + [("WINDOWS", w) for w in windows]
    for pk, sk in items:
        dynamodb.put_item(TableName=f"offsite-{stage}", Item={"pk": {"S": pk}, "sk": {"S": sk}})
    for name in KEYS:
        ssm.put_parameter(Name=f"/offsite/{stage}/{name}", Value="x", Type="String")


def snapshot(host: str, window: str, gib: int) -> str:
    ec2 = boto3.client("ec2")
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=gib)["VolumeId"]
    return str(ec2.create_snapshot(VolumeId=volume, TagSpecifications=[{
        "ResourceType": "snapshot", "Tags": [{"Key": "offsite:host", "Value": host},
                                             {"Key": "offsite:window", "Value": window}]}],
    )["SnapshotId"])


@pytest.fixture
def stages(aws: None) -> Iterator[dict[str, str]]:
    """Stage dev (a stack, hosts c and o) and stage prod (host c too) in one account."""
    make_stage("dev", ["c", "o"], ["w-dev-1"])
    make_stage("prod", ["c"], ["w-prod-1"])
    boto3.client("cloudformation").create_stack(StackName="offsite-dev", TemplateBody=(
        '{"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}}'))
    yield {"dev-c": snapshot("c", "w-dev-1", 5),
           "dev-o-enrol": snapshot("o", "w-20261201T000000Z-enrol", 3),
           "prod-c": snapshot("c", "w-prod-1", 7)}


def snapshot_ids() -> set[str]:
    found = boto3.client("ec2").describe_snapshots(OwnerIds=["self"])["Snapshots"]
    return {s["SnapshotId"] for s in found}


def tables() -> set[str]:
    return set(boto3.client("dynamodb").list_tables()["TableNames"])


def parameters() -> set[str]:
    found = boto3.client("ssm").describe_parameters()["Parameters"]
    return {p["Name"] for p in found}


def stack_gone() -> bool:
    try:
        stacks = boto3.client("cloudformation").describe_stacks(StackName="offsite-dev")
    except ClientError as exc:  # AWS: "Stack with id offsite-dev does not exist"
        return "does not exist" in str(exc)
    return all(s["StackStatus"] == "DELETE_COMPLETE" for s in stacks["Stacks"])


def prod_intact(ids: dict[str, str]) -> None:
    assert "offsite-prod" in tables()
    assert {f"/offsite/prod/{n}" for n in KEYS} <= parameters()
    assert ids["prod-c"] in snapshot_ids()


def destroy(*args: str) -> int:
    return cli.main(["destroy", "--stage", "dev", *args])


def test_destroy_keeps_the_snapshots_by_default(stages: dict[str, str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert destroy("--yes") == 0
    plan = capsys.readouterr().err
    assert "keep     2 snapshot(s) of 2 host(s), volumes of 8 GiB in all" in plan
    assert "delete   CloudFormation stack offsite-dev" in plan
    assert stack_gone() and "offsite-dev" not in tables()
    assert not any(p.startswith("/offsite/dev/") for p in parameters())
    assert snapshot_ids() == set(stages.values())
    prod_intact(stages)


def test_destroy_deletes_only_its_own_stages_snapshots_when_told(
        stages: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    other = snapshot("c", "w-somewhere-else", 2)  # host c, but in none of dev's windows
    assert destroy("--no-keep-snapshots", "--yes") == 0
    assert "DELETE   2 snapshot(s) of 2 host(s), volumes of 8 GiB" in capsys.readouterr().err
    assert snapshot_ids() == {stages["prod-c"], other}
    prod_intact(stages)


def test_destroy_asks_again_before_deleting_snapshots(
        stages: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    answers = iter([True, False])

    def confirm(question: str = "") -> bool:
        asked.append(question)
        return next(answers)

    monkeypatch.setattr(commands, "_confirmed", confirm)
    assert destroy("--no-keep-snapshots") == 1  # yes to the stage, no to the snapshots
    assert asked == ["Destroy stage dev?", "Delete 2 snapshot(s), 8 GiB of volumes, for good?"]
    assert "offsite-dev" in tables() and not stack_gone()  # nothing was done
    assert snapshot_ids() == set(stages.values())


def test_destroy_asks_and_a_script_must_say_yes(stages: dict[str, str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert destroy() == 1  # no terminal to ask on
    assert "--yes" in capsys.readouterr().err
    assert "offsite-dev" in tables() and not stack_gone()


def test_destroy_refuses_while_a_window_is_active(stages: dict[str, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    item: dict[str, Any] = {"pk": {"S": "ACTIVE"}, "sk": {"S": "BACKUP"},
                            "window_id": {"S": "w-dev-2"}}
    boto3.client("dynamodb").put_item(TableName="offsite-dev", Item=item)
    assert destroy("--yes") == 1
    assert "window w-dev-2 is active" in capsys.readouterr().err
    assert "offsite-dev" in tables() and not stack_gone()
    assert {f"/offsite/dev/{n}" for n in KEYS} <= parameters()
