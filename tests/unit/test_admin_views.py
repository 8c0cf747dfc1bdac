"""What offsite-admin prints: tables, a window's summary, the cost."""

from __future__ import annotations

from chalicelib.admin import tables, views
from chalicelib.admin.usage import observe
from chalicelib.cost import load_prices
from chalicelib.cost_report import compare, designs

HOSTS = [{"name": "c", "enabled": True, "size_gib": 20, "key_fingerprint": "SHA256:a",
          "enrolled_at": "2026-11-30T02:00:00.123+00:00", "public_key": "ssh-ed25519 AAAA"},
         {"name": "web-01", "enabled": False, "size_gib": 500,
          "key_fingerprint": "SHA256:b", "enrolled_at": "2026-11-30T03:00:00+00:00"}]
WINDOW = {"window_id": "w-2", "state": "CLOSED", "trigger": "schedule",
          "opened_at": "2026-12-01T02:00:00+00:00", "deadline": "2026-12-01T05:36:00+00:00",
          "expected": ["c", "o"], "missing": ["o"], "reason": "deadline",
          "entered": {"OPENING": "2026-12-01T02:00:00+00:00",
                      "SNAPSHOTTING": "2026-12-01T02:10:00+00:00"},
          "snapshots": {"c": "completed", "o": "completed"},
          "shards": [{"shard_id": "s01", "state": "CLOSED", "hosts": ["c"],
                      "instance_id": "i-0aaa", "address": "203.0.113.7",
                      "entered": {"OPENING": "2026-12-01T02:00:00+00:00",
                                  "SNAPSHOTTING": "2026-12-01T02:10:00+00:00",
                                  "CLOSED": "2026-12-01T02:20:00+00:00"}},
                     {"shard_id": "s02", "state": "FAILED", "hosts": ["o", "p"],
                      "instance_id": None, "address": None,
                      "entered": {"OPENING": "2026-12-01T02:00:00+00:00",
                                  "FAILED": "2026-12-01T02:01:00+00:00"}}],
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
    assert lines[0].split() == ["HOST", "STATE", "GIB", "ENROLLED", "(UTC)", "KEY"]
    assert lines[1].split() == ["c", "enabled", "20", "2026-11-30T02:00:00", "SHA256:a"]
    assert lines[2].split()[:3] == ["web-01", "revoked", "500"]
    assert "AAAA" not in views.hosts_table(HOSTS)
    assert views.hosts_table([]) == "no hosts enrolled"


def test_host_line_shows_the_size_not_a_volume() -> None:
    assert views.host_line(HOSTS[0], new=True) == \
        "enrolled c (enabled): size 20 GiB, key SHA256:a"
    assert "vol-" not in views.host_line(HOSTS[1])


def test_window_summary_and_history() -> None:
    summary = views.window_summary(WINDOW)
    assert "window:   w-2" in summary and "missing:  o" in summary
    assert any(line.split() == ["c", "succeeded", "3.0", "MiB", "12", "61.2s"]
               for line in summary.splitlines())
    history = views.windows_table([WINDOW]).splitlines()
    assert history[0].split()[:8] == ["WINDOW", "STATE", "OPENED", "(UTC)", "PURPOSE",
                                      "TRIGGER", "REPORTED", "ARCHIVES"]
    assert history[1].split()[:7] == ["w-2", "CLOSED", "2026-12-01T02:00:00", "-", "schedule",
                                      "1/2", "2"]
    assert views.windows_table([]) == "no windows yet"


def test_window_summary_shows_each_archive() -> None:
    lines = views.window_summary(WINDOW).splitlines()
    head = lines.index(next(line for line in lines if line.startswith("ARCHIVE")))
    assert lines[head].split() == ["ARCHIVE", "STATE", "INSTANCE", "ADDRESS", "HOSTS"]
    assert lines[head + 1].split() == ["s01", "CLOSED", "i-0aaa", "203.0.113.7", "c"]
    assert lines[head + 2].split() == ["s02", "FAILED", "-", "-", "o,p"]
    assert "ARCHIVE" not in views.window_summary({**WINDOW, "shards": []})


def test_the_current_window_is_the_active_one() -> None:
    assert views.current_of([WINDOW]) is None
    active = {**WINDOW, "window_id": "w-3", "state": "OPEN"}
    assert views.current_of([active, WINDOW]) == active


def test_the_current_window_is_the_backup_one_beside_restores() -> None:
    restore = {**WINDOW, "window_id": "w-5", "state": "OPEN", "purpose": "restore"}
    backup = {**WINDOW, "window_id": "w-4", "state": "OPENING", "purpose": "backup"}
    assert views.current_of([restore, backup, WINDOW]) == backup
    assert views.current_of([restore, WINDOW]) == restore


def test_snapshots_table() -> None:
    answer = {"host": "c", "snapshots": [
        {"snapshot_id": "snap-1", "window_id": "w-2", "day": "2026-12-01",
         "started_at": "2026-12-01T02:10:00+00:00", "complete": True, "size_gib": 20}]}
    lines = views.snapshots_table(answer).splitlines()
    assert lines[1].split() == ["snap-1", "2026-12-01", "w-2", "yes", "20",
                                "2026-12-01T02:10:00+00:00"]
    assert views.snapshots_table({"host": "c", "snapshots": []}) == "no snapshots of c"


def test_cost_text_and_data_agree() -> None:
    observed = observe([WINDOW], instance_type="t3.small", volume_gib=20, retention_days=20)
    prices = load_prices()
    costs = designs(observed.usage, prices)
    data = views.cost_data(observed, costs, prices)
    assert data["windows"] == ["w-2"] and data["usage"]["stored_estimated"] is True
    assert data["usage"]["volume_gib"] == 20  # c only: s02 never launched, its hosts had none
    assert data["total_usd"] == round(costs[0].total, 4) < data["kept_up_total_usd"]
    assert data["designs"]["persistent"]["total_usd"] == data["persistent_total_usd"]
    assert 0 < data["cloudwatch_free_usd"] < data["total_usd"]
    text = views.cost_text(observed, compare(observed.usage, prices))
    assert "billed 600 s a shard (at least 60 s a start) of a 12960 s window" in text
    usage = observed.usage
    assert (f"snapshots grow {usage.snapshot_bytes_per_sent_byte:g} x that in changed 512 KiB "
            f"blocks ({views.size(round(usage.snapshot_growth_gib * views.GIB))}"
            in " ".join(text.split()))  # the estimate the snapshot line is priced from
    fleet, persistent, kept_up = (c.total for c in costs)
    assert (f"total per month (USD) {fleet:.2f} {persistent:.2f} {kept_up:.2f}"
            in " ".join(text.split()))
