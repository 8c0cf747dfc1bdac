"""The smoke's steps with a stand-in API, a stand-in offsite-host and a pinned clock: it stops at
the first failure and always hands what it made to the cleanup, Ctrl-C included."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from chalicelib.admin.smoke import Smoke, SmokeSettings
from chalicelib.admin.smoke_cleanup import Made
from chalicelib.admin.smoke_report import Leftovers
from chalicelib.cost import load_prices

HOST = "smoke-0001"

# keygen prints the public key line, as offsite-host does; everything else succeeds quietly.
STAND_IN = """#!{python}
import sys
if "keygen" in sys.argv:
    print("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFake x")
"""


class Api:
    base_url = "http://api.invalid"

    def __init__(self, windows: list[dict[str, Any]] | None = None,
                 window_state: str = "OPENING", interrupt: bool = False) -> None:
        self.windows = windows or []
        self.window_state = window_state
        self.interrupt = interrupt
        self.calls: list[tuple[str, str]] = []

    def call(self, method: str, path: str, body: Any = None, query: Any = None) -> Any:
        self.calls.append((method, path))
        if self.interrupt:
            raise KeyboardInterrupt
        if path == "/v1/windows" and method == "GET":
            return {"windows": self.windows}
        if path == "/v1/hosts" and method == "GET":
            return {"hosts": [{"name": "c"}]}
        if path == "/v1/windows" and method == "POST":
            return {"window_id": "w-1", "state": "OPENING", "deadline": "soon"}
        if path == "/v1/windows/w-1":
            return {"window_id": "w-1", "state": self.window_state, "reason": "launching"}
        if method == "PUT":
            return {"name": HOST}
        raise AssertionError(path)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def smoke(api: Api, tmp_path: Path) -> tuple[Smoke, list[Made], list[str]]:
    stand_in = tmp_path / "offsite-host"
    stand_in.write_text(STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)
    handed: list[Made] = []
    printed: list[str] = []

    def cleanup(made: Made) -> Leftovers:
        handed.append(made)
        return Leftovers()

    clock = Clock()
    settings = SmokeSettings(host_command=(str(stand_in),), wait_s=60, poll_s=5,
                             work_parent=tmp_path / "work")
    return (Smoke(api, cleanup, settings, load_prices(), printed.append,
                  clock=clock, sleep=clock.sleep, host_name=lambda: HOST), handed, printed)


def test_an_archive_that_never_opens_fails_its_step_and_everything_is_handed_over(
        tmp_path: Path) -> None:
    run, handed, printed = smoke(Api(window_state="OPENING"), tmp_path)
    steps, _ = run()
    assert [(s.name, s.ok) for s in steps] == [
        ("reach the API", True), ("make the host", True), ("enrol", True),
        ("open a window", True), ("archive ready", False)]
    assert "waited 60 s for the archive to be ready; window w-1 is still OPENING" in \
        steps[-1].detail
    [made] = handed
    assert made.host == HOST and made.public_key is not None
    assert made.public_key.startswith("ssh-ed25519 AAAA") and made.work_dir is not None
    assert made.work_dir.parent == tmp_path / "work"
    assert any("look at:" in line for line in printed)


def test_a_window_already_active_stops_it_before_it_makes_anything(tmp_path: Path) -> None:
    api = Api(windows=[{"window_id": "w-0", "state": "OPEN", "purpose": "backup"}])
    run, handed, _ = smoke(api, tmp_path)
    steps, _ = run()
    assert [(s.name, s.ok) for s in steps] == [("reach the API", False)]
    assert "window w-0 is OPEN" in steps[0].detail
    assert handed == [Made(HOST)]  # nothing enrolled, no work directory
    assert ("PUT", f"/v1/hosts/{HOST}") not in api.calls


def test_ctrl_c_still_cleans_up(tmp_path: Path) -> None:
    run, handed, printed = smoke(Api(interrupt=True), tmp_path)
    steps, _ = run()
    assert [(s.name, s.ok) for s in steps] == [("interrupted", False)]
    assert handed == [Made(HOST)]
    assert any("cleaning up" in line for line in printed)


@pytest.mark.parametrize("state", ["FAILED", "CLOSED"])
def test_a_window_that_ends_before_it_opens_fails_at_once(tmp_path: Path, state: str) -> None:
    run, _, _ = smoke(Api(window_state=state), tmp_path)
    steps, _ = run()
    assert steps[-1].name == "archive ready" and not steps[-1].ok
    assert f"window w-1 is {state}: launching" in steps[-1].detail
