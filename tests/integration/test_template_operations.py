"""The template's operations resources (issue 14, parts 2 and 3): an alarm when no window
opened for a day (missing data breaching), one on the Errors of each Lambda function, all to
the alert topic, and a dashboard of the metrics the code records. cfn-lint runs on the
packaged template in test_package.py."""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from chalicelib import cost
from chalicelib.adapters.metrics import EmfMetrics
from chalicelib.watch import AGE_METRIC, STALE_METRIC

from .test_policies import FUNCTIONS

ROOT = Path(__file__).parents[2]
TEMPLATE = json.loads((ROOT / "deploy" / "resources.json").read_text())
RESOURCES = TEMPLATE["Resources"]
TOPIC = [{"Ref": "AlertTopic"}]


def sub(value: Any, **names: str) -> str:
    """Fn::Sub with the names given; the pseudo parameters stand as themselves."""
    text = value["Fn::Sub"] if isinstance(value, dict) else value
    return re.sub(r"\$\{([^}]+)\}", lambda m: names.get(m[1], f"<{m[1]}>"), text)


def expanded() -> dict[str, Any]:
    """The resources as AWS::LanguageExtensions expands Fn::ForEach over a literal list."""
    out = {}
    for key, value in RESOURCES.items():
        if not key.startswith("Fn::ForEach::"):
            out[key] = value
            continue
        name, items, body = value
        if not isinstance(items, list):
            continue  # over a parameter (SshCidrs): not ours
        for item in items:
            for logical_id, resource in body.items():
                text = json.dumps(resource).replace(f"${{{name}}}", item)
                out[logical_id.replace(f"&{{{name}}}", re.sub(r"[^A-Za-z0-9]", "", item))] = (
                    json.loads(text))
    return out


def alarms() -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in expanded().items()
            if v.get("Type") == "AWS::CloudWatch::Alarm"}


def emitted(name: str) -> dict[str, Any]:
    """The EMF document EmfMetrics prints for one value, as composition.py builds it."""
    printed = io.StringIO()
    with redirect_stdout(printed):
        EmfMetrics(namespace="Offsite", service="offsite").record(name, "Count", 1)
    (line,) = printed.getvalue().splitlines()
    return dict(json.loads(line))


def test_no_window_opened_for_a_day_alarms_with_missing_data_breaching() -> None:
    alarm = alarms()["WindowsOpenedMissingAlarm"]
    document = emitted("WindowsOpened")
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    (dimensions,) = directive["Dimensions"]
    assert alarm["Namespace"] == directive["Namespace"]
    assert alarm["MetricName"] in [m["Name"] for m in directive["Metrics"]]
    assert alarm["Dimensions"] == [{"Name": d, "Value": document[d]} for d in dimensions]
    assert alarm["TreatMissingData"] == "breaching"
    assert (alarm["Statistic"], alarm["ComparisonOperator"], alarm["Threshold"]) == (
        "Sum", "LessThanThreshold", 1)
    hours = TEMPLATE["Parameters"]["WindowsOpenedAlarmHours"]
    assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == {
        "Ref": "WindowsOpenedAlarmHours"}
    # "Period multiplied by EvaluationPeriods can't be more than 604,800 seconds" for a period
    # of an hour or more (PutMetricAlarm, CloudWatch API Reference)
    assert alarm["Period"] == 3600 and hours["MaxValue"] * 3600 <= 604_800
    assert 24 < hours["Default"] <= 30
    assert alarm["AlarmActions"] == alarm["OKActions"] == TOPIC


def test_each_function_has_an_errors_alarm_to_the_topic() -> None:
    found = {sub(a["Dimensions"][0]["Value"], Stage="prod"): a for a in alarms().values()
             if a["Namespace"] == "AWS/Lambda"}
    assert sorted(found) == sorted(f"offsite-prod-{f}" for f in FUNCTIONS)
    for alarm in found.values():
        assert alarm["MetricName"] == "Errors" and alarm["AlarmActions"] == TOPIC
        assert alarm["Threshold"] == 1 and alarm["TreatMissingData"] == "notBreaching"


def test_the_dashboard_shows_what_the_code_records() -> None:
    dashboard = RESOURCES["OperationsDashboard"]["Properties"]
    body = json.loads(sub(dashboard["DashboardBody"], Stage="prod"))
    names = set()
    for widget in body["widgets"]:
        for line in widget["properties"].get("metrics", []):
            if line[0] == "Offsite":
                names.add(line[1])
            elif "expression" in line[0]:
                names.update(re.findall(r'MetricName="(\w+)"', line[0]["expression"]))
    assert names == {"WindowSeconds", "InstanceSecondsBilled", "WindowsOpened", "WindowsFailed",
                     "HostsSucceeded", "HostsFailed", "HostsMissing", "BytesSent", AGE_METRIC,
                     STALE_METRIC, "MonthAtWindowUSD"}
    code = "".join(p.read_text() for p in (ROOT / "chalicelib").rglob("*.py"))
    for name in names:  # each one recorded somewhere (a rename fails here)
        assert f'"{name}"' in code, name
    (listed,) = [w["properties"]["alarms"] for w in body["widgets"] if w["type"] == "alarm"]
    assert sorted(a.rsplit(":", 1)[1] for a in listed) == sorted(
        sub(a["AlarmName"], Stage="prod") for a in alarms().values())


def test_the_cost_model_counts_the_alarms_dashboard_and_metrics_the_stack_has() -> None:
    assert len(alarms()) == cost.ALARMS
    code = "".join(p.read_text() for p in (ROOT / "chalicelib").rglob("*.py"))
    recorded = set(re.findall(r'metrics\.record\(\s*"(\w+)"', code))
    assert recorded == set(cost.WINDOW_METRICS)  # a new window metric is priced, or fails here
    body = json.loads(sub(RESOURCES["OperationsDashboard"]["Properties"]["DashboardBody"]))
    lines = [line for w in body["widgets"] for line in w["properties"].get("metrics", [])]
    assert len(lines) - 1 == cost.DASHBOARD_METRICS_BESIDE_HOSTS  # the SEARCH: one per host


def test_the_dashboard_is_made_unless_the_stack_says_no() -> None:
    parameter = TEMPLATE["Parameters"]["Dashboard"]
    assert (parameter["Default"], parameter["AllowedValues"]) == ("yes", ["yes", "no"])
    assert TEMPLATE["Conditions"]["HasDashboard"] == {"Fn::Equals": [{"Ref": "Dashboard"},
                                                                     "yes"]}
    assert RESOURCES["OperationsDashboard"]["Condition"] == "HasDashboard"
    assert TEMPLATE["Outputs"]["DashboardName"]["Condition"] == "HasDashboard"
    conditional = {k for k, v in expanded().items() if v.get("Condition") == "HasDashboard"}
    assert conditional == {"OperationsDashboard"}  # nothing else refers to it
