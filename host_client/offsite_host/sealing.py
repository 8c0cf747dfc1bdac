"""Writing, shipping and checking the manifest (`manifest.py`) around the archive copy.

A run seals the encrypted view once it has been sent and verified, and pushes the manifest
beside the copy, `offsite-manifest/manifest` next to `remote_path` (`archive/`), outside the
directory the transfer mirrors with `--delete`, so the transfer and its verification never
see it, and the volume's snapshot carries both. (A directory, not a lone file: rrsync cannot
replace a file named as the destination itself.) A restore fetches it with a filter on the
parent directory, so a point without one simply brings none (rrsync refuses a missing
source outright), and checks the copy against it before anything is decrypted.

A point written before manifests existed has none. The first manifest a host ships is
recorded in its state directory (`manifest-since`); from then on a point made after that
without one is refused (someone removed it), while an older point, or any point restored on a
host that has no such record (a rebuilt machine), is restored with a warning that its tree
could not be authenticated.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

from offsite_host import compare, encrypt
from offsite_host.exitcodes import ConfigError
from offsite_host.keys import write_secret
from offsite_host.manifest import (
    DamagedCopyError,
    Manifest,
    Verdict,
    derive_key,
    entries_of,
    gocryptfs_salt,
    judge,
    seal,
    unseal,
)
from offsite_host.session import Session
from offsite_host.transfer import destination

DIR = "offsite-manifest"
NAME = "manifest"
SINCE_FILE = "manifest-since"


def beside(remote_path: str) -> str:
    """The directory that holds the copy's directory `remote_path` (and the manifest's)."""
    parent = remote_path.rstrip("/").rpartition("/")[0]
    return (parent or ".") + "/"


def push_argv(rsync: str, rsh: str, local_dir: str, session: Session, *,
              io_timeout_s: int) -> list[str]:
    """The local manifest directory's content; rsync writes the file to a temporary name and
    renames it, so it is never seen half-written."""
    there = dataclasses.replace(session, remote_path=beside(session.remote_path) + DIR + "/")
    return [rsync, "-rt", "--chmod=D0700,F0600", f"--timeout={io_timeout_s}", "-e", rsh, "--",
            local_dir.rstrip("/") + "/", destination(there)]


def pull_argv(rsync: str, rsh: str, session: Session, local_dir: str, *,
              io_timeout_s: int) -> list[str]:
    """Only the manifest, from the parent directory, into `local_dir/offsite-manifest/`."""
    there = dataclasses.replace(session, remote_path=beside(session.remote_path))
    return [rsync, "-rt", f"--timeout={io_timeout_s}", "-e", rsh, f"--include=/{DIR}/",
            f"--include=/{DIR}/{NAME}", "--exclude=*", "--", destination(there),
            local_dir.rstrip("/") + "/"]


def key_for(password_file: Path, conf: Path) -> bytes:
    """The MAC key of a repository: its gocryptfs password (the first line of the password
    file, as gocryptfs reads it) and its gocryptfs configuration's salt."""
    try:
        password = password_file.read_bytes().split(b"\n", 1)[0].rstrip(b"\r")
    except OSError as exc:
        raise ConfigError(f"cannot read the password file {password_file}: {exc.strerror}") \
            from None
    try:
        conf_text = conf.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedCopyError(f"cannot read the gocryptfs configuration {conf}: {exc}") \
            from None
    return derive_key(password, gocryptfs_salt(conf_text))


def write(view: Path, repository: Path, password_file: Path, host: str, window_id: str,
          now: float, out_dir: Path, cache: Path) -> Manifest:
    """Seals the view as it is now into `out_dir`/manifest; `cache` keeps the digests of the
    view's files between runs, so only what changed is read again."""
    digests = load_digests(cache)
    sealed = Manifest(host, window_id, _iso(now),
                      entries_of(compare.inventory(view, digests=digests)))
    key = key_for(password_file, repository / encrypt.REVERSE_CONF)
    write_secret(out_dir / NAME, seal(sealed, key))
    write_secret(cache, json.dumps(digests).encode("utf-8"))
    return sealed


def load_digests(cache: Path) -> compare.Digests:
    """The cached digests; an unreadable cache is only a slower run."""
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        return {str(k): (int(v[0]), int(v[1]), int(v[2]), int(v[3]), str(v[4]))
                for k, v in data.items()}
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return {}


def record_first(state_dir: Path, now: float) -> None:
    """Remembers when this host shipped its first manifest (kept once written)."""
    marker = state_dir / SINCE_FILE
    if not marker.exists():
        write_secret(marker, f"{now:.0f}\n".encode())


def required_for(state_dir: Path, started_at: float) -> bool:
    """Whether a point whose window started at `started_at` must carry a manifest."""
    try:
        since = float((state_dir / SINCE_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return False
    return started_at >= since


def authenticate(staging: Path, sealed: Path, password_file: Path, host: str,
                 window_id: str, complete: bool, required: bool,
                 digests: compare.Digests | None = None) -> Verdict:
    """Checks the fetched copy in `staging` against the manifest pulled into the directory
    `sealed` (none there when the point has none); raises DamagedCopyError when the copy is not
    what the host sent. `digests`: what `compare.Prehash` hashed during the fetch."""
    found = sealed / DIR / NAME
    if not found.exists():
        if required:
            raise DamagedCopyError(
                "the recovery point has no manifest although this host has written one with "
                "every backup since before it: it was removed; nothing was decrypted")
        note = ("the recovery point has no manifest (written before offsite-host sealed its "
                "backups): its ciphertext tree could not be authenticated")
        return Verdict((), (note,), note)
    key = key_for(password_file, staging / encrypt.FORWARD_CONF)
    try:
        data = found.read_bytes()
    except OSError as exc:
        raise DamagedCopyError(f"cannot read the fetched manifest: {exc.strerror}") from None
    fetched = entries_of(compare.inventory(staging, digests=digests))
    verdict = judge(unseal(data, key), fetched, host, window_id, complete)
    if verdict.problems:
        raise DamagedCopyError(f"{verdict.reason}; nothing was decrypted")
    return verdict


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
