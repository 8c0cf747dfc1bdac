"""The command line: keygen, status, help, and configuration errors as exit code 2."""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from offsite_host import keys, points
from offsite_host.api import ApiClient
from offsite_host.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "host.toml"
    path.write_text(f'api_url = "https://api.example.com"\nhost = "web-1"\n'
                    f'paths = ["{tmp_path}"]\nstate_dir = "state"\n')
    return path


def test_keygen_prints_the_key_to_enrol_and_never_overwrites(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "keygen"]) == 0
    printed = capsys.readouterr()
    key = keys.load_identity(config.parent / "host.key")
    assert printed.out == keys.public_line(key, "web-1@offsite") + "\n"
    assert "BEGIN" not in printed.out + printed.err  # the private key is never shown
    assert main(["--config", str(config), "keygen"]) == 2
    assert "--force replaces it" in capsys.readouterr().err
    assert main(["--config", str(config), "keygen", "--force"]) == 0
    assert bytes(keys.load_identity(config.parent / "host.key")) != bytes(key)


def test_status_before_any_run(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "status", "--local"]) == 0
    assert capsys.readouterr().out == "no run recorded yet\n"
    assert main(["--config", str(config), "status"]) == 0  # no key: the API is not asked
    assert capsys.readouterr().out.splitlines()[1].startswith(
        "newest point: not known (the control plane was not asked or did not answer: no host "
        "key at")


def test_status_warns_when_the_newest_complete_point_is_stale(
        config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["--config", str(config), "keygen"]) == 0
    capsys.readouterr()
    now = time.time()
    answer = {"host": "web-1", "stale_after_hours": 36, "snapshots": [
        {"snapshot_id": "snap-0b", "window_id": "w-2", "day": "2026-12-03",
         "started_at": _iso(now - 40 * 3600), "complete": False, "size_gib": 20},
        {"snapshot_id": "snap-0a", "window_id": "w-1", "day": "2026-12-02",
         "started_at": _iso(now - 50 * 3600), "complete": True, "size_gib": 20}]}
    asked: list[str] = []

    def fetch(client: ApiClient) -> object:
        asked.append(client.host)
        return answer

    monkeypatch.setattr(points, "fetch_snapshots", fetch)
    assert main(["--config", str(config), "status"]) == 0
    _, newest, warning = capsys.readouterr().out.splitlines()
    assert asked == ["web-1"]
    assert newest.startswith("newest point: snap-0a of 2026-12-02, started ")
    assert newest.endswith(" UTC, 50.0 h ago")
    assert warning == ("WARNING: stale: no complete off-site backup for 50.0 h, more than 36 h "
                       "(the admins are told too)")
    answer["snapshots"][1]["started_at"] = _iso(now - 30 * 3600)  # type: ignore[index]
    assert main(["--config", str(config), "status"]) == 0
    assert "WARNING" not in capsys.readouterr().out


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).isoformat()


def test_missing_configuration_is_exit_2(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "none.toml"), "run"]) == 2
    assert "offsite-host: error: no configuration at" in capsys.readouterr().err


def test_run_without_a_key_is_exit_2(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config.write_text(config.read_text() + '[tools]\nrsync = "true"\nssh = "true"\n'
                      'rdiff_backup = "true"\ngocryptfs = "true"\nfusermount = "true"\n')
    assert main(["--config", str(config), "run"]) == 2
    assert "no host key at" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as leaving:
        main(["--help"])
    assert leaving.value.code == 0
    out = capsys.readouterr().out
    for code in ("0", "2", "3", "4", "5", "6", "7", "8", "9"):
        assert f"\n  {code}  " in out
    assert "cppcryptfs" in out and "macFUSE" in out


@pytest.mark.parametrize(("args", "message"), [
    (["restore", "--to", "/tmp/x"], "needs --date"),
    (["restore", "--date", "2030-02-30", "--to", "/tmp/x"], "is not a day"),
    (["restore", "--date", "2030-03-01", "--at", "yesterday", "--to", "/tmp/x"], "--at"),
    (["restore", "--snapshot", "snap-1"], "needs --date"),
    (["restore", "--snapshot", "snap/../x", "--to", "/tmp/x"], "not a snapshot id"),
])
def test_restore_arguments_are_checked_first(config: Path, args: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (config.parent / "state" / "run.lock").exists()  # refused before anything


def test_help_documents_the_restore_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["restore", "--help"])
    out = capsys.readouterr().out
    assert "  10  the restore failed" in out and "--force-overwrite" in out
    assert "--snapshot SNAP_ID" in out


def test_verify_full_and_deep_are_one_or_the_other(config: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as leaving:
        main(["--config", str(config), "verify", "--full", "--deep"])
    assert leaving.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    out = capsys.readouterr().out
    assert "--full" in out and "verify_cycle_days" in out


def test_config_is_taken_after_the_command_too(config: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--config", str(config)]) == 0
    line = capsys.readouterr().out
    assert main(["status", "--local", "--config", str(config)]) == 0  # --local: no network
    assert capsys.readouterr().out == "no run recorded yet\n"
    # given before the command and not repeated after it, it stays
    assert main(["--config", str(config), "keygen", "--show"]) == 0
    assert capsys.readouterr().out == line


def test_keygen_show_prints_the_enrolled_key_again_and_makes_nothing(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "keygen", "--show"]) == 2
    assert "no host key at" in capsys.readouterr().err
    assert not (config.parent / "host.key").exists()
    assert main(["--config", str(config), "keygen"]) == 0
    made = capsys.readouterr().out
    key_bytes = (config.parent / "host.key").read_bytes()
    assert main(["--config", str(config), "keygen", "--show"]) == 0
    assert capsys.readouterr().out == made
    assert (config.parent / "host.key").read_bytes() == key_bytes
    assert main(["--config", str(config), "keygen"]) == 2
    assert "`keygen --show` prints its public key again" in capsys.readouterr().err


def test_every_option_says_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    from offsite_host.cli import _parser

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "--config CONFIG the host.toml to use (default: " in out, name
        for action in sub._actions:
            assert action.help, (name, action.dest)
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert "default: " in action.help or f"(default: {action.default})" in out, (
                    name, action.dest)
