"""One rdiff-backup repository per configured path, and the command lines."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from offsite_host.exitcodes import ConfigError
from offsite_host.history import Repository, backup_argv, plan, remove_argv, repository_name

REPO = Path("/var/lib/offsite/repository")
STATE = Path("/var/lib/offsite/state")


@pytest.mark.parametrize(("path", "name"), [
    (PurePosixPath("/etc"), "etc"),
    (PurePosixPath("/srv/www"), "srv_www"),
    (PurePosixPath("/"), "root"),
    (PurePosixPath("/home/anne marie/café"), "home_anne_marie_caf_"),
    (PureWindowsPath("C:\\Users\\x"), "C_Users_x"),
    (PureWindowsPath("D:\\"), "D"),
])
def test_repository_names(path: PurePosixPath, name: str) -> None:
    assert repository_name(path) == name


def test_plan_gives_each_path_its_excludes_and_hides_private_dirs() -> None:
    repos = plan((Path("/etc"), Path("/var")), ("/etc/ssl/private", "**/*.tmp", "/var/cache"),
                 REPO, (REPO, STATE))
    assert repos == [
        Repository(Path("/etc"), REPO / "etc", ("/etc/ssl/private", "**/*.tmp")),
        Repository(Path("/var"), REPO / "var", ("**/*.tmp", "/var/cache", str(REPO),
                                                str(STATE))),
    ]


def test_plan_refuses_colliding_names_and_stray_excludes() -> None:
    with pytest.raises(ConfigError, match="would share the repository"):
        plan((Path("/srv/a_b"), Path("/srv/a/b")), (), REPO, ())
    with pytest.raises(ConfigError, match="'/home/x' is under none of the configured paths"):
        plan((Path("/etc"),), ("/home/x",), REPO, ())
    with pytest.raises(ConfigError, match="under none"):
        plan((Path("/etc"),), ("/etcetera/x",), REPO, ())


def test_command_lines() -> None:
    repo = Repository(Path("/etc"), REPO / "etc", ("/etc/ssl/private",))
    assert backup_argv("rdiff-backup", repo) == [
        "rdiff-backup", "backup", "--no-file-statistics", "--exclude", "/etc/ssl/private",
        "/etc", str(REPO / "etc")]
    assert remove_argv("rdiff-backup", repo, 20) == [
        "rdiff-backup", "--force", "remove", "increments", "--older-than", "20D",
        str(REPO / "etc")]
