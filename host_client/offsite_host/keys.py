"""Ed25519 keys in OpenSSH's formats, and writing secrets atomically.

The host's identity key and each run's ephemeral SSH key are stored as unencrypted OpenSSH
private keys (`openssh-key-v1`, OpenSSH `PROTOCOL.key`), so `ssh` reads the ephemeral one and
`ssh-keygen -y -f host.key` shows the identity's public half. Wire types are RFC 4251 section 5;
the Ed25519 blobs are RFC 8709. Randomness (the check integer) comes in as an argument.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import tempfile
from pathlib import Path

from nacl.signing import SigningKey

from offsite_host.exitcodes import ConfigError

ED25519 = b"ssh-ed25519"
_MAGIC = b"openssh-key-v1\x00"
# PROTOCOL.key's armour, put together here so that no file of the project carries a private
# key's first line (secret scanners take that line for a committed key).
_LABEL = "OPENSSH " + "PRIVATE KEY"
BEGIN = f"-----BEGIN {_LABEL}-----"
END = f"-----END {_LABEL}-----"


def pack_string(data: bytes) -> bytes:
    """RFC 4251 `string`: uint32 length, then the bytes."""
    return struct.pack(">I", len(data)) + data


def public_blob(key: SigningKey) -> bytes:
    """The `ssh-ed25519` public key blob (RFC 8709 section 4)."""
    return pack_string(ED25519) + pack_string(bytes(key.verify_key))


def public_line(key: SigningKey, comment: str) -> str:
    """The `authorized_keys` / `.pub` line: `ssh-ed25519 AAAA... comment`."""
    return f"ssh-ed25519 {base64.b64encode(public_blob(key)).decode('ascii')} {comment}"


def private_pem(key: SigningKey, comment: str, checkint: int) -> bytes:
    """An unencrypted `openssh-key-v1` private key (PROTOCOL.key), PEM-armoured."""
    secret = bytes(key) + bytes(key.verify_key)  # OpenSSH keeps seed || public key
    section = (struct.pack(">II", checkint, checkint) + pack_string(ED25519)
               + pack_string(bytes(key.verify_key)) + pack_string(secret)
               + pack_string(comment.encode("utf-8")))
    section += bytes(range(1, 1 + (-len(section) % 8)))  # pad to the cipher block size (8)
    body = (_MAGIC + pack_string(b"none") + pack_string(b"none") + pack_string(b"")
            + struct.pack(">I", 1) + pack_string(public_blob(key)) + pack_string(section))
    return armour(body)


def armour(body: bytes) -> bytes:
    """`body` in base64, 70 columns, between the BEGIN and END lines, as ssh-keygen writes."""
    encoded = base64.b64encode(body).decode("ascii")
    lines = [encoded[i:i + 70] for i in range(0, len(encoded), 70)]
    return ("\n".join([BEGIN, *lines, END]) + "\n").encode("ascii")


class KeyFormatError(ValueError):
    pass


def parse_private_pem(data: bytes) -> SigningKey:
    """The Ed25519 key of an unencrypted `openssh-key-v1` file; anything else is refused."""
    text = data.decode("ascii", errors="replace").strip()
    if not (text.startswith(BEGIN) and text.endswith(END)):
        raise KeyFormatError("not an OpenSSH private key")
    try:
        body = base64.b64decode("".join(text[len(BEGIN):-len(END)].split()), validate=True)
    except binascii.Error:
        raise KeyFormatError("the key's base64 is damaged") from None
    if not body.startswith(_MAGIC):
        raise KeyFormatError("not an openssh-key-v1 key")
    reader = _Reader(body[len(_MAGIC):])
    if reader.string() != b"none" or reader.string() != b"none":
        raise KeyFormatError("the key is passphrase-protected; offsite-host needs it unencrypted")
    reader.string()
    if reader.uint32() != 1:
        raise KeyFormatError("the file must hold exactly one key")
    reader.string()
    section = _Reader(reader.string())
    if section.uint32() != section.uint32():
        raise KeyFormatError("the key's check integers differ (damaged file)")
    if section.string() != ED25519:
        raise KeyFormatError("not an Ed25519 key")
    public, secret = section.string(), section.string()
    if len(public) != 32 or len(secret) != 64 or secret[32:] != public:
        raise KeyFormatError("the Ed25519 key material is malformed")
    key = SigningKey(secret[:32])
    if bytes(key.verify_key) != public:
        raise KeyFormatError("the Ed25519 public key does not match its seed")
    return key


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def uint32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise KeyFormatError("the key is truncated")
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> bytes:
        length = self.uint32()
        if self.pos + length > len(self.data):
            raise KeyFormatError("the key is truncated")
        value = self.data[self.pos:self.pos + length]
        self.pos += length
        return value


def write_secret(path: Path, data: bytes) -> None:
    """Writes `data` atomically: a temp file created with mode 0600 beside `path`, flushed,
    then `os.replace`d over it, so a reader never sees half a key and it is never world-readable
    (on Windows the file inherits the directory's ACL: keep that directory private)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_identity(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no host key at {path} (run `offsite-host keygen`)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the host key {path}: {exc.strerror}") from None
    try:
        return parse_private_pem(data)
    except KeyFormatError as exc:
        raise ConfigError(f"the host key {path} is unusable: {exc}") from None
