"""The tools a user would pick instead of Offsite, on bench/wire's data set: restic and borg,
each backing the tree up into a local, encrypted repository (Debian's packages; `make
bench-wire` installs them when run as root). One run each for the initial backup and one for
the nightly change: its wall time, and the repository's size after it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 3600.0


class PeerError(Exception):
    pass


@dataclass(frozen=True)
class PeerRun:
    seconds: float
    repository_bytes: int  # after the run


@dataclass(frozen=True)
class PeerFigures:
    name: str
    version: str
    initial: PeerRun
    nightly: PeerRun

    @property
    def added_bytes(self) -> int:
        """What the nightly run added to the repository."""
        return self.nightly.repository_bytes - self.initial.repository_bytes


class Peer:
    """One tool's repository under `work`, of the tree at `source`."""

    name = ""
    executable = ""

    def __init__(self, work: Path, source: Path) -> None:
        self.work, self.source = work / self.name, source
        self.repository = self.work / "repository"
        self.password = self.work / "password"
        self.work.mkdir(mode=0o700, parents=True)
        self.password.write_text(secrets.token_urlsafe(24) + "\n")
        self.password.chmod(0o600)
        self._init()

    @classmethod
    def installed(cls) -> bool:
        return shutil.which(cls.executable) is not None

    def version(self) -> str:
        return self._run([self.executable, "--version"]).split("\n")[0].strip()

    def backup(self, label: str) -> PeerRun:
        started = time.monotonic()
        self._backup(label)
        seconds = time.monotonic() - started
        return PeerRun(seconds, tree_bytes(self.repository))

    def _init(self) -> None:
        raise NotImplementedError

    def _backup(self, label: str) -> None:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _run(self, argv: list[str], cwd: Path | None = None) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False, env=self._env(), cwd=cwd)
        if done.returncode != 0:
            raise PeerError(f"{self.name} failed ({done.returncode}): "
                            f"{done.stderr.strip()[-400:]}")
        return done.stdout


class Restic(Peer):
    """restic's defaults: a new repository is format 2 (compressed, `auto`)."""

    name, executable = "restic", "restic"

    def version(self) -> str:
        return self._run([self.executable, "version"]).split(" compiled")[0].strip()

    def _common(self) -> list[str]:
        return [self.executable, "--quiet", "--repo", str(self.repository),
                "--password-file", str(self.password), "--cache-dir", str(self.work / "cache")]

    def _init(self) -> None:
        self._run([*self._common(), "init"])

    def _backup(self, label: str) -> None:
        self._run([*self._common(), "backup", "--host", "bench", "--tag", label, "."],
                  cwd=self.source)


class Borg(Peer):
    """borg's defaults: `repokey` encryption, lz4 compression."""

    name, executable = "borg", "borg"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "BORG_BASE_DIR": str(self.work / "home"),
                "BORG_PASSCOMMAND": f"cat {self.password}"}

    def _init(self) -> None:
        self._run([self.executable, "init", "--encryption=repokey", str(self.repository)])

    def _backup(self, label: str) -> None:
        self._run([self.executable, "create", f"{self.repository}::{label}", "."],
                  cwd=self.source)


PEERS: tuple[type[Peer], ...] = (Restic, Borg)


def tree_bytes(root: Path) -> int:
    """The size of every regular file under `root`."""
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total
