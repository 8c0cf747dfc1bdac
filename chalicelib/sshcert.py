"""OpenSSH user certificates over a host's ephemeral Ed25519 key, as pure code.

The layout is OpenSSH `PROTOCOL.certkeys` ("ssh-ed25519-cert-v01@openssh.com"); the wire types
are RFC 4251 section 5; Ed25519 key and signature blobs are RFC 8709. Nonce, serial and validity
come in as arguments and the CA signer is handed in: nothing here reads a clock or draws
randomness, so a test can pin the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ED25519 = "ssh-ed25519"
ED25519_CERT = "ssh-ed25519-cert-v01@openssh.com"
SSH_CERT_TYPE_USER = 1
MIN_NONCE_BYTES = 16
UINT64_MAX = 2**64 - 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KEY_TYPE = re.compile(  # OpenSSH's public key types (sshkey.c), security keys and certificates
    r"(sk-)?(ssh-(ed25519|ed448|rsa|dss)|ecdsa-sha2-nistp(256|384|521))(@openssh\.com)?"
    r"(-cert-v0[01]@openssh\.com)?")

Sign = Callable[[bytes], bytes]
"""Returns the 64-byte Ed25519 signature of its argument, made with the CA's private key."""


class SshCertError(ValueError):
    """Base of the errors this module raises."""


class UnsupportedKeyTypeError(SshCertError):
    """The key is well formed but is not an Ed25519 key."""


class MalformedKeyError(SshCertError):
    """The text is not an OpenSSH public key line, or its blob does not decode."""


class CertificateRequestError(SshCertError):
    """A field of the certificate request is out of range or inconsistent."""


class SignerError(SshCertError):
    """The signer does not sign with the CA key the certificate names."""


@dataclass(frozen=True)
class CertificateSpec:
    """What to certify. Times are seconds since the epoch or timezone-aware datetimes."""

    public_key_line: str
    principal: str
    key_id: str
    serial: int
    nonce: bytes
    valid_after: datetime | int
    valid_before: datetime | int
    force_command: str
    source_address: str | None = None
    extensions: tuple[str, ...] = ()
    comment: str = ""


def pack_uint32(value: int) -> bytes:
    """RFC 4251 section 5 `uint32`: four bytes, most significant first."""
    return struct.pack(">I", value)


def pack_uint64(value: int) -> bytes:
    """RFC 4251 section 5 `uint64`: eight bytes, most significant first."""
    return struct.pack(">Q", value)


def pack_string(data: bytes | str) -> bytes:
    """RFC 4251 section 5 `string`: a `uint32` length, then the bytes (text goes as UTF-8)."""
    raw = data.encode() if isinstance(data, str) else data
    return pack_uint32(len(raw)) + raw


def pack_string_list(items: Iterable[str]) -> bytes:
    """PROTOCOL.certkeys "valid principals": the names as consecutive `string`s."""
    return b"".join(pack_string(item) for item in items)


def pack_options(options: Mapping[str, bytes]) -> bytes:
    """PROTOCOL.certkeys "critical options" / "extensions": per option a `string` name and a
    `string` data (itself packed by the caller, empty for a flag), sorted lexically by name."""
    return b"".join(pack_string(name) + pack_string(options[name]) for name in sorted(options))


def ed25519_key_blob(public_key: bytes) -> bytes:
    """RFC 8709 section 4: `string` "ssh-ed25519", `string` the 32-byte key."""
    return pack_string(ED25519) + pack_string(public_key)


def ed25519_signature_blob(signature: bytes) -> bytes:
    """RFC 8709 section 6: `string` "ssh-ed25519", `string` the 64-byte signature."""
    return pack_string(ED25519) + pack_string(signature)


def parse_ed25519_public_key(line: str) -> bytes:
    """The raw 32-byte key of exactly one "ssh-ed25519 AAAA... [comment]" line.

    The one rule for every key a request brings (a host's enrolled key, a run's ephemeral key):
    a newline, CR, NUL or other control character, or a second key in the comment, is refused,
    never cut off, so the key used is always the only key the caller sent."""
    if _CONTROL.search(line):
        raise MalformedKeyError(
            "a public key must be one line: no newline, CR, NUL or other control character")
    key_type, blob = _split_key_line(line)
    if key_type != ED25519:
        raise UnsupportedKeyTypeError(f"only {ED25519} keys are accepted, not {key_type[:40]!r}")
    if any(_is_key_part(word) for word in line.split()[2:]):
        raise MalformedKeyError("expected one public key; the comment holds another")
    name, offset = _read_string(blob, 0)
    key, offset = _read_string(blob, offset)
    if name != ED25519.encode() or len(key) != 32 or offset != len(blob):
        raise MalformedKeyError("the key blob is not an Ed25519 public key (RFC 8709 section 4)")
    return key


def public_key_fingerprint(line: str) -> str:
    """The key blob's SHA-256 as `ssh-keygen -l` prints it: "SHA256:" and unpadded base64."""
    key_type, blob = _split_key_line(line)
    name, _ = _read_string(blob, 0)
    if name != key_type.encode():
        raise MalformedKeyError("the key blob names another type than the line does")
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


def ca_public_key_line(signing_key: SigningKey, comment: str = "") -> str:
    """The CA's public key as a line for sshd's `TrustedUserCAKeys`."""
    return _key_line(ED25519, ed25519_key_blob(bytes(signing_key.verify_key)), comment)


def certificate_body(spec: CertificateSpec, ca_public_key: bytes) -> bytes:
    """PROTOCOL.certkeys fields from the type name through "signature key": what the CA signs."""
    if len(ca_public_key) != 32:
        raise SignerError("the CA public key must be a raw 32-byte Ed25519 key")
    valid_after, valid_before = _validity(spec)
    _check_spec(spec)
    options = {"force-command": pack_string(spec.force_command)}
    if spec.source_address is not None:
        options["source-address"] = pack_string(spec.source_address)
    return b"".join(
        [
            pack_string(ED25519_CERT),
            pack_string(spec.nonce),
            pack_string(parse_ed25519_public_key(spec.public_key_line)),
            pack_uint64(spec.serial),
            pack_uint32(SSH_CERT_TYPE_USER),
            pack_string(spec.key_id),
            pack_string(pack_string_list([spec.principal])),
            pack_uint64(valid_after),
            pack_uint64(valid_before),
            pack_string(pack_options(options)),
            pack_string(pack_options(dict.fromkeys(spec.extensions, b""))),
            pack_string(b""),  # reserved
            pack_string(ed25519_key_blob(ca_public_key)),
        ]
    )


def sign_user_certificate(
    spec: CertificateSpec, signer: SigningKey | Sign, ca_public_key: bytes | None = None
) -> str:
    """The signed certificate as an OpenSSH line ("ssh-ed25519-cert-v01@openssh.com AAAA...").

    A `SigningKey` names its own public key; a bare `Sign` callable needs `ca_public_key`. The
    signature is checked against that key, so a signer holding another key fails here, not in
    sshd."""
    ca_key, sign = _resolve_signer(signer, ca_public_key)
    body = certificate_body(spec, ca_key)
    signature = sign(body)
    try:
        VerifyKey(ca_key).verify(body, signature)
    except (BadSignatureError, ValueError) as exc:
        raise SignerError("the signature does not verify under the CA public key") from exc
    certificate = body + pack_string(ed25519_signature_blob(signature))
    return _key_line(ED25519_CERT, certificate, spec.comment)


def _resolve_signer(signer: SigningKey | Sign, ca_public_key: bytes | None) -> tuple[bytes, Sign]:
    if isinstance(signer, SigningKey):
        own = bytes(signer.verify_key)
        if ca_public_key is not None and ca_public_key != own:
            raise SignerError("ca_public_key is not the signing key's public key")
        return own, lambda data: signer.sign(data).signature
    if ca_public_key is None:
        raise SignerError("a Sign callable needs the CA's public key next to it")
    return ca_public_key, signer


def _validity(spec: CertificateSpec) -> tuple[int, int]:
    after, before = _epoch_seconds(spec.valid_after), _epoch_seconds(spec.valid_before)
    if not 0 <= after < before <= UINT64_MAX:
        raise CertificateRequestError("valid_before must come after valid_after, both >= 0")
    return after, before


def _epoch_seconds(value: datetime | int) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise CertificateRequestError("validity datetimes must be timezone-aware")
        return int(value.timestamp())
    return value


def _check_spec(spec: CertificateSpec) -> None:
    if not 0 <= spec.serial <= UINT64_MAX:
        raise CertificateRequestError("serial must fit in a uint64")
    if len(spec.nonce) < MIN_NONCE_BYTES:
        raise CertificateRequestError(f"nonce must be at least {MIN_NONCE_BYTES} bytes")
    if not spec.principal or not spec.force_command:
        raise CertificateRequestError("principal and force_command must not be empty")
    if len(set(spec.extensions)) != len(spec.extensions) or "" in spec.extensions:
        raise CertificateRequestError("extension names must be unique and non-empty")
    if any(c in spec.comment for c in "\r\n"):
        raise CertificateRequestError("the comment must fit on one line")


def _split_key_line(line: str) -> tuple[str, bytes]:
    fields = line.split()
    if len(fields) < 2:
        raise MalformedKeyError("expected '<key type> <base64 blob> [comment]'")
    try:
        return fields[0], base64.b64decode(fields[1], validate=True)
    except ValueError as exc:  # binascii.Error, or a character that is not ASCII
        raise MalformedKeyError("the key blob is not valid base64") from exc


def _is_key_part(word: str) -> bool:
    """Whether `word` is a key type or a key blob (base64 of a `string` naming a key type), even
    a blob cut short."""
    if _KEY_TYPE.fullmatch(word):
        return True
    try:
        name, _ = _read_string(base64.b64decode(word[: len(word) // 4 * 4], validate=True), 0)
    except (ValueError, MalformedKeyError):  # a comment word may hold any character
        return False
    return bool(_KEY_TYPE.fullmatch(name.decode("ascii", errors="replace")))


def _read_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    """RFC 4251 section 5 `string` at `offset`; returns it and the offset after it."""
    if offset + 4 > len(blob):
        raise MalformedKeyError("the key blob is truncated")
    (length,) = struct.unpack_from(">I", blob, offset)
    end = offset + 4 + length
    if end > len(blob):
        raise MalformedKeyError("the key blob is truncated")
    return blob[offset + 4 : end], end


def _key_line(key_type: str, blob: bytes, comment: str) -> str:
    line = f"{key_type} {base64.b64encode(blob).decode()}"
    return f"{line} {comment}" if comment else line
