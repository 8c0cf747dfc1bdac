"""Reading rdiff-backup's record of the newest backup (mirror_meta): the records as rdiff-backup
2.x writes them, with its quoting, and every case the mirror copy must leave to rdiff-backup."""

from __future__ import annotations

import io

import pytest
from offsite_host.mirror_meta import (
    Entry,
    MetadataError,
    below,
    parse,
    records,
    refusal,
    unquote,
)

WHEN = "2030-03-17T01:30:00Z"
NAMES = ["chars_to_quote", f"current_mirror.{WHEN}.data", "increments",
         f"mirror_metadata.{WHEN}.snapshot.gz", "special_escapes"]
METADATA = b"""File .
  Type dir
  ModTime 1900000000
  Uid 0
  Uname root
  Gid 0
  Gname root
  Permissions 493
File d
  Type dir
  ModTime 1900000001
  Permissions 448
File d/link
  Type sym
  SymData ../we ird\\\\x
  Uid 1000
  Uname alice
  Gid 1000
  Gname :
  Permissions 511
File d/new\\nline
  Type reg
  Size 1
  SHA1Digest 11f6ad8ec52a2984abaafd7c3b516503785c2072
  ModTime 1900000002
  Permissions 420
File empty
  Type reg
  Size 0
  SHA1Digest da39a3ee5e6b4b0d3255bfef95601890afd80709
  ModTime 1900000003
  Permissions 384
"""


def test_records_are_read_with_rdiff_backups_quoting() -> None:
    root, d, link, newline, empty = parse(METADATA)
    assert root == Entry((), "dir", mtime=1900000000, perms=0o755, uid=0, gid=0, uname="root",
                         gname="root")
    assert d.path == (b"d",) and d.perms == 0o700 and d.uid is None
    assert link.kind == "sym" and link.link == b"../we ird\\x" and link.gname is None
    assert newline.path == (b"d", b"new\nline") and newline.size == 1
    assert newline.sha1 == "11f6ad8ec52a2984abaafd7c3b516503785c2072"
    assert empty.size == 0 and empty.perms == 0o600
    assert unquote(b"a\\\\n\\nb") == b"a\\n\nb"


def test_a_record_without_a_type_is_an_error() -> None:
    with pytest.raises(MetadataError, match="no Type"):
        parse(b"File x\n  Size 3\n")
    with pytest.raises(MetadataError, match="no 'File' record"):
        parse(b"garbage\n")


def test_a_plain_tree_can_be_copied() -> None:
    assert refusal(NAMES, b"", b"\n", parse(METADATA)) is None


@pytest.mark.parametrize(("names", "quote", "record", "reason"), [
    ([*NAMES, f"current_mirror.{'2030-03-16T01:30:00Z'}.data"], b"", b"",
     "no single current_mirror"),
    ([n for n in NAMES if "mirror_metadata" not in n], b"", b"", "no metadata snapshot"),
    ([*NAMES, f"extended_attributes.{WHEN}.snapshot"], b"", b"", "attributes the copy"),
    ([*NAMES, f"access_control_lists.{WHEN}.snapshot"], b"", b"", "attributes the copy"),
    (NAMES, b"A-Z", b"", "quotes characters"),
    (NAMES, b"", b"File f\n  Type fifo\n  Permissions 420\n", "f: a fifo entry"),
    (NAMES, b"", b"File h\n  Type reg\n  Size 1\n  SHA1Digest ab\n  NumHardLinks 2\n",
     "h: a hard link"),
    (NAMES, b"", b"File r\n  Type reg\n  Size 1\n  SHA1Digest None\n", "no recorded size"),
    (NAMES, b"", b"File s\n  Type sym\n", "without its target"),
    (NAMES, b"", b"File x/../y\n  Type dir\n", "leaves the repository"),
    (NAMES, b"", b"File long\n  Type reg\n  Size 1\n  SHA1Digest ab\n"
                 b"  AlternateMirrorName 17\n", "AlternateMirrorName"),
], ids=["two-markers", "no-snapshot", "eas", "acls", "quoting", "fifo", "hard-link", "no-sha1",
        "sym-no-target", "dotdot", "long-name"])
def test_what_only_rdiff_backup_restores(names: list[str], quote: bytes, record: bytes,
                                         reason: str) -> None:
    found = refusal(names, quote, b"", parse(METADATA + record))
    assert found is not None and reason in found


def test_below_re_roots_the_chosen_path() -> None:
    entries = parse(METADATA)
    assert [e.path for e in below(entries, (b"d",))] == [(), (b"link",), (b"new\nline",)]
    assert [e.path for e in below(entries, (b"empty",))] == [()]
    assert list(below(entries, (b"nope",))) == []
    assert list(below(entries, ())) == entries


def test_records_stream_one_at_a_time() -> None:
    stream = io.BytesIO(METADATA)
    first = next(records(stream))
    assert first.path == () and stream.tell() < len(METADATA)  # the rest is not read yet
    assert [e.path for e in records(io.BytesIO(METADATA))] == [e.path for e in parse(METADATA)]
