"""rdiff-backup's record of its newest backup, read without rdiff-backup (pure).

A repository's mirror directory already is the newest state; what rdiff-backup keeps beside it
in `rdiff-backup-data/mirror_metadata.<time>.snapshot.gz` is, for every entry, its type, size,
SHA-1, modification time, permissions and owner: what the backup saw. A restore of the newest
point can then copy the mirror and check every file against that record (mirror.py) instead of
running `rdiff-backup restore`, which does the same through many more round trips to the FUSE
mount.

The format (rdiff-backup 2.x, `rdiffbackup/meta/stdattr.py`): records `File <path>` followed by
lines `  <Field> <value>`; the path is relative to the repository (`.` for its root), with a
newline written `\\n` and a backslash `\\\\` (`rdiffbackup/utils/quoting.py`); `:` or `None`
is an absent value. Only what the copy can reproduce exactly is accepted here: directories,
regular files and symbolic links, no hard links, no long-name or alternate names, no quoted
characters in file names, no ACL or extended-attribute records. Anything else is a reason to
let rdiff-backup restore the tree (`refusal`), never a guess.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

DATA_DIR = "rdiff-backup-data"
_FIELD = re.compile(rb"^ *([A-Za-z0-9]+) (.+)$")
_UNQUOTE = re.compile(rb"\\n|\\\\")
_MIRROR = re.compile(r"current_mirror\.(.+)\.data")
_INTEGER = ("Size", "NumHardLinks", "ModTime", "Uid", "Gid", "Permissions")
_TEXT = ("Type", "SHA1Digest", "Uname", "Gname")
KINDS = ("dir", "reg", "sym")
# Records of attributes the copy does not set: their presence sends the restore to rdiff-backup.
_UNSUPPORTED_FILES = ("access_control_lists.", "extended_attributes.", "win_access_control_lists.")
_UNSUPPORTED_FIELDS = ("AlternateMirrorName", "AlternateIncrementName", "ResourceFork",
                       "CarbonFile", "DeviceNum")


class MetadataError(ValueError):
    """The metadata cannot be read as rdiff-backup writes it."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of the newest backup. `path` is relative to the repository, in bytes as the
    file system names it, `()` for the repository's root."""

    path: tuple[bytes, ...]
    kind: str
    size: int | None = None
    sha1: str | None = None
    mtime: int | None = None
    perms: int | None = None
    uid: int | None = None
    gid: int | None = None
    uname: str | None = None
    gname: str | None = None
    link: bytes | None = None
    hard_links: int = 1
    unsupported: tuple[str, ...] = ()


def unquote(quoted: bytes) -> bytes:
    return _UNQUOTE.sub(lambda m: b"\n" if m.group(0) == b"\\n" else b"\\", quoted)


def parse(data: bytes) -> list[Entry]:
    """Every record of a `mirror_metadata` file, in its order (a parent before its entries)."""
    return list(records(io.BytesIO(data)))


def records(stream: Iterable[bytes]) -> Iterator[Entry]:
    """The records of a `mirror_metadata` stream one by one, so that a tree of millions of
    files is never held in memory: a record is its `File` line and the field lines after it,
    one field a line (a newline in a name is quoted)."""
    name: bytes | None = None
    fields: list[bytes] = []
    for line in stream:
        line = line.rstrip(b"\n")
        if line.startswith(b"File "):
            if name is not None:
                yield _entry(name, fields)
            name, fields = line[5:], []
        elif name is not None:
            fields.append(line)
        elif line.strip():
            raise MetadataError("no 'File' record")
    if name is not None:
        yield _entry(name, fields)


def _entry(name: bytes, lines: list[bytes]) -> Entry:
    path = () if name == b"." else tuple(unquote(name).split(b"/"))
    values: dict[str, object] = {}
    unsupported = []
    for line in lines:
        found = _FIELD.match(line)
        if found is None:
            continue
        field, raw = found.groups()
        key = field.decode("ascii")
        if key in _INTEGER:
            values[key] = int(raw)
        elif key in _TEXT:
            values[key] = None if raw in (b":", b"None") else raw.decode("ascii")
        elif key == "SymData":
            values[key] = unquote(raw)
        elif key in _UNSUPPORTED_FIELDS:
            unsupported.append(key)
    if not isinstance(values.get("Type"), str):
        raise MetadataError(f"the record of {name!r} has no Type")
    return Entry(path, str(values["Type"]), _int(values, "Size"), _str(values, "SHA1Digest"),
                 _int(values, "ModTime"), _int(values, "Permissions"), _int(values, "Uid"),
                 _int(values, "Gid"), _str(values, "Uname"), _str(values, "Gname"),
                 _bytes(values, "SymData"),
                 _int(values, "NumHardLinks") or 1, tuple(unsupported))


def _int(values: dict[str, object], key: str) -> int | None:
    value = values.get(key)
    return value if isinstance(value, int) else None


def _bytes(values: dict[str, object], key: str) -> bytes | None:
    value = values.get(key)
    return value if isinstance(value, bytes) else None


def _str(values: dict[str, object], key: str) -> str | None:
    value = values.get(key)
    return value if isinstance(value, str) else None


def newest_time(data_dir_names: Iterable[str]) -> str | None:
    """The time of the newest backup, when exactly one `current_mirror` marker says it (two:
    a backup was cut off and the repository needs rdiff-backup's regress)."""
    found = [m.group(1) for m in map(_MIRROR.fullmatch, data_dir_names) if m]
    return found[0] if len(found) == 1 else None


def snapshot_name(when: str) -> str:
    return f"mirror_metadata.{when}.snapshot.gz"


def refusal(data_dir_names: Iterable[str], chars_to_quote: bytes, special_escapes: bytes,
            entries: Iterable[Entry] = ()) -> str | None:
    """Why the newest state must be left to `rdiff-backup restore`, or None when a copy of the
    mirror, checked against `entries`, restores it exactly."""
    names = sorted(data_dir_names)
    when = newest_time(names)
    if when is None:
        return "the repository has no single current_mirror marker"
    if snapshot_name(when) not in names:
        return f"no metadata snapshot {snapshot_name(when)}"
    extra = [n for n in names if n.startswith(_UNSUPPORTED_FILES) and when in n]
    if extra:
        return f"attributes the copy does not set ({extra[0]})"
    if chars_to_quote.strip() or special_escapes.strip():
        return "the repository quotes characters in file names"
    for entry in entries:
        problem = _entry_refusal(entry)
        if problem:
            return f"{b'/'.join(entry.path).decode(errors='replace') or '.'}: {problem}"
    return None


def _entry_refusal(entry: Entry) -> str | None:
    if entry.kind not in KINDS:
        return f"a {entry.kind} entry"
    if entry.unsupported:
        return f"field {entry.unsupported[0]}"
    if entry.kind == "reg" and entry.hard_links > 1:
        return "a hard link"
    if entry.kind == "reg" and (entry.sha1 is None or entry.size is None):
        return "no recorded size or SHA-1"
    if entry.kind == "sym" and entry.link is None:
        return "a symbolic link without its target"
    if b".." in entry.path or any(not part or b"\0" in part for part in entry.path):
        return "a path that leaves the repository"
    return None


def below(entries: Iterable[Entry], inner: tuple[bytes, ...]) -> Iterator[Entry]:
    """The entries at or below `inner`, their paths made relative to it."""
    n = len(inner)
    return (dataclasses.replace(e, path=e.path[n:]) for e in entries if e.path[:n] == inner)
