"""The exit codes of `offsite-host`, in one place, and the errors that carry them.

The codes are a stable interface: cron wrappers and monitoring read them. Never renumber one;
add a new code at the end instead.
"""

from __future__ import annotations

import textwrap
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CONFIG = 2
    NO_WINDOW = 3
    DEADLINE = 4
    TRANSFER_FAILED = 5
    VERIFY_FAILED = 6
    LOCKED = 7
    LOCAL_FAILED = 8
    SERVER = 9
    RESTORE_FAILED = 10


def exit_codes_help() -> str:
    """The exit-code table shown by `--help` (the README carries the same table)."""
    lines = ["exit codes:"]
    for code in ExitCode:
        lines += textwrap.wrap(MEANING[code], width=92, initial_indent=f"  {code.value}  ",
                               subsequent_indent="     ")
    return "\n".join(lines)


MEANING: dict[ExitCode, str] = {
    ExitCode.OK: "done: the backup was shipped, verified and reported succeeded "
                 "(other commands: they worked)",
    ExitCode.CONFIG: "configuration error: config file, key, password, tool or path, or the "
                     "server refused this host (400/401/403); nothing was sent; for restore: "
                     "a bad request (unknown date, incomplete point, path not in the backup, "
                     "target not empty, below a file or a mount point), nothing was written",
    ExitCode.NO_WINDOW: "no backup window is open; normal under cron, try again next time "
                        "(restore: another window is active on the archive)",
    ExitCode.DEADLINE: "the window deadline (or the certificate's end) was reached, or the "
                       "connection ended at it; what arrived stays on the archive and the "
                       "next run resumes from it "
                       "(restore: what was fetched is kept and the next attempt resumes)",
    ExitCode.TRANSFER_FAILED: "the transfer, or the verification, could not be done (rsync or "
                              "ssh: network, archive, auth), after trying again for "
                              "connect_wait_s when the connection was at fault",
    ExitCode.VERIFY_FAILED: "the archive copy does not match the encrypted view (run: even "
                            "after resending what differed once; verify "
                            "--deep: the restored tree differs from the local backup)",
    ExitCode.LOCKED: "another offsite-host run holds the lock; this one did nothing",
    ExitCode.LOCAL_FAILED: "the local stage failed (rdiff-backup or the gocryptfs view)",
    ExitCode.SERVER: "the control plane is unreachable, was still opening the window after "
                     "max_wait_s, or answered outside the contract; at once, without "
                     "retrying, when api_url is wrong (its name does not resolve, nothing "
                     "listens there, or what answers is not the Offsite API)",
    ExitCode.RESTORE_FAILED: "the restore failed (or verify --deep): the fetched copy is "
                             "damaged (not what the host sent, per its manifest; corrupted "
                             "ciphertext; a file failing rdiff-backup's hash) or could not be "
                             "restored; the target was left as it was",
}


class OffsiteError(Exception):
    """An expected failure: its message is for the operator, its code is the exit code."""

    exit_code: ExitCode = ExitCode.LOCAL_FAILED


class ConfigError(OffsiteError):
    exit_code = ExitCode.CONFIG


class NoWindowError(OffsiteError):
    exit_code = ExitCode.NO_WINDOW


class DeadlineError(OffsiteError):
    exit_code = ExitCode.DEADLINE


class TransferError(OffsiteError):
    exit_code = ExitCode.TRANSFER_FAILED


class VerifyError(OffsiteError):
    exit_code = ExitCode.VERIFY_FAILED


class LockedError(OffsiteError):
    exit_code = ExitCode.LOCKED


class LocalStageError(OffsiteError):
    exit_code = ExitCode.LOCAL_FAILED


class ServerError(OffsiteError):
    exit_code = ExitCode.SERVER


class RestoreError(OffsiteError):
    exit_code = ExitCode.RESTORE_FAILED
