"""Fixtures shared by every layer: fake AWS credentials (never real ones) and moto."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1", "POWERTOOLS_METRICS_NAMESPACE": "Offsite",
    "POWERTOOLS_SERVICE_NAME": "offsite",
    # moto's ~1300 default images cost seconds per test; ours need none of them.
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
})


@pytest.fixture
def aws() -> Iterator[None]:
    """An in-process moto for the test's duration."""
    from moto import mock_aws

    with mock_aws():
        yield


# Tests that act on the machine itself (Unix accounts, sshd, FUSE mounts, loop devices, the
# local stack) run one after another on one xdist worker, as they always have; everything
# else shares the other core (Makefile: `pytest -n 2 --dist loadgroup`).
_ON_THE_MACHINE = ("tests/e2e/", "tests/functional/test_bench_wire.py",
                   "tests/functional/test_bench_blocks.py",
                   "tests/functional/test_bench_restore.py",
                   "tests/integration/test_instance_boot.py",
                   "tests/integration/test_local_fleet.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(part in item.nodeid for part in _ON_THE_MACHINE):
            item.add_marker(pytest.mark.xdist_group("machine"))
