"""A directory tree as a comparable value (kind, permission bits, content hash or symlink
target of every entry), and the differences between two: what a restore is checked with."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

Entry = tuple[str, int, str]


def inventory(root: Path) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        name = path.relative_to(root).as_posix()
        if stat.S_ISLNK(info.st_mode):
            found[name] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            found[name] = ("dir", stat.S_IMODE(info.st_mode), "")
        else:
            found[name] = ("file", stat.S_IMODE(info.st_mode),
                           hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def differences(expected: dict[str, Entry], found: dict[str, Entry]) -> list[str]:
    lines = [f"missing: {name}" for name in sorted(expected.keys() - found.keys())]
    lines += [f"unexpected: {name}" for name in sorted(found.keys() - expected.keys())]
    for name in sorted(expected.keys() & found.keys()):
        (kind, mode, what), (got_kind, got_mode, got_what) = expected[name], found[name]
        if kind != got_kind:
            lines.append(f"{name}: a {got_kind}, not a {kind}")
        elif mode != got_mode:
            lines.append(f"{name}: mode {got_mode:o}, not {mode:o}")
        elif what != got_what:
            lines.append(f"{name}: {'target' if kind == 'link' else 'content'} differs")
    return lines
