"""The launch fan-out: one asynchronous Lambda invocation per shard."""

from __future__ import annotations

import json
import threading

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib import composition
from chalicelib.launcher import InlineLauncher, LambdaLauncher, ThreadLauncher, launch_event
from chalicelib.settings import MissingSettingError
from tests.functional.conftest import make_settings


def test_each_shard_is_one_asynchronous_invocation() -> None:
    client = boto3.client("lambda", region_name="us-east-1")
    with Stubber(client) as stub:
        for shard in ("s01", "s02"):
            stub.add_response("invoke", {"StatusCode": 202}, {
                "FunctionName": "offsite-prod-launch_shard", "InvocationType": "Event",
                "Payload": json.dumps(launch_event("w-1", shard)).encode()})
        LambdaLauncher(client, "offsite-prod-launch_shard").launch("w-1", ["s01", "s02"])
        stub.assert_no_pending_responses()


def test_inline_and_thread_launchers_run_each_shard() -> None:
    seen: list[tuple[str, str]] = []
    InlineLauncher(lambda w, s: seen.append((w, s))).launch("w-1", ["s01", "s02"])
    assert seen == [("w-1", "s01"), ("w-1", "s02")]
    done = threading.Event()
    ThreadLauncher(lambda w, s: done.set()).launch("w-2", ["s01"])
    assert done.wait(timeout=30)


def test_in_lambda_without_a_launch_function_is_a_setting_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "offsite-prod-api_handler")
    with pytest.raises(MissingSettingError, match="LAUNCH_FUNCTION"):
        composition._launcher(make_settings())
