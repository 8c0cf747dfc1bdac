"""The control plane's key material: the user CA that signs host certificates and the archive
instance's SSH host key.

Both are made once at setup (`generate_key_material`, used by `offsite-admin init` and the local
stack) and kept in SSM Parameter Store: the private halves as SecureStrings (the CA for the
session Lambda, the host key for the instance role), the public halves as plain Strings. The
Lambda reads them through powertools parameters, cached for a few minutes.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from nacl.signing import SigningKey

from chalicelib.sshcert import (
    ED25519,
    ca_public_key_line,
    ed25519_key_blob,
    pack_string,
    pack_uint32,
)

CACHE_SECONDS = 300
_ARMOR = "OPENSSH PRIVATE KEY"


@dataclass(frozen=True)
class KeyParameters:
    """Names of the four parameters, all under one prefix (e.g. /offsite/prod)."""

    prefix: str

    @property
    def ca_private(self) -> str:
        return f"{self.prefix}/ca-key"

    @property
    def ca_public(self) -> str:
        return f"{self.prefix}/ca-key.pub"

    @property
    def host_private(self) -> str:
        return f"{self.prefix}/host-key"

    @property
    def host_public(self) -> str:
        return f"{self.prefix}/host-key.pub"


ParameterKind = Literal["String", "SecureString"]


@dataclass(frozen=True)
class KeyMaterial:
    ca_seed_b64: str
    ca_public_line: str
    host_private_pem: str
    host_public_line: str

    def parameters(self, names: KeyParameters) -> list[tuple[str, str, ParameterKind]]:
        """(SSM parameter name, value, type) of each of the four parameters."""
        return [(names.ca_private, self.ca_seed_b64, "SecureString"),
                (names.ca_public, self.ca_public_line, "String"),
                (names.host_private, self.host_private_pem, "SecureString"),
                (names.host_public, self.host_public_line, "String")]


def generate_key_material(comment: str = "offsite") -> KeyMaterial:
    ca, host = SigningKey.generate(), SigningKey.generate()
    return KeyMaterial(
        ca_seed_b64=base64.b64encode(bytes(ca)).decode(),
        ca_public_line=ca_public_key_line(ca, f"{comment}-ca"),
        host_private_pem=openssh_private_key(host, f"{comment}-host"),
        host_public_line=ca_public_key_line(host, f"{comment}-host"),
    )


def openssh_private_key(key: SigningKey, comment: str, check: int = 0x0FF517E) -> str:
    """An unencrypted "openssh-key-v1" Ed25519 private key, as sshd reads a HostKey
    (OpenSSH PROTOCOL.key). `check` is the pair of equal check integers."""
    public = bytes(key.verify_key)
    blob = ed25519_key_blob(public)
    private = (pack_uint32(check) * 2 + pack_string(ED25519) + pack_string(public)
               + pack_string(bytes(key) + public) + pack_string(comment))
    private += bytes(range(1, 1 + (-len(private)) % 8))  # padding 1, 2, 3, ... to 8 bytes
    body = (b"openssh-key-v1\0" + pack_string("none") + pack_string("none") + pack_string(b"")
            + pack_uint32(1) + pack_string(blob) + pack_string(private))
    text = base64.b64encode(body).decode()
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    return "\n".join([f"-----BEGIN {_ARMOR}-----", *lines, f"-----END {_ARMOR}-----", ""])


def read_openssh_private_key(text: str) -> SigningKey:
    """The Ed25519 key of an unencrypted "openssh-key-v1" text as openssh_private_key writes
    it (one key): after the header, the public blob and the private section's check integers,
    type and public key, comes string seed+public (OpenSSH PROTOCOL.key)."""
    lines = [line for line in text.strip().splitlines() if "-----" not in line]
    body = base64.b64decode("".join(lines))
    magic = b"openssh-key-v1\0" + pack_string("none") + pack_string("none") + pack_string(b"")
    if not body.startswith(magic + pack_uint32(1)):
        raise ValueError("not an unencrypted openssh-key-v1 key with one key")
    marker = pack_string(ED25519)
    at = body.rindex(marker)  # the private section's key type
    public_at = at + len(marker) + 4
    public = body[public_at:public_at + 32]
    seed_at = public_at + 32 + 4
    key = SigningKey(body[seed_at:seed_at + 32])
    if bytes(key.verify_key) != public or body[seed_at + 32:seed_at + 64] != public:
        raise ValueError("the private key does not match its public half")
    return key


class CertificateAuthority:
    """The CA key, read from SSM on first use and cached (rotation reaches a warm Lambda within
    CACHE_SECONDS)."""

    def __init__(self, read_parameter: Callable[[str], str], parameters: KeyParameters) -> None:
        self._read = read_parameter
        self._parameters = parameters

    def signing_key(self) -> SigningKey:
        return SigningKey(base64.b64decode(self._read(self._parameters.ca_private)))

    def host_public_line(self) -> str:
        return self._read(self._parameters.host_public).strip()
