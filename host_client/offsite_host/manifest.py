"""The manifest of the sent ciphertext tree: every name, kind and SHA-256 of the encrypted view
as a run sent it, bound to the host and the backup window, and MAC'd with a key only the host
can make. It catches what gocryptfs cannot see (a ciphertext file cut at a block boundary, a
file missing, added, swapped with another, or rolled back to an older day's version) before a
restore decrypts anything.

The key: HMAC-SHA256 with a key derived by scrypt from the gocryptfs password, salted with the
repository's own gocryptfs scrypt salt. The archive holds that salt and the `gocryptfs.conf`
anyway; with gocryptfs' own scrypt cost, the manifest makes the password no cheaper to guess
than the conf already does, and restoring a point needs nothing beyond what decrypting it
needs (the password file), so a rebuilt or re-keyed host still checks its old points.

The file is `<format> hmac-sha256=<hex>\\n` then the JSON body, MAC'd as the exact bytes, so
no canonical form has to be agreed on. Everything here is pure but `derive_key`'s scrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from offsite_host import compare
from offsite_host.exitcodes import RestoreError

FORMAT = "offsite-manifest/1"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**16, 8, 1  # gocryptfs' defaults (-scryptn 16)
_KEY_SALT_LABEL = b"offsite manifest key/1\0"

Entries = dict[str, tuple[str, str]]
"""By relative POSIX path: (kind, sha-256 of the content or the link's target)."""


class DamagedCopyError(RestoreError):
    """The fetched copy is not what the host sent: nothing is decrypted from it."""


@dataclass(frozen=True)
class Manifest:
    host: str
    window_id: str
    written_at: str  # ISO 8601 UTC, when the run sealed it
    entries: Entries


@dataclass(frozen=True)
class Verdict:
    """How a fetched copy stands against its manifest: `problems` fail the restore; `notes`
    are said and reported."""

    problems: tuple[str, ...]
    notes: tuple[str, ...]
    reason: str


def entries_of(inventory: dict[str, compare.Entry]) -> Entries:
    """What the manifest keeps of a tree: modes are left out (rsync sends the ciphertext with
    fixed modes), and so are special files, which rsync does not send."""
    return {name: (kind, digest) for name, (kind, _mode, digest) in inventory.items()
            if kind != "special"}


def gocryptfs_salt(conf_text: str) -> bytes:
    """The scrypt salt of a gocryptfs configuration (`ScryptObject.Salt`)."""
    try:
        salt = base64.b64decode(json.loads(conf_text)["ScryptObject"]["Salt"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise DamagedCopyError("the gocryptfs configuration has no readable scrypt salt") \
            from exc
    if len(salt) < 16:
        raise DamagedCopyError("the gocryptfs configuration's scrypt salt is too short")
    return bytes(salt)


def derive_key(password: bytes, conf_salt: bytes) -> bytes:
    salt = hashlib.sha256(_KEY_SALT_LABEL + conf_salt).digest()
    return hashlib.scrypt(password, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          maxmem=2**27, dklen=32)


def seal(manifest: Manifest, key: bytes) -> bytes:
    body = json.dumps({"format": FORMAT, "host": manifest.host, "window_id": manifest.window_id,
                       "written_at": manifest.written_at,
                       "entries": {k: list(v) for k, v in sorted(manifest.entries.items())}},
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return f"{FORMAT} hmac-sha256={_mac(key, body)}\n".encode() + body


def unseal(data: bytes, key: bytes) -> Manifest:
    """The manifest, once its MAC is right; anything else is a damaged copy."""
    head, _, body = data.partition(b"\n")
    prefix = f"{FORMAT} hmac-sha256=".encode()
    if not head.startswith(prefix):
        raise DamagedCopyError(f"the manifest is not an {FORMAT} file")
    if not hmac.compare_digest(head[len(prefix):], _mac(key, body).encode()):
        raise DamagedCopyError("the manifest fails authentication: it was altered, or not "
                               "written with this host's password")
    try:
        return _parse(json.loads(body.decode("utf-8")))
    except (ValueError, KeyError, TypeError) as exc:  # authentic yet unreadable: a bug
        raise DamagedCopyError(f"the manifest is authentic but unreadable: {exc}") from exc


def judge(manifest: Manifest, actual: Entries, host: str, window_id: str,
          complete: bool) -> Verdict:
    """Compares a fetched copy (`actual`) with its manifest, for the recovery point made in
    `window_id`. A complete point was written by a run of that very window, so its manifest
    must be that window's: an older one means the whole tree was rolled back. An incomplete
    point may legitimately carry the last complete run's tree (this window's run never
    finished), which its older manifest then still vouches for."""
    problems, notes = [], []
    if manifest.host != host:
        problems.append(f"the manifest is of host {manifest.host}, not {host}")
    if manifest.window_id != window_id:
        if complete:
            problems.append(f"the manifest is of window {manifest.window_id}, not of this "
                            f"recovery point's window {window_id} (a rolled-back copy)")
        else:
            notes.append(f"this incomplete point carries the tree of window "
                         f"{manifest.window_id}")
    expected = {k: (kind, 0, digest) for k, (kind, digest) in manifest.entries.items()}
    found = {k: (kind, 0, digest) for k, (kind, digest) in actual.items()}
    differences = compare.differences(expected, found)
    if differences:
        problems.append(f"{len(differences)} entries differ from the manifest, e.g. "
                        f"{'; '.join(differences[:3])}")
    reason = (f"the fetched copy is not what the host sent: {'; '.join(problems)}" if problems
              else f"the fetched copy matches its manifest ({len(actual)} entries, sealed "
                   f"{manifest.written_at} in window {manifest.window_id})")
    return Verdict(tuple(problems), tuple(notes), reason)


def _mac(key: bytes, body: bytes) -> str:
    return hmac.new(key, FORMAT.encode() + b"\n" + body, hashlib.sha256).hexdigest()


def _parse(data: Any) -> Manifest:
    if data["format"] != FORMAT:
        raise ValueError(f"format {data['format']!r}")
    entries: Entries = {}
    for name, (kind, digest) in data["entries"].items():
        entries[str(name)] = (str(kind), str(digest))
    return Manifest(str(data["host"]), str(data["window_id"]), str(data["written_at"]), entries)
