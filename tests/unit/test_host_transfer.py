"""The ssh and rsync command lines, and reading rsync's output."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from offsite_host.runner import run_until
from offsite_host.session import Session
from offsite_host.transfer import (
    SessionFiles,
    destination,
    differences,
    differing_paths,
    parse_stats,
    rsh_command,
    rsync_argv,
    rsync_local_path,
    ssh_argv,
)

SESSION = Session("w-1", "203.0.113.7", 2222, "web-1", "cert", "kh", "current/", 10.0, 20.0)
FILES = SessionFiles(Path("/var/lib/offsite/state/s/id"), Path("/var/lib/offsite/state/s/c.pub"),
                     Path("/Library/Application Support/Offsite/known_hosts"))


def options(argv: list[str]) -> dict[str, str]:
    pairs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_ssh_uses_only_this_key_certificate_and_host_key() -> None:
    argv = ssh_argv("ssh", FILES, SESSION)
    assert argv[:9] == ["ssh", "-F", "none", "-p", "2222", "-l", "web-1", "-i", str(FILES.key)]
    opts = options(argv)
    assert opts["CertificateFile"] == str(FILES.certificate)
    assert opts["UserKnownHostsFile"] == '"/Library/Application Support/Offsite/known_hosts"'
    assert opts["StrictHostKeyChecking"] == "yes" and opts["GlobalKnownHostsFile"] == "none"
    assert opts["IdentitiesOnly"] == "yes" and opts["IdentityAgent"] == "none"
    assert opts["BatchMode"] == "yes" and opts["ForwardAgent"] == "no"
    assert opts["ServerAliveInterval"] == "15"


def test_rsh_command_quotes_for_rsyncs_splitter() -> None:
    assert rsh_command(["ssh", "-p", "22"]) == "ssh -p 22"
    assert rsh_command(["C:\\Program Files\\ssh.exe", "x"]) == "'C:\\Program Files\\ssh.exe' x"
    assert rsh_command(['K="/a b"']) == "'K=\"/a b\"'"
    assert rsh_command(["it's"]) == '"it\'s"'
    assert rsh_command([""]) == "''"
    with pytest.raises(ValueError):
        rsh_command(["both ' and \""])


def test_destination_brackets_ipv6() -> None:
    assert destination(SESSION) == "203.0.113.7:current/"
    v6 = Session("w", "2001:db8::7", 22, "u", "c", "k", ".", 1.0, 1.0)
    assert destination(v6) == "[2001:db8::7]:."


def test_the_push_writes_changed_blocks_in_place_and_resumes() -> None:
    argv = rsync_argv("rsync", "ssh -p 2222", "/state/view", SESSION, io_timeout_s=300,
                      bwlimit_kib=500, progress=True)
    assert argv[0] == "rsync"
    for flag in ("-rlpt", "--inplace", "--no-whole-file", "--delete-delay", "--timeout=300",
                 "--stats", "--info=progress2", "--bwlimit=500", "--chmod=D0700,F0600"):
        assert flag in argv
    # a file written anew and renamed (--delay-updates, --partial-dir, a temp file) or whole
    # (-W) would make every block of a changed file a changed block of the volume
    assert not any(a.startswith(("--delay-updates", "--partial-dir", "--temp-dir", "-T",
                                 "--whole-file", "-W", "--append", "-z", "--compress"))
                   for a in argv)
    assert argv.index("--inplace") < argv.index("--")
    assert argv[-3:] == ["--", "/state/view/", "203.0.113.7:current/"]
    assert argv[argv.index("-e") + 1] == "ssh -p 2222"


def test_verify_is_a_dry_run_checksum_push() -> None:
    argv = rsync_argv("rsync", "ssh", "/state/view/", SESSION, io_timeout_s=60, verify=True,
                      bwlimit_kib=5)
    for flag in ("--dry-run", "--checksum", "--itemize-changes", "--inplace",
                 "--delete-delay"):
        assert flag in argv
    assert "--stats" not in argv and "--bwlimit=5" not in argv
    assert argv[-2] == "/state/view/"


def test_windows_paths_become_cygdrive_paths() -> None:
    assert rsync_local_path(Path("/var/lib/x"), "linux") == "/var/lib/x"
    assert rsync_local_path(Path("C:\\ProgramData\\Offsite\\state\\view"), "win32") == \
        "/cygdrive/c/ProgramData/Offsite/state/view"


STATS = """
Number of files: 1,234 (reg: 1,000, dir: 234)
Number of created files: 3
Number of regular files transferred: 17
Total file size: 21,216,723 bytes
Total bytes sent: 1.234.567
Total bytes received: 9,876
"""


def test_parse_stats_ignores_digit_grouping() -> None:
    stats = parse_stats(STATS)
    assert (stats.bytes_sent, stats.files_transferred, stats.files_total) == (1234567, 17, 1234)
    assert parse_stats("").bytes_sent == 0


def test_differences_ignore_directory_attribute_changes_only() -> None:
    output = "\n".join([
        ".d..t...... ./",
        ".d..t...... Xy7/",
        "<fcst...... Xy7/AbC",
        "cd+++++++++ NewDir/",
        "*deleting   OldFile",
        ".f..t...... Touched",
        "cL+++++++++ link -> target",
        "some other line",
    ])
    assert differences(output) == ["<fcst...... Xy7/AbC", "cd+++++++++ NewDir/",
                                   "*deleting   OldFile", ".f..t...... Touched",
                                   "cL+++++++++ link -> target"]
    assert differences(".d..t...... ./\n") == []


def test_a_repair_resends_the_listed_entries_with_checksums() -> None:
    argv = rsync_argv("rsync", "ssh", "/v", SESSION, io_timeout_s=30, files_from="/s/list")
    assert "--checksum" in argv and "--files-from=/s/list" in argv
    assert "--delete-missing-args" in argv and "--from0" in argv and "--dry-run" not in argv
    assert "--inplace" in argv and "--delay-updates" not in argv  # a repair too: blocks only
    assert argv[-3:] == ["--", "/v/", "203.0.113.7:current/"]
    assert not any(a.startswith("--files-from") for a in rsync_argv(
        "rsync", "ssh", "/v", SESSION, io_timeout_s=30))


def test_the_paths_a_repair_resends_or_deletes() -> None:
    found = differences("<fc........ a/blob\ncd+++++++++ new\\#303\\#251/\n"
                        "*deleting   old/extra\ncL+++++++++ link -> a/blob\n"
                        ".d..t...... a/\n<fc........ a/blob\n")
    assert differing_paths(found) == ["a/blob", "new\u00e9/", "old/extra", "link"]


def test_a_name_that_begins_or_ends_with_spaces_is_repaired_by_that_name() -> None:
    """rsync 3.5.0's own output for names ' lead', '  two', ' x', 'trail ' and 'nl<LF>x': an
    extra file on the archive is deleted by its real name, not by one that is not there."""
    output = ("*deleting    lead\n>f+++++++++   two\n.f..t......  x\n>f+++++++++ trail \n"
              "*deleting   nl\\#012x\n")
    assert differing_paths(differences(output)) == [" lead", "  two", " x", "trail ", "nl\nx"]


def test_the_push_itemizes_what_it_changes() -> None:
    argv = rsync_argv("rsync", "ssh", "/v", SESSION, io_timeout_s=30, progress=True)
    assert "--itemize-changes" in argv and "--stats" in argv and "--dry-run" not in argv


def test_the_nightly_check_reads_only_the_listed_entries_with_checksums() -> None:
    argv = rsync_argv("rsync", "ssh", "/v", SESSION, io_timeout_s=30, verify=True,
                      files_from="/s/verify.list")
    for flag in ("--dry-run", "--checksum", "--itemize-changes", "--files-from=/s/verify.list",
                 "--from0", "--delete-missing-args"):
        assert flag in argv
    assert argv[-3:] == ["--", "/v/", "203.0.113.7:current/"]
    whole = rsync_argv("rsync", "ssh", "/v", SESSION, io_timeout_s=30, verify=True)
    assert "--dry-run" in whole and not any(a.startswith("--files-from") for a in whole)
    assert "--delete-missing-args" not in whole


# rsync 3.5.0's push with --itemize-changes --info=progress2 --stats, as its pipe carries it:
# progress lines end in \r, one ends in \n before the next item; a name with a byte that is not
# UTF-8 (\xff) escaped by rsync
PUSH_WITH_PROGRESS = (
    b"<f+++++++++ big2\n\r         32,768   0%    0.00kB/s    0:00:00  \r      3,000,000  49%"
    b"  176.86MB/s    0:00:00 (xfr#1, to-chk=4/7)\n<f+++++++++ d/c\n\r      3,000,002  49%  "
    b"176.86MB/s    0:00:00 (xfr#2, to-chk=0/7)\r<f+++++++++ odd\\#377name\n"
    b"\r      3,000,002  49%  176.86MB/s    0:00:00 (xfr#3, to-chk=0/7)\n*deleting   gone\n"
    b".d..t...... d/\n\nNumber of files: 7 (reg: 5, dir: 2)\nNumber of created files: 2 "
    b"(reg: 2)\nNumber of regular files transferred: 3\nTotal bytes sent: 3,000,962\n"
    b"sent 3,000,962 bytes  received 58 bytes  6,002,040.00 bytes/sec\n")


def test_what_a_push_sent_is_read_from_its_output_with_progress_on_a_terminal() -> None:
    shown: list[str] = []
    script = f"import sys; sys.stdout.buffer.write({PUSH_WITH_PROGRESS!r})"
    done = run_until([sys.executable, "-c", script], time.time() + 30, shown.append)
    assert done.returncode == 0
    assert differing_paths(differences(done.stdout)) == [
        "big2", "d/c", "odd\udcffname", "gone"]
    assert parse_stats(done.stdout).files_transferred == 3
    assert any("32,768" in line for line in shown)  # the progress went to the console
