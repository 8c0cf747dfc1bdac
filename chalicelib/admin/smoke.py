"""`offsite-admin smoke`: one command that proves a deployment end to end, run once after `init`
and after each upgrade.

A throwaway host (this workstation: a small generated data set and its own key, in a temporary
directory) is enrolled, a window is opened for it alone, the real `offsite-host run` backs it
up, the snapshot is waited for, the real `offsite-host restore` brings it back into the
temporary directory and the two trees are compared byte for byte (names, kinds, modes, link
targets). Whatever happened, everything it made is then removed (smoke_cleanup.py). The host
and the windows are its own: nothing another host has is read, changed or deleted.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.admin.api import AdminApi, ApiError, ApiUnreachableError
from chalicelib.admin.smoke_cleanup import TERMINAL, Cleanup, Made
from chalicelib.admin.smoke_host import last_line, make_data, run_host, write_config
from chalicelib.admin.smoke_report import (
    Leftovers,
    StepFailedError,
    StepResult,
    snapshot_cost,
    step_line,
    window_cost,
)
from chalicelib.admin.views import ACTIVE_STATES
from chalicelib.cost import CostLine, Prices

VOLUME_GIB = 1  # the smallest volume a host may have: the data set is a few MiB
Say = Callable[[str], None]


@dataclass(frozen=True)
class SmokeSettings:
    host_command: tuple[str, ...]  # the offsite-host to run
    window_hours: float = 0.5
    wait_s: float = 1200.0  # for each wait: the archive, the snapshot, the restore window
    poll_s: float = 1.0
    size_mib: float = 1.0
    work_parent: Path | None = None


@dataclass
class _Run:
    """What the steps learn, for the steps after them."""

    made: Made
    config: Path | None = None
    window_id: str | None = None
    snapshot_id: str | None = None
    bytes_sent: int = 0
    snapshot_taken: float = 0.0
    public_key: str = ""  # what `offsite-host keygen` printed: the line to enrol


@dataclass
class Smoke:
    api: AdminApi
    cleanup: Cleanup
    settings: SmokeSettings
    prices: Prices
    say: Say
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    host_name: Callable[[], str] = field(default=lambda: f"smoke-{secrets.token_hex(4)}")

    def __call__(self) -> tuple[list[StepResult], Leftovers]:
        run = _Run(Made(self.host_name()))
        self.say(f"offsite-admin smoke: throwaway host {run.made.host} against "
                 f"{self.api.base_url}")
        steps: list[StepResult] = []
        try:
            for name, action in self._steps(run):
                steps.append(self._step(name, action))
                self.say(step_line(steps[-1]))
                if not steps[-1].ok:
                    break
        except KeyboardInterrupt:
            steps.append(StepResult("interrupted", False, 0.0, "Ctrl-C: cleaning up"))
            self.say(step_line(steps[-1]))
        finally:
            self.say(f"cleaning up what {run.made.host} made ...")
            leftovers = self.cleanup(run.made)
        if run.snapshot_id:  # kept from its snapshot until the cleanup deleted it
            held = snapshot_cost(run.bytes_sent, self.clock() - run.snapshot_taken, self.prices)
            step = next(s for s in steps if s.name == "snapshot")
            step.cost = (*step.cost, held)
        return steps, leftovers

    def _steps(self, run: _Run) -> list[tuple[str, Callable[[], tuple[str, list[CostLine]]]]]:
        return [("reach the API", lambda: self._preflight(run)),
                ("make the host", lambda: self._make_host(run)),
                ("enrol", lambda: self._enrol(run)),
                ("open a window", lambda: self._open(run)),
                ("archive ready", lambda: self._ready(run)),
                ("backup run", lambda: self._backup(run)),
                ("snapshot", lambda: self._snapshot(run)),
                ("restore", lambda: self._restore(run)),
                ("compare", lambda: self._compare(run))]

    def _step(self, name: str, action: Callable[[], tuple[str, list[CostLine]]]) -> StepResult:
        started = self.clock()
        try:
            detail, cost = action()
        except (StepFailedError, ApiError, ApiUnreachableError, OSError,
                subprocess.SubprocessError) as exc:
            return StepResult(name, False, self.clock() - started, str(exc))
        return StepResult(name, True, self.clock() - started, detail, tuple(cost))

    # the steps -------------------------------------------------------------------------------
    def _preflight(self, run: _Run) -> tuple[str, list[CostLine]]:
        windows = self.api.call("GET", "/v1/windows").get("windows", [])
        active = [w for w in windows if w.get("state") in ACTIVE_STATES
                  and w.get("purpose", "backup") == "backup"]
        if active:
            raise StepFailedError(f"window {active[0]['window_id']} is {active[0]['state']}: "
                                  "run smoke when no backup window is active")
        hosts = self.api.call("GET", "/v1/hosts").get("hosts", [])
        if any(h.get("name") == run.made.host for h in hosts):
            raise StepFailedError(f"a host {run.made.host} exists already: run smoke again")
        return f"no window active; {len(hosts)} host(s) enrolled, none touched", []

    def _make_host(self, run: _Run) -> tuple[str, list[CostLine]]:
        parent = self.settings.work_parent
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="offsite-smoke-", dir=parent))
        run.made.work_dir = work
        files = make_data(work / "data", round(self.settings.size_mib * 1024 * 1024))
        run.config = write_config(work, self.api.base_url, run.made.host,
                                  self.settings.window_hours)
        made = self._host("keygen", run=run)
        run.public_key = made.stdout.strip().splitlines()[-1]
        self._host("init", run=run)
        return f"{files} files in {work / 'data'}; key and repository in {work}", []

    def _enrol(self, run: _Run) -> tuple[str, list[CostLine]]:
        # Before the call: an enrolment whose answer is lost is still cleaned up.
        run.made.public_key = " ".join(run.public_key.split()[:2])  # as the API stores it
        self.api.call("PUT", f"/v1/hosts/{run.made.host}",
                      {"public_key": run.public_key, "size_gib": VOLUME_GIB})
        return f"enrolled {run.made.host} ({VOLUME_GIB} GiB volume)", []

    def _open(self, run: _Run) -> tuple[str, list[CostLine]]:
        window = self.api.call("POST", "/v1/windows", {
            "hosts": [run.made.host], "duration_hours": self.settings.window_hours})
        run.window_id = str(window["window_id"])
        return f"{run.window_id} ({window['state']}), deadline {window['deadline']}", []

    def _ready(self, run: _Run) -> tuple[str, list[CostLine]]:
        assert run.window_id is not None
        window = self._wait(run.window_id, ("OPEN",), "the archive to be ready")
        shards = ", ".join(f"{s.get('instance_id')} ({s.get('instance_type')})"
                           for s in window.get("shards") or [])
        return f"OPEN: archive {shards}", []

    def _backup(self, run: _Run) -> tuple[str, list[CostLine]]:
        done = self._host("run", run=run, timeout=self.settings.window_hours * 3600 + 300)
        return last_line(done.stderr) or "offsite-host run exited 0", []

    def _snapshot(self, run: _Run) -> tuple[str, list[CostLine]]:
        assert run.window_id is not None
        window = self._wait(run.window_id, ("CLOSED",), "the window to close")
        run.bytes_sent = sum(int(r.get("bytes_sent", 0)) for r in window.get("host_reports")
                             or [] if r.get("host") == run.made.host)
        points = self.api.call("GET", "/v1/snapshots", query={"host": run.made.host})
        ours = [p for p in points.get("snapshots", []) if p.get("window_id") == run.window_id]
        if not ours:
            raise StepFailedError(f"window {run.window_id} closed ({window.get('reason')}) "
                                  "with no snapshot of the host")
        run.snapshot_id, run.snapshot_taken = str(ours[0]["snapshot_id"]), self.clock()
        if not ours[0].get("complete"):
            raise StepFailedError(f"snapshot {run.snapshot_id} is not a complete recovery "
                                  f"point (window: {window.get('reason')})")
        return (f"{run.snapshot_id} complete; {run.bytes_sent} bytes sent; window "
                f"{window.get('reason')}", window_cost(window, self.prices, VOLUME_GIB))

    def _restore(self, run: _Run) -> tuple[str, list[CostLine]]:
        assert run.made.work_dir is not None and run.snapshot_id is not None
        self._host("restore", "--snapshot", run.snapshot_id, "--path",
                   str(run.made.work_dir / "data"), "--to", str(run.made.work_dir / "restored"),
                   run=run, timeout=self.settings.wait_s)
        windows = self.api.call("GET", "/v1/windows").get("windows", [])
        restores = [w for w in windows if w.get("purpose") == "restore"
                    and run.made.host in (w.get("expected") or [])]
        if not restores:
            raise StepFailedError("offsite-host restore exited 0 but no restore window of the "
                                  "host is listed")
        window = self._wait(restores[0]["window_id"], TERMINAL, "the restore window to end")
        return (f"{run.snapshot_id} into {run.made.work_dir / 'restored'} through "
                f"{window['window_id']} ({window['state']})",
                window_cost(window, self.prices, VOLUME_GIB))

    def _compare(self, run: _Run) -> tuple[str, list[CostLine]]:
        from offsite_host.compare import differences, inventory  # the host client's own

        assert run.made.work_dir is not None
        backed_up = inventory(run.made.work_dir / "data")
        found = differences(backed_up, inventory(run.made.work_dir / "restored"))
        if found:
            listed = "\n         ".join(found[:10])
            raise StepFailedError(f"{len(found)} difference(s):\n         {listed}")
        return f"{len(backed_up)} entries identical (content, names, kinds, modes, links)", []

    # helpers ---------------------------------------------------------------------------------
    def _host(self, *args: str, run: _Run,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
        assert run.config is not None
        return run_host(self.settings.host_command, run.config, args, timeout)

    def _wait(self, window_id: str, states: Sequence[str], what: str) -> dict[str, Any]:
        limit = self.clock() + self.settings.wait_s
        while True:
            window = dict(self.api.call("GET", f"/v1/windows/{window_id}"))
            state = window["state"]
            if state in states:
                return window
            if state in TERMINAL:
                raise StepFailedError(f"window {window_id} is {state}: {window.get('reason')}")
            if self.clock() > limit:
                raise StepFailedError(f"waited {self.settings.wait_s:.0f} s for {what}; "
                                      f"window {window_id} is still {state}")
            self.sleep(self.settings.poll_s)
