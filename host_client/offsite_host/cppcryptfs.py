"""`offsite-gocryptfs-cppcryptfs` and `offsite-unmount-cppcryptfs`: the gocryptfs and unmount
command lines offsite-host uses (`encrypt.py`), carried out on Windows by cppcryptfs, the
gocryptfs-compatible Windows implementation (https://github.com/bailey27/cppcryptfs).

cppcryptfs is one GUI program per user that holds the mounts; `cppcryptfsctl` passes it a
command over a named pipe and exits 0 (done), 1 (failed) or 2 (cppcryptfs is not running).
Its README, "Command Line Options":

- `--init=PATH --reverse` makes a reverse-mode filesystem (AES-SIV, the config hidden as
  `.gocryptfs.reverse.conf`, as gocryptfs does); with stdin redirected it reads the password
  from stdin;
- `--mount=PATH --drive=D|DIR [--reverse] [--readonly]` mounts on a drive letter or an empty
  directory; without `--password` it reads the password from stdin, so it never appears on a
  command line here; a reverse filesystem is always read-only;
- `--unmount=D|DIR [--force]`;
- there is no fsck: `-fsck` is done here by mounting the copy read-only (forward mode
  authenticates every block, as gocryptfs does) and reading every file through it.

cppcryptfsctl writes UTF-16 (it sets `_O_U16TEXT`), so its output is decoded as such.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

# gocryptfs' exit codes (internal/exitcodes), which offsite-host reads
USAGE = 1
MOUNT_FAILED = 10
PASSWORD_INCORRECT = 12
FSCK_ERRORS = 26
NOT_RUNNING = 2  # cppcryptfsctl: cannot connect, cppcryptfs is not running
START_WAIT_S = 10
READ_CHUNK = 1 << 20


class UsageError(ValueError):
    pass


@dataclass(frozen=True)
class Call:
    """One gocryptfs call, as offsite-host makes them."""

    action: str  # "init", "mount" or "fsck"
    passfile: str
    cipherdir: str
    mountpoint: str = ""
    reverse: bool = False
    readonly: bool = False


def parse_gocryptfs(argv: list[str]) -> Call:
    """Accepts exactly the flags `encrypt.py` passes (`-init`, `-reverse`, `-ro`, `-q`,
    `-fsck`, `-passfile FILE`) and refuses anything else, so that a new flag in the client
    cannot be ignored here silently."""
    flags: set[str] = set()
    passfile, positional = "", []
    args = iter(argv)
    for arg in args:
        if arg == "-passfile":
            passfile = next(args, "")
        elif arg in ("-init", "-reverse", "-ro", "-q", "-fsck"):
            flags.add(arg)
        elif arg.startswith("-"):
            raise UsageError(f"unsupported gocryptfs option {arg!r}")
        else:
            positional.append(arg)
    if not passfile:
        raise UsageError("-passfile FILE is required (the password never goes on a command "
                         "line)")
    action = "init" if "-init" in flags else "fsck" if "-fsck" in flags else "mount"
    wanted = 2 if action == "mount" else 1
    if len(positional) != wanted:
        raise UsageError(f"gocryptfs {action} takes {wanted} path(s), not {len(positional)}")
    return Call(action, passfile, positional[0], positional[1] if wanted == 2 else "",
                reverse="-reverse" in flags, readonly="-ro" in flags)


def ctl_argv(ctl: str, call: Call, mountpoint: str = "") -> list[str]:
    """The cppcryptfsctl command for `call` (its password goes to stdin); for `fsck`, the
    read-only forward mount of the copy on `mountpoint`."""
    if call.action == "init":
        return [ctl, f"--init={call.cipherdir}", *(["--reverse"] if call.reverse else [])]
    target = mountpoint if call.action == "fsck" else call.mountpoint
    readonly = call.readonly or call.reverse or call.action == "fsck"
    return [ctl, f"--mount={call.cipherdir}", f"--drive={target}",
            *(["--reverse"] if call.reverse else []), *(["--readonly"] if readonly else [])]


def unmount_ctl_argv(ctl: str, argv: list[str]) -> list[str]:
    """`umount [-f] DIR` (what offsite-host runs off Linux) or `fusermount -u [-z] DIR` as
    `cppcryptfsctl --unmount=DIR [--force]`."""
    force = any(arg in ("-f", "-z") for arg in argv)
    paths = [arg for arg in argv if not arg.startswith("-")]
    if len(paths) != 1 or any(arg not in ("-f", "-z", "-u") for arg in argv
                              if arg.startswith("-")):
        raise UsageError(f"usage: offsite-unmount-cppcryptfs [-f] MOUNTPOINT, not {argv!r}")
    return [ctl, f"--unmount={paths[0]}", *(["--force"] if force else [])]


@dataclass(frozen=True)
class Done:
    returncode: int
    output: str


def decode(data: bytes) -> str:
    """cppcryptfsctl's output: UTF-16 (little-endian, as Windows writes it), or plain text from
    anything else that stands in for it."""
    if b"\x00" in data:
        return data.decode("utf-16-le", errors="replace").lstrip("\ufeff")
    return data.decode("utf-8", errors="replace")


Runner = Callable[[list[str], bytes], Done]


def run_ctl(argv: list[str], stdin: bytes) -> Done:
    done = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    return Done(done.returncode, decode(done.stdout) + decode(done.stderr))


class Cppcryptfs:
    """Talks to cppcryptfs through cppcryptfsctl; starts cppcryptfs (hidden in the tray) when
    it is not running, since cppcryptfsctl only forwards commands to it."""

    def __init__(self, ctl: str, run: Runner = run_ctl,
                 start: Callable[[list[str]], object] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.ctl, self.run, self.sleep = ctl, run, sleep
        self.start = start or _start_detached

    def command(self, argv: list[str], password: bytes) -> Done:
        done = self.run(argv, password + b"\n")
        if done.returncode != NOT_RUNNING:
            return done
        self.start([str(PureWindowsPath(self.ctl).with_name("cppcryptfs.exe")), "--tray"])
        for _ in range(START_WAIT_S):
            self.sleep(1.0)
            done = self.run(argv, password + b"\n")
            if done.returncode != NOT_RUNNING:
                return done
        return done


def gocryptfs_main(argv: list[str] | None = None, ctl: str | None = None,
                   cpp: Cppcryptfs | None = None) -> int:
    """The gocryptfs stand-in: exit codes as gocryptfs' (0, 1 usage, 10 mount failed, 12
    password incorrect, 26 fsck found errors)."""
    try:
        call = parse_gocryptfs(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"offsite-gocryptfs-cppcryptfs: {exc}", file=sys.stderr)
        return USAGE
    cpp = cpp or Cppcryptfs(ctl or find_ctl(dict(os.environ)))
    try:
        password = read_password(Path(call.passfile))
    except OSError as exc:
        print(f"offsite-gocryptfs-cppcryptfs: cannot read {call.passfile}: {exc.strerror}",
              file=sys.stderr)
        return USAGE
    if call.action == "fsck":
        return fsck(cpp, call, password)
    done = cpp.command(ctl_argv(cpp.ctl, call), password)
    return _answer(done, MOUNT_FAILED)


def unmount_main(argv: list[str] | None = None, ctl: str | None = None,
                 cpp: Cppcryptfs | None = None) -> int:
    try:
        cpp = cpp or Cppcryptfs(ctl or find_ctl(dict(os.environ)))
        done = cpp.command(unmount_ctl_argv(cpp.ctl, sys.argv[1:] if argv is None else argv),
                           b"")
    except UsageError as exc:
        print(f"offsite-unmount-cppcryptfs: {exc}", file=sys.stderr)
        return USAGE
    return _answer(done, 1)


def fsck(cpp: Cppcryptfs, call: Call, password: bytes) -> int:
    """Mounts the copy read-only beside it and reads every file: a block that fails its
    authentication tag is a read error, reported as `corrupt` like gocryptfs -fsck does."""
    mountpoint = Path(tempfile.mkdtemp(prefix=".fsck-", dir=Path(call.cipherdir).parent))
    try:
        done = cpp.command(ctl_argv(cpp.ctl, call, str(mountpoint)), password)
        if done.returncode != 0:
            return _answer(done, MOUNT_FAILED)
        try:
            errors = [f"corrupt: {name}: {why}" for name, why in unreadable(mountpoint)]
        finally:
            cpp.command(unmount_ctl_argv(cpp.ctl, [str(mountpoint)]), b"")
    finally:
        shutil.rmtree(mountpoint, ignore_errors=True)
    for line in errors:
        print(line, file=sys.stderr)
    return FSCK_ERRORS if errors else 0


def unreadable(root: Path) -> list[tuple[str, str]]:
    """Every file and directory below `root` that cannot be read to its end, with why."""
    def failed(exc: OSError) -> None:
        problems.append((str(exc.filename or root), exc.strerror or str(exc)))

    problems: list[tuple[str, str]] = []
    for top, _dirs, files in os.walk(root, onerror=failed):
        for name in files:
            path = Path(top, name)
            try:
                with path.open("rb") as handle:
                    while handle.read(READ_CHUNK):
                        pass
            except OSError as exc:
                problems.append((str(path.relative_to(root)), exc.strerror or str(exc)))
    return problems


def read_password(passfile: Path) -> bytes:
    """The first line of the password file, as gocryptfs -passfile reads it."""
    lines = passfile.read_bytes().splitlines()
    return lines[0] if lines else b""


def find_ctl(environ: dict[str, str]) -> str:
    """`CPPCRYPTFSCTL` if set, else cppcryptfsctl on PATH, else its usual install folder."""
    upper = {key.upper(): value for key, value in environ.items()}  # names ignore case
    found = upper.get("CPPCRYPTFSCTL") or shutil.which("cppcryptfsctl")
    if found:
        return found
    return str(PureWindowsPath(upper.get("PROGRAMFILES", r"C:\Program Files"), "cppcryptfs",
                               "cppcryptfsctl.exe"))


def _answer(done: Done, failure: int) -> int:
    if done.returncode == 0:
        return 0
    print(f"cppcryptfs: {done.output.strip() or f'exit {done.returncode}'}", file=sys.stderr)
    return PASSWORD_INCORRECT if "incorrect" in done.output.lower() else failure


def _start_detached(argv: list[str]) -> object:
    flags = getattr(subprocess, "DETACHED_PROCESS", 0) | getattr(
        subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, creationflags=flags)
