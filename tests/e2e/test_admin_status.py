"""`offsite-admin status` on the local stack (issue 14, part 5): one host stale, one fine, one
revoked. The stale one was enrolled three days ago and never backed up (its enrolment time is
moved back in the table, so no test waits 36 hours); the table says so and the exit status
is 1, for a monitoring script."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from local.aws import TABLE, aws_client
from local.stack import LocalStack
from tests.e2e.test_admin_cli import Admin, admin, host_key, stack

__all__ = ["admin", "stack"]  # the fixtures, shared with test_admin_cli


def enrolled_days_ago(stack: LocalStack, host: str, days: int) -> None:
    assert stack.deployment is not None
    when = datetime.now(timezone.utc) - timedelta(days=days)
    aws_client("dynamodb", stack.deployment.endpoint).update_item(
        TableName=TABLE, Key={"pk": {"S": "HOST"}, "sk": {"S": host}},
        UpdateExpression="SET enrolled_at = :at",
        ExpressionAttributeValues={":at": {"S": when.isoformat()}})


def test_status_names_the_stale_host_and_exits_1(stack: LocalStack, admin: Admin) -> None:
    for name in ("c", "h", "o"):
        admin("host", "add", name, "--public-key", host_key(name))
    assert admin("status").returncode == 0  # every host just enrolled: none stale
    enrolled_days_ago(stack, "h", 3)
    enrolled_days_ago(stack, "o", 3)
    admin("host", "revoke", "o")  # revoked: never stale

    shown = admin("status", ok=False)
    assert shown.returncode == 1, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split()[:2] == ["HOST", "NEWEST"] and "STALE" in header
    by_host = {line.split()[0]: line.split() for line in rows if line[:2] in ("c ", "h ")}
    assert by_host["c"][-1] == "ok" and by_host["h"][-1] == "STALE"
    assert by_host["h"][1] == "-"  # no recovery point at all
    assert float(by_host["h"][3]) >= 72
    assert "1 of 2 hosts stale (no complete recovery point for more than 36 h): h" in shown.stdout
    assert "revoked, not watched: o" in shown.stdout

    data = admin("status", "--json", ok=False)
    assert data.returncode == 1
    answer = json.loads(data.stdout)
    assert answer["stale"] == ["h"] and answer["stale_after_hours"] == 36
    assert [h["host"] for h in answer["hosts"]] == ["c", "h"]
