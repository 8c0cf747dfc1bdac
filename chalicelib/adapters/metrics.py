"""Window metrics: CloudWatch EMF lines through powertools; per-host values through
PutMetricData; and fakes that keep them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from aws_lambda_powertools.metrics import MetricUnit, single_metric

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient

UNITS = {"Seconds": MetricUnit.Seconds, "Count": MetricUnit.Count, "Bytes": MetricUnit.Bytes,
         "None": MetricUnit.NoUnit}


class Metrics(Protocol):
    def record(self, name: str, unit: str, value: float) -> None: ...


class EmfMetrics:
    """One EMF line per value, flushed at once, so nothing is lost if the handler fails."""

    def __init__(self, namespace: str, service: str) -> None:
        self._namespace = namespace
        self._service = service

    def record(self, name: str, unit: str, value: float) -> None:
        with single_metric(name=name, unit=UNITS[unit], value=value,
                           namespace=self._namespace) as metric:
            metric.add_dimension(name="service", value=self._service)


class FakeMetrics:
    def __init__(self) -> None:
        self.values: list[tuple[str, str, float]] = []

    def record(self, name: str, unit: str, value: float) -> None:
        self.values.append((name, unit, value))


class HostMetrics(Protocol):
    def record_hosts(self, name: str, values: Mapping[str, float], at: datetime,
                     total: tuple[str, float] | None = None) -> None:
        """One value a host (dimension `host`), and optionally a fleet-wide one, at `at`."""


# "Each request is also limited to no more than 1000 different metrics", and to 1 MB
# (PutMetricData, CloudWatch API Reference): a datum here is well under 1 KB.
PUT_METRIC_DATA_LIMIT = 1000


class CloudWatchHostMetrics:
    """Per-host values through PutMetricData: EMF (EmfMetrics) takes one log line a host,
    since a line's dimension values are shared by all its metrics."""

    def __init__(self, client: CloudWatchClient, namespace: str) -> None:
        self._cloudwatch = client
        self._namespace = namespace

    def record_hosts(self, name: str, values: Mapping[str, float], at: datetime,
                     total: tuple[str, float] | None = None) -> None:
        data: list[Any] = [
            {"MetricName": name, "Dimensions": [{"Name": "host", "Value": host}],
             "Timestamp": at, "Value": value, "Unit": "None"}
            for host, value in sorted(values.items())]
        if total is not None:
            data.append({"MetricName": total[0], "Timestamp": at, "Value": total[1],
                         "Unit": "Count"})
        for start in range(0, len(data), PUT_METRIC_DATA_LIMIT):
            self._cloudwatch.put_metric_data(
                Namespace=self._namespace, MetricData=data[start:start + PUT_METRIC_DATA_LIMIT])


class FakeHostMetrics:
    def __init__(self) -> None:
        self.values: list[tuple[str, dict[str, float], datetime]] = []
        self.totals: list[tuple[str, float]] = []

    def record_hosts(self, name: str, values: Mapping[str, float], at: datetime,
                     total: tuple[str, float] | None = None) -> None:
        self.values.append((name, dict(values), at))
        if total is not None:
            self.totals.append(total)
