"""A Windows host's logic, tested here on Linux with Windows semantics: paths as rsync names
them, the command lines CreateProcess and schtasks receive (split back by the MS C runtime's
rules), the Task Scheduler and icacls commands the README gives, and the ACL check."""

from __future__ import annotations

from pathlib import Path, PureWindowsPath

import pytest
from offsite_host import preflight, tomlsubset, windows
from offsite_host.config import (
    default_config_path,
    default_data_dir,
    default_tools,
    parse_config,
)
from offsite_host.exitcodes import ConfigError
from offsite_host.session import Session
from offsite_host.tools import ResolvedTools
from offsite_host.transfer import SessionFiles, rsh_command, rsync_local_path, ssh_argv

README = Path(__file__).parents[2] / "host_client" / "README.md"
PROGRAM = r"C:\Program Files\Offsite\Scripts\offsite-host.exe"
DATA = r"C:\ProgramData\Offsite"


def split_windows(line: str) -> list[str]:
    """How the MS C runtime (and CommandLineToArgvW) splits a command line: whitespace
    outside quotes separates; 2n backslashes before a quote are n backslashes and the quote
    toggles quoting; 2n+1 are n and a literal quote; other backslashes are literal."""
    args: list[str] = []
    current, quoted, started, i = "", False, False, 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            run = len(line[i:]) - len(line[i:].lstrip("\\"))
            if i + run < len(line) and line[i + run] == '"':
                current += "\\" * (run // 2)
                if run % 2:
                    current += '"'
                    i += run + 1
                else:
                    i += run
                started = True
                continue
            current += "\\" * run
            i += run
            started = True
            continue
        if c == '"':
            quoted, started = not quoted, True
        elif c in " \t" and not quoted:
            if started:
                args.append(current)
            current, started = "", False
        else:
            current += c
            started = True
        i += 1
    if started:
        args.append(current)
    return args


def split_rsync_e(command: str) -> list[str]:
    """How rsync splits its -e command (rsync(1), --rsh: spaces separate; single and double
    quotes keep spaces, each inside the other is literal; backslashes are not special)."""
    words: list[str] = []
    current, quote, started = "", "", False
    for c in command:
        if c in "'\"" and quote in ("", c):
            quote, started = ("" if quote else c), True
        elif c == " " and not quote:
            if started:
                words.append(current)
            current, started = "", False
        else:
            current, started = current + c, True
    if started:
        words.append(current)
    return words


@pytest.mark.parametrize(("path", "style", "expected"), [
    (r"C:\ProgramData\Offsite\state\view", windows.CYGDRIVE,
     "/cygdrive/c/ProgramData/Offsite/state/view"),
    (r"C:\ProgramData\Offsite\state\view", windows.MSYS2, "/c/ProgramData/Offsite/state/view"),
    (r"D:\Backups\My Repository", windows.CYGDRIVE, "/cygdrive/d/Backups/My Repository"),
    (r"E:\\", windows.MSYS2, "/e/"),
    (r"\\nas\backup\offsite", windows.CYGDRIVE, "//nas/backup/offsite"),
    (r"\\nas\backup\offsite", windows.MSYS2, "//nas/backup/offsite"),
])
def test_windows_paths_as_each_rsync_names_them(path: str, style: str, expected: str) -> None:
    assert windows.rsync_path(PureWindowsPath(path), style) == expected
    assert ":" not in windows.rsync_path(PureWindowsPath(path), style)  # never host:path


@pytest.mark.parametrize(("runtime", "expected"), [
    ("msys-2.0.dll", "/c/ProgramData/Offsite/state/view"),
    ("cygwin1.dll", "/cygdrive/c/ProgramData/Offsite/state/view"),
])
def test_the_client_names_paths_for_the_rsync_it_runs(tmp_path: Path, runtime: str,
                                                      expected: str) -> None:
    rsync = tmp_path / "rsync.exe"
    rsync.touch()
    (tmp_path / runtime).touch()
    view = Path(r"C:\ProgramData\Offsite\state\view")
    assert rsync_local_path(view, "win32", str(rsync)) == expected
    assert rsync_local_path(view, "win32") == "/cygdrive/c/ProgramData/Offsite/state/view"
    assert rsync_local_path(Path("/var/lib/offsite/state/view"), "linux", str(rsync)) == \
        "/var/lib/offsite/state/view"


@pytest.mark.parametrize("argv", [
    ["cppcryptfsctl.exe", r"--mount=C:\ProgramData\Offsite\repository",
     r"--drive=C:\ProgramData\Offsite\state\view", "--reverse", "--readonly"],
    [r"C:\Program Files\cppcryptfs\cppcryptfsctl.exe", r"--mount=D:\My Data\repo\\",
     r"--drive=C:\Users\Backup Admin\view", "--readonly"],
    ["rsync.exe", "-e", 'ssh -o "UserKnownHostsFile=C:/x y/kh"', "--", "a b\\", ""],
    ["x", 'say "hi"', "back\\\\slash\\", "tab\there"],
])
def test_command_lines_split_back_into_the_same_arguments(argv: list[str]) -> None:
    assert split_windows(windows.command_line(argv)) == argv


def test_the_task_runs_offsite_host_run_with_its_config() -> None:
    argv = windows.schtasks_argv(PROGRAM, DATA + r"\host.toml", "02:15")
    options = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert argv[:2] == ["schtasks", "/Create"] and argv[-1] == "/F"
    assert options["/SC"] == "DAILY" and options["/ST"] == "02:15"
    assert options["/RU"] == "SYSTEM"
    # schtasks splits its own command line, then the task's /TR once more when it runs
    assert split_windows(windows.command_line(argv)) == argv
    assert split_windows(options["/TR"]) == [PROGRAM, "--config", DATA + r"\host.toml", "run"]


def test_a_task_needs_a_valid_time_and_a_command_schtasks_accepts() -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        windows.schtasks_argv(PROGRAM, DATA, "25:00")
    with pytest.raises(ValueError, match="261"):
        windows.schtasks_argv("C:\\" + "p" * 250 + "\\offsite-host.exe", DATA)


def test_the_readme_gives_the_commands_the_code_builds() -> None:
    text = README.read_text(encoding="utf-8")
    for line in windows.setup_commands(PROGRAM, DATA):
        assert line in text


# What C:\ProgramData passes on to a new folder: Users may read (and create files).
INHERITED = ("O:BAG:SYD:AI(A;OICIID;FA;;;SY)(A;OICIID;FA;;;BA)(A;OICIIOID;GA;;;CO)"
             "(A;OICIID;0x1200a9;;;BU)(A;CIID;DCLCRPCR;;;BU)")
PRIVATE = "O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"


@pytest.mark.parametrize(("sddl", "groups"), [
    (INHERITED, ["Users"]),
    (PRIVATE, []),
    ("O:SYG:SYD:PAI(A;;FA;;;SY)(A;;FR;;;S-1-1-0)", ["Everyone"]),
    ("O:SYG:SYD:PAI(A;;FA;;;SY)(A;;FR;;;AU)(A;;FR;;;WD)", ["Authenticated Users", "Everyone"]),
    ("O:SYG:SYD:PAI(A;;FA;;;SY)(D;;FA;;;WD)", []),  # a deny entry lets nobody in
    ("O:SYG:SYD:PAI(A;;FA;;;SY)(A;OICIIO;FA;;;BU)", []),  # inherit-only: not this object
    ("O:SYG:SYD:NO_ACCESS_CONTROL", ["Everyone (a NULL DACL)"]),
    ("O:SYG:SY", ["anyone (no DACL could be read)"]),
    (PRIVATE + "S:AI(AU;SAFA;FA;;;WD)", []),  # Everyone in the SACL (auditing) grants nothing
])
def test_broad_grants_in_a_security_descriptor(sddl: str, groups: list[str]) -> None:
    assert windows.broad_grants(sddl) == groups


def test_the_client_refuses_secrets_others_can_read(tmp_path: Path) -> None:
    key = tmp_path / "host.key"
    sddl = {tmp_path: PRIVATE, key: INHERITED}
    with pytest.raises(ConfigError) as refused:
        windows.check_private([tmp_path, key], icacls=lambda path: sddl[path])
    message = str(refused.value)
    assert f"{key} is open to Users" in message
    assert "/inheritance:r /grant:r *S-1-5-18:F *S-1-5-32-544:F" in message
    sddl[key] = PRIVATE
    windows.check_private([tmp_path, key], icacls=lambda path: sddl[path])


def test_ssh_and_its_windows_paths_survive_rsync_e() -> None:
    ssh = r"C:\Program Files\OpenSSH\ssh.exe"
    session = Session("w-1", "203.0.113.7", 22, "web-1", "cert", "kh", "current/", 10.0, 20.0)
    # as Path is on Windows: a WindowsPath, whose as_posix() turns the separators
    state = PureWindowsPath(r"C:\ProgramData\Offsite\state\session")
    files = SessionFiles(state / "id", state / "id-cert.pub",  # type: ignore[arg-type]
                         PureWindowsPath(r"C:\Users\Backup Admin\known_hosts"))
    argv = split_rsync_e(rsh_command(ssh_argv(ssh, files, session)))
    assert argv[0] == ssh
    assert argv[argv.index("-i") + 1] == r"C:\ProgramData\Offsite\state\session\id"
    # one word each, with the double quotes ssh's own option parser takes off
    assert 'UserKnownHostsFile="C:/Users/Backup Admin/known_hosts"' in argv
    assert "CertificateFile=C:/ProgramData/Offsite/state/session/id-cert.pub" in argv


@pytest.mark.parametrize("environ", [{"ProgramData": r"D:\PD"}, {"PROGRAMDATA": r"D:\PD"}])
def test_program_data_is_found_whatever_the_case_of_its_name(environ: dict[str, str]) -> None:
    assert default_config_path("win32", environ) == PureWindowsPath(r"D:\PD\Offsite\host.toml")
    assert default_data_dir("win32", environ) == PureWindowsPath(r"D:\PD\Offsite")


def test_windows_defaults_to_the_cppcryptfs_wrappers() -> None:
    names = default_tools("win32")
    assert names["gocryptfs"] == "offsite-gocryptfs-cppcryptfs"
    assert names["fusermount"] == "offsite-unmount-cppcryptfs"
    assert default_tools("linux")["gocryptfs"] == "gocryptfs"


def test_the_readmes_windows_configuration_is_valid() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Windows hosts"):text.index("## What was run where")]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    data = tomlsubset.loads(block)
    assert data["paths"] == [r"C:\Users", r"D:\Shares"]  # literal strings: no escapes
    tools = data["tools"]
    assert tools["gocryptfs"].endswith(r"\Scripts\offsite-gocryptfs-cppcryptfs.exe")
    # every other setting as the client reads it on Windows (paths are checked on Linux as
    # POSIX paths, where C:\ is not absolute)
    cfg = parse_config({**data, "paths": ["/"]}, Path("/etc/offsite"), "win32", {})
    assert cfg.tools.fusermount == tools["fusermount"] and cfg.host == "win-1"


def test_every_run_checks_the_acls_of_the_key_and_password_on_windows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[list[Path]] = []
    monkeypatch.setattr(preflight.sys, "platform", "win32")
    monkeypatch.setattr(preflight.windows, "check_private", checked.append)
    monkeypatch.setattr(preflight.tools, "check_rsync", lambda rsync: None)
    cfg = parse_config({"api_url": "https://api.example.com", "host": "win-1", "paths": ["/"]},
                       tmp_path, "win32", {})
    resolved = ResolvedTools("rsync", "ssh", "rdiff-backup", "gocryptfs", "umount")
    preflight.check_platform(cfg, resolved)
    assert checked == [[tmp_path, tmp_path / "host.key", tmp_path / "gocryptfs.pass"]]
