"""`make demo`'s options are checked before it changes anything, and its work files do not
pile up: local/.run keeps the newest few demos."""

from __future__ import annotations

from pathlib import Path

import pytest

from local import demo


@pytest.mark.parametrize("argv, says", [
    (["--windows", "0"], "0 windows: give 1 to 10"),
    (["--windows", "-3"], "-3 windows: give 1 to 10"),
    (["--windows", "11"], "11 windows: give 1 to 10"),
    (["--windows", "two"], "'two' is not a whole number"),
    (["--window-minutes", "-5"], "-5 minutes: give 1 to 216"),
    (["--window-minutes", "0"], "0 minutes: give 1 to 216"),
    (["--window-minutes", "nan"], "nan minutes: give 1 to 216"),
    (["--window-minutes", "inf"], "inf minutes: give 1 to 216"),
    (["--window-minutes", "217"], "217 minutes: give 1 to 216"),
    (["--window-minutes", "soon"], "'soon' is not a number of minutes"),
])
def test_bad_options_are_refused_before_anything_is_made(
        argv: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "run"
    monkeypatch.setattr(demo, "RUN_DIR", runs)
    with pytest.raises(SystemExit) as ended:
        demo.main(argv)
    assert ended.value.code == 2
    assert says in capsys.readouterr().err
    assert not runs.exists()


def test_good_options_parse() -> None:
    args = demo._parser().parse_args(["--windows", "3", "--window-minutes", "10"])
    assert (args.windows, args.window_minutes) == (3, 10.0)
    default = demo._parser().parse_args([])
    assert (default.windows, default.window_minutes) == (2, 5.0)


def test_only_the_newest_demos_work_files_are_kept(tmp_path: Path) -> None:
    names = [f"demo-2026120{day}T100000-x" for day in (3, 1, 4, 2)]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "stack.log").write_text("log")
    (tmp_path / "notes").mkdir()  # not a demo's: never touched
    (tmp_path / "demo-link").symlink_to(tmp_path / "notes")
    removed = demo.prune_runs(tmp_path, 2)
    assert sorted(p.name for p in removed) == sorted(names)[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "demo-20261203T100000-x", "demo-20261204T100000-x", "demo-link", "notes"]
    assert demo.prune_runs(tmp_path / "missing", 2) == []
