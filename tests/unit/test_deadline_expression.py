from __future__ import annotations

from datetime import datetime, timedelta, timezone

from chalicelib.adapters.scheduler import at_expression

UTC = timezone.utc


def test_a_deadline_with_a_fraction_of_a_second_is_rounded_up() -> None:
    deadline = datetime(2026, 11, 29, 5, 36, 0, 250_000, tzinfo=UTC)
    assert at_expression(deadline) == "at(2026-11-29T05:36:01)"


def test_a_whole_second_stays_and_the_minute_carries() -> None:
    assert at_expression(datetime(2026, 11, 29, 5, 36, 0, tzinfo=UTC)) == \
        "at(2026-11-29T05:36:00)"
    assert at_expression(datetime(2026, 12, 31, 23, 59, 59, 1, tzinfo=UTC)) == \
        "at(2027-01-01T00:00:00)"


def test_the_expression_is_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    assert at_expression(datetime(2026, 11, 29, 6, 36, tzinfo=paris)) == \
        "at(2026-11-29T05:36:00)"
