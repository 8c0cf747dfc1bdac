"""`offsite-host run` (DESIGN, "The host's run") and `offsite-host verify`.

1. history: rdiff-backup of each configured path, then old increments removed;
2. encrypt: the gocryptfs reverse view of the repository, mounted for this run only;
3. session: signed `POST /v1/sessions` with a key made for this run;
4. transfer: rsync over ssh with the certificate, stopped at the session's end;
5. verify, then report: `succeeded` only once the archive copy matches the view, with
   checksums, in every entry the push sent, everything sent earlier and never verified, and a
   rotating slice of the rest (`verify_plan`); a difference is resent once and checked again.

A connection-level failure is tried again within the session (see `runner`); one the session's
end left no time to try again is the deadline (4); any other failure to transfer, or to run the
verification, is 5; only a verification that ran and found the copies different is 6.

Once the local stage has started, the server hears how the run ended (a failed report is
best effort); a failure to get a session is not reported, since there is nothing to report to.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from offsite_host import (
    encrypt,
    history,
    preflight,
    runner,
    sealing,
    tools,
    transfer,
    verify_plan,
    verify_state,
)
from offsite_host.api import ApiClient, Transport, urllib_transport
from offsite_host.config import Config
from offsite_host.console import Console
from offsite_host.ephemeral import Ephemeral
from offsite_host.exitcodes import (
    DeadlineError,
    ExitCode,
    OffsiteError,
    ServerError,
    TransferError,
    VerifyError,
)
from offsite_host.report import Report, send_report
from offsite_host.session import Session, ask_session, open_session

DIGESTS_FILE = "manifest-digests.json"
"""The digest cache the last seal left: the view as the last verified run saw it."""


@dataclass(frozen=True)
class Repaired:
    """What a verification resent: entries, and the bytes it took."""

    files: int = 0
    bytes_sent: int = 0


@dataclass(frozen=True)
class Verified:
    """What a verification read, and what it resent."""

    plan: verify_plan.Plan
    repaired: Repaired


@dataclass(frozen=True)
class Outcome:
    exit_code: ExitCode
    status: str
    detail: str
    window_id: str = ""
    bytes_sent: int = 0
    files: int = 0


def outcome_of(exc: OffsiteError, window_id: str = "") -> Outcome:
    return Outcome(exc.exit_code, exc.exit_code.name.lower().replace("_", " "), str(exc),
                   window_id)


class Routine:
    def __init__(self, cfg: Config, console: Console, transport: Transport = urllib_transport,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg, self.console, self.clock, self.sleep = cfg, console, clock, sleep
        self.transport = transport
        self.session: Session | None = None
        self.stage = "preflight"

    def run(self) -> Outcome:
        ready = preflight.check(self.cfg)
        client = ApiClient(self.cfg.api_url, self.cfg.host, ready.identity, self.transport,
                           clock=self.clock)
        started = self.clock()
        try:
            outcome = self._ship(ready, client)
        except OffsiteError as exc:
            self.console.error(str(exc))
            failed = outcome_of(exc, self.session.window_id if self.session else "")
            self._report_failure(client, failed, self.clock() - started)
            return failed
        return self._report(client, outcome, self.clock() - started)

    def verify(self, full: bool = False) -> Outcome:
        """Checks what a run would check, without sending (`full`: the whole archive)."""
        ready = preflight.check(self.cfg, needs_history=False)
        client = ApiClient(self.cfg.api_url, self.cfg.host, ready.identity, self.transport,
                           clock=self.clock)
        with self._view(ready) as view, Ephemeral(self.cfg.state_dir, self.cfg.host) as eph:
            session = self._open(client, eph)
            verified = self._verify(ready, view, session, eph, (), full=full)
        return Outcome(ExitCode.OK, "verified", "the archive copy matches the encrypted view: "
                       + verified.plan.describe(), session.window_id)

    def _ship(self, ready: preflight.Ready, client: ApiClient) -> Outcome:
        with Ephemeral(self.cfg.state_dir, self.cfg.host) as eph:
            early = self._ask(client, eph)
            self.stage = "local"
            warnings = history.back_up(ready.tools.rdiff_backup, ready.repositories,
                                       self.cfg.retention_days, self._step("history"))
            for warning in warnings:
                self.console.step("history", f"warning: {warning}")
            with self._view(ready) as view:
                self.stage = "session"
                session = early if early and early.stop_at > self.clock() else self._open(
                    client, eph)
                return self._send(ready, view, session, eph, warnings)

    def _send(self, ready: preflight.Ready, view: str, session: Session, eph: Ephemeral,
              warnings: list[str]) -> Outcome:
        self.stage = "transfer"
        stats, sent = self._push(ready, view, session, eph)
        verified = self._verify(ready, view, session, eph, sent, repair=True)
        self._seal(ready, session, eph)
        repaired = verified.repaired
        notes = [f"repaired {repaired.files} files"] if repaired.files else []
        detail = "; ".join([verified.plan.describe(), *notes, *warnings])
        return Outcome(ExitCode.OK, "succeeded", detail, session.window_id,
                       stats.bytes_sent + repaired.bytes_sent, stats.files_transferred)

    @contextlib.contextmanager
    def _view(self, ready: preflight.Ready) -> Iterator[str]:
        """The mounted view, as the local path rsync is given."""
        mountpoint = self._mountpoint
        with encrypt.mounted_view(ready.tools.gocryptfs, ready.tools.fusermount,
                                  self.cfg.password_file, self.cfg.repository, mountpoint,
                                  self._step("encrypt")):
            self.console.step("encrypt", f"view of {self.cfg.repository} on {mountpoint}")
            yield transfer.rsync_local_path(mountpoint, sys.platform, ready.tools.rsync)

    def _ask(self, client: ApiClient, eph: Ephemeral) -> Session | None:
        """One session request before the local work: with no window open the run ends here
        (exit 3) instead of after its local stage; while the window is still opening the local
        work runs meanwhile (None: the session is waited for after it)."""
        self.stage = "session"
        outcome = ask_session(client, eph.public_line, self.clock)
        if isinstance(outcome, Session):
            return self._opened(outcome, eph)
        self.console.step("session", f"window not ready yet ({outcome.reason}); the local "
                          "backup runs meanwhile")
        return None

    def _open(self, client: ApiClient, eph: Ephemeral) -> Session:
        return self._opened(open_session(client, eph.public_line, self.cfg.max_wait_s,
                                         self._step("session"), self.clock, self.sleep), eph)

    def _opened(self, session: Session, eph: Ephemeral) -> Session:
        self.session = session
        eph.write_session(session)
        self.console.step("session", f"window {session.window_id}: {session.user}@"
                          f"{session.address}:{session.port}, until {_utc(session.stop_at)}")
        return session

    @property
    def _mountpoint(self) -> Path:
        return self.cfg.state_dir / "view"

    def _push(self, ready: preflight.Ready, view: str, session: Session,
              eph: Ephemeral) -> tuple[transfer.TransferStats, list[str]]:
        """Sends the view; returns rsync's figures and the entries it sent or deleted."""
        argv = transfer.rsync_argv(ready.tools.rsync, self._rsh(ready, session, eph), view,
                                   session, io_timeout_s=self.cfg.io_timeout_s,
                                   bwlimit_kib=self.cfg.bwlimit_kib, progress=self.console.tty)
        started = time.monotonic()
        done = self._until_stop(argv, session, "the transfer")
        if done.returncode != 0:
            raise TransferError(f"rsync failed ({_failure(done)})")
        stats = transfer.parse_stats(done.stdout)
        self.console.step("transfer", f"{stats.files_transferred} of {stats.files_total} files, "
                          f"{stats.bytes_sent} bytes sent in {time.monotonic() - started:.1f} s")
        return stats, transfer.differing_paths(transfer.differences(done.stdout))

    def _verify(self, ready: preflight.Ready, view: str, session: Session, eph: Ephemeral,
                sent: Sequence[str], repair: bool = False, full: bool = False) -> Verified:
        """Checks the archive copy against the view, in the entries `verify_plan` picks (`sent`:
        what this run's push sent; `full`: everything). With `repair`, what differs is resent
        once and checked again: right after a transfer with the same flags, a difference is
        damage on the archive that rsync's size-and-time check cannot see. The slices checked
        are recorded only once the check passed."""
        now = self.clock()
        checked = verify_state.load_checked(self.cfg.state_dir)
        plan = self._plan(sent, checked, now, full)
        listing = "" if plan.everything else self._write_list(
            eph, "verify.list", verify_state.listable(plan.paths(), self._mountpoint),
            ready.tools.rsync)
        found = self._differences(ready, view, session, eph, listing)
        repaired = Repaired()
        if found and repair:
            repaired = self._resend(ready, view, session, eph, found)
            found = self._differences(ready, view, session, eph, listing)
        if found:
            again = " after resending them once" if repaired.files else ""
            raise VerifyError(f"the archive copy differs from the encrypted view in "
                              f"{len(found)} entries{again}, e.g. {'; '.join(found[:3])}")
        verify_state.save_checked(self.cfg.state_dir, verify_plan.after_check(
            checked, plan.slices, now, self.cfg.verify_cycle_days))
        after = f" after repairing {repaired.files} files" if repaired.files else ""
        self.console.step("verify", f"the archive copy matches the encrypted view{after}: "
                          f"{plan.describe()}")
        return Verified(plan, repaired)

    def _plan(self, sent: Sequence[str], checked: list[float | None] | None, now: float,
              full: bool) -> verify_plan.Plan:
        try:
            files = verify_state.survey(self._mountpoint)
        except OSError as exc:
            self.console.step("verify", f"cannot list the view ({exc}): checking all of it")
            files, full = {}, True
        verified = sealing.load_digests(self.cfg.state_dir / DIGESTS_FILE)
        return verify_plan.make_plan(files, sent, verified, checked, now,
                                     self.cfg.verify_cycle_days, full)

    def _differences(self, ready: preflight.Ready, view: str, session: Session,
                     eph: Ephemeral, listing: str) -> list[str]:
        """What differs, in the listed entries (`listing`, a local list) or everywhere ("")."""
        argv = transfer.rsync_argv(ready.tools.rsync, self._rsh(ready, session, eph), view,
                                   session, io_timeout_s=self.cfg.io_timeout_s, verify=True,
                                   files_from=listing)
        done = self._until_stop(argv, session, "verification", step="verify")
        if done.returncode != 0:  # nothing was compared: not a mismatch
            raise TransferError(f"verification could not run ({_failure(done)})")
        return transfer.differences(done.stdout)

    def _resend(self, ready: preflight.Ready, view: str, session: Session, eph: Ephemeral,
                found: list[str]) -> Repaired:
        paths = verify_state.listable(transfer.differing_paths(found), self._mountpoint)
        self.console.step("verify", f"{len(found)} entries differ from the encrypted view, e.g. "
                          f"{'; '.join(found[:3])}; resending them with checksums")
        argv = transfer.rsync_argv(ready.tools.rsync, self._rsh(ready, session, eph), view,
                                   session, io_timeout_s=self.cfg.io_timeout_s,
                                   bwlimit_kib=self.cfg.bwlimit_kib,
                                   files_from=self._write_list(eph, "resend.list", paths,
                                                                     ready.tools.rsync))
        done = self._until_stop(argv, session, "the repair", step="verify")
        if done.returncode != 0:
            raise TransferError(f"resending the differing entries failed ({_failure(done)})")
        return Repaired(len(paths), transfer.parse_stats(done.stdout).bytes_sent)

    @staticmethod
    def _write_list(eph: Ephemeral, name: str, paths: Sequence[str], rsync: str) -> str:
        """A NUL-separated list of paths beside the session's files, as rsync names it."""
        listing = eph.files.key.with_name(name)
        listing.write_bytes(b"".join(p.encode("utf-8", "surrogateescape") + b"\0"
                                     for p in paths))
        return transfer.rsync_local_path(listing, sys.platform, rsync)

    def _seal(self, ready: preflight.Ready, session: Session, eph: Ephemeral) -> None:
        """Ships the manifest of the verified view beside the archive copy (sealing.py)."""
        local = self.cfg.state_dir / "seal"
        sealed = sealing.write(self._mountpoint, self.cfg.repository,
                               self.cfg.password_file, self.cfg.host, session.window_id,
                               self.clock(), local, self.cfg.state_dir / DIGESTS_FILE)
        argv = sealing.push_argv(ready.tools.rsync, self._rsh(ready, session, eph),
                                 transfer.rsync_local_path(local, sys.platform, ready.tools.rsync),
                                 session,
                                 io_timeout_s=self.cfg.io_timeout_s)
        done = self._until_stop(argv, session, "the manifest", step="seal")
        if done.returncode != 0:
            raise TransferError(f"sending the manifest failed ({_failure(done)})")
        sealing.record_first(self.cfg.state_dir, self.clock())
        self.console.step("seal", f"manifest of {len(sealed.entries)} entries sent")

    def _until_stop(self, argv: list[str], session: Session, what: str,
                    step: str = "transfer") -> runner.Finished:
        stop_at = session.stop_at - self.cfg.deadline_margin_s
        if stop_at <= self.clock():
            raise DeadlineError(f"the session ends at {_utc(session.stop_at)}, too soon for "
                                f"{what} (deadline_margin_s={self.cfg.deadline_margin_s})")
        progress = self.console.progress if self.console.tty else None
        done = runner.run_until_reachable(argv, stop_at, self.cfg.connect_wait_s,
                                          self._step(step), progress, self.clock,
                                          self.sleep, busy_wait_s=self.cfg.io_timeout_s + 30)
        if done.stopped or done.cut:
            why = f": {_failure(done)}" if done.cut else ""
            raise DeadlineError(f"deadline reached during {what} ({_utc(stop_at)}){why}; what "
                                "arrived is kept and the next run resumes from it")
        return done

    def _rsh(self, ready: preflight.Ready, session: Session, eph: Ephemeral) -> str:
        return transfer.rsh_command(transfer.ssh_argv(ready.tools.ssh, eph.files, session))

    def _report(self, client: ApiClient, outcome: Outcome, duration_s: float) -> Outcome:
        try:
            send_report(client, Report(outcome.window_id, outcome.status, outcome.bytes_sent,
                                       outcome.files, duration_s, outcome.detail),
                        sleep=self.sleep)
        except ServerError as exc:
            self.console.error(f"the backup was verified but the report failed: {exc}")
            return Outcome(ExitCode.SERVER, "not reported", str(exc), outcome.window_id,
                           outcome.bytes_sent, outcome.files)
        self.console.step("report", outcome.status)
        return outcome

    def _report_failure(self, client: ApiClient, failed: Outcome, duration_s: float) -> None:
        """Tells the server why, best effort; the run's own exit code is unchanged."""
        if self.stage == "session":
            return
        try:
            if self.session is None:
                with Ephemeral(self.cfg.state_dir, self.cfg.host) as eph:
                    self._open(client, eph)
            assert self.session is not None
            send_report(client, Report(self.session.window_id, "failed", failed.bytes_sent,
                                       failed.files, duration_s, failed.detail),
                        sleep=self.sleep)
            self.console.step("report", f"failed ({failed.status})")
        except OffsiteError as exc:
            self.console.step("report", f"not sent: {exc}")

    def _step(self, name: str) -> Callable[[str], None]:
        return lambda message: self.console.step(name, message)


def _tail(stderr: str) -> str:
    return tools.tail(stderr, 4) or "no message"


def _failure(done: runner.Finished) -> str:
    tries = f"{done.reason}, " if done.reason else ""
    return f"{tries}rsync exit {done.returncode}: {_tail(done.stderr)}"


def _utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

