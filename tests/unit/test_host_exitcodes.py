"""Exit codes are a stable interface: their values never change."""

from __future__ import annotations

from offsite_host import exitcodes
from offsite_host.exitcodes import ExitCode, exit_codes_help


def test_values_are_stable() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0, "CONFIG": 2, "NO_WINDOW": 3, "DEADLINE": 4, "TRANSFER_FAILED": 5,
        "VERIFY_FAILED": 6, "LOCKED": 7, "LOCAL_FAILED": 8, "SERVER": 9,
        "RESTORE_FAILED": 10}


def test_each_error_carries_its_code() -> None:
    assert exitcodes.ConfigError("x").exit_code == 2
    assert exitcodes.NoWindowError("x").exit_code == 3
    assert exitcodes.DeadlineError("x").exit_code == 4
    assert exitcodes.TransferError("x").exit_code == 5
    assert exitcodes.VerifyError("x").exit_code == 6
    assert exitcodes.LockedError("x").exit_code == 7
    assert exitcodes.LocalStageError("x").exit_code == 8
    assert exitcodes.ServerError("x").exit_code == 9
    assert exitcodes.RestoreError("x").exit_code == 10


def test_help_lists_every_code() -> None:
    text = exit_codes_help()
    for code in ExitCode:
        assert f"  {int(code)}  " in text
    assert "deadline" in text and "resumes" in text
