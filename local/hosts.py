"""Sample hosts for the local stack: their data, their `host.toml`, and the real `offsite-host`
command run against the stack's API."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

OFFSITE_HOST = str(Path(sys.executable).with_name("offsite-host"))

# name -> (what it stands for, MiB of data)
SAMPLES: dict[str, tuple[str, int]] = {
    "c": ("database server: one large file that changes in place", 24),
    "h": ("web server: many small pages", 6),
    "o": ("office server: documents and configuration", 2),
    "l": ("log server: logs that grow", 12),
}


@dataclass
class SampleHost:
    name: str
    home: Path
    api_url: str

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def config(self) -> Path:
        return self.home / "host.toml"

    def write_config(self, **extra: object) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        lines = [f'api_url = "{self.api_url}"', f'host = "{self.name}"',
                 f'paths = ["{self.data}"]', 'key_file = "host.key"',
                 'password_file = "gocryptfs.pass"', 'repository = "repository"',
                 'state_dir = "state"', "max_wait_s = 120", "deadline_margin_s = 5"]
        lines += [f"{key} = {value}" for key, value in extra.items()]
        self.config.write_text("\n".join(lines) + "\n")

    def command(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([OFFSITE_HOST, "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([OFFSITE_HOST, "--config", str(self.config), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def keygen_and_init(self) -> str:
        """The public key to enrol."""
        made = self.command("keygen")
        if made.returncode != 0:
            raise RuntimeError(f"{self.name}: keygen failed: {made.stderr}")
        initialised = self.command("init")
        if initialised.returncode != 0:
            raise RuntimeError(f"{self.name}: init failed: {initialised.stderr}")
        return made.stdout.strip().splitlines()[-1]


def make_sample_data(host: SampleHost, seed: int = 0) -> None:
    rng = random.Random(f"{host.name}-{seed}")
    mib = SAMPLES.get(host.name, ("", 2))[1]
    data = host.data
    shutil.rmtree(data, ignore_errors=True)
    (data / "etc").mkdir(parents=True)
    (data / "etc" / "motd").write_text(f"host {host.name}: {SAMPLES.get(host.name, ('',))[0]}\n")
    if host.name == "c":
        (data / "db.bin").write_bytes(rng.randbytes(mib * 1024 * 1024))
    elif host.name == "l":
        logs = data / "log"
        logs.mkdir()
        for day in range(mib):
            (logs / f"app-{day:02d}.log").write_text("".join(
                f"2026-11-{day % 28 + 1:02d} event {i} user{rng.randrange(500)} ok\n"
                for i in range(16_000)))
    else:
        pages = data / "pages"
        pages.mkdir()
        for i in range(mib * 64):
            (pages / f"page-{i:04d}.html").write_bytes(rng.randbytes(16 * 1024))
    os.symlink("etc/motd", data / "motd")


def change_sample_data(host: SampleHost, round_no: int) -> str:
    """Changes between two windows, as a day of use would make them; says what changed."""
    rng = random.Random(f"change-{host.name}-{round_no}")
    data = host.data
    if host.name == "c":
        with (data / "db.bin").open("r+b") as db:
            for _ in range(8):
                db.seek(rng.randrange(db.seek(0, os.SEEK_END) - 4096))
                db.write(rng.randbytes(4096))
        return "8 blocks of 4 KiB rewritten inside db.bin"
    if host.name == "l":
        with (data / "log" / "app-00.log").open("a") as log:
            log.write("".join(f"2026-11-30 event {i} appended\n" for i in range(20_000)))
        return "about 600 KiB appended to a log"
    if host.name == "h":
        (data / "pages" / f"new-{round_no}.html").write_bytes(rng.randbytes(32 * 1024))
        return "one new 32 KiB page"
    victims = sorted((data / "pages").iterdir())[:3]
    for victim in victims:
        victim.unlink()
    (data / "etc" / "motd").write_text(f"changed in round {round_no}\n")
    return "3 files deleted, one edited"
