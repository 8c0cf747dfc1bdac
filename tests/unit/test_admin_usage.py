"""Usage from the window history, for the cost."""

from __future__ import annotations

import pytest

from chalicelib.admin.usage import NoUsageError, billed_seconds, observe

MIB = 1024**2


def window(window_id: str, stopped_after_s: int | None, sent: dict[str, int],
           state: str = "CLOSED") -> dict[str, object]:
    entered = {"OPENING": "2026-12-01T02:00:00+00:00"}
    if stopped_after_s is not None:
        entered["SNAPSHOTTING"] = f"2026-12-01T02:{stopped_after_s // 60:02d}:" \
                                  f"{stopped_after_s % 60:02d}+00:00"
    return {"window_id": window_id, "state": state, "opened_at": "2026-12-01T02:00:00+00:00",
            "deadline": "2026-12-01T03:00:00+00:00", "expected": sorted(sent),
            "entered": entered,
            "host_reports": [{"host": h, "bytes_sent": b} for h, b in sent.items()]}


def test_billed_from_open_to_stopped() -> None:
    assert billed_seconds(window("w", 330, {})) == 330
    assert billed_seconds(window("w", None, {}, state="OPEN")) is None


def test_means_of_the_closed_windows_and_stored_from_the_largest_transfers() -> None:
    history = [window("w-3", None, {"c": 1}, state="OPEN"),
               window("w-2", 120, {"c": 2 * MIB, "o": 1 * MIB}),
               window("w-1", 600, {"c": 50 * MIB, "o": 30 * MIB})]
    observed = observe(history, instance_type="t3.small", volume_gib=40, retention_days=20)
    usage = observed.usage
    assert observed.window_ids == ("w-2", "w-1") and observed.stored_estimated
    assert (usage.hosts, usage.billed_seconds, usage.window_seconds) == (2, 360, 3600)
    assert usage.sent_bytes == (3 * MIB + 80 * MIB) // 2
    assert usage.stored_bytes == 80 * MIB
    given = observe(history, instance_type="t3.small", volume_gib=40, retention_days=20,
                    stored_bytes=7)
    assert given.usage.stored_bytes == 7 and not given.stored_estimated


def test_no_closed_window_is_a_clear_refusal() -> None:
    with pytest.raises(NoUsageError, match="no closed window"):
        observe([window("w", None, {}, state="OPENING")], instance_type="t3.small",
                volume_gib=0, retention_days=20)
