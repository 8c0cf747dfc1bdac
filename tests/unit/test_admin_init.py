"""offsite-admin init: the plan from what exists, and keys that are never replaced."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.admin.initialise import (
    InitError,
    Step,
    Target,
    apply_init,
    plan_init,
    put_keys,
    render_plan,
)
from chalicelib.keys import KeyMaterial
from local import aws as local_aws

LOCAL, DEV = Target("local", local=True), Target("dev", local=False)
ALL_KEYS = {f"/offsite/dev/{n}" for n in ("ca-key", "ca-key.pub", "host-key", "host-key.pub")}


class FakeSsm:
    def __init__(self) -> None:
        self.put: dict[str, tuple[str, str]] = {}

    def put_parameter(self, **kwargs: Any) -> None:
        assert kwargs["Overwrite"] is False
        self.put[kwargs["Name"]] = (kwargs["Type"], kwargs["Value"])


def material(comment: str) -> KeyMaterial:
    return KeyMaterial("CA-SEED", f"ssh-ed25519 CA {comment}", "HOST-PEM", "ssh-ed25519 HOST")


def actions(steps: list[Step]) -> list[tuple[str, str]]:
    return [(s.action, s.name) for s in steps]


def test_the_local_stage_names_what_the_local_stack_uses() -> None:
    assert LOCAL.table == local_aws.TABLE
    assert LOCAL.keys.prefix == local_aws.KEY_PREFIX


def test_a_fresh_local_init_creates_keys_and_table_and_deploys_nothing() -> None:
    steps = plan_init(LOCAL, set(), table_exists=False, deploy=None)
    assert actions(steps) == [
        ("create", "/offsite/local/ca-key"), ("create", "/offsite/local/ca-key.pub"),
        ("create", "/offsite/local/host-key"), ("create", "/offsite/local/host-key.pub"),
        ("create", "offsite-local"), ("skip", "offsite-local")]
    assert [s.kind for s in steps][:2] == ["SSM SecureString", "SSM String"]


def test_in_aws_the_stack_makes_the_table() -> None:
    steps = plan_init(DEV, set(), table_exists=False, deploy="create: chalice package")
    assert actions(steps)[4:] == [("by-stack", "offsite-dev"), ("deploy", "offsite-dev")]
    assert plan_init(DEV, set(), False, None)[-1].note.startswith("--no-deploy")


def test_existing_keys_are_kept_and_nothing_else_is_done() -> None:
    steps = plan_init(DEV, ALL_KEYS, table_exists=True, deploy=None)
    assert {s.action for s in steps[:4]} == {"keep"}
    assert not any(s.does_something for s in steps)
    assert "never overwritten" in steps[0].note


def test_half_a_key_pair_is_refused() -> None:
    with pytest.raises(InitError, match="/offsite/dev/ca-key exists without its other half"):
        plan_init(DEV, {"/offsite/dev/ca-key"}, table_exists=False, deploy=None)


def test_only_the_missing_pair_is_written_and_never_overwritten() -> None:
    existing = {"/offsite/dev/ca-key", "/offsite/dev/ca-key.pub"}
    steps = plan_init(DEV, existing, table_exists=False, deploy=None)
    ssm = FakeSsm()
    put_keys(ssm, DEV, steps, make=material)
    assert ssm.put == {"/offsite/dev/host-key": ("SecureString", "HOST-PEM"),
                       "/offsite/dev/host-key.pub": ("String", "ssh-ed25519 HOST")}


def test_apply_writes_keys_then_deploys_and_logs_names_only() -> None:
    steps = plan_init(DEV, set(), table_exists=False, deploy="create")
    ssm, deployed, logged = FakeSsm(), [], []
    apply_init(DEV, steps, ssm, dynamodb=None, deploy=lambda: deployed.append(True),
               log=logged.append)
    assert deployed == [True] and len(ssm.put) == 4
    assert logged[0] == "created SSM SecureString /offsite/dev/ca-key"
    assert not any("BEGIN" in line or "ssh-ed25519" in line for line in logged)


def test_the_plan_reads_as_a_table() -> None:
    text = render_plan(LOCAL, plan_init(LOCAL, set(), False, None), "the local stack")
    lines = text.splitlines()
    assert lines[0] == "offsite-admin init: stage local, the local stack"
    assert lines[1].split()[:4] == ["create", "SSM", "SecureString", "/offsite/local/ca-key"]
