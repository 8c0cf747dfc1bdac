"""Checking an OpenSSH signature (`ssh-keygen -Y sign`, OpenSSH >= 8.1) with pynacl: pure.

The format is OpenSSH's PROTOCOL.sshsig. The armored text holds, base64'd between
"-----BEGIN SSH SIGNATURE-----" and "-----END SSH SIGNATURE-----":

    byte[6]  "SSHSIG"
    uint32   SIG_VERSION (1)
    string   publickey        (the signer's key blob, RFC 4253 6.6)
    string   namespace
    string   reserved         (empty)
    string   hash_algorithm   ("sha256" or "sha512")
    string   signature        (RFC 4253 6.6 / RFC 8709: string "ssh-ed25519", string sig)

and the key signed, not the message itself, but:

    byte[6]  "SSHSIG"
    string   namespace
    string   reserved
    string   hash_algorithm
    string   H(message)

Only Ed25519 keys are accepted (the archive's host key is one: chalicelib/keys.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from chalicelib.sshcert import ED25519, ed25519_key_blob, pack_string, pack_uint32

MAGIC = b"SSHSIG"
VERSION = 1
HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"
MAX_ARMORED = 4096


class SshSigError(ValueError):
    """The signature is malformed, of another key or namespace, or does not verify."""


def signed_data(namespace: str, hash_algorithm: str, message: bytes) -> bytes:
    """What the key signs for `message` (PROTOCOL.sshsig, "Signed Data")."""
    digest = HASHES[hash_algorithm](message).digest()
    return (MAGIC + pack_string(namespace) + pack_string(b"") + pack_string(hash_algorithm)
            + pack_string(digest))


def verify(armored: str, message: bytes, namespace: str, public_key: bytes) -> None:
    """Raises SshSigError unless `armored` is an SSHSIG by Ed25519 key `public_key` (32 bytes)
    over `message` in `namespace`."""
    blob = _unarmor(armored)
    if blob[:6] != MAGIC:
        raise SshSigError("not an SSHSIG")
    fields, offset = [], 10
    if int.from_bytes(blob[6:10], "big") != VERSION:
        raise SshSigError("unknown SSHSIG version")
    for _ in range(5):
        value, offset = _read_string(blob, offset)
        fields.append(value)
    if offset != len(blob):
        raise SshSigError("trailing bytes after the signature")
    key, signed_namespace, reserved, hash_name, signature = fields
    if key != ed25519_key_blob(public_key):
        raise SshSigError("signed by another key")
    if signed_namespace != namespace.encode():
        raise SshSigError("signed for another namespace")
    if reserved:
        raise SshSigError("reserved field not empty")
    algorithm = hash_name.decode(errors="replace")
    if algorithm not in HASHES:
        raise SshSigError(f"hash algorithm {algorithm[:20]!r} not allowed")
    key_type, rest = _read_string(signature, 0)
    raw, end = _read_string(signature, rest)
    if key_type != ED25519.encode() or len(raw) != 64 or end != len(signature):
        raise SshSigError("not an Ed25519 signature")
    try:
        VerifyKey(public_key).verify(signed_data(namespace, algorithm, message), raw)
    except BadSignatureError as exc:
        raise SshSigError("signature does not verify") from exc


def sign(key: SigningKey, message: bytes, namespace: str, hash_algorithm: str = "sha512") -> str:
    """What `ssh-keygen -Y sign -n namespace` writes for `message` (the tests and the bench
    sign with this; the instance and the local stack with ssh-keygen)."""
    signature = key.sign(signed_data(namespace, hash_algorithm, message)).signature
    return pack_signature(bytes(key.verify_key), namespace, hash_algorithm, signature)


def pack_signature(public_key: bytes, namespace: str, hash_algorithm: str,
                   signature: bytes) -> str:
    """The armored SSHSIG of a raw Ed25519 signature over signed_data(...)."""
    blob = (MAGIC + pack_uint32(VERSION) + pack_string(ed25519_key_blob(public_key))
            + pack_string(namespace) + pack_string(b"") + pack_string(hash_algorithm)
            + pack_string(pack_string(ED25519) + pack_string(signature)))
    text = base64.b64encode(blob).decode()
    return "\n".join([_BEGIN, *(text[i:i + 76] for i in range(0, len(text), 76)), _END, ""])


def _unarmor(armored: str) -> bytes:
    if len(armored) > MAX_ARMORED:
        raise SshSigError("signature too long")
    lines = [line.strip() for line in armored.strip().splitlines()]
    if len(lines) < 3 or lines[0] != _BEGIN or lines[-1] != _END:
        raise SshSigError("not an armored SSH signature")
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error as exc:
        raise SshSigError("signature is not base64") from exc


def _read_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    """RFC 4251 5: uint32 length, then that many bytes."""
    if offset + 4 > len(blob):
        raise SshSigError("truncated signature")
    length = int.from_bytes(blob[offset:offset + 4], "big")
    end = offset + 4 + length
    if end > len(blob):
        raise SshSigError("truncated signature")
    return blob[offset + 4:end], end
