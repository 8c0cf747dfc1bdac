"""Checks made before a run touches anything: every problem here is the host's configuration
(exit 2), found before the local repository changes or the server is asked for anything."""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from offsite_host import encrypt, history, keys, tools, windows
from offsite_host.config import Config
from offsite_host.exitcodes import ConfigError


@dataclass(frozen=True)
class Ready:
    tools: tools.ResolvedTools
    identity: SigningKey
    repositories: list[history.Repository]


def check(cfg: Config, needs_history: bool = True) -> Ready:
    resolved = tools.resolve(cfg.tools, None if needs_history else
                             ("rsync", "ssh", "gocryptfs", "fusermount"))
    identity = keys.load_identity(cfg.key_file)
    repos = history.plan(cfg.paths, cfg.excludes, cfg.repository, (cfg.repository, cfg.state_dir))
    if needs_history:
        for source in cfg.paths:
            check_readable_dir(source)
    check_password_file(cfg.password_file)
    if not (cfg.repository / encrypt.REVERSE_CONF).is_file():
        raise ConfigError(f"{cfg.repository} is not initialised (no {encrypt.REVERSE_CONF}): "
                          "run `offsite-host init`")
    check_platform(cfg, resolved)
    return Ready(resolved, identity, repos)


def check_readable_dir(path: Path) -> None:
    try:
        if not stat.S_ISDIR(path.stat().st_mode):
            raise ConfigError(f"paths: {path} is not a directory")
        with os.scandir(path) as entries:
            next(entries, None)
    except FileNotFoundError:
        raise ConfigError(f"paths: {path} does not exist") from None
    except OSError as exc:  # EACCES, or ENOTCONN on a dead network or FUSE mount
        raise ConfigError(f"paths: cannot read {path}: {exc.strerror}") from None


def check_password_file(path: Path) -> None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no password file at {path} (run `offsite-host init`)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the password file {path}: {exc.strerror}") from None
    if not data.strip():
        raise ConfigError(f"the password file {path} is empty")


def check_restore(cfg: Config, needs_repository: bool = False) -> Ready:
    """Before a restore: every tool, the identity key and the password. The local repository is
    needed only by `verify --deep` (a restore onto a new host has none yet)."""
    resolved = tools.resolve(cfg.tools)
    identity = keys.load_identity(cfg.key_file)
    repos = history.plan(cfg.paths, cfg.excludes, cfg.repository, (cfg.repository, cfg.state_dir))
    check_password_file(cfg.password_file)
    if needs_repository and not (cfg.repository / encrypt.REVERSE_CONF).is_file():
        raise ConfigError(f"{cfg.repository} is not initialised (no {encrypt.REVERSE_CONF}): "
                          "there is no local backup to compare with")
    check_platform(cfg, resolved)
    return Ready(resolved, identity, repos)


def check_platform(cfg: Config, resolved: tools.ResolvedTools) -> None:
    """rsync 3.1+ (macOS' own rsync is not), and on Windows the ACLs that keep the host key
    and the password to SYSTEM and Administrators (`windows.check_private`)."""
    tools.check_rsync(resolved.rsync)
    if sys.platform == "win32":
        windows.check_private([cfg.key_file.parent, cfg.key_file, cfg.password_file])
