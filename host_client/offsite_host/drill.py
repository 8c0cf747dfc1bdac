"""`offsite-host verify --deep`: a restore drill that proves the newest recovery point can be
read back. It fetches that point like `restore` (and checks it against its manifest), checks
every name and block of the copy (`gocryptfs -fsck`), restores each repository's newest state
into a temporary directory, and compares it (names, kinds, content, symlink targets, modes)
with the local repository at the same backup time: what that backup saw, not the live tree,
which may have changed since.
A damaged copy fails the drill as it fails a restore (RestoreError, exit 10); a copy that
restores but differs from the local backup is a VerifyError (exit 6). The restore window's
report says how the drill ended.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from offsite_host import compare, encrypt, preflight, restore_plan, tools
from offsite_host.exitcodes import ExitCode, RestoreError, VerifyError
from offsite_host.points import Choice, choose, fetch_points
from offsite_host.restore import Restorer
from offsite_host.restore_plan import Selection
from offsite_host.run import Outcome
from offsite_host.unpack import RESTORE_TIMEOUT_S, restore_into

DATA_DIR = "rdiff-backup-data"
_MIRROR = re.compile(r"current_mirror\.(.+)\.data")


def mirror_time(repository: Path) -> str | None:
    """The time of a repository's newest backup, from rdiff-backup's `current_mirror` marker."""
    try:
        names = [p.name for p in (repository / DATA_DIR).iterdir()]
    except OSError:
        return None
    found = sorted(m.group(1) for m in map(_MIRROR.fullmatch, names) if m)
    return found[-1] if found else None


class Drill:
    def __init__(self, restorer: Restorer) -> None:
        self.restorer, self.cfg = restorer, restorer.cfg

    def run(self) -> Outcome:
        ready = preflight.check_restore(self.cfg, needs_repository=True)
        client = self.restorer.client(ready)
        choice = choose(fetch_points(client), None, allow_incomplete=False)
        return self.restorer.in_window(client, choice,
                                       lambda staging: self._check(ready, staging, choice))

    def _check(self, ready: preflight.Ready, staging: Path, choice: Choice) -> Outcome:
        damage = encrypt.fsck(ready.tools.gocryptfs, self.cfg.password_file, staging)
        if damage:
            raise RestoreError(f"restore drill of {choice.point.day}: {damage}")
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="drill-", dir=self.cfg.state_dir))
        try:
            with self.restorer.plain(ready, staging) as plain:
                found, entries = [], 0
                for repo in ready.repositories:
                    sel = Selection(repo.source, repo.target.name, ())
                    diffs, count = self._compare_one(ready, plain, sel, work)
                    found += [f"{repo.source}: {line}" for line in diffs]
                    entries += count
        except RestoreError as exc:
            raise RestoreError(f"restore drill of {choice.point.day} failed: {exc}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
        what = f"restore drill of {choice.point.day} ({choice.point.snapshot_id})"
        if found:
            raise VerifyError(f"{what}: {len(found)} differences from the local backup, e.g. "
                              f"{'; '.join(found[:3])}")
        detail = f"{what}: {entries} entries identical to the local backup"
        self.restorer.console.step("verify", detail)
        return Outcome(ExitCode.OK, "verified", detail)

    def _compare_one(self, ready: preflight.Ready, plain: Path, sel: Selection,
                     work: Path) -> tuple[list[str], int]:
        local = self.cfg.repository / sel.repository
        when = mirror_time(plain / sel.repository)
        if when is None:
            return [f"the recovery point has no repository {sel.repository}"], 0
        restored = work / f"{sel.repository}.restored"
        restore_into(ready.tools.rdiff_backup, plain, "now", sel, restored)
        if mirror_time(local) == when:
            reference = compare.inventory(local, skip=(DATA_DIR,))
        else:  # the local repository moved on since: take it back to the same time
            reference = compare.inventory(self._local_at(ready, local, when, work))
        diffs = compare.differences(reference, compare.inventory(restored))
        return diffs, len(reference)

    def _local_at(self, ready: preflight.Ready, local: Path, when: str, work: Path) -> Path:
        out = work / f"{local.name}.local"
        done = tools.run(restore_plan.restore_argv(ready.tools.rdiff_backup, when, local, out),
                         timeout=RESTORE_TIMEOUT_S)
        problem = restore_plan.restore_problem(done.returncode, done.stderr)
        if problem or not out.is_dir():
            raise VerifyError(f"cannot take the local repository {local} back to {when} to "
                              f"compare: {problem or 'nothing restored'}")
        return out
