"""What a Windows host needs beyond `pathlib`: how its rsync names a local path, the command
line CreateProcess receives, the Task Scheduler entry, and the check that the secrets'
ACLs keep other accounts out.

Everything but `path_style`, `saved_sddl` and `main` is pure, so Linux tests pin it with
Windows path semantics (`PureWindowsPath`, `subprocess.list2cmdline`).

- rsync on Windows is a Cygwin program (cwRsync, Cygwin) or an MSYS2 one. Neither takes
  `C:\\x`: rsync reads a colon before the first slash as `host:path`. Cygwin names the drive
  `/cygdrive/c/x`; MSYS2 mounts the drives at the root (its fstab: `cygdrive` prefix `/`), `/c/x`.
- CreateProcess takes one string; the C runtime of the child splits it again. Python builds
  it with `subprocess.list2cmdline` (the MS C runtime's rules: double quotes around an
  argument with a space or a tab, backslashes doubled only before a quote).
- ACLs: `icacls PATH /save FILE` writes the path's security descriptor as SDDL, whose SIDs are
  the same in every language (`icacls PATH` prints localised account names).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePath, PureWindowsPath

from offsite_host.config import default_data_dir
from offsite_host.exitcodes import ConfigError

CYGDRIVE = "cygdrive"
MSYS2 = "msys2"
MSYS2_RUNTIME = "msys-2.0.dll"
TASK_NAME = r"Offsite\offsite-host run"
SCHTASKS_TR_MAX = 261  # schtasks: "The value for /TR option cannot be more than 261 character(s)"

# Well-known SIDs (SDDL aliases and their S-1-... forms) that stand for many accounts: none of
# them may read the host key or the gocryptfs password.
# https://learn.microsoft.com/en-us/windows/win32/secauthz/sid-strings
BROAD_SIDS = {
    "WD": "Everyone", "S-1-1-0": "Everyone",
    "AU": "Authenticated Users", "S-1-5-11": "Authenticated Users",
    "BU": "Users", "S-1-5-32-545": "Users",
    "IU": "Interactive", "S-1-5-4": "Interactive",
    "BG": "Guests", "S-1-5-32-546": "Guests",
    "AN": "Anonymous", "S-1-5-7": "Anonymous",
    "NU": "Network", "S-1-5-2": "Network",
}
_ACE = re.compile(r"\(([A-Z]+);([A-Z]*);([^;]*);[^;]*;[^;]*;([^)]*)\)")


def path_style(rsync: str) -> str:
    """MSYS2's rsync sits beside its runtime, `msys-2.0.dll`; anything else (cwRsync and
    Cygwin, beside `cygwin1.dll`) names drives the Cygwin way."""
    return MSYS2 if Path(rsync).with_name(MSYS2_RUNTIME).exists() else CYGDRIVE


def rsync_path(path: PurePath | str, style: str) -> str:
    """`C:\\x\\y` as that rsync names it: `/cygdrive/c/x/y` (cwRsync, Cygwin) or `/c/x/y`
    (MSYS2); a UNC path `\\\\server\\share\\x` is `//server/share/x` for both."""
    win = PureWindowsPath(path)
    if not win.drive.endswith(":"):
        return win.as_posix()
    rest = "/".join(win.parts[1:])
    prefix = "" if style == MSYS2 else "/cygdrive"
    return f"{prefix}/{win.drive[0].lower()}/{rest}"


def command_line(argv: list[str]) -> str:
    """The one string CreateProcess gets for `argv` (what `subprocess` passes on Windows)."""
    return subprocess.list2cmdline(argv)


def schtasks_argv(program: str, config: str, start: str = "01:30",
                  name: str = TASK_NAME) -> list[str]:
    """`schtasks /Create` for a nightly `offsite-host --config CONFIG run` as SYSTEM: a new
    task replaces an older one of that name (`/F`), and its command (`/TR`) is a command line
    of its own, quoted for CreateProcess.
    https://learn.microsoft.com/en-us/windows/win32/taskschd/schtasks (/RU "SYSTEM")
    """
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", start):
        raise ValueError(f"start must be HH:MM (24 h), not {start!r}")
    run = command_line([program, "--config", config, "run"])
    if len(run) > SCHTASKS_TR_MAX:
        raise ValueError(f"the task's command is {len(run)} characters; schtasks takes at most "
                         f"{SCHTASKS_TR_MAX}: install offsite-host on a shorter path")
    return ["schtasks", "/Create", "/TN", name, "/TR", run, "/SC", "DAILY", "/ST", start,
            "/RU", "SYSTEM", "/RL", "HIGHEST", "/F"]


def broad_grants(sddl: str) -> list[str]:
    """The broad groups (`BROAD_SIDS`) an SDDL security descriptor's DACL lets in: its allow
    ACEs (`A`) that apply to the object itself (not `IO`, inherit-only)."""
    if "D:" not in sddl:
        return ["anyone (no DACL could be read)"]
    dacl = sddl.split("D:", 1)[1].split("S:", 1)[0]  # the SACL, if any, follows
    if dacl.startswith("NO_ACCESS_CONTROL"):
        return ["Everyone (a NULL DACL)"]
    found = []
    for kind, flags, _rights, sid in _ACE.findall(dacl):
        if kind == "A" and "IO" not in _flags(flags) and sid in BROAD_SIDS:
            name = BROAD_SIDS[sid]
            if name not in found:
                found.append(name)
    return found


def check_private(paths: list[Path],
                  icacls: Callable[[Path], str] | None = None) -> None:
    """Refuses to run when Everyone, Users or another broad group can read the host key, the
    password file or the directory that holds them (`icacls` sets them right: README,
    "Windows hosts")."""
    read = icacls or saved_sddl
    for path in paths:
        groups = broad_grants(read(path))
        if groups:
            fix = command_line(private_acl_argv(path, directory=path.is_dir()))
            raise ConfigError(f"{path} is open to {', '.join(groups)}: keep it to SYSTEM and "
                              f"Administrators ({fix})")


def private_acl_argv(path: PurePath, directory: bool) -> list[str]:
    """icacls: drop inherited entries and grant only SYSTEM (S-1-5-18) and Administrators
    (S-1-5-32-544), by SID so that it works in every language; a directory passes the grant
    on to what is made in it (`(OI)(CI)`).
    https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/icacls"""
    inherit = "(OI)(CI)" if directory else ""
    return ["icacls", str(path), "/inheritance:r", "/grant:r", f"*S-1-5-18:{inherit}F",
            f"*S-1-5-32-544:{inherit}F"]


def saved_sddl(path: Path) -> str:
    """The SDDL of `path`, from `icacls PATH /save FILE` (UTF-16: its name on one line, its
    SDDL on the next)."""
    with tempfile.TemporaryDirectory(prefix="offsite-acl-") as tmp:
        saved = Path(tmp) / "acl.txt"
        try:
            done = subprocess.run(["icacls", str(path), "/save", str(saved)],
                                  capture_output=True, check=False, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise ConfigError(f"cannot run icacls to check {path}: {exc}") from exc
        if done.returncode != 0 or not saved.exists():
            raise ConfigError(f"icacls cannot read the ACL of {path} (exit {done.returncode})")
        lines = [line for line in saved.read_bytes().decode("utf-16").splitlines() if line]
    return lines[1] if len(lines) > 1 else ""


def _flags(flags: str) -> list[str]:
    return [flags[i:i + 2] for i in range(0, len(flags), 2)]


def setup_commands(program: str, data_dir: str, start: str = "01:30") -> list[str]:
    """The commands an administrator runs once (README, "Windows hosts"), as cmd.exe lines:
    the private ACL on the data directory, then the nightly task."""
    config = str(PureWindowsPath(data_dir, "host.toml"))
    return [command_line(private_acl_argv(PureWindowsPath(data_dir), directory=True)),
            command_line(schtasks_argv(program, config, start))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m offsite_host.windows",
        description="Print the icacls and schtasks commands that set up a Windows host.")
    parser.add_argument("--program", default=shutil.which("offsite-host") or "offsite-host",
                        help="the offsite-host.exe to run (default: the one on PATH)")
    parser.add_argument("--data-dir", default=str(default_data_dir("win32", dict(os.environ))),
        help=r"where host.toml and the keys live (default: %%ProgramData%%\Offsite)")
    parser.add_argument("--at", default="01:30", metavar="HH:MM",
                        help="when the task runs each night (default: 01:30)")
    args = parser.parse_args(argv)
    try:
        lines = setup_commands(args.program, args.data_dir, args.at)
    except ValueError as exc:
        parser.error(str(exc))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
