"""The inputs of the verification plan (`verify_plan`) that live on disk: the view's regular
files (a walk with `lstat`, reading no content) and, in the state directory, when each slice
was last checked (`verify-slices.json`). An unreadable slice file is no state: the next run
checks everything, which is slower, never weaker."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from offsite_host.keys import write_secret
from offsite_host.verify_plan import Stat

SLICES_FILE = "verify-slices.json"


def survey(root: Path) -> dict[str, Stat]:
    """Every regular file below `root` by relative POSIX path (as rsync names it), with the
    same (size, mtime, ctime, inode) key as the digest cache (`compare.inventory`)."""
    found: dict[str, Stat] = {}
    for dirpath, _dirnames, filenames in os.walk(root, onerror=_raise):
        here = Path(dirpath)
        for name in filenames:
            path = here / name
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                found[path.relative_to(root).as_posix()] = (
                    info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
    return found


def listable(paths: list[str], root: Path) -> list[str]:
    """`paths` as rsync can take them in a `--files-from` list with `--delete-missing-args`:
    an entry whose directory is gone from the view too is named by that directory (the
    topmost one gone), since rsync, unable to find a listed entry's parent, skips the entry
    ("file has vanished", exit 24) where a missing entry itself is a deletion."""
    listed: dict[str, None] = {}
    for path in paths:
        parts = path.rstrip("/").split("/")
        name = path
        for depth in range(1, len(parts) + 1):
            if not os.path.lexists(root.joinpath(*parts[:depth])):
                name = "/".join(parts[:depth])
                break
        listed.setdefault(name)
    return list(listed)


def _raise(exc: OSError) -> None:
    raise exc  # a directory that cannot be listed must not shrink the plan silently


def load_checked(state_dir: Path) -> list[float | None] | None:
    """The per-slice times of the last check (None: no usable record)."""
    try:
        data = json.loads((state_dir / SLICES_FILE).read_text(encoding="utf-8"))
        times = data["checked"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(times, list) or not all(
            t is None or (isinstance(t, int | float) and not isinstance(t, bool))
            for t in times):
        return None
    return [None if t is None else float(t) for t in times]


def save_checked(state_dir: Path, checked: list[float | None]) -> None:
    record = {"cycle_days": len(checked), "checked": checked}
    write_secret(state_dir / SLICES_FILE, (json.dumps(record) + "\n").encode("utf-8"))
