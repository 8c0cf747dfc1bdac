"""The verification plan's inputs on disk: the view's files, keyed as the digest cache keys
them, and the slice times, where anything unreadable is no state (check everything)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from offsite_host.compare import Digests, inventory
from offsite_host.verify_state import (
    SLICES_FILE,
    listable,
    load_checked,
    save_checked,
    survey,
)


def test_the_survey_keys_files_as_the_digest_cache_does(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"x" * 10)
    (tmp_path / "top").write_bytes(b"")
    (tmp_path / "link").symlink_to("top")
    (tmp_path / os.fsdecode(b"odd\xff")).write_bytes(b"y")
    digests: Digests = {}
    inventory(tmp_path, digests=digests)

    found = survey(tmp_path)

    assert found == {path: value[:4] for path, value in digests.items()}
    assert set(found) == {"a/b/f", "top", "odd\udcff"}  # regular files only
    assert found["a/b/f"][0] == 10


def test_a_view_that_cannot_be_listed_is_an_error_not_an_empty_plan(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        survey(tmp_path / "not-mounted")


def test_slice_times_round_trip_and_anything_unreadable_is_no_state(tmp_path: Path) -> None:
    assert load_checked(tmp_path) is None
    save_checked(tmp_path, [1.5, None, 3.0])
    assert load_checked(tmp_path) == [1.5, None, 3.0]
    assert (tmp_path / SLICES_FILE).stat().st_mode & 0o077 == 0
    for text in ("{", "[]", '{"checked": "x"}', '{"checked": [true]}', '{"checked": ["1"]}'):
        (tmp_path / SLICES_FILE).write_text(text)
        assert load_checked(tmp_path) is None


def test_an_entry_whose_directory_is_gone_is_listed_by_that_directory(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "file").write_bytes(b"")
    paths = ["kept/file", "kept/gone", "old/sub/file", "old/sub/", "old/", "top-gone"]
    assert listable(paths, tmp_path) == ["kept/file", "kept/gone", "old", "top-gone"]
