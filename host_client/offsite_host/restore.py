"""`offsite-host restore` and the fetch it shares with `verify --deep`.

1. choose the recovery point (`GET /v1/hosts/{name}/snapshots`) and ask for it
   (`POST /v1/hosts/{name}/restores`): the control plane opens a restore window;
2. session: `POST /v1/sessions` with purpose "restore", a read-only (`rrsync -ro`) certificate;
3. fetch: rsync the ciphertext down into `<state_dir>/restore/<snapshot>`, resumable (a cut-off
   fetch is kept, and the next attempt fetches only what is missing), and its manifest beside it,
   over a second connection at the same time;
   the copy must match the manifest before anything is restored (sealing.py), since gocryptfs
   cannot see a file cut at a block boundary, missing, added, swapped or rolled back; the
   ciphertext is hashed while it arrives (compare.Prehash), so the check after the fetch reads
   only what was written since; for the newest state, the mirror is copied while it arrives
   too (early.py), provisionally: step 5 takes a file from that copy only if it was read from
   the very ciphertext file the manifest then authenticated;
4. decrypt: gocryptfs forward mode, read-only; a block that fails authentication is an I/O
   error, which fails the restore (exit 10), never wrong data;
5. restore: into a temporary directory beside the target, renamed into place only once
   complete, so a failure leaves the target as it was: the newest state is copied from the
   mirror (mirror.py), an older one by `rdiff-backup restore --at`; either way each restored
   file is checked against the SHA-1 rdiff-backup recorded, and a mismatch fails the restore;
6. report: the restore window always hears how it ended, which closes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

from offsite_host import (
    compare,
    encrypt,
    preflight,
    restore_plan,
    runner,
    sealing,
    tools,
    transfer,
)
from offsite_host.api import ApiClient, Transport, urllib_transport
from offsite_host.config import Config
from offsite_host.console import Console
from offsite_host.early import Copies, EarlyCopy
from offsite_host.ephemeral import Ephemeral
from offsite_host.exitcodes import (
    DeadlineError,
    ExitCode,
    OffsiteError,
    ServerError,
    TransferError,
)
from offsite_host.manifest import Verdict
from offsite_host.points import (
    Choice,
    RecoveryPoint,
    RestoreWindow,
    choose,
    choose_snapshot,
    fetch_points,
    request_restore,
)
from offsite_host.report import Report, send_report
from offsite_host.restore_plan import Selection
from offsite_host.run import Outcome, outcome_of
from offsite_host.session import Session, open_session
from offsite_host.unpack import place, restore_into, target_state


@dataclass(frozen=True)
class RestoreRequest:
    day: str | None
    at: str
    path: PurePath | None
    target: Path
    overwrite: bool
    allow_incomplete: bool
    snapshot: str | None = None  # one point among several of a day (`--snapshot`)

    def choose(self, points: list[RecoveryPoint]) -> Choice:
        if self.snapshot is not None:
            return choose_snapshot(points, self.snapshot, self.day, self.allow_incomplete)
        return choose(points, self.day, self.allow_incomplete)


class Restorer:
    def __init__(self, cfg: Config, console: Console, transport: Transport = urllib_transport,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg, self.console, self.transport = cfg, console, transport
        self.clock, self.sleep = clock, sleep
        self._prehashed: dict[Path, compare.Digests] = {}  # hashed during each fetch
        # A restore of the newest state copies the mirror during its fetch (early.py): where
        # to, and what; then what it copied, for the copy after the fetch.
        self._early: Callable[[Path], EarlyCopy] | None = None
        self._early_copies: dict[int, Copies] = {}

    def client(self, ready: preflight.Ready) -> ApiClient:
        return ApiClient(self.cfg.api_url, self.cfg.host, ready.identity, self.transport,
                         clock=self.clock)

    def restore(self, request: RestoreRequest) -> Outcome:
        selections = restore_plan.select(request.path, self.cfg.paths)
        restore_plan.check_target(request.target, target_state(request.target), self.cfg.paths,
                                  (self.cfg.repository, self.cfg.state_dir), request.overwrite)
        ready = preflight.check_restore(self.cfg)
        client = self.client(ready)
        choice = request.choose(fetch_points(client))
        with self._copying_early(ready, request, selections):
            return self.in_window(client, choice, lambda staging: self._unpack(
                ready, staging, request, selections, choice))

    @contextlib.contextmanager
    def _copying_early(self, ready: preflight.Ready, request: RestoreRequest,
                       selections: list[Selection]) -> Iterator[None]:
        """For a restore of the newest state: the mirror copied during the fetch, into a
        directory beside the target (so that its files are renamed, not copied, into the
        restored tree), removed afterwards whatever happens."""
        if request.at != "now" or os.name != "posix":  # (cppcryptfs: not tried on Windows)
            yield
            return
        try:  # (a parent still to be made: place() makes it once the restore is complete)
            into = Path(tempfile.mkdtemp(prefix=f".{request.target.name}.offsite-early-",
                                         dir=request.target.parent))
        except OSError:  # the copy after the fetch does it all
            yield
            return
        self._early = lambda staging: EarlyCopy(
            staging, self.cfg.state_dir / "plain-early", into,
            [(s.repository, s.inner) for s in selections],
            lambda cipherdir, mountpoint: encrypt.mounted_plain(
                ready.tools.gocryptfs, ready.tools.fusermount, self.cfg.password_file,
                cipherdir, mountpoint, lambda message: None, nice=True))
        try:
            yield
        finally:
            self._early, self._early_copies = None, {}
            shutil.rmtree(into, ignore_errors=True)

    def in_window(self, client: ApiClient, choice: Choice,
                  work: Callable[[Path], Outcome]) -> Outcome:
        """Opens the restore window of `choice`, fetches its copy, hands it to `work`, and
        reports how it all ended to the window, whatever happened."""
        self.console.step("restore", f"{choice.point.snapshot_id}: {choice.reason}")
        window = request_restore(client, choice.point)
        started = self.clock()
        try:
            staging = self._fetch(client, window)
            try:
                verdict = self._authenticate(staging, choice)
                outcome = work(staging)
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # fetched whole: never reused
                shutil.rmtree(_sealed(staging), ignore_errors=True)
        except OffsiteError as exc:
            self.console.error(str(exc))
            failed = outcome_of(exc, window.window_id)
            self._report(client, window, "failed", failed.detail, started)
            return failed
        except KeyboardInterrupt:  # the window must still close: tell it, then stop
            self._report(client, window, "failed", "interrupted", started)
            raise
        except Exception as exc:  # a bug: the window still hears of it, then the traceback
            self._report(client, window, "failed", f"internal error: {exc!r}", started)
            raise
        if verdict.notes:
            outcome = dataclasses.replace(
                outcome, detail="; ".join([outcome.detail, *verdict.notes]))
        self._report(client, window, "succeeded", outcome.detail, started)
        return outcome

    def _authenticate(self, staging: Path, choice: Choice) -> Verdict:
        """The copy against its manifest, before anything is decrypted."""
        verdict = sealing.authenticate(
            staging, _sealed(staging), self.cfg.password_file, self.cfg.host,
            choice.point.window_id, choice.point.complete,
            sealing.required_for(self.cfg.state_dir, choice.point.started_at),
            self._prehashed.pop(staging, None))
        self.console.step("authenticate", verdict.reason)
        for note in verdict.notes:
            if note != verdict.reason:
                self.console.step("authenticate", f"note: {note}")
        return verdict

    def _fetch(self, client: ApiClient, window: RestoreWindow) -> Path:
        ready_tools = tools.resolve(self.cfg.tools, ("rsync", "ssh"))
        staging = self.cfg.state_dir / "restore" / window.snapshot_id
        _drop_other_stagings(staging)
        staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        with Ephemeral(self.cfg.state_dir, self.cfg.host) as eph:
            session = open_session(client, eph.public_line, self.cfg.max_wait_s,
                                   self._step("session"), self.clock, self.sleep,
                                   purpose="restore")
            if session.window_id != window.window_id:
                raise ServerError(f"the restore session is for window {session.window_id}, "
                                  f"not the restore window {window.window_id}")
            eph.write_session(session)
            self.console.step("session", f"window {session.window_id}: read-only "
                              f"{session.user}@{session.address}:{session.port}")
            rsh = transfer.rsh_command(transfer.ssh_argv(ready_tools.ssh, eph.files, session))
            argv = transfer.pull_argv(ready_tools.rsync, rsh, session,
                                      transfer.rsync_local_path(staging, sys.platform,
                                                               ready_tools.rsync),
                                      io_timeout_s=self.cfg.io_timeout_s,
                                      bwlimit_kib=self.cfg.bwlimit_kib,
                                      progress=self.console.tty)
            started = time.monotonic()
            prehash = compare.Prehash(staging)  # the check's hashing, behind the fetch
            prehash.start()
            # The manifest comes over a second connection beside the data (rrsync -ro takes
            # no lock): its ssh handshake and round trips hide behind the fetch.
            manifest = _Beside(lambda: self._fetch_manifest(ready_tools, rsh, session,
                                                            _sealed(staging)))
            manifest.start()
            early = self._early(staging) if self._early else None
            if early is not None:
                early.start()
            interrupted = False
            try:
                done = self._until_stop(argv, session)
            except KeyboardInterrupt:  # not waited for: its rsync ends at its own timeout
                interrupted = True
                raise
            finally:
                self._prehashed[staging] = prehash.stop()
                if early is not None:  # it unmounts before anything else mounts the copy
                    self._early_copies = early.stop()
                if not interrupted:  # nothing may still write beside the staging copy
                    manifest.join()
            manifest.result()
        self.console.step("fetch", f"{transfer.received(done.stdout)} bytes received in "
                          f"{time.monotonic() - started:.1f} s into {staging}")
        return staging

    def _fetch_manifest(self, ready_tools: tools.ResolvedTools, rsh: str, session: Session,
                        sealed: Path) -> None:
        """Fetches the point's manifest into the directory `sealed`; a point without one
        leaves none."""
        argv = sealing.pull_argv(ready_tools.rsync, rsh, session,
                                 transfer.rsync_local_path(sealed, sys.platform, ready_tools.rsync),
                                 io_timeout_s=self.cfg.io_timeout_s)
        stop_at = session.stop_at - self.cfg.deadline_margin_s
        done = runner.run_until_reachable(argv, stop_at, self.cfg.connect_wait_s,
                                          self._step("fetch"), None, self.clock, self.sleep)
        if done.stopped or done.cut:
            raise DeadlineError("the restore session ended while fetching the manifest")
        if done.returncode != 0:
            raise TransferError(f"fetching the manifest failed (rsync exit {done.returncode}):"
                                f" {tools.tail(done.stderr, 4)}")

    def _until_stop(self, argv: list[str], session: Session) -> runner.Finished:
        stop_at = session.stop_at - self.cfg.deadline_margin_s
        if stop_at <= self.clock():
            raise DeadlineError("the restore session ends too soon for the fetch "
                                f"(deadline_margin_s={self.cfg.deadline_margin_s})")
        done = runner.run_until_reachable(
            argv, stop_at, self.cfg.connect_wait_s, self._step("fetch"),
            self.console.progress if self.console.tty else None, self.clock, self.sleep)
        if done.stopped or done.cut:
            raise DeadlineError("the restore session ended during the fetch; what arrived is "
                                "kept, and the next attempt fetches only the rest")
        if done.returncode != 0:
            raise TransferError(f"fetching the recovery point failed (rsync exit "
                                f"{done.returncode}): {tools.tail(done.stderr, 4)}; what "
                                "arrived is kept for the next attempt")
        return done

    def _unpack(self, ready: preflight.Ready, staging: Path, request: RestoreRequest,
                selections: list[Selection], choice: Choice) -> Outcome:
        checked: list[str] = []
        with self.plain(ready, staging) as plain:
            def build(tree: Path) -> None:
                for index, sel in enumerate(selections):
                    checked.append(restore_into(ready.tools.rdiff_backup, plain, request.at,
                                                sel, tree if request.path else
                                                tree / sel.repository,
                                                self._early_copies.get(index)))

            placed = place(request.target, request.overwrite, build,
                           (request.path.name or "root") if request.path else None)
        what = str(request.path) if request.path else ", ".join(str(s.path) for s in selections)
        detail = (f"restored {what} of {choice.point.day} ({choice.point.snapshot_id}) at "
                  f"{request.at} into {placed} ({'; '.join(checked)})")
        self.console.step("restore", detail)
        return Outcome(ExitCode.OK, "restored", detail)

    @contextlib.contextmanager
    def plain(self, ready: preflight.Ready, staging: Path) -> Iterator[Path]:
        with encrypt.mounted_plain(ready.tools.gocryptfs, ready.tools.fusermount,
                                   self.cfg.password_file, staging,
                                   self.cfg.state_dir / "plain", self._step("decrypt")) as plain:
            self.console.step("decrypt", f"{staging} on {plain} (read-only)")
            yield plain

    def _report(self, client: ApiClient, window: RestoreWindow, status: str, detail: str,
                started: float) -> None:
        try:
            send_report(client, Report(window.window_id, status, 0, 0, self.clock() - started,
                                       detail), sleep=self.sleep)
            self.console.step("report", status)
        except OffsiteError as exc:
            self.console.step("report", f"not sent: {exc}")

    def _step(self, name: str) -> Callable[[str], None]:
        return lambda message: self.console.step(name, message)


class _Beside(threading.Thread):
    """`work` in a thread; `result()` raises what it raised."""

    def __init__(self, work: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # handed to the caller by result()
            self.error = exc

    def result(self) -> None:
        if self.error is not None:
            raise self.error


def _sealed(staging: Path) -> Path:
    """Where the fetched manifest of a staging copy lies: beside it."""
    return staging.with_name(staging.name + ".sealed")


def _drop_other_stagings(keep: Path) -> None:
    """Only one fetched copy is kept: another snapshot's partial fetch is dropped."""
    if keep.parent.is_dir():
        for other in keep.parent.iterdir():
            if other != keep:
                shutil.rmtree(other, ignore_errors=True)
