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
from typing import Any

from nacl.signing import SigningKey

from offsite_host import encrypt, keys, points, preflight, restore_plan, state, tools
from offsite_host.api import ApiClient
from offsite_host.config import Config, default_config_path, load_config
from offsite_host.console import Console
from offsite_host.drill import Drill
from offsite_host.exitcodes import ConfigError, ExitCode, OffsiteError, exit_codes_help
from offsite_host.lock import RunLock
from offsite_host.restore import Restorer, RestoreRequest
from offsite_host.run import Outcome, Routine, outcome_of

DESCRIPTION = """\
Encrypted, resumable off-site backups of this host (Offsite's host client).
Typical setup: write host.toml, then `keygen` (enrol the printed key), `init`, and a cron
line running `run` nightly. Restoring: `snapshots` lists the recovery points, `restore --date
YYYY-MM-DD --to DIR` brings one back, and `verify --deep` is a restore drill."""

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
    if args.show:
        print(keys.public_line(keys.load_identity(cfg.key_file), f"{cfg.host}@offsite"))
        return ExitCode.OK
    if cfg.key_file.exists() and not args.force:
        raise ConfigError(f"{cfg.key_file} exists; `keygen --show` prints its public key "
                          "again, --force replaces it (the new key must then be enrolled "
                          "again)")
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
        if args.deep:
            return _recorded("verify --deep", cfg, lambda: Drill(Restorer(cfg, console)).run())
        command = "verify --full" if args.full else "verify"
        return _recorded(command, cfg, lambda: Routine(cfg, console).verify(full=args.full))


def cmd_snapshots(cfg: Config, args: argparse.Namespace, console: Console) -> int:
    ready = preflight.check_restore(cfg)
    for line in points.describe(points.fetch_points(Restorer(cfg, console).client(ready))):
        print(line)
    return ExitCode.OK


def cmd_restore(cfg: Config, args: argparse.Namespace, console: Console) -> int:
    if args.list:
        return cmd_snapshots(cfg, args, console)
    if not (args.date or args.snapshot) or not args.to:
        raise ConfigError("restore needs --date YYYY-MM-DD (or --snapshot SNAP_ID) and --to "
                          "DIR (or --list)")
    request = RestoreRequest(
        day=points.check_day(args.date) if args.date else None,
        at=restore_plan.check_at(args.at),
        path=Path(args.path) if args.path else None, target=Path(args.to).absolute(),
        overwrite=args.force_overwrite, allow_incomplete=args.allow_incomplete,
        snapshot=points.check_snapshot_id(args.snapshot) if args.snapshot else None)
    with RunLock(cfg.state_dir / "run.lock"):
        return _recorded("restore", cfg, lambda: Restorer(cfg, console).restore(request))


def cmd_status(cfg: Config, args: argparse.Namespace, console: Console) -> int:
    """The last run (from the state file), then what the control plane holds of this host,
    unless --local; a control plane out of reach is said, not fatal."""
    for line in state.describe(state.load_raw(cfg.state_dir)):
        print(line)
    if args.local:
        return ExitCode.OK
    try:
        client = ApiClient(cfg.api_url, cfg.host, keys.load_identity(cfg.key_file))
        lines = points.freshness(points.fetch_snapshots(client), time.time())
    except OffsiteError as exc:
        lines = [f"newest point: not known (the control plane was not asked or did not "
                 f"answer: {exc})"]
    for line in lines:
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


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each option's help ends with its default when it has one
    that the text does not already give."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default in (None, False, argparse.SUPPRESS) or "default" in text
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offsite-host", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_Help)
    config_help = ("the host.toml to use (default: "
                   f"{default_config_path(sys.platform, dict(os.environ))})")
    parser.add_argument("--config", type=Path, help=config_help)
    # --config is also taken after the command (`offsite-host run --config F`); SUPPRESS
    # leaves the one given before the command in place when it is not repeated after it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], formatter_class=_Help, **kwargs)

    keygen = command("keygen", help="make this host's Ed25519 identity key and print the "
                     "public key to enrol")
    made = keygen.add_mutually_exclusive_group()
    made.add_argument("--force", action="store_true", help="replace an existing key (off: an "
                      "existing key is never overwritten)")
    made.add_argument("--show", action="store_true", help="print the existing key's public "
                      "line again, to enrol it (makes nothing)")
    keygen.set_defaults(handler=cmd_keygen)
    command("init", help="create the local repository and its encryption (gocryptfs reverse) "
            "with a generated password").set_defaults(handler=cmd_init)
    command("run", help="back up, encrypt, send, verify and report (for cron)",
            epilog=EPILOG).set_defaults(handler=cmd_run)
    verify = command("verify", help="check the archive copy against the encrypted "
                                 "view in a new session, as a run's verification would "
                                 "(reports nothing); --full: all of it; --deep: a restore drill "
                                 "of the newest recovery point")
    how = verify.add_mutually_exclusive_group()
    how.add_argument("--full", action="store_true", help="compare every file with checksums, "
                     "not only what changed since the last verified run and the slices due "
                     "(the whole archive is re-read once per verify_cycle_days anyway)")
    how.add_argument("--deep", action="store_true", help="fetch the newest recovery point, "
                     "decrypt and restore it into a temporary directory, and compare it "
                     "with the local backup it came from (reports to the restore window)")
    verify.set_defaults(handler=cmd_verify)
    command("snapshots", help="list the recovery points on the archive").set_defaults(
        handler=cmd_snapshots)
    _restore_parser(command)
    status = command("status", help="summarise the last run, and the newest complete recovery "
                     "point the control plane holds (a warning when it is stale)")
    status.add_argument("--local", action="store_true",
                        help="only the last run, from the state file: ask nothing")
    status.set_defaults(handler=cmd_status)
    return parser


def _restore_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    restore = command(
        "restore", help="bring back a recovery point (a retained day) into a directory",
        epilog=EPILOG,
        description="Fetches the recovery point of --date (or --snapshot) over rsync, "
        "decrypts it here and runs rdiff-backup restore into --to, which must be empty or "
        "absent (and not a configured path) unless --force-overwrite is given. Nothing is "
        "written into --to until the whole restore has succeeded.")
    restore.add_argument("--list", action="store_true", help="list the recovery points and exit")
    restore.add_argument("--date", metavar="YYYY-MM-DD", help="the day of the recovery point "
                         "(its newest complete one when the day has several)")
    restore.add_argument("--snapshot", metavar="SNAP_ID", help="one recovery point by its id "
                         "(as `snapshots` lists them), e.g. an older one of a day with several; "
                         "with --date, it must be of that day")
    restore.add_argument("--at", default="now", metavar="TIME",
                         help="an older increment inside that point: an rdiff-backup time "
                         "(2B = two backups before the point's newest, 2030-03-15, "
                         "2030-03-15T01:30:00Z, or an interval before now such as 3D); "
                         "default: now, the point's newest state")
    restore.add_argument("--path", metavar="P", help="a path inside the backup: one of the "
                         "configured paths or below it (default: every configured path, each "
                         "into DIR/<its repository name>)")
    restore.add_argument("--to", metavar="DIR", help="where to restore: absent or empty")
    restore.add_argument("--force-overwrite", "--in-place", dest="force_overwrite",
                         action="store_true", help="allow DIR to be non-empty or a configured "
                         "live path: its content is replaced, once the restore is complete")
    restore.add_argument("--allow-incomplete", action="store_true",
                         help="restore a point whose backup did not report success")
    restore.set_defaults(handler=cmd_restore)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (cron's or an admin's kill) unwinds like Ctrl-C: rsync is stopped, the view
    # unmounted and the session files removed by the `finally` blocks on the way out.
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
