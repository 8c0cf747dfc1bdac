"""Host configuration: defaults per platform, relative paths, and errors that name the key."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest
from offsite_host.config import default_config_path, default_data_dir, load_config, parse_config
from offsite_host.exitcodes import ConfigError, ExitCode

BASE = Path("/etc/offsite")
MINIMAL: dict[str, Any] = {"api_url": "https://api.example.com/prod/", "host": "web-1",
                           "paths": ["/etc", "/srv/www"]}


def parse(**overrides: Any) -> Any:
    data = {**MINIMAL, **overrides}
    return parse_config({k: v for k, v in data.items() if v is not None}, BASE, "linux", {})


def test_minimal_configuration_takes_the_documented_defaults() -> None:
    cfg = parse()
    assert cfg.api_url == "https://api.example.com/prod"
    assert cfg.paths == (Path("/etc"), Path("/srv/www"))
    assert cfg.key_file == BASE / "host.key"
    assert cfg.password_file == BASE / "gocryptfs.pass"
    assert cfg.repository == Path("/var/lib/offsite/repository")
    assert cfg.state_dir == Path("/var/lib/offsite/state")
    assert (cfg.retention_days, cfg.max_wait_s, cfg.deadline_margin_s) == (20, 1800, 60)
    assert (cfg.io_timeout_s, cfg.bwlimit_kib, cfg.excludes) == (300, 0, ())
    assert cfg.verify_cycle_days == 20  # the retention: the whole archive once per cycle
    assert cfg.tools.rdiff_backup == "rdiff-backup"
    assert cfg.tools.fusermount == "fusermount3"


def test_relative_paths_are_taken_from_the_configuration_directory() -> None:
    cfg = parse(key_file="keys/host.key", repository="/data/repo", state_dir="state")
    assert cfg.key_file == BASE / "keys" / "host.key"
    assert cfg.repository == Path("/data/repo")
    assert cfg.state_dir == BASE / "state"


def test_tools_can_be_renamed_and_macos_unmounts_with_umount() -> None:
    cfg = parse(tools={"rsync": "/opt/homebrew/bin/rsync"})
    assert cfg.tools.rsync == "/opt/homebrew/bin/rsync"
    mac = parse_config(dict(MINIMAL), BASE, "darwin", {})
    assert mac.tools.fusermount == "umount"


@pytest.mark.parametrize(("platform", "environ", "expected"), [
    ("linux", {}, PurePosixPath("/etc/offsite/host.toml")),
    ("darwin", {}, PurePosixPath("/Library/Application Support/Offsite/host.toml")),
    ("win32", {"ProgramData": r"D:\PD"}, PureWindowsPath(r"D:\PD\Offsite\host.toml")),
    ("win32", {}, PureWindowsPath(r"C:\ProgramData\Offsite\host.toml")),
])
def test_configuration_lives_at_the_platforms_usual_place(
        platform: str, environ: dict[str, str], expected: object) -> None:
    assert default_config_path(platform, environ) == expected


def test_data_defaults_per_platform() -> None:
    assert default_data_dir("win32", {"ProgramData": r"C:\PD"}) == PureWindowsPath(
        r"C:\PD\Offsite")
    assert str(default_data_dir("darwin", {})) == "/Library/Application Support/Offsite"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"api_url": None}, "api_url is missing"),
    ({"api_url": "ftp://x"}, "api_url must be an http(s) URL"),
    ({"api_url": "https://x/?q=1"}, "api_url must be an http(s) URL"),
    ({"host": "Web_1"}, "host must match"),
    ({"host": "a" * 33}, "host must match"),
    ({"paths": None}, "paths is missing"),
    ({"paths": []}, "paths is empty"),
    ({"paths": "/etc"}, "paths must be a list"),
    ({"paths": ["etc"]}, "paths: 'etc' is not an absolute path"),
    ({"excludes": [1]}, "excludes must be a list of non-empty strings"),
    ({"retention_days": 0}, "retention_days must be an integer >= 1"),
    ({"retention_days": True}, "retention_days must be an integer"),
    ({"max_wait_s": "60"}, "max_wait_s must be an integer"),
    ({"verify_cycle_days": 0}, "verify_cycle_days must be an integer >= 1"),
    ({"verify_cycle_days": 2.5}, "verify_cycle_days must be an integer"),
    ({"key_file": ""}, "key_file must be a path"),
    ({"password": "x"}, "unknown setting in host.toml: password (did you mean password_file?)"),
    ({"tools": {"rsnyc": "rsync"}},
     "unknown setting in host.toml: tools.rsnyc (did you mean tools.rsync?)"),
    ({"colour": "red", "statedir": "s"}, "unknown settings in host.toml: colour, statedir (did "
     "you mean state_dir?); the settings are api_url, bwlimit_kib"),
    ({"tools": {"rsync": ""}}, "tools.rsync must be a program name or path"),
    ({"tools": "rsync"}, "[tools] must be a table"),
])
def test_errors_name_the_setting(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        parse(**overrides)
    assert message in str(caught.value)
    assert caught.value.exit_code == ExitCode.CONFIG


def test_load_reports_a_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no configuration at"):
        load_config(tmp_path / "host.toml", "linux", {})
    (tmp_path / "host.toml").write_text('api_url = "https://x\n')
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(tmp_path / "host.toml", "linux", {})


def test_load_reads_a_file(tmp_path: Path) -> None:
    (tmp_path / "host.toml").write_text(
        '# Offsite\napi_url = "https://api.example.com"\nhost = "db-2"\n'
        'paths = [\n  "/var/lib/postgresql",  # data\n]\nexcludes = ["**/*.tmp"]\n'
        '[tools]\nrdiff_backup = "/usr/local/bin/rdiff-backup"\n')
    cfg = load_config(tmp_path / "host.toml", "linux", {})
    assert cfg.host == "db-2"
    assert cfg.excludes == ("**/*.tmp",)
    assert cfg.key_file == tmp_path / "host.key"
    assert cfg.tools.rdiff_backup == "/usr/local/bin/rdiff-backup"


def test_the_verification_cycle_can_be_set() -> None:
    assert parse(verify_cycle_days=7).verify_cycle_days == 7
    assert parse(verify_cycle_days=1).verify_cycle_days == 1  # everything, once a day
