"""The last run's summary, kept as a small JSON file in the state directory for `status`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from offsite_host.keys import write_secret

STATE_FILE = "last-run.json"


@dataclass(frozen=True)
class RunSummary:
    command: str
    started: float
    finished: float
    exit_code: int
    outcome: str
    window_id: str = ""
    bytes_sent: int = 0
    files: int = 0
    detail: str = ""


def save(state_dir: Path, summary: RunSummary) -> None:
    record: dict[str, Any] = {"last_run": asdict(summary)}
    previous = load_raw(state_dir)
    last_success = previous.get("last_success")
    if summary.exit_code == 0 and summary.command == "run":
        last_success = summary.finished
    record["last_success"] = last_success
    write_secret(state_dir / STATE_FILE, (json.dumps(record, indent=2) + "\n").encode("utf-8"))


def load_raw(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(data: dict[str, Any]) -> list[str]:
    """The `status` lines for a saved state (pure)."""
    run = data.get("last_run")
    if not isinstance(run, dict):
        return ["no run recorded yet"]
    lines = [
        f"last run:     {run.get('command', '?')} {_when(run.get('started'))} -> "
        f"{run.get('outcome', '?')} (exit {run.get('exit_code', '?')})",
        f"duration:     {_duration(run)}",
    ]
    if run.get("window_id"):
        lines.append(f"window:       {run['window_id']}")
    if run.get("bytes_sent") or run.get("files"):
        lines.append(f"sent:         {run.get('bytes_sent', 0)} bytes, "
                     f"{run.get('files', 0)} files transferred")
    if run.get("detail"):
        lines.append(f"detail:       {run['detail']}")
    lines.append(f"last success: {_when(data.get('last_success'))}")
    return lines


def _when(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "never"
    return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(run: dict[str, Any]) -> str:
    started, finished = run.get("started"), run.get("finished")
    if isinstance(started, int | float) and isinstance(finished, int | float):
        return f"{finished - started:.1f} s"
    return "?"
