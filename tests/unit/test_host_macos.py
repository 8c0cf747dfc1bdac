"""A macOS host: the launchd job we ship (a valid property list whose command our CLI
accepts) and the refusal of Apple's rsync (2.6.9, or openrsync since macOS 15)."""

from __future__ import annotations

import plistlib
import shutil
from pathlib import Path

import pytest
from offsite_host import macos, tools
from offsite_host.cli import _parser, cmd_run, main
from offsite_host.exitcodes import ConfigError

HOST_CLIENT = Path(__file__).parents[2] / "host_client"
SHIPPED = HOST_CLIENT / "packaging" / "macos" / "org.offsite.host.plist"
README = HOST_CLIENT / "README.md"


def test_the_shipped_plist_is_the_job_the_code_describes() -> None:
    job = plistlib.loads(SHIPPED.read_bytes())
    assert job == macos.launchd_job()
    assert job["Label"] == macos.LABEL and f"{macos.LABEL}.plist" == SHIPPED.name


def test_the_job_runs_a_command_our_cli_accepts() -> None:
    program, *args = plistlib.loads(SHIPPED.read_bytes())["ProgramArguments"]
    assert Path(program).name == "offsite-host"
    parsed = _parser().parse_args(args)
    assert parsed.handler is cmd_run
    assert parsed.config == Path("/Library/Application Support/Offsite/host.toml")


def test_the_job_finds_homebrews_tools_before_apples() -> None:
    path = plistlib.loads(SHIPPED.read_bytes())["EnvironmentVariables"]["PATH"].split(":")
    assert path.index("/opt/homebrew/bin") < path.index("/usr/bin")
    assert path.index("/usr/local/bin") < path.index("/usr/bin")


def test_the_job_logs_and_runs_nightly() -> None:
    job = plistlib.loads(SHIPPED.read_bytes())
    assert job["StandardErrorPath"] == job["StandardOutPath"] == macos.LOG
    assert job["StartCalendarInterval"] == {"Hour": 1, "Minute": 30}
    assert job["RunAtLoad"] is False


def test_a_plist_for_another_program_and_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert macos.main(["--program", "/usr/local/offsite/bin/offsite-host", "--at", "23:05"]) == 0
    job = plistlib.loads(capsys.readouterr().out.encode())
    assert job["ProgramArguments"][0] == "/usr/local/offsite/bin/offsite-host"
    assert job["StartCalendarInterval"] == {"Hour": 23, "Minute": 5}
    with pytest.raises(SystemExit):
        macos.main(["--at", "24:00"])


def test_the_readme_loads_the_job_we_ship() -> None:
    text = README.read_text(encoding="utf-8")
    assert f"packaging/macos/{SHIPPED.name}" in text
    assert f"launchctl bootstrap system {macos.DAEMON_PLIST}" in text


@pytest.mark.parametrize(("output", "problem"), [
    ("rsync  version 3.2.7  protocol version 31\nCopyright (C) 1996-2022", None),
    ("rsync  version v3.4.1  protocol version 32\n", None),
    ("rsync  version 3.1.0  protocol version 31\n", None),
    ("rsync  version 2.6.9  protocol version 29\nCopyright (C) 1996-2006", "rsync 2.6"),
    ("rsync  version 3.0.9  protocol version 30\n", "rsync 3.0"),
    ("openrsync: protocol version 29\nrsync version 2.6.9 compatible\n", "openrsync"),
    ("", "does not answer --version like rsync"),
])
def test_rsync_older_than_3_1_is_refused(output: str, problem: str | None) -> None:
    found = tools.rsync_version_problem(output)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_the_refusal_names_the_fix(tmp_path: Path) -> None:
    apple = tmp_path / "rsync"
    apple.write_text("#!/bin/sh\necho 'rsync  version 2.6.9  protocol version 29'\n")
    apple.chmod(0o755)
    with pytest.raises(ConfigError, match="brew install rsync") as refused:
        tools.check_rsync(str(apple))
    assert "tools.rsync" in str(refused.value) and "2.6" in str(refused.value)


def test_this_machines_rsync_is_accepted() -> None:
    rsync = shutil.which("rsync")  # a system package of `make test` (Makefile)
    assert rsync is not None
    tools.check_rsync(rsync)


def test_run_with_apples_rsync_stops_before_any_work(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Everything else is in place (key, password, initialised repository); the run stops at
    the rsync check with exit 2, before rdiff-backup (a program that would leave a mark)."""
    openrsync = tmp_path / "rsync"
    openrsync.write_text("#!/bin/sh\necho 'openrsync: protocol version 29'\n"
                         "echo 'rsync version 2.6.9 compatible'\n")
    marker = tmp_path / "rdiff-backup-ran"
    rdiff = tmp_path / "rdiff-backup"
    rdiff.write_text(f"#!/bin/sh\ntouch {marker}\n")
    for program in (openrsync, rdiff):
        program.chmod(0o755)
    (tmp_path / "repository").mkdir()
    (tmp_path / "repository" / ".gocryptfs.reverse.conf").write_text("{}")
    (tmp_path / "gocryptfs.pass").write_text("pw\n")
    config = tmp_path / "host.toml"
    config.write_text(f'api_url = "https://api.example.com"\nhost = "mac-1"\n'
                      f'paths = ["{tmp_path}"]\nrepository = "repository"\nstate_dir = "state"\n'
                      f'[tools]\nrsync = "{openrsync}"\nssh = "true"\nrdiff_backup = "{rdiff}"\n'
                      'gocryptfs = "true"\nfusermount = "true"\n')
    assert main(["--config", str(config), "keygen"]) == 0
    assert main(["--config", str(config), "run"]) == 2
    err = capsys.readouterr().err
    assert "it is openrsync" in err and "brew install rsync" in err
    assert not marker.exists()
