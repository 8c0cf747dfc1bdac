from __future__ import annotations

from datetime import datetime, timezone

import pytest

from chalicelib.schedule import next_open

NOW = datetime(2026, 11, 29, 1, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(("expression", "expected"), [
    ("cron(0 2 * * ? *)", datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)),
    ("cron(0 1 * * ? *)", datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc)),
    ("cron(15,45 1 * * ? *)", datetime(2026, 11, 29, 1, 45, tzinfo=timezone.utc)),
    ("cron(30 1 * * ? *)", datetime(2026, 11, 30, 1, 30, tzinfo=timezone.utc)),
])
def test_daily_expressions(expression: str, expected: datetime) -> None:
    assert next_open(expression, NOW) == expected


@pytest.mark.parametrize("expression", ["rate(1 day)", "cron(0 2 ? * MON-FRI *)",
                                        "cron(0 25 * * ? *)", "nonsense"])
def test_unknown_forms_answer_none(expression: str) -> None:
    assert next_open(expression, NOW) is None
