"""The `offsite-host` command: `main(argv) -> int`, the exit code (see `exitcodes`)."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from nacl.signing import SigningKey

from offsite_host import encrypt, keys, state, tools
from offsite_host.config import Config, default_config_path, load_config
from offsite_host.console import Console
from offsite_host.exitcodes import ConfigError, ExitCode, OffsiteError, exit_codes_help
from offsite_host.lock import RunLock
from offsite_host.run import Outcome, Routine, outcome_of

DESCRIPTION = """\
Encrypted, resumable off-site backups of this host (Offsite's host client).
Typical setup: write host.toml, then `keygen` (enrol the printed key), `init`, and a cron
line running `run` nightly."""

EPILOG = f"""\
{exit_codes_help()}
  1  unexpected error (a bug: please report the traceback); 130 interrupted

configuration: {default_config_path(sys.platform, dict(os.environ))} unless --config is given.
tools: rsync, ssh, rdiff-backup, gocryptfs and fusermount3 (macOS: umount) must be installed,
or named in [tools]; on Windows use cwRsync or MSYS2/Cygwin rsync with the OpenSSH client,
rdiff-backup's Windows build, and cppcryptfs (behind a gocryptfs-compatible wrapper) for
gocryptfs; on macOS Homebrew's rsync and rdiff-backup, and gocryptfs with macFUSE."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        cfg = load_config(args.config or Path(default_config_path(sys.platform,
                                                                  dict(os.environ))),
                          sys.platform, dict(os.environ))
        return int(args.handler(cfg, args, console))
    except OffsiteError as exc:
        console.error(str(exc))
        return int(exc.exit_code)
    except KeyboardInterrupt:
        console.error("interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_keygen(cfg: Config, args: argparse.Namespace, console: Console) -> int:
    if cfg.key_file.exists() and not args.force:
        raise ConfigError(f"{cfg.key_file} exists; pass --force to replace it (the new key "
                          "must then be enrolled again)")
    key = SigningKey.generate()
    comment = f"{cfg.host}@offsite"
    keys.write_secret(cfg.key_file, keys.private_pem(key, comment, secrets.randbits(32)))
    console.step("keygen", f"wrote {cfg.key_file}; enrol this public key for host {cfg.host}:")
    print(keys.public_line(key, comment))
    return ExitCode.OK


def cmd_init(cfg: Config, args: argparse.Namespace, console: Console) -> int:
    conf = cfg.repository / encrypt.REVERSE_CONF
    cfg.repository.mkdir(mode=0o700, parents=True, exist_ok=True)
    cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if conf.exists():
        if not cfg.password_file.exists():
            raise ConfigError(f"{conf} exists but the password file {cfg.password_file} is "
                              "missing: put back your safe copy of it")
        console.step("init", f"{cfg.repository} is already initialised")
    else:
        gocryptfs = tools.resolve(cfg.tools, ("gocryptfs",)).gocryptfs
        if cfg.password_file.exists():
            console.step("init", f"using the existing password file {cfg.password_file}")
        else:
            keys.write_secret(cfg.password_file, (secrets.token_urlsafe(32) + "\n").encode())
        encrypt.initialise(gocryptfs, cfg.password_file, cfg.repository)
    print(f"Local repository: {cfg.repository}\n"
          "Keep copies of these two files somewhere safe, away from this host; without them\n"
          "the off-site copy cannot be decrypted:\n"
          f"  password:        {cfg.password_file}\n"
          f"  gocryptfs conf:  {conf}\n"
          "    (the archive copy carries it as gocryptfs.conf, encrypted by the password;\n"
          "    gocryptfs printed a master key at init, which offsite-host does not show)")
    return ExitCode.OK


def cmd_run(cfg: Config, args: argparse.Namespace, console: Console) -> int:
    with RunLock(cfg.state_dir / "run.lock"):
        return _recorded("run", cfg, lambda: Routine(cfg, console).run())


def cmd_verify(cfg: Config, args: argparse.Namespace, console: Console) -> int:
    with RunLock(cfg.state_dir / "run.lock"):
        return _recorded("verify", cfg, lambda: Routine(cfg, console).verify())


def cmd_status(cfg: Config, args: argparse.Namespace, console: Console) -> int:
    for line in state.describe(state.load_raw(cfg.state_dir)):
        print(line)
    return ExitCode.OK


def _recorded(command: str, cfg: Config, work: Callable[[], Outcome]) -> int:
    """Runs `work` and saves its summary in the state file, whatever the outcome."""
    started = time.time()
    try:
        outcome = work()
    except OffsiteError as exc:
        _save(command, cfg, started, outcome_of(exc))
        raise
    except KeyboardInterrupt:
        _save(command, cfg, started, Outcome(ExitCode.OK, "interrupted", "interrupted"), 130)
        raise
    _save(command, cfg, started, outcome)
    return int(outcome.exit_code)


def _save(command: str, cfg: Config, started: float, outcome: Outcome,
          exit_code: int | None = None) -> None:
    code = int(outcome.exit_code) if exit_code is None else exit_code
    state.save(cfg.state_dir, state.RunSummary(
        command, started, time.time(), code, outcome.status, outcome.window_id,
        outcome.bytes_sent, outcome.files, outcome.detail))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offsite-host", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="the host.toml to use")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keygen = commands.add_parser("keygen", help="make this host's Ed25519 identity key and "
                                 "print the public key to enrol")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(handler=cmd_keygen)
    commands.add_parser("init", help="create the local repository and its encryption "
                        "(gocryptfs reverse) with a generated password").set_defaults(
                            handler=cmd_init)
    commands.add_parser("run", help="back up, encrypt, send, verify and report (for cron)",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
                        ).set_defaults(handler=cmd_run)
    commands.add_parser("verify", help="check the archive copy against the encrypted view "
                        "in a new session (reports nothing)").set_defaults(handler=cmd_verify)
    commands.add_parser("status", help="summarise the last run").set_defaults(
        handler=cmd_status)
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (cron's or an admin's kill) unwinds like Ctrl-C: rsync is stopped, the view
    # unmounted and the session files removed by the `finally` blocks on the way out.
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
