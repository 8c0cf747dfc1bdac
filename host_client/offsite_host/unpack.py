"""Writing a restore: a selection of the decrypted copy (the newest state copied from the
mirror, or `rdiff-backup restore` of an older one), into a temporary directory beside the
target that is renamed into place only once complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from offsite_host import mirror, restore_plan, tools
from offsite_host.exitcodes import ConfigError, RestoreError
from offsite_host.restore_plan import Selection, TargetState

if TYPE_CHECKING:
    from offsite_host.early import Copies

RESTORE_TIMEOUT_S = 24 * 3600.0


def target_state(target: Path) -> TargetState:
    try:
        if not target.is_dir():
            if target.exists() or target.is_symlink():
                return TargetState.NOT_A_DIRECTORY
            _check_creatable(target)
            return TargetState.ABSENT
        if os.path.ismount(target):
            return TargetState.MOUNT_POINT
        with os.scandir(target) as entries:
            return TargetState.NOT_EMPTY if next(entries, None) else TargetState.EMPTY
    except OSError as exc:
        raise ConfigError(f"--to {target}: {exc.strerror}") from None


def _check_creatable(target: Path) -> None:
    """An absent target is made (with its parents) only once the restore is complete: a file
    where a parent directory must be would fail it then, after the whole fetch."""
    for ancestor in target.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ConfigError(f"--to {target} cannot be made: {ancestor} is not a "
                                  "directory")
            return


def restore_into(rdiff_backup: str, plain: Path, at: str, sel: Selection, out: Path,
                 early: Copies | None = None) -> str:
    """Restores one selection of the decrypted copy at the time `at` into `out` (which must not
    exist); a path absent at that time is an error, not an empty result. The newest state is
    copied from the mirror and checked file by file (mirror.py) when the copy can reproduce it;
    anything else goes through `rdiff-backup restore --at`. Says which, and what was checked.
    `early`: what early.py copied of this selection while the fetch ran."""
    repo = plain / sel.repository
    if not (repo / "rdiff-backup-data").is_dir():
        raise ConfigError(f"{sel.path} is not in the backup: this recovery point has no "
                          f"repository {sel.repository}")
    if at == "now":
        newest = mirror.plan(repo)
        if newest.metadata is not None and newest.refused is None:
            return mirror.copy(repo, newest.metadata, sel.inner, out, str(sel.path),
                               early).describe()
        how = f"rdiff-backup restore (not a plain copy: {newest.refused})"
    else:
        how = f"rdiff-backup restore --at {at}"
    done = tools.run(restore_plan.restore_argv(rdiff_backup, at, repo.joinpath(*sel.inner),
                                               out), timeout=RESTORE_TIMEOUT_S)
    problem = restore_plan.restore_problem(done.returncode, done.stderr)
    if problem:
        raise RestoreError(f"restoring {sel.path} failed: {problem}; nothing was written "
                           "to the target")
    if not out.exists() and not out.is_symlink():
        raise ConfigError(f"{sel.path} is not in the backup at {at}: nothing to restore")
    return f"{how}, each file checked against its recorded SHA-1"


def place(target: Path, overwrite: bool, build: Callable[[Path], object],
          file_name: str | None) -> Path:
    """Builds the restored tree in a temporary directory beside `target` (same file system),
    then renames it into place; on any failure the temporary directory goes and `target`
    stays as it was. `build` makes the tree at the path it is given: one selection (named
    `file_name`; a file, rather than a directory, is put inside the target under that name),
    or, when `file_name` is None, a directory `build` fills."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.offsite-restore-",
                                     dir=target.parent))
    except OSError as exc:
        raise ConfigError(f"--to {target}: cannot write beside it ({exc.strerror}); nothing "
                          "was changed") from None
    try:
        tree = work / "tree"
        if file_name is None:
            tree.mkdir(mode=0o755)
        build(tree)
        if file_name is not None and (tree.is_symlink() or not tree.is_dir()):
            holder = work / "holder"
            holder.mkdir(mode=0o755)
            tree.rename(holder / file_name)
            tree = holder
        _swap(tree, target, work, overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _swap(tree: Path, target: Path, work: Path, overwrite: bool) -> None:
    state = target_state(target)
    if state is TargetState.NOT_EMPTY and not overwrite:
        raise ConfigError(f"--to {target} is no longer empty; nothing was changed")
    if state in (TargetState.MOUNT_POINT, TargetState.NOT_A_DIRECTORY):
        raise ConfigError(f"--to {target} is now {state.value}; nothing was changed")
    previous = work / "previous"
    if state is TargetState.NOT_EMPTY:
        target.rename(previous)
    elif state is TargetState.EMPTY:
        target.rmdir()
    try:
        tree.rename(target)
    except OSError as exc:  # something made `target` again meanwhile: give back what was there
        if state is TargetState.NOT_EMPTY:
            _give_back(previous, target, work)
        raise RestoreError(f"cannot put the restored tree at {target} ({exc.strerror}); it "
                           "was left as it was") from None


def _give_back(previous: Path, target: Path, work: Path) -> None:
    """Puts the target's old content back; if that fails too, keeps it (the caller's cleanup
    spares `work`) and says where."""
    try:
        previous.rename(target)
    except OSError:
        kept = work.with_name(work.name + "-previous")
        previous.rename(kept)
        raise RestoreError(f"cannot put the restored tree at {target}, nor its previous "
                           f"content back: that content is kept in {kept}") from None
