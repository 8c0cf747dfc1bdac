"""Where a restore may write: a target that cannot be made is refused before anything is
fetched, and a failure to write beside it is a clear error, never a traceback; and whatever
ends a restore, its window hears of it."""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import threading
from pathlib import Path

import pytest
from offsite_host import restore as restore_module
from offsite_host import runner
from offsite_host.config import parse_config
from offsite_host.console import Console
from offsite_host.exitcodes import ConfigError, RestoreError, TransferError
from offsite_host.manifest import Verdict
from offsite_host.points import Choice, RecoveryPoint, RestoreWindow
from offsite_host.restore import Restorer, RestoreRequest
from offsite_host.restore_plan import TargetState
from offsite_host.run import Outcome
from offsite_host.session import Session
from offsite_host.unpack import place, target_state


def test_a_target_below_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("mine\n")
    for target in (tmp_path / "a-file" / "out", tmp_path / "a-file" / "deeper" / "out"):
        with pytest.raises(ConfigError, match="a-file is not a directory"):
            target_state(target)
    assert (tmp_path / "a-file").read_text() == "mine\n"


def test_absent_empty_and_not_empty_targets(tmp_path: Path) -> None:
    assert target_state(tmp_path / "new" / "deeper") is TargetState.ABSENT
    (tmp_path / "empty").mkdir()
    assert target_state(tmp_path / "empty") is TargetState.EMPTY
    (tmp_path / "empty" / "x").write_text("")
    assert target_state(tmp_path / "empty") is TargetState.NOT_EMPTY
    assert target_state(tmp_path / "empty" / "x") is TargetState.NOT_A_DIRECTORY
    assert target_state(Path("/proc")) is TargetState.MOUNT_POINT  # (Linux: always mounted)


def test_a_place_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("mine\n")
    built: list[Path] = []
    with pytest.raises(ConfigError, match="cannot write beside it"):
        place(tmp_path / "a-file" / "out", False, built.append, None)
    assert built == [] and (tmp_path / "a-file").read_text() == "mine\n"


def test_a_restore_that_breaks_unexpectedly_still_tells_its_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever ends a restore, the restore window hears it (else it stays open until its
    deadline); an unexpected error is reported failed and then raised as it was."""
    cfg = parse_config({"api_url": "https://api.example", "host": "web-1",
                        "paths": ["/srv/data"], "state_dir": str(tmp_path / "state")},
                       tmp_path, "linux", {})
    point = RecoveryPoint("snap-1", "w-1", "2030-03-01", 1.0, True, 1)
    window = RestoreWindow("r-1", "snap-1", "2030-03-01", True, 2.0)
    monkeypatch.setattr(restore_module, "request_restore", lambda client, chosen: window)
    reports: list[tuple[str, str]] = []

    class Stubbed(Restorer):
        def _fetch(self, client: object, opened: object) -> Path:
            return tmp_path / "staging"

        def _authenticate(self, staging: Path, choice: Choice) -> Verdict:
            return Verdict((), (), "matches")

        def _report(self, client: object, opened: object, status: str, detail: str,
                    started: float) -> None:
            reports.append((status, detail))

    def work(staging: Path) -> Outcome:
        raise RuntimeError("a bug")

    restorer = Stubbed(cfg, Console(io.StringIO()))
    with pytest.raises(RuntimeError, match="a bug"):
        restorer.in_window(None, Choice(point, "test"), work)  # type: ignore[arg-type]
    assert reports == [("failed", "internal error: RuntimeError('a bug')")]


def failing_rename(monkeypatch: pytest.MonkeyPatch, target: Path, failing: set[str]) -> None:
    """Renaming the entries named in `failing` to `target` fails, as when something made the
    target again between moving it aside and putting the restored tree there."""
    rename = Path.rename

    def maybe_fail(self: Path, to: Path) -> Path:
        if self.name in failing and Path(to) == target:
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
        return rename(self, to)

    monkeypatch.setattr(Path, "rename", maybe_fail)


def users_files(target: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in target.iterdir()}


def test_a_failed_swap_gives_the_target_its_content_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "live"
    target.mkdir()
    (target / "keep.txt").write_text("mine\n")
    failing_rename(monkeypatch, target, {"tree"})
    with pytest.raises(RestoreError, match="left as it was"):
        place(target, True, lambda tree: (tree / "restored.txt").write_text("old\n"), None)
    assert users_files(target) == {"keep.txt": "mine\n"}
    assert [p.name for p in tmp_path.iterdir()] == ["live"]


def test_content_that_cannot_be_given_back_is_kept_and_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "live"
    target.mkdir()
    (target / "keep.txt").write_text("mine\n")
    failing_rename(monkeypatch, target, {"tree", "previous"})
    with pytest.raises(RestoreError, match="content is kept in") as raised:
        place(target, True, lambda tree: (tree / "restored.txt").write_text("old\n"), None)
    kept = next(p for p in tmp_path.iterdir() if p.name.endswith("-previous"))
    assert str(kept) in str(raised.value)
    monkeypatch.undo()
    kept_from = {p.name: p.read_text() for p in kept.iterdir()}
    assert kept_from == {"keep.txt": "mine\n"}


class _Fetching(Restorer):
    """A Restorer whose session and two rsyncs are stand-ins: the data pull waits (up to a
    minute) for the manifest's pull to have started."""

    manifest_started = threading.Event()
    manifest_error: Exception | None = None

    def _until_stop(self, argv: list[str], session: object) -> runner.Finished:
        assert self.manifest_started.wait(60), "the manifest waited for the data"
        return runner.Finished(0, "Total bytes received: 10\n", "", False)

    def _fetch_manifest(self, ready_tools: object, rsh: str, session: object,
                        sealed: Path) -> None:
        self.manifest_started.set()
        if self.manifest_error is not None:
            raise self.manifest_error


def fetching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             error: Exception | None = None) -> _Fetching:
    cfg = parse_config({"api_url": "https://api.example", "host": "web-1",
                        "paths": ["/srv/data"], "state_dir": str(tmp_path / "state")},
                       tmp_path, "linux", {})
    session = Session("r-1", "192.0.2.7", 22, "web-1", "ssh-ed25519-cert-v01@openssh.com AAAA",
                      "192.0.2.7 ssh-ed25519 AAAA", "encrypted/", 2e9, 2e9)
    monkeypatch.setattr(restore_module, "open_session", lambda *args, **kwargs: session)
    monkeypatch.setattr(restore_module.tools, "resolve", lambda configured, names:
                        restore_module.tools.ResolvedTools(**{
                            f.name: f.name for f in dataclasses.fields(
                                restore_module.tools.ResolvedTools)}))
    restorer = _Fetching(cfg, Console(io.StringIO()))
    restorer.manifest_started = threading.Event()
    restorer.manifest_error = error
    return restorer


def test_the_manifest_is_fetched_beside_the_data_not_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    restorer = fetching(tmp_path, monkeypatch)
    window = RestoreWindow("r-1", "snap-1", "2030-03-01", True, 2.0)
    staging = restorer._fetch(None, window)  # type: ignore[arg-type]
    assert staging == tmp_path / "state" / "restore" / "snap-1" and staging.is_dir()


def test_a_manifest_that_cannot_be_fetched_still_fails_the_fetch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    restorer = fetching(tmp_path, monkeypatch, TransferError("fetching the manifest failed"))
    window = RestoreWindow("r-1", "snap-1", "2030-03-01", True, 2.0)
    with pytest.raises(TransferError, match="fetching the manifest failed"):
        restorer._fetch(None, window)  # type: ignore[arg-type]


def test_the_copy_during_the_fetch_makes_nothing_where_the_target_is_still_to_be_made(
        tmp_path: Path) -> None:
    """A target whose parent does not exist yet: nothing is made before the restore is
    complete (place() makes it then), so no early copy; beside an existing parent, its
    directory is there during the restore and gone after."""
    cfg = parse_config({"api_url": "https://api.example", "host": "web-1",
                        "paths": ["/srv/data"], "state_dir": str(tmp_path / "state")},
                       tmp_path, "linux", {})
    restorer = Restorer(cfg, Console(io.StringIO()))
    ready = type("Ready", (), {"tools": None})()
    for target, early in ((tmp_path / "new" / "deeper" / "out", False),
                          (tmp_path / "out", True)):
        request = RestoreRequest(None, "now", None, target, False, False)
        with restorer._copying_early(ready, request, []):  # type: ignore[arg-type]
            assert (restorer._early is not None) is early
            made = sorted(p.name for p in tmp_path.iterdir() if "offsite-early" in p.name)
            assert len(made) == int(early)
        assert not (tmp_path / "new").exists()
        assert restorer._early is None and not any(
            "offsite-early" in p.name for p in tmp_path.iterdir())
