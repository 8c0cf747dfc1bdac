"""Window metrics: CloudWatch EMF lines through powertools, and a fake that keeps them."""

from __future__ import annotations

from typing import Protocol

from aws_lambda_powertools.metrics import MetricUnit, single_metric

UNITS = {"Seconds": MetricUnit.Seconds, "Count": MetricUnit.Count, "Bytes": MetricUnit.Bytes}


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
