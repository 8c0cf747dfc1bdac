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
