"""What offsite-admin prints: tables, a window's summary, the cost."""

from __future__ import annotations

from chalicelib.admin import tables, views
from chalicelib.admin.usage import observe
from chalicelib.cost import load_prices, month_at, month_kept_up, render

HOSTS = [{"name": "c", "enabled": True, "volume_id": "vol-1", "key_fingerprint": "SHA256:a",
          "enrolled_at": "2026-11-30T02:00:00.123+00:00", "public_key": "ssh-ed25519 AAAA"},
         {"name": "web-01", "enabled": False, "volume_id": "vol-2",
          "key_fingerprint": "SHA256:b", "enrolled_at": "2026-11-30T03:00:00+00:00"}]
WINDOW = {"window_id": "w-2", "state": "CLOSED", "trigger": "schedule",
          "opened_at": "2026-12-01T02:00:00+00:00", "deadline": "2026-12-01T05:36:00+00:00",
          "expected": ["c", "o"], "missing": ["o"], "reason": "deadline",
          "entered": {"OPENING": "2026-12-01T02:00:00+00:00",
                      "SNAPSHOTTING": "2026-12-01T02:10:00+00:00"},
          "snapshots": {"c": "completed", "o": "completed"},
          "host_reports": [{"host": "c", "status": "succeeded", "bytes_sent": 3 * 1024**2,
                            "files": 12, "duration_s": 61.25, "detail": ""}]}


def test_table_aligns_columns_under_headings() -> None:
    text = tables.table([{"a": "x", "b": None}, {"a": "longer", "b": True}],
                        [("a", "A"), ("b", "B")])
    assert text.splitlines() == ["A       B", "x       -", "longer  yes"]


def test_sizes() -> None:
    assert [tables.size(n) for n in (0, 1023, 1024, 3 * 1024**2, 5 * 1024**4)] == [
        "0 B", "1023 B", "1.0 KiB", "3.0 MiB", "5.0 TiB"]


def test_hosts_table_shows_fingerprints_not_keys() -> None:
    lines = views.hosts_table(HOSTS).splitlines()
    assert lines[0].split() == ["HOST", "STATE", "VOLUME", "ENROLLED", "(UTC)", "KEY"]
    assert lines[1].split() == ["c", "enabled", "vol-1", "2026-11-30T02:00:00", "SHA256:a"]
    assert lines[2].split()[:2] == ["web-01", "revoked"]
    assert "AAAA" not in views.hosts_table(HOSTS)
    assert views.hosts_table([]) == "no hosts enrolled"


def test_window_summary_and_history() -> None:
    summary = views.window_summary(WINDOW)
    assert "window:   w-2" in summary and "missing:  o" in summary
    assert any(line.split() == ["c", "succeeded", "3.0", "MiB", "12", "61.2s"]
               for line in summary.splitlines())
    history = views.windows_table([WINDOW]).splitlines()
    assert history[1].split()[:6] == ["w-2", "CLOSED", "2026-12-01T02:00:00", "-", "schedule",
                                      "1/2"]
    assert views.windows_table([]) == "no windows yet"


def test_the_current_window_is_the_active_one() -> None:
    assert views.current_of([WINDOW]) is None
    active = {**WINDOW, "window_id": "w-3", "state": "OPEN"}
    assert views.current_of([active, WINDOW]) == active


def test_snapshots_table() -> None:
    answer = {"host": "c", "snapshots": [
        {"snapshot_id": "snap-1", "window_id": "w-2", "day": "2026-12-01",
         "started_at": "2026-12-01T02:10:00+00:00", "complete": True, "size_gib": 20}]}
    lines = views.snapshots_table(answer).splitlines()
    assert lines[1].split() == ["snap-1", "2026-12-01", "w-2", "yes", "20",
                                "2026-12-01T02:10:00+00:00"]
    assert views.snapshots_table({"host": "c", "snapshots": []}) == "no snapshots of c"


def test_cost_text_and_data_agree() -> None:
    observed = observe([WINDOW], instance_type="t3.small", volume_gib=40, retention_days=20)
    prices = load_prices()
    mine, kept_up = month_at(observed.usage, prices), month_kept_up(observed.usage, prices)
    data = views.cost_data(observed, mine, kept_up, prices)
    assert data["windows"] == ["w-2"] and data["usage"]["stored_estimated"] is True
    assert data["total_usd"] == round(mine.total, 4) < data["kept_up_total_usd"]
    text = views.cost_text(observed, render(mine, kept_up, prices))
    assert "billed 600 s a window (at least 60 s a start) of a 12960 s window" in text
    assert f"total per month (USD) {mine.total:.2f} {kept_up.total:.2f}" in " ".join(
        text.split())
