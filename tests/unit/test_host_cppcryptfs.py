"""The Windows wrapper: each gocryptfs call offsite-host makes (built by `encrypt.py` itself,
so a change there shows here) becomes the cppcryptfsctl call that does the same, with the
password on stdin only; gocryptfs' exit codes come back; -fsck reads every file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from offsite_host import cppcryptfs, encrypt
from offsite_host.cppcryptfs import Call, Cppcryptfs, Done

CTL = r"C:\Program Files\cppcryptfs\cppcryptfsctl.exe"
WRAPPER = "offsite-gocryptfs-cppcryptfs"
PW = Path(r"C:\ProgramData\Offsite\gocryptfs.pass")
REPO = Path(r"C:\ProgramData\Offsite\repository")
VIEW = Path(r"C:\ProgramData\Offsite\state\view")
COPY = Path(r"C:\ProgramData\Offsite\state\restore\snap-1\current")
PLAIN = Path(r"C:\ProgramData\Offsite\state\restore\plain")


@pytest.mark.parametrize(("client_argv", "expected"), [
    (encrypt.init_argv(WRAPPER, PW, REPO),
     [CTL, rf"--init={REPO}", "--reverse"]),
    (encrypt.mount_argv(WRAPPER, PW, REPO, VIEW),
     [CTL, rf"--mount={REPO}", rf"--drive={VIEW}", "--reverse", "--readonly"]),
    (encrypt.plain_mount_argv(WRAPPER, PW, COPY, PLAIN),
     [CTL, rf"--mount={COPY}", rf"--drive={PLAIN}", "--readonly"]),
], ids=["init", "reverse-view", "forward-copy"])
def test_each_gocryptfs_call_maps_to_cppcryptfsctl(client_argv: list[str],
                                                   expected: list[str]) -> None:
    call = cppcryptfs.parse_gocryptfs(client_argv[1:])
    assert call.passfile == str(PW)
    assert cppcryptfs.ctl_argv(CTL, call) == expected


def test_fsck_mounts_the_copy_forward_and_read_only() -> None:
    call = cppcryptfs.parse_gocryptfs(encrypt.fsck_argv(WRAPPER, PW, COPY)[1:])
    assert call == Call("fsck", str(PW), str(COPY))
    assert cppcryptfs.ctl_argv(CTL, call, r"C:\x\.fsck-1") == \
        [CTL, rf"--mount={COPY}", r"--drive=C:\x\.fsck-1", "--readonly"]


@pytest.mark.parametrize("lazy", [False, True])
def test_the_unmount_the_client_runs_on_windows_maps_to_cppcryptfsctl(lazy: bool) -> None:
    argv = encrypt.unmount_argv("offsite-unmount-cppcryptfs", VIEW, "win32", lazy=lazy)
    assert cppcryptfs.unmount_ctl_argv(CTL, argv[1:]) == \
        [CTL, rf"--unmount={VIEW}", *(["--force"] if lazy else [])]


@pytest.mark.parametrize("argv", [
    ["-reverse", "-extpass", "cat pw", str(REPO), str(VIEW)],  # a flag the wrapper lacks
    ["-reverse", "-ro", str(REPO), str(VIEW)],  # no -passfile
    ["-reverse", "-passfile", str(PW), str(REPO)],  # a mount needs two paths
], ids=["unknown-flag", "no-passfile", "one-path"])
def test_what_it_cannot_map_is_refused(argv: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    cpp = Cppcryptfs(CTL, run=lambda a, s: pytest.fail("nothing may run"))
    assert cppcryptfs.gocryptfs_main(argv, cpp=cpp) == cppcryptfs.USAGE
    assert "offsite-gocryptfs-cppcryptfs:" in capsys.readouterr().err


class FakeCtl:
    """Stands in for cppcryptfsctl: answers in turn, records each call and its stdin."""

    def __init__(self, *answers: Done) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[str], bytes]] = []

    def __call__(self, argv: list[str], stdin: bytes) -> Done:
        self.calls.append((argv, stdin))
        return self.answers.pop(0) if self.answers else Done(0, "")


@pytest.fixture
def passfile(tmp_path: Path) -> Path:
    path = tmp_path / "gocryptfs.pass"
    path.write_bytes(b"s3cret-pw\n")
    return path


def test_the_password_goes_to_stdin_never_on_a_command_line(passfile: Path) -> None:
    ctl = FakeCtl()
    argv = encrypt.mount_argv(WRAPPER, passfile, REPO, VIEW)[1:]
    assert cppcryptfs.gocryptfs_main(argv, cpp=Cppcryptfs(CTL, run=ctl)) == 0
    [(called, stdin)] = ctl.calls
    assert stdin == b"s3cret-pw\n"
    assert not any("s3cret" in arg for arg in called)


@pytest.mark.parametrize(("answer", "code"), [
    (Done(1, "password incorrect"), cppcryptfs.PASSWORD_INCORRECT),
    (Done(1, "the mount point is not an empty directory"), cppcryptfs.MOUNT_FAILED),
])
def test_failures_come_back_as_gocryptfs_exit_codes(passfile: Path, answer: Done, code: int,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    argv = encrypt.mount_argv(WRAPPER, passfile, REPO, VIEW)[1:]
    assert cppcryptfs.gocryptfs_main(argv, cpp=Cppcryptfs(CTL, run=FakeCtl(answer))) == code
    err = capsys.readouterr().err
    assert answer.output in err and "s3cret" not in err
    assert encrypt.PASSWORD_INCORRECT == cppcryptfs.PASSWORD_INCORRECT  # what encrypt reads


def test_cppcryptfs_is_started_when_it_is_not_running(passfile: Path) -> None:
    ctl = FakeCtl(Done(2, "cannot connect"), Done(2, "cannot connect"), Done(0, ""))
    started: list[list[str]] = []
    cpp = Cppcryptfs(CTL, run=ctl, start=started.append, sleep=lambda s: None)
    argv = encrypt.mount_argv(WRAPPER, passfile, REPO, VIEW)[1:]
    assert cppcryptfs.gocryptfs_main(argv, cpp=cpp) == 0
    assert started == [[r"C:\Program Files\cppcryptfs\cppcryptfs.exe", "--tray"]]
    assert len(ctl.calls) == 3 and ctl.calls[0] == ctl.calls[2]


def test_it_gives_up_when_cppcryptfs_never_answers(passfile: Path) -> None:
    ctl = FakeCtl(*[Done(2, "cannot connect")] * (cppcryptfs.START_WAIT_S + 1))
    cpp = Cppcryptfs(CTL, run=ctl, start=lambda argv: None, sleep=lambda s: None)
    argv = encrypt.mount_argv(WRAPPER, passfile, REPO, VIEW)[1:]
    assert cppcryptfs.gocryptfs_main(argv, cpp=cpp) == cppcryptfs.MOUNT_FAILED


def test_fsck_reads_every_file_and_reports_what_cannot_be_read(
        tmp_path: Path, passfile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    mounted: list[Path] = []

    def ctl(argv: list[str], stdin: bytes) -> Done:
        """Mounting fills the mount point as a decrypted view would; one file in it cannot
        be read (a block that failed authentication is an I/O error)."""
        drive = [a for a in argv if a.startswith("--drive=")]
        if drive:
            mountpoint = Path(drive[0].split("=", 1)[1])
            (mountpoint / "etc").mkdir()
            (mountpoint / "etc" / "fine").write_bytes(b"x" * 3_000_000)
            (mountpoint / "etc" / "damaged").symlink_to(mountpoint / "gone")
            mounted.append(mountpoint)
        return Done(0, "")

    recorder = FakeCtl()

    def both(argv: list[str], stdin: bytes) -> Done:
        recorder(argv, stdin)
        return ctl(argv, stdin)

    argv = encrypt.fsck_argv(WRAPPER, passfile, copy)[1:]
    assert cppcryptfs.gocryptfs_main(argv, cpp=Cppcryptfs(CTL, run=both)) == \
        cppcryptfs.FSCK_ERRORS
    assert "corrupt: etc/damaged" in capsys.readouterr().err.replace(os.sep, "/")
    [mountpoint] = mounted
    assert mountpoint.parent == tmp_path  # beside the copy, in the private state directory
    assert recorder.calls[-1][0] == [CTL, f"--unmount={mountpoint}"]
    assert not mountpoint.exists()


def test_fsck_of_a_sound_copy_is_clean(tmp_path: Path, passfile: Path) -> None:
    def ctl(argv: list[str], stdin: bytes) -> Done:
        for arg in argv:
            if arg.startswith("--drive="):
                Path(arg.split("=", 1)[1], "file").write_bytes(b"ok")
        return Done(0, "")

    argv = encrypt.fsck_argv(WRAPPER, passfile, tmp_path / "copy")[1:]
    assert cppcryptfs.gocryptfs_main(argv, cpp=Cppcryptfs(CTL, run=ctl)) == 0


def test_cppcryptfsctl_output_is_read_as_utf16() -> None:
    assert cppcryptfs.decode("password incorrect\r\n".encode("utf-16-le")) == \
        "password incorrect\r\n"
    assert cppcryptfs.decode(b"plain text") == "plain text"


def test_run_ctl_passes_stdin_and_reads_both_outputs(tmp_path: Path) -> None:
    """The real subprocess wiring, with a stand-in program that answers as cppcryptfsctl
    does (UTF-16) and writes what it got on stdin where the test can see it."""
    seen = tmp_path / "stdin"
    fake = tmp_path / "cppcryptfsctl"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"open({str(seen)!r}, 'wb').write(sys.stdin.buffer.read())\n"
        "sys.stderr.buffer.write('password incorrect'.encode('utf-16-le'))\n"
        "sys.exit(1)\n")
    fake.chmod(0o755)
    done = cppcryptfs.run_ctl([str(fake), "--mount=x", "--drive=y"], b"pw\n")
    assert done == Done(1, "password incorrect")
    assert seen.read_bytes() == b"pw\n"


def test_cppcryptfsctl_is_found_by_setting_path_or_install_folder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cppcryptfs.find_ctl({"CppCryptFsCtl": r"D:\tools\ctl.exe"}) == r"D:\tools\ctl.exe"
    assert cppcryptfs.find_ctl({"PROGRAMFILES": r"E:\Apps"}) == \
        r"E:\Apps\cppcryptfs\cppcryptfsctl.exe"
