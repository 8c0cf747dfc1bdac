"""The last-run summary behind `offsite-host status`."""

from __future__ import annotations

from pathlib import Path

from offsite_host import state
from offsite_host.state import RunSummary

T = 1_900_000_000.0


def test_nothing_recorded_yet(tmp_path: Path) -> None:
    assert state.describe(state.load_raw(tmp_path)) == ["no run recorded yet"]


def test_summary_round_trip_and_last_success(tmp_path: Path) -> None:
    state.save(tmp_path, RunSummary("run", T, T + 12.5, 0, "succeeded", "w-1", 2048, 3,
                                    "verified"))
    state.save(tmp_path, RunSummary("run", T + 86400, T + 86410, 4, "deadline", "w-2", 0, 0,
                                    "deadline reached"))
    lines = state.describe(state.load_raw(tmp_path))
    assert lines[0] == "last run:     run 2030-03-18 17:46:40 UTC -> deadline (exit 4)"
    assert "duration:     10.0 s" in lines
    assert "window:       w-2" in lines
    assert "detail:       deadline reached" in lines
    assert lines[-1] == "last success: 2030-03-17 17:46:52 UTC"


def test_a_damaged_state_file_reads_as_empty(tmp_path: Path) -> None:
    (tmp_path / state.STATE_FILE).write_text("{not json")
    assert state.load_raw(tmp_path) == {}
