"""Local history: one rdiff-backup repository per configured path.

rdiff-backup backs up exactly one source directory into one repository, so each entry of
`paths` gets its own repository under `<repository>/<name>`, where the name is the path with
its separators turned into `_` (`/etc` -> `etc`, `/srv/www` -> `srv_www`, `/` -> `root`,
`C:\\Users` -> `C_Users`). Two paths that would share a name are a configuration error. A
path dropped from the configuration keeps its repository (and keeps shipping it) until an
admin deletes that directory.

Excludes are rdiff-backup patterns: an absolute path or glob under one of the configured paths,
or one starting with `**`. rdiff-backup refuses a pattern outside the source it is backing up,
so each repository gets only the patterns under its own path.

`--no-file-statistics`: the per-file statistics (`file_statistics.<time>.data.gz`, a line for
every file of the tree) are written anew each run under a new name, so each night they are new
ciphertext on the wire (66 kB of a 3.4 MB nightly change at 200 MB, bench/README.md `wire`).
Only `rdiff-backup-statistics` reads them (its per-file figures); restores, regressions and
`remove increments` never do, and the session statistics are still written.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath

from offsite_host import tools
from offsite_host.exitcodes import ConfigError, LocalStageError

FATAL = 1  # rdiff-backup's RET_CODE_ERR; the other bits are warnings and per-file problems
NOTHING_TO_REMOVE = 2  # `remove increments` with no increment that old: a warning
BACKUP_TIMEOUT_S = 12 * 3600.0


@dataclass(frozen=True)
class Repository:
    source: Path
    target: Path
    excludes: tuple[str, ...]


def repository_name(path: PurePath) -> str:
    parts = [p.rstrip(":\\/") for p in path.parts if p.rstrip(":\\/")]
    name = "_".join(parts) or "root"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def plan(paths: tuple[Path, ...], excludes: tuple[str, ...], repository: Path,
         private: tuple[Path, ...]) -> list[Repository]:
    """The repository of each path, with its excludes; `private` directories (the repository
    and the state) are excluded wherever a path contains them."""
    names: dict[str, Path] = {}
    for source in paths:
        name = repository_name(source)
        if name in names:
            raise ConfigError(f"paths {names[name]} and {source} would share the repository "
                              f"{repository / name}; rename one")
        names[name] = source
    for pattern in excludes:
        if not any(_under(pattern, source) for source in paths):
            raise ConfigError(f"excludes: {pattern!r} is under none of the configured paths "
                              "(use an absolute path below one of them, or start with **)")
    return [Repository(source, repository / name,
                       tuple([p for p in excludes if _under(p, source)]
                             + [str(d) for d in private if _contains(source, d)]))
            for name, source in names.items()]


BACKUP_FLAGS = ("--no-file-statistics",)


def backup_argv(rdiff_backup: str, repo: Repository) -> list[str]:
    argv = [rdiff_backup, "backup", *BACKUP_FLAGS]
    for pattern in repo.excludes:
        argv += ["--exclude", pattern]
    return [*argv, str(repo.source), str(repo.target)]


def remove_argv(rdiff_backup: str, repo: Repository, retention_days: int) -> list[str]:
    # --force: rdiff-backup otherwise refuses to remove more than one increment at a time.
    return [rdiff_backup, "--force", "remove", "increments", "--older-than",
            f"{retention_days}D", str(repo.target)]


def back_up(rdiff_backup: str, repos: list[Repository], retention_days: int,
            log: Callable[[str], None]) -> list[str]:
    """Backs up every path, then prunes old increments; returns the warnings to report."""
    warnings = []
    for repo in repos:
        started = time.monotonic()
        done = _backup_once(rdiff_backup, repo)
        if done.returncode & FATAL:
            raise LocalStageError(f"rdiff-backup of {repo.source} failed: "
                                  f"{tools.tail(done.stderr)}")
        if done.returncode:
            warnings.append(f"rdiff-backup {repo.source}: warnings (code {done.returncode}): "
                            f"{tools.tail(done.stderr, 1)}")
        pruned = _run(remove_argv(rdiff_backup, repo, retention_days))
        if pruned.returncode not in (0, NOTHING_TO_REMOVE):
            warnings.append(f"removing increments of {repo.target} failed: "
                            f"{tools.tail(pruned.stderr, 1)}")
        log(f"{repo.source} -> {repo.target} ({time.monotonic() - started:.1f} s)")
    return warnings


def _backup_once(rdiff_backup: str, repo: Repository) -> tools.Completed:
    done = _run(backup_argv(rdiff_backup, repo))
    if done.returncode & FATAL and "not in the past" in done.stderr:
        # rdiff-backup names increments by the second: a run right after another must wait.
        time.sleep(1.1)
        done = _run(backup_argv(rdiff_backup, repo))
    return done


def _run(argv: list[str]) -> tools.Completed:
    return tools.run(argv, timeout=BACKUP_TIMEOUT_S)


def _under(pattern: str, source: Path) -> bool:
    if pattern.startswith("**"):
        return True
    base = str(source).rstrip("/\\")
    return pattern.startswith((base + "/", base + "\\"))


def _contains(source: Path, inner: Path) -> bool:
    return inner == source or source in inner.parents
