"""`make serve` prints the walk-through that README.md shows and tests/e2e/test_serve.py runs;
README's day-to-day and enrolment commands are among it. Its work directories do not pile up
and leave the demo's alone."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from local import demo, serve

README = Path(__file__).parents[2] / "README.md"


def block_after(text: str, marker: str) -> str:
    """The first ```sh block after `marker`."""
    start = text.index(marker)
    opening = text.index("```sh\n", start) + len("```sh\n")
    return text[opening:text.index("```\n", opening)]


def commands(block: str) -> list[str]:
    """Each line's command, without its comment (two spaces, then #)."""
    return [re.split(r"\s{2,}#", line)[0].strip() for line in block.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_readme_shows_exactly_the_walkthrough_serve_prints() -> None:
    assert block_after(README.read_text(), "## Try it on `make serve`") == serve.WALKTHROUGH


def test_readme_day_to_day_commands_are_in_the_walkthrough() -> None:
    day_to_day = commands(block_after(README.read_text(), "### Day to day"))
    assert len(day_to_day) == 8
    assert set(day_to_day) <= set(commands(serve.WALKTHROUGH))


def test_readme_enrolment_steps_are_in_the_walkthrough() -> None:
    enrolment = block_after(README.read_text(), "## Enrolling a host")
    walkthrough = commands(serve.WALKTHROUGH)
    steps = re.findall(r"offsite-host (\w+)", enrolment)
    assert steps == ["keygen", "init"]
    for step in [*steps, "run", "status"]:  # the README's later paragraphs name these two
        assert any(line.startswith(f"offsite-host --config web-1/host.toml {step}")
                   for line in walkthrough), step
    enrol = block_after(README.read_text(), "On your workstation, enrol the printed key")
    assert enrol.startswith("offsite-admin host add web-1 --public-key ")
    assert "offsite-admin host add web-1 --public-key-file web-1/host.pub" in walkthrough


def test_serve_runs_are_pruned_apart_from_demo_runs(tmp_path: Path) -> None:
    made = [demo.run_dir(tmp_path, datetime(2026, 12, day), kind=kind)
            for day in (1, 2, 3) for kind in ("demo", "serve")]
    removed = demo.prune_runs(tmp_path, 1, kind="serve")
    assert [p.name[:15] for p in removed] == ["serve-20261201T", "serve-20261202T"]
    assert sorted(p.name[:5] for p in tmp_path.iterdir()) == ["demo-"] * 3 + ["serve"]
    assert all(p.exists() == (p not in removed) for p in made)


def test_only_the_first_signal_interrupts() -> None:
    stopper = serve._Stopper()
    with pytest.raises(KeyboardInterrupt):
        stopper(15, None)
    stopper(2, None)  # a second one (Ctrl-C during the cleanup) is let pass
    stopper(15, None)
